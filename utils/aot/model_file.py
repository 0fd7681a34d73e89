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
import contextlib
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from utils.cli import StageError, one_line
from utils.reports import model_hash

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


def made_by(path) -> str:
    """How to (re)make this file, e.g. "`python3 0103mnist_QAT.py`"."""
    from utils.quantize import MADE_BY
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


def _eager_network(state, path):
    """The project network whose parameters match this float state_dict, loaded."""
    import torch
    from utils.model import MnistModel
    from utils.qmodel import QMnistModel
    if any(isinstance(v, torch.Tensor) and v.is_quantized for v in state.values()) \
            or any(k.endswith(("_packed_params", ".scale", ".zero_point")) for k in state):
        raise StageError(f"{path} is an int8 state_dict; compile the traced TorchScript "
                         f"(*_scripted_int8.pth) that {made_by(path)} saves beside it")
    for network in (QMnistModel, MnistModel):
        model = network()
        expected = model.state_dict()
        if set(expected) == set(state) and all(tuple(expected[k].shape) == tuple(state[k].shape)
                                               for k in state):
            model.load_state_dict(state)
            return model.eval(), network.__name__
    raise StageError(f"{path}: a float state_dict of neither MnistModel nor QMnistModel "
                     f"(keys {', '.join(list(state)[:4])}...); 0201 compiles those two networks")


def load_model(path, kind="auto") -> SourceModel:
    """Load and classify; `kind` int8/fp32 must match what the file is."""
    import torch
    from utils.quantize import use_qnnpack
    path = Path(path)
    if not path.is_file():
        raise StageError(f"model file {path} not found; make it with {made_by(path)}")
    use_qnnpack()  # the int8 reference is qnnpack's arithmetic, the one the C mirrors
    if _is_torchscript(path):
        try:
            with quiet_torch():
                module = torch.jit.load(str(path), map_location="cpu").eval()
        except Exception as exc:
            raise StageError(f"{path} is not a readable TorchScript model ({one_line(exc)}); "
                             f"remake it with {made_by(path)}") from None
        if _is_quantized_script(module):
            found = SourceModel(path, "int8", model_hash(path), module, f"TorchScript int8 {module.original_name}")
        else:
            state = {k: v for k, v in module.state_dict().items()}
            eager, network = _eager_network(state, path)
            found = SourceModel(path, "fp32", model_hash(path), eager, f"TorchScript fp32 {network}")
    else:
        if not zipfile.is_zipfile(path):
            raise StageError(f"{path} is not a PyTorch model file (corrupt or truncated?); "
                             f"remake it with {made_by(path)}")
        try:
            with quiet_torch():
                state = torch.load(str(path), map_location="cpu", weights_only=True)
        except Exception as exc:
            reason = "pickled Python objects, not tensors" if "weights_only" in str(exc) else one_line(exc)
            raise StageError(f"{path} is neither TorchScript nor a state_dict ({reason}); "
                             f"remake it with {made_by(path)}") from None
        for key in ("state_dict", "model_state_dict"):
            if isinstance(state, dict) and isinstance(state.get(key), dict):
                state = state[key]
        if not isinstance(state, dict):
            raise StageError(f"{path} holds a {type(state).__name__}, not a state_dict or TorchScript; "
                         f"remake it with {made_by(path)}")
        eager, network = _eager_network(state, path)
        found = SourceModel(path, "fp32", model_hash(path), eager, f"state_dict fp32 {network}")
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
