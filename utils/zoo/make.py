"""The zoo's int8 weights: trained with QAT on MNIST, or random and calibrated (PTQ) on
synthetic inputs; saved as traced int8 TorchScript, the format the compiler reads.

Every model takes float input = uint8 value / 255 in [0, 1], as the firmware and the host
library feed it, so one uint8 array per input is all a check needs. The synthetic inputs
are deterministic: a few structured ones (all 0, all 255, mid-grey, checkerboard, ramps),
then alternately uniform noise and blocky noise (uniform values held over 4-wide blocks),
from a seeded generator.
"""
import contextlib
import copy
import json
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
from torch.ao import quantization as tq
from torch.ao.nn.intrinsic.qat import freeze_bn_stats

from utils.cli import StageError
from utils.model import MnistModel
from utils.qmodel import QMnistModel
from utils.quantize import (ENGINE, calibrate, freeze_observers, prepare_ptq, prepare_qat, to_int8,
                            use_qnnpack)
from utils.reports import model_hash
from utils.train import (evaluate, fine_tune_cosine, mnist_loader, setup_torch, train_adadelta,
                         train_onecycle)
from utils.zoo.models import fusable_groups

CALIBRATION_SEED = 1   # the inputs PTQ calibrates on
VERIFY_SEED = 0        # the inputs the libraries are checked on (another draw)
SYNTHETIC_ABOUT = ("all 0, all 255, 128, a 0/255 checkerboard, a ramp and its reverse, then in turn "
                   "uniform noise and blocky noise (uniform values held over 4x4 blocks, 4 in 1-D)")


# ----------------------------------------------------------------------------- inputs

def structured_inputs(shape) -> np.ndarray:
    """All 0, all 255, mid-grey, a 0/255 checkerboard, a ramp over the last axis and its
    reverse: uint8 [6, *shape[1:]]."""
    sample = tuple(shape[1:])
    flat = np.arange(int(np.prod(sample)))
    last = np.indices(sample)[-1]
    ramp = np.broadcast_to(np.rint(last * 255.0 / max(sample[-1] - 1, 1)), sample)
    parity = np.indices(sample)[-2:].sum(axis=0) % 2 if len(sample) >= 2 else flat.reshape(sample) % 2
    return np.stack([np.zeros(sample), np.full(sample, 255), np.full(sample, 128),
                     np.broadcast_to(parity * 255, sample), ramp, 255 - ramp]).astype(np.uint8)


def synthetic_inputs(shape, count, seed) -> np.ndarray:
    """`count` deterministic inputs uint8 [count, *shape[1:]] spanning 0..255: the structured
    ones first, then uniform and blocky noise in turn."""
    sample = tuple(shape[1:])
    rng = np.random.default_rng(seed)
    out = np.empty((count,) + sample, np.uint8)
    fixed = structured_inputs(shape)[:count]
    out[:len(fixed)] = fixed
    block = 4
    coarse = sample[:-2] + tuple(-(-d // block) for d in sample[-2:]) if len(sample) >= 2 else \
        (-(-sample[0] // block),)
    for i in range(len(fixed), count):
        if i % 2:
            out[i] = rng.integers(0, 256, sample, dtype=np.uint8)
        else:
            noise = rng.integers(0, 256, coarse, dtype=np.uint8)
            for axis in range(-min(2, len(sample)), 0):
                noise = np.repeat(noise, block, axis=axis)
            out[i] = noise[tuple(slice(0, d) for d in sample)]
    return out


def as_float(inputs_uint8, shape) -> np.ndarray:
    """float32 [N, *shape[1:]] = value / 255 (float32 division, as the C harness does)."""
    inputs = np.asarray(inputs_uint8, np.uint8).reshape((-1,) + tuple(shape[1:]))
    return inputs.astype(np.float32) / np.float32(255.0)


# ----------------------------------------------------------------------------- quantization

@contextlib.contextmanager
def quiet():
    """PyTorch 2.14 flags eager quantization and TorchScript as deprecated on every call, and
    the tracer notes that the quantized modules' scales become constants (what we want)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message=r".*quantize_per_tensor")
        yield


def fuse(model, qat: bool):
    """conv+bn(+relu), linear+bn, then linear+relu fused (utils.zoo.models.fusable_groups)."""
    fuser = tq.fuse_modules_qat if qat else tq.fuse_modules
    for groups in fusable_groups(model):
        model = fuser(model, groups)
    return model


def prepare_zoo_ptq(model: nn.Module) -> nn.Module:
    """Fused eval copy with qnnpack observers (per-tensor weights, like utils.quantize)."""
    use_qnnpack()
    model = fuse(copy.deepcopy(model).eval(), qat=False)
    model.qconfig = tq.get_default_qconfig(ENGINE)
    with quiet():
        return tq.prepare(model)


def prepare_zoo_qat(model: nn.Module) -> nn.Module:
    """Fused training copy with qnnpack fake quantization (utils.quantize.prepare_qat's qconfig)."""
    use_qnnpack()
    model = fuse(copy.deepcopy(model).train(), qat=True)
    model.qconfig = tq.get_default_qat_qconfig(ENGINE)
    with quiet():
        return tq.prepare_qat(model)


@torch.no_grad()
def trace(model: nn.Module, shape) -> torch.jit.ScriptModule:
    use_qnnpack()
    model.eval()
    with quiet():
        return torch.jit.trace(model, torch.rand(shape))


@torch.no_grad()
def save_traced(int8_model: nn.Module, path: Path, shape, check_inputs) -> Path:
    """Trace, save, reload; the reloaded file must give the eager int8 model's outputs bit
    for bit on `check_inputs` (float [N, *shape[1:]]), since the file is what gets compiled."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    traced = trace(int8_model, shape)
    tmp = path.with_name(path.name + ".tmp")
    traced.save(str(tmp))
    with quiet():
        reloaded = torch.jit.load(str(tmp)).eval()
        x = torch.from_numpy(np.ascontiguousarray(check_inputs))
        if not torch.equal(reloaded(x), int8_model(x)):
            raise StageError(f"the traced int8 model saved as {path} differs from the eager one")
    tmp.replace(path)
    return path


# ----------------------------------------------------------------------------- random weights

@torch.no_grad()
def random_init(model: nn.Module, inputs_float, seed: int) -> nn.Module:
    """Seeded random weights with BatchNorm that normalizes: random affine (gamma in
    [0.5, 1.5], beta in [-0.5, 0.5]) and running statistics measured on `inputs_float`, so
    every layer's output keeps a healthy spread through a deep untrained network (left at
    mean 0 / var 1, the activations shrink layer by layer and the outputs are nearly flat)."""
    torch.manual_seed(seed)
    for module in model.modules():
        if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Linear)):
            module.reset_parameters()
        elif isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.reset_running_stats()
            module.momentum = None  # a cumulative average: one pass sets the batch's statistics
            module.weight.uniform_(0.5, 1.5)
            module.bias.uniform_(-0.5, 0.5)
    model.train()
    model(torch.from_numpy(inputs_float))
    return model.eval()


def seeded(plan):
    """utils.train.setup_torch's seeds, with the plan's thread count."""
    setup_torch(plan.seed)
    torch.set_num_threads(plan.threads)


def make_ptq(entry, path: Path, plan) -> dict:
    """Random seeded float model → BatchNorm statistics and PTQ calibration on
    plan.calibration synthetic inputs → int8 TorchScript at `path`."""
    started = time.perf_counter()
    seeded(plan)
    x = as_float(synthetic_inputs(entry.input_shape, plan.calibration, CALIBRATION_SEED), entry.input_shape)
    model = random_init(entry.network(), x, plan.seed)
    prepared = prepare_zoo_ptq(model)
    with torch.no_grad():
        prepared(torch.from_numpy(x))
    int8_model = to_int8(prepared)
    save_traced(int8_model, path, entry.input_shape, x[:16])
    return {"weights": "random (seeded), BatchNorm statistics and PTQ calibration on synthetic inputs",
            "calibration_inputs": plan.calibration, "seed": plan.seed,
            "make_seconds": round(time.perf_counter() - started, 1)}


# ----------------------------------------------------------------------------- MNIST training

def make_qat(entry, path: Path, plan) -> dict:
    """Float training (one-cycle SGD), then QAT (cosine SGD; observers and BatchNorm
    statistics frozen after `plan.freeze_after` epochs) → int8 TorchScript at `path`;
    the int8 accuracy on the MNIST test set (all of it unless plan.test_images)."""
    started = time.perf_counter()
    seeded(plan)
    train = mnist_loader(True, plan.batch_size, plan.train_images, plan.seed)
    test = mnist_loader(False, 1000, plan.test_images, plan.seed)
    model = entry.network()
    float_history = train_onecycle(model, train, test, plan.epochs, plan.lr, name=f"{entry.name} fp32")
    qat = prepare_zoo_qat(model)

    def freeze(prepared, epoch):
        if epoch == plan.freeze_after:
            freeze_observers(prepared)
            prepared.apply(freeze_bn_stats)

    with quiet():
        qat_history = fine_tune_cosine(qat, train, test, plan.qat_epochs, plan.qat_lr,
                                       name=f"{entry.name} qat", after_epoch=freeze)
        int8_model = to_int8(qat)
    _, int8_accuracy = evaluate(int8_model, test)
    check = next(iter(test))[0][:16].numpy()
    save_traced(int8_model, path, entry.input_shape, check)
    return {"weights": "trained: float one-cycle SGD, then QAT (qnnpack fake quantization)",
            "fp32_accuracy": round(float_history.test_accuracy[-1], 2),
            "qat_fakequant_accuracy": round(qat_history.test_accuracy[-1], 2),
            "int8_accuracy": round(int8_accuracy, 2),
            "test_images": len(test.dataset), "train_images": len(train.dataset),
            "epochs": plan.epochs, "qat_epochs": plan.qat_epochs, "seed": plan.seed,
            "make_seconds": round(time.perf_counter() - started, 1)}


def make_builtin(entry, path: Path, plan) -> dict:
    """The built-in networks when their stage's file is absent, by the stages' recipes in
    short: LeNet-5 float + QAT (0103), MnistModel float + PTQ on 32 training batches (0102)."""
    started = time.perf_counter()
    seeded(plan)
    train = mnist_loader(True, plan.batch_size, plan.train_images, plan.seed)
    test = mnist_loader(False, 1000, plan.test_images, plan.seed)
    if entry.network is QMnistModel:
        model = QMnistModel()
        train_onecycle(model, train, test, plan.epochs, plan.lr, name="lenet5 fp32")
        qat = prepare_qat(model)

        def freeze(prepared, epoch):
            if epoch == plan.freeze_after:
                freeze_observers(prepared)

        with quiet():
            fine_tune_cosine(qat, train, test, plan.qat_epochs, plan.qat_lr, name="lenet5 qat",
                             after_epoch=freeze)
            int8_model = to_int8(qat)
        how = "trained here: float one-cycle SGD, then QAT (0103's recipe, shorter)"
    elif entry.network is MnistModel:
        model = MnistModel()
        train_adadelta(model, train, test, plan.cnn_epochs, name="mnist_cnn fp32")
        prepared = prepare_ptq(model)
        calibrate(prepared, train, 32)
        int8_model = to_int8(prepared)
        how = "trained here: float Adadelta, then PTQ on 32 training batches (0102's recipe)"
    else:
        raise StageError(f"no built-in recipe for {entry.name}")
    _, int8_accuracy = evaluate(int8_model, test)
    save_traced(int8_model, path, entry.input_shape, next(iter(test))[0][:16].numpy())
    return {"weights": how, "int8_accuracy": round(int8_accuracy, 2), "test_images": len(test.dataset),
            "epochs": plan.epochs, "seed": plan.seed, "make_seconds": round(time.perf_counter() - started, 1)}


@dataclass
class Plan:
    """How the zoo makes weights it does not find (the CLI's options)."""
    seed: int = 1
    epochs: int = 8               # float epochs (LeNet-5 and the QAT networks)
    cnn_epochs: int = 2           # float epochs of MnistModel, the slow one (Adadelta converges fast)
    qat_epochs: int = 3
    freeze_after: int = 2         # QAT epochs before observers and BatchNorm freeze
    lr: float = 0.05              # one-cycle peak
    qat_lr: float = 0.002
    batch_size: int = 64
    train_images: int = None      # None: all 60 000
    test_images: int = None       # None: all 10 000
    calibration: int = 256        # synthetic inputs for PTQ
    # torch threads: the cores are shared with other jobs, and on a busy machine two OpenMP
    # threads that wait for each other run an order of magnitude slower than one
    threads: int = 1
    own_builtins: bool = False    # make the built-ins here even if the stages' files exist


def weights_for(entry, weights_dir: Path, plan: Plan, remake=False) -> tuple:
    """(int8 TorchScript path, how it was made) for a zoo entry: a built-in's stage file when
    present, else the zoo's own file under weights_dir, made now if missing (or remake).
    How a file was made is kept beside it (<name>.json), so a rerun still reports it."""
    if entry.recipe == "stage" and entry.stage_file is not None and Path(entry.stage_file).is_file() \
            and not plan.own_builtins:
        return Path(entry.stage_file), {"weights": f"the stage's file {entry.stage_file}"}
    path = Path(weights_dir) / f"{entry.name}_scripted_int8.pth"
    notes = path.with_suffix(".json")
    if remake or not path.is_file():
        print(f"{entry.name}: making {path}", flush=True)
        if entry.recipe == "ptq":
            made = make_ptq(entry, path, plan)
        elif entry.recipe == "qat":
            made = make_qat(entry, path, plan)
        else:
            made = make_builtin(entry, path, plan)
        made["model_hash"] = model_hash(path)
        notes.write_text(json.dumps(made, indent=2, sort_keys=True) + "\n")
    made = json.loads(notes.read_text()) if notes.is_file() else {}
    if made.get("model_hash") != model_hash(path):
        made = {"weights": f"{path} (made elsewhere; no notes beside it)"}
    return path, made
