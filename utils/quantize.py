"""Eager-mode int8 quantization shared by 0102 (PTQ), 0103 (QAT), the tests and later stages.

qnnpack everywhere: per-tensor symmetric int8 weights, uint8 activations without reduce_range,
the scheme that maps straight onto integer kernels on a Cortex-M.
"""
import contextlib
import copy
import io
import warnings
import zipfile
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.ao import quantization as tq
from torch.ao.quantization import DeQuantStub, QuantStub

from utils.cli import StageError, one_line
from utils.model import MnistModel
from utils.qmodel import FUSE_GROUPS as LENET5_FUSE_GROUPS
from utils.qmodel import QMnistModel
from utils.train import images_to_tensor, predict


@contextlib.contextmanager
def _quiet_deprecations():
    """PyTorch 2.14 flags eager quantization and TorchScript as deprecated on every call, and
    the tracer warns that quantized modules' scales become constants (which is what we want).
    They are still the path to a TorchScript int8 file, so the README says it once instead."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*quantize_per_tensor", category=UserWarning)
        warnings.filterwarnings("ignore", message=r".*torch\.jit\.\w+`? is deprecated",
                                category=FutureWarning)
        warnings.filterwarnings("ignore", message=r"torch\.ao\.quantization is deprecated",
                                category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        yield


ENGINE = "qnnpack"
INPUT_SHAPE = (1, 1, 28, 28)

# Which stage script writes which weights file, so a missing file says what to run.
MADE_BY = {
    "mnist_cnn.pth": "0101mnist.py",
    "mnist_cnn_quant.pth": "0102quantization.py",
    "mnist_cnn_quant_scripted_int8.pth": "0102quantization.py",
    "qmnist_lenet5_fp32.pth": "0103mnist_QAT.py",
    "qmnist_lenet5_ptq.pth": "0102quantization.py --model lenet5",
    "qmnist_lenet5_ptq_scripted_int8.pth": "0102quantization.py --model lenet5",
    "qmnist_lenet5_scripted_int8.pth": "0103mnist_QAT.py",
    # the PT2E flow's programs (torch.export .pt2)
    "mnist_cnn_int8.pt2": "0102quantization.py --flow pt2e",
    "qmnist_lenet5_ptq_int8.pt2": "0102quantization.py --model lenet5 --flow pt2e",
    "qmnist_lenet5_int8.pt2": "0103mnist_QAT.py --flow pt2e",
}


def use_qnnpack():
    torch.backends.quantized.engine = ENGINE


class QuantizableMnistModel(nn.Module):
    """MnistModel with quant/dequant stubs, sharing its layers (and so its trained weights).

    Normalize stays in float before the QuantStub: the int8 model still takes plain pixel/255.
    """

    FUSE_GROUPS = [["conv1", "relu1"], ["conv2", "relu2"], ["fc1", "relu3"]]

    def __init__(self, float_model: MnistModel):
        super().__init__()
        self.normalize = float_model.normalize
        self.quant = QuantStub()
        for name in ("conv1", "relu1", "conv2", "relu2", "pool", "dropout1",
                     "fc1", "relu3", "dropout2", "fc2"):
            setattr(self, name, getattr(float_model, name))
        self.dequant = DeQuantStub()

    def forward(self, x):
        x = self.quant(self.normalize(x))
        x = self.relu1(self.conv1(x))
        x = self.relu2(self.conv2(x))
        x = self.dropout1(self.pool(x))
        x = torch.flatten(x, 1)
        x = self.dropout2(self.relu3(self.fc1(x)))
        x = self.dequant(self.fc2(x))
        return F.log_softmax(x, dim=1)


def quantizable(model: nn.Module):
    """(a copy of model with quant/dequant stubs, its fuse groups)."""
    model = copy.deepcopy(model)
    if isinstance(model, QMnistModel):
        return model, LENET5_FUSE_GROUPS
    if isinstance(model, MnistModel):
        wrapped = QuantizableMnistModel(model)
        return wrapped, wrapped.FUSE_GROUPS
    raise TypeError(f"no quantization recipe for {type(model).__name__}")


def fused_eval(model: nn.Module) -> nn.Module:
    """Conv/linear+ReLU fused, eval mode, still fp32: must compute the same function."""
    model, groups = quantizable(model)
    model.eval()
    return tq.fuse_modules(model, groups)


def prepare_ptq(model: nn.Module) -> nn.Module:
    """Fused copy with qnnpack observers in place, ready for calibration."""
    use_qnnpack()
    prepared = fused_eval(model)
    prepared.qconfig = tq.get_default_qconfig(ENGINE)
    with _quiet_deprecations():
        return tq.prepare(prepared)


@torch.no_grad()
def calibrate(prepared: nn.Module, loader, batches: int) -> int:
    """Run up to `batches` batches through the observers; returns the number of images seen."""
    prepared.eval()
    seen = 0
    for i, (x, _) in enumerate(loader):
        if i >= batches:
            break
        prepared(x)
        seen += len(x)
    return seen


def prepare_qat(model: nn.Module) -> nn.Module:
    """Fused copy with qnnpack fake-quantization, in training mode."""
    use_qnnpack()
    model, groups = quantizable(model)
    model.train()
    model = tq.fuse_modules_qat(model, groups)
    model.qconfig = tq.get_default_qat_qconfig(ENGINE)
    with _quiet_deprecations():
        return tq.prepare_qat(model)


def freeze_observers(qat_model: nn.Module):
    """Stop moving the quantization ranges, so the last epochs train against fixed scales."""
    qat_model.apply(tq.disable_observer)


def to_int8(prepared: nn.Module) -> nn.Module:
    """The int8 model from a calibrated (PTQ) or trained (QAT) prepared model; eval mode."""
    use_qnnpack()
    model = copy.deepcopy(prepared).eval()
    with _quiet_deprecations():
        return tq.convert(model)


def observer_scales(prepared: nn.Module) -> dict:
    """{observer name: scale} of every activation observer (what calibration sets)."""
    scales = {}
    for name, module in prepared.named_modules():
        if name.endswith("activation_post_process"):
            scale, _ = module.calculate_qparams()
            scales[name] = float(scale.reshape(-1)[0])
    return scales


@torch.no_grad()
def trace_int8(model: nn.Module) -> torch.jit.ScriptModule:
    use_qnnpack()
    model.eval()
    with _quiet_deprecations():
        return torch.jit.trace(model, torch.rand(INPUT_SHAPE))


def save_scripted(model: nn.Module, path) -> torch.jit.ScriptModule:
    """Trace with a [1,1,28,28] input and save as TorchScript; returns the traced module."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    traced = trace_int8(model)
    traced.save(str(path))
    return traced


def save_state(model: nn.Module, path):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), path)


def state_bytes(model: nn.Module) -> int:
    """Size of the model's state_dict as torch.save writes it."""
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return buffer.tell()


def _require_file(path: Path, made_by: str = None, hint: str = ""):
    if not path.is_file():
        made_by = made_by or MADE_BY.get(path.name, "the stage that makes it")
        raise StageError(f"model file {path} not found; make it with `python3 {made_by}`{hint}")


def _fits(network, state: dict) -> bool:
    expected = network().state_dict()
    return set(expected) == set(state) and all(
        isinstance(state[k], torch.Tensor) and state[k].shape == expected[k].shape
        for k in expected)


def describe_state(state) -> str:
    """What a loaded torch.save object is, as a noun phrase for an error message."""
    if not isinstance(state, dict):
        return f"a PyTorch file holding a {type(state).__name__}, not a state_dict"
    if any(isinstance(v, torch.Tensor) and v.is_quantized for v in state.values()) \
            or any(str(k).endswith("_packed_params") for k in state):
        return "an int8 state_dict (quantized weights)"
    for network, name in ((MnistModel, "MnistModel"), (QMnistModel, "QMnistModel (LeNet-5)")):
        if _fits(network, state):
            return f"a float state_dict of {name}"
    return f"a state_dict of another network ({len(state)} entries, neither MnistModel's nor " \
           f"QMnistModel's)"


def is_program_file(path) -> bool:
    """A torch.export.save archive (.pt2): its zip holds an archive_format record and models/."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError):
        return False
    return any(n.endswith("/archive_format") for n in names) and any("/models/" in n for n in names)


def describe_model_file(path) -> str:
    """What kind of file `path` is, as a noun phrase ("a float state_dict of MnistModel", "a
    TorchScript int8 model", "a damaged PyTorch file", ...), so an error names what was found
    instead of passing torch's own message through. Never raises for an existing file."""
    path = Path(path)
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except zipfile.BadZipFile:
        with open(path, "rb") as f:
            head = f.read(4)
        if head.startswith(b"PK"):
            return "a damaged or truncated PyTorch file"
        if not head:
            return "an empty file"
        return "not a PyTorch file (neither torch.save nor TorchScript)"
    except OSError as exc:
        return f"an unreadable file ({exc.strerror or one_line(exc)})"
    if is_program_file(path):
        return "a torch.export program (.pt2)"
    if any(name.endswith("constants.pkl") or "/code/" in name for name in names):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                module = torch.jit.load(str(path), map_location="cpu")
        except Exception:
            return "a damaged TorchScript model"
        kinds = {node.kind() for node in module.inlined_graph.nodes()}
        quantized = any(kind.startswith("quantized::") for kind in kinds)
        return f"a TorchScript {'int8' if quantized else 'float'} model"
    if not any(name.endswith("data.pkl") for name in names):
        return "a zip archive, not a PyTorch file"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the answer is the description, not torch's notes
            state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception:
        return "a PyTorch file holding Python objects, not a state_dict of tensors"
    return describe_state(state)


def load_int8_model(path, made_by: str = None):
    """Load an int8 model for the host, with one-line errors: a TorchScript int8 model (the
    eager flow's deployed format) on qnnpack, or a PT2E int8 program (.pt2, the pt2e flow's)
    as a module that takes batches. A missing file names the stage that makes it; any other
    file says what it is instead (a float state_dict, a damaged file, ...) and what is expected."""
    path = Path(path)
    _require_file(path, made_by)
    expected = ("expected a TorchScript int8 model or a PT2E int8 program (.pt2), as "
                "`python3 0103mnist_QAT.py` or `python3 0102quantization.py` (--flow pt2e) save")
    use_qnnpack()
    if is_program_file(path):
        model = _load_int8_program(path, expected)
    else:
        try:
            with _quiet_deprecations():
                model = torch.jit.load(str(path), map_location="cpu")
        except Exception:
            raise StageError(f"{path} is {describe_model_file(path)}; {expected}") from None
        model.eval()
        kinds = {node.kind() for node in model.inlined_graph.nodes()}
        if not any(kind.startswith("quantized::") for kind in kinds):
            raise StageError(f"{path} is a TorchScript float model; {expected}")
    try:
        with torch.no_grad():
            out = model(torch.zeros(INPUT_SHAPE))
    except Exception as exc:
        raise StageError(f"{path} does not accept a [1,1,28,28] input ({one_line(exc)})") from None
    if tuple(out.shape) != (1, 10):
        raise StageError(f"{path} returns shape {tuple(out.shape)}, expected (1, 10)")
    return model


def _load_int8_program(path, expected):
    # deferred: torchao (which registers the Q/DQ ops a .pt2 program calls) costs seconds on
    # import, and the eager flow never needs it
    from utils import quantize_pt2e
    program = quantize_pt2e.load_program(path)
    if not quantize_pt2e.is_quantized(program):
        raise StageError(f"{path} is a torch.export float program; {expected}")
    return quantize_pt2e.ProgramModule(program)


def load_fp32_model(model: nn.Module, path, made_by: str = None, hint: str = "") -> nn.Module:
    """Load a float state_dict file into model, with one-line errors (a missing file names
    the stage that makes it; any other file says what it is and what is expected); returns
    model in eval mode."""
    path = Path(path)
    _require_file(path, made_by, hint)
    network = type(model).__name__
    made_by = made_by or MADE_BY.get(path.name)
    expected = f"expected a float state_dict of {network}" + (
        f", as `python3 {made_by}` saves" if made_by else "")
    try:
        with warnings.catch_warnings():
            # e.g. "looks like a TorchScript archive": the error below says so in our words
            warnings.simplefilter("ignore")
            state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception:
        raise StageError(f"{path} is {describe_model_file(path)}; {expected}") from None
    try:
        model.load_state_dict(state)
    except Exception:
        raise StageError(f"{path} is {describe_state(state)}; {expected}") from None
    return model.eval()


@torch.no_grad()
def predict_int8(model, images_uint8, batch_size: int = 1000):
    """(digits int64 [N], log-probabilities float32 [N,10]) for uint8 images [N,28,28],
    fed as pixel/255 like the firmware."""
    use_qnnpack()
    model.eval()
    images = np.asarray(images_uint8, dtype=np.uint8).reshape(-1, 28, 28)
    outputs = []
    for start in range(0, len(images), batch_size):
        outputs.append(model(images_to_tensor(images[start:start + batch_size])))
    logprobs = torch.cat(outputs).numpy().astype(np.float32)
    return logprobs.argmax(1).astype(np.int64), logprobs


def check_round_trip(int8_model: nn.Module, path, loader) -> int:
    """Reload the saved TorchScript and require the eager int8 model's outputs bit for bit:
    the file is what later stages use, so it must be the model just measured.
    Returns the number of images compared."""
    reloaded = load_int8_model(path)
    eager_out, labels = predict(int8_model, loader)
    reloaded_out, _ = predict(reloaded, loader)
    if not torch.equal(eager_out, reloaded_out):
        diff = (eager_out - reloaded_out).abs().max().item()
        raise StageError(f"reloaded {path} differs from the eager int8 model (max {diff:g})")
    return len(labels)
