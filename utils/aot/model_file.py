"""Read a model file for the compiler and decide what it is: int8 TorchScript or fp32.

Accepted:
  int8  a traced TorchScript of a converted (quantized) model, e.g. 0103's
        weights/qmnist_lenet5_scripted_int8.pth or 0102's *_scripted_int8.pth
  fp32  a state_dict of utils.model.MnistModel (0101's weights/mnist_cnn.pth) or of
        utils.qmodel.QMnistModel (0103's weights/qmnist_lenet5_fp32.pth), or a float
        TorchScript of either network (its weights are loaded into the eager network,
        because torch.export cannot read TorchScript)
Each comes back as a SourceModel with a PyTorch reference to check the C library against.
"""
import collections
import contextlib
import importlib
import io
import logging
import pickle
import sys
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import torch

from utils.cli import StageError, one_line
from utils.model import MnistModel
from utils.qmodel import QMnistModel
from utils.quantize import MADE_BY
from utils.reports import model_hash

# the MNIST networks' input: what a model that does not record its own shape is taken to take
INPUT_SHAPE = (1, 1, 28, 28)


@contextlib.contextmanager
def quiet_torch():
    """PyTorch 2.14 flags TorchScript and eager quantization as deprecated on every call."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", message=r".*quantize_per_tensor")
        warnings.filterwarnings("ignore", message=r"TypedStorage is deprecated")
        yield


@dataclass
class SourceModel:
    path: Path
    kind: str                  # "int8" or "fp32"
    model_hash: str
    module: object             # the ScriptModule (int8) or eager nn.Module (fp32)
    network: str               # what it is, for messages and metadata
    input_shape: tuple = INPUT_SHAPE   # batch 1
    engine: str = "qnnpack"            # the quantized engine whose arithmetic the int8 model follows
    flow: str = "eager"                # int8: "eager" (traced TorchScript) or "pt2e" (a Q/DQ program)
    reference: object = None           # fp32: what PyTorch runs for the check, when not `module`


class _TracedShapes(pickle.Unpickler):
    """Reads a TorchScript archive's traced_inputs.pkl (the example inputs torch.jit.trace
    keeps) without building a tensor or running anything: each tensor becomes its size."""

    def find_class(self, module, name):
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return lambda storage, offset, size, *rest: tuple(int(d) for d in size)
        if (module, name) == ("torch.jit._pickle", "restore_type_tag"):
            return lambda value, tag: value
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if module == "torch" and name.endswith("Storage"):
            return name
        raise pickle.UnpicklingError(f"unexpected {module}.{name}")

    def persistent_load(self, pid):
        return None


def traced_input_shape(path):
    """The shape of the input a TorchScript was traced with, or None when it kept none."""
    try:
        with zipfile.ZipFile(path) as z:
            name = next((n for n in z.namelist() if n.endswith("/traced_inputs.pkl")), None)
            if name is None:
                return None
            inputs = _TracedShapes(io.BytesIO(z.read(name))).load().get("forward") or []
    except (zipfile.BadZipFile, pickle.UnpicklingError, AttributeError, TypeError, ValueError, EOFError):
        return None
    return inputs[0] if len(inputs) == 1 and isinstance(inputs[0], tuple) else None


def made_by(path) -> str:
    """How to (re)make this file, e.g. "`python3 0103mnist_QAT.py`"."""
    stage = MADE_BY.get(Path(path).name)
    if stage:
        return f"`python3 {stage}`"
    return "`python3 0103mnist_QAT.py` (int8) or `python3 0101mnist.py` (fp32)"


def _is_torchscript(path) -> bool:
    try:
        with zipfile.ZipFile(path) as z:
            return any(name.endswith("constants.pkl") or "/code/" in name for name in z.namelist())
    except zipfile.BadZipFile:
        return False


def _is_quantized_script(module) -> bool:
    return any(node.kind().startswith("quantized::") or node.kind() == "aten::quantize_per_tensor"
               for node in module.inlined_graph.nodes())


def _eager_network(state, path, model_class=None):
    """The float network whose parameters match this state_dict, loaded: `model_class`
    ("module:Class", built with no arguments), else the project's MnistModel or QMnistModel."""
    if any(isinstance(v, torch.Tensor) and v.is_quantized for v in state.values()) \
            or any(k.endswith(("_packed_params", ".scale", ".zero_point")) for k in state):
        raise StageError(f"{path} is an int8 state_dict; compile the traced TorchScript "
                         f"(*_scripted_int8.pth) that {made_by(path)} saves beside it")
    if model_class is not None:
        network = _model_class(model_class)
        try:
            model = network()
            model.load_state_dict(state)
        except Exception as exc:
            raise StageError(f"{path} does not load into {model_class}() ({one_line(exc)})") from None
        return model.eval(), network.__name__
    for network in (QMnistModel, MnistModel):
        model = network()
        expected = model.state_dict()
        if set(expected) == set(state) and all(tuple(expected[k].shape) == tuple(state[k].shape)
                                               for k in state):
            model.load_state_dict(state)
            return model.eval(), network.__name__
    raise StageError(f"{path}: a float state_dict of a network this project does not define (keys "
                     f"{', '.join(list(state)[:4])}...); pass --model-class module:Class to name it")


def _model_class(spec):
    """"package.module:Class" → the class (its module imported from the current folder too)."""
    module_name, _, class_name = str(spec).partition(":")
    if not module_name or not class_name:
        raise StageError(f"--model-class {spec!r}: give it as module:Class, e.g. mynets:KwsNet")
    if str(Path.cwd()) not in sys.path:
        sys.path.insert(0, str(Path.cwd()))
    try:
        network = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError) as exc:
        raise StageError(f"--model-class {spec}: {one_line(exc)}") from None
    if not (isinstance(network, type) and issubclass(network, torch.nn.Module)):
        raise StageError(f"--model-class {spec} is not a torch.nn.Module class")
    return network


def register_quantized_decomposed():
    """Make torch know the quantized_decomposed ops a Q/DQ program calls (torchao registers
    them), without the deprecation warning torchao's import logs."""
    pytree_log = logging.getLogger("torch.utils._pytree")
    level = pytree_log.level
    pytree_log.setLevel(logging.ERROR)
    try:
        # deferred: torchao costs seconds on import, and only .pt2 programs need it
        import torchao  # noqa: F401
    finally:
        pytree_log.setLevel(level)


def _is_program(path) -> bool:
    """A torch.export.save archive (.pt2)."""
    try:
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
    except zipfile.BadZipFile:
        return False
    return any(n.endswith("/archive_format") for n in names) and any("/models/" in n for n in names)


QUANTIZED_DECOMPOSED = "quantized_decomposed"


def _load_program(path):
    """(ExportedProgram, its input shape, quantized?) of a .pt2 file."""
    register_quantized_decomposed()
    try:
        with quiet_torch():
            program = torch.export.load(str(path))
    except Exception as exc:
        raise StageError(f"{path} is not a torch.export program this torch {torch.__version__} can read "
                         f"({one_line(exc)}); was it saved by a newer torch? Export it again here") from None
    inputs = [n for n in program.graph.nodes if n.op == "placeholder" and n.name in
              set(program.graph_signature.user_inputs)]
    if len(inputs) != 1:
        raise StageError(f"{path}: the program takes {len(inputs)} inputs; the library has one")
    shape = inputs[0].meta.get("val").shape if "val" in inputs[0].meta else None
    if shape is None or not all(isinstance(d, int) for d in shape):
        raise StageError(f"{path}: the program was exported with dynamic shapes ({list(shape or [])}); "
                         f"export it again with static shapes (no dynamic_shapes=) and batch 1")
    quantized = any(QUANTIZED_DECOMPOSED in str(getattr(n, "target", "")) for n in program.graph.nodes)
    return program, tuple(int(d) for d in shape), quantized


def _torchscript_to_onnx(module, shape, path):
    """A float TorchScript of any network as an ONNX model for TVM's ONNX frontend (torch.export
    cannot read TorchScript; torch's TorchScript-based ONNX exporter can)."""
    buffer = io.BytesIO()
    try:
        with quiet_torch():
            torch.onnx.export(module, (torch.zeros(shape),), buffer, dynamo=False, opset_version=17)
    except Exception as exc:
        raise StageError(f"{path}: this float TorchScript does not convert to ONNX for TVM ({one_line(exc)}); "
                         f"pass its state_dict with --model-class, or a torch.export .pt2") from None
    return onnx.load_from_string(buffer.getvalue())


def parse_shape(text) -> tuple:
    """"1x3x32x32" or "1,3,32,32" → (1, 3, 32, 32); batch 1."""
    try:
        shape = tuple(int(d) for d in str(text).replace("x", ",").split(",") if d.strip())
    except ValueError:
        shape = ()
    if not shape or any(d < 1 for d in shape) or shape[0] != 1:
        raise StageError(f"input shape {text!r}: give positive sizes, batch 1 first, e.g. 1x3x32x32")
    return shape


# torch's quantized engines; x86 runs conv and linear with fbgemm's arithmetic
ENGINES = ("qnnpack", "fbgemm", "x86")


def load_model(path, kind="auto", input_shape=None, engine="qnnpack", model_class=None) -> SourceModel:
    """Load and classify; `kind` int8/fp32 must match what the file is. The input shape is
    `input_shape`, else the one the model records (a trace's example, a program's input), else
    INPUT_SHAPE. `engine`: the quantized engine the int8 model was converted for; PyTorch runs
    it under that engine (its packed weights are repacked for it on load) and the compiler
    follows its arithmetic. `model_class` names the network of a float state_dict."""
    path = Path(path)
    if engine not in ENGINES:
        raise StageError(f"engine {engine!r}: choose one of {', '.join(ENGINES)}")
    if not path.is_file():
        raise StageError(f"model file {path} not found; make it with {made_by(path)}")
    if engine not in torch.backends.quantized.supported_engines:
        raise StageError(f"this PyTorch has no {engine} engine (it has "
                         f"{', '.join(e for e in torch.backends.quantized.supported_engines if e != 'none')})")
    torch.backends.quantized.engine = engine
    recorded = None
    if _is_program(path):
        program, recorded, quantized = _load_program(path)
        found = SourceModel(path, "int8" if quantized else "fp32", model_hash(path), program,
                            f"torch.export {'PT2E int8' if quantized else 'fp32'} program",
                            flow="pt2e" if quantized else "eager")
    elif _is_torchscript(path):
        try:
            with quiet_torch():
                module = torch.jit.load(str(path), map_location="cpu").eval()
        except Exception as exc:
            raise StageError(f"{path} is not a readable TorchScript model ({one_line(exc)}); "
                             f"remake it with {made_by(path)}") from None
        recorded = traced_input_shape(path)
        if _is_quantized_script(module):
            found = SourceModel(path, "int8", model_hash(path), module, f"TorchScript int8 {module.original_name}")
        else:
            state = {k: v for k, v in module.state_dict().items()}
            try:
                eager, network = _eager_network(state, path, model_class)
                found = SourceModel(path, "fp32", model_hash(path), eager, f"TorchScript fp32 {network}")
            except StageError:
                if model_class is not None:
                    raise
                shape = tuple(input_shape or recorded or INPUT_SHAPE)
                found = SourceModel(path, "fp32", model_hash(path), _torchscript_to_onnx(module, shape, path),
                                    f"TorchScript fp32 {module.original_name} (through ONNX)", reference=module)
    else:
        if not zipfile.is_zipfile(path):
            raise StageError(f"{path} is not a PyTorch model file (corrupt or truncated?); "
                             f"remake it with {made_by(path)}")
        try:
            with quiet_torch():
                state = torch.load(str(path), map_location="cpu", weights_only=True)
        except Exception as exc:
            reason = "pickled Python objects, not tensors" if "weights_only" in str(exc) else one_line(exc)
            raise StageError(f"{path} is neither TorchScript, a .pt2 program nor a state_dict ({reason}); "
                             f"remake it with {made_by(path)}") from None
        for key in ("state_dict", "model_state_dict"):
            if isinstance(state, dict) and isinstance(state.get(key), dict):
                state = state[key]
        if not isinstance(state, dict):
            raise StageError(f"{path} holds a {type(state).__name__}, not a state_dict or TorchScript; "
                             f"remake it with {made_by(path)}")
        eager, network = _eager_network(state, path, model_class)
        found = SourceModel(path, "fp32", model_hash(path), eager, f"state_dict fp32 {network}")
    found.engine = engine
    found.input_shape = tuple(input_shape or recorded or INPUT_SHAPE)
    if found.input_shape[0] != 1:
        raise StageError(f"{path} was made for batch {found.input_shape[0]}; the library runs batch 1 "
                         f"(pass --input-shape 1x...)")
    if isinstance(found.module, torch.export.ExportedProgram) and input_shape and tuple(input_shape) != recorded:
        raise StageError(f"{path} was exported for input {list(recorded)}; --input-shape cannot change a program's")
    if kind not in ("auto", found.kind):
        other = "an int8 TorchScript (0103mnist_QAT.py)" if kind == "int8" else \
            "an fp32 state_dict (0101mnist.py, or 0103mnist_QAT.py's qmnist_lenet5_fp32.pth)"
        raise StageError(f"{path} is an {found.kind} model ({found.network}) but --kind {kind} was "
                         f"asked; pass --kind {found.kind} or {other}")
    return found


def images_to_input(images_uint8) -> np.ndarray:
    """uint8 [N,28,28] or [N,784] → float32 [N,1,28,28] = pixel / 255 (float32 division)."""
    images = np.asarray(images_uint8, dtype=np.uint8).reshape(-1, 1, 28, 28)
    return images.astype(np.float32) / np.float32(255.0)
