"""Stage 0202 (fp32): 0202's schedules (utils/aot/backends/cortex_m/schedule.py) against 0201's library of
the same float model, bit for bit, on the host, with real TVM, real gcc and real MNIST."""
import json
import re
import tarfile

import numpy as np
import pytest
from tvm import relax

from utils.aot.compiler import compile_model
from utils.aot.host_library import HostLibrary
from utils.aot.model_file import load_model
from utils.aot.backends.cortex_m import CORTEX_M, schedule
from utils.aot.backends.generic import GENERIC
from utils.data import mnist_arrays

LENET_IMAGES = 300
MNIST_MODEL_IMAGES = 50


def _same_bits(a, b):
    a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
    return a.shape == b.shape and np.array_equal(a.view(np.uint32), b.view(np.uint32))


def _images(count):
    """MNIST test images, then inputs that stress ties and zeros: blank (every conv sum and
    pool window equal), saturated, a checkerboard and seeded noise."""
    images, _ = mnist_arrays(False)
    rng = np.random.default_rng(7)
    checker = (np.indices((28, 28)).sum(axis=0) % 2 * 255).astype(np.uint8)
    synthetic = np.stack([np.zeros((28, 28), np.uint8), np.full((28, 28), 255, np.uint8), checker,
                          rng.integers(0, 256, (28, 28), dtype=np.uint8)])
    return np.concatenate([images[:count], synthetic])


def _unpack(tar, into):
    with tarfile.open(tar) as t:
        t.extractall(into, filter="data")
    return into


@pytest.fixture(scope="module")
def lenet_tars(quick_qat_model, tmp_path_factory):
    """(no_optim, optim) libraries of the float LeNet-5 that 0103's quick run saves beside its
    int8 model."""
    source = load_model(quick_qat_model.parent / "qmnist_lenet5_fp32.pth", "fp32")
    out = tmp_path_factory.mktemp("fp32-lenet")
    base = compile_model(source, out / "no_optim.tar", GENERIC)
    optim = compile_model(source, out / "optim.tar", CORTEX_M)
    return base, optim, out


def test_lenet5_optim_same_bits_as_no_optim(lenet_tars):
    base, optim, out = lenet_tars
    images = _images(LENET_IMAGES)
    base_out = HostLibrary(base.tar, build_dir=out / "host").run(images)
    optim_out = HostLibrary(optim.tar, build_dir=out / "host").run(images)
    assert np.all(np.isfinite(optim_out))
    assert _same_bits(optim_out, base_out), float(np.max(np.abs(optim_out - base_out)))


def test_lenet5_optim_is_scheduled_without_workspace(lenet_tars):
    base, optim, out = lenet_tars
    src = _unpack(optim.tar, out / "optim-mlf") / "codegen/host/src"
    kernels = (src / "default_lib1.c").read_text()
    meta = json.loads((out / "optim-mlf" / "metadata.json").read_text())
    assert "TVMBackendAllocWorkspace" not in kernels + (src / "default_lib0.c").read_text()
    assert meta["backend"] == "cortex_m" and meta["cflags"] == []  # fp32 kernels are scheduled for -Os
    # conv + max-pool fused: the conv's 28x28 and 10x10 outputs never reach the arena
    assert meta["arena_bytes"] < base.metadata["arena_bytes"] / 2
    fused = [k for k in meta["kernels"] if "conv2d" in k and "max_pool2d" in k]
    assert len(fused) == 2 and not [k for k in meta["kernels"] if "max_pool2d" in k and "conv2d" not in k]
    assert "pad" in " ".join(meta["kernels"])  # conv1's padding in its own kernel
    # McuRegisterTiles ran: row tiles of 14 and 10 conv outputs, 8 features for conv3, 7 for fc1
    tiles = sorted(int(n) for n in re.findall(r"float \w+_intermediate_ptr\[(\d+)\];", kernels))
    assert {14, 10, 8, 7} <= set(tiles), tiles
    # the pool's max is a select: no codegen temporary holds a pool load (schedule._max_as_select)
    assert not re.search(r"float v_\w* = pool_max", kernels)
    assert len(re.findall(r"pool_max_intermediate\[\w+\] = condval", kernels)) == 14 + 10  # 7 and 5 pool outputs x dx


def test_mnist_model_optim_compiles_same_bits(quick_fp32_model, tmp_path):
    source = load_model(quick_fp32_model, "fp32")
    base = compile_model(source, tmp_path / "no_optim.tar", GENERIC)
    optim = compile_model(source, tmp_path / "optim.tar", CORTEX_M)
    images = _images(MNIST_MODEL_IMAGES)
    base_out = HostLibrary(base.tar, build_dir=tmp_path / "host").run(images)
    optim_out = HostLibrary(optim.tar, build_dir=tmp_path / "host").run(images)
    assert _same_bits(optim_out, base_out), float(np.max(np.abs(optim_out - base_out)))
    assert optim.metadata["arena_bytes"] <= base.metadata["arena_bytes"]


# ----------------------------------------------------------------------------- the Relax rewrites

def _conv_relu_pool(bias_shape):
    """relax main: max_pool2d(relu(conv2d(x, w) + b)) with a bias of the given shape."""
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((1, 1, 6, 6), "float32"))
    w = relax.const(np.ones((2, 1, 3, 3), np.float32))
    b = relax.const(np.ones(bias_shape, np.float32))
    with bb.function("main", [x]):
        with bb.dataflow():
            conv = bb.emit(relax.op.nn.conv2d(x, w))
            act = bb.emit(relax.op.nn.relu(relax.op.add(conv, b)))
            out = bb.emit_output(relax.op.nn.max_pool2d(act, (2, 2), (2, 2)))
        bb.emit_func_output(out)
    return bb.get()


def _op_order(mod):
    return [b.value.op.name for block in mod["main"].body.blocks for b in block.bindings
            if isinstance(b.value, relax.Call) and hasattr(b.value.op, "name")]


def test_pool_moves_before_a_per_channel_bias_only():
    moved = _op_order(schedule.pool_before_bias_relu(_conv_relu_pool((1, 2, 1, 1))))
    assert moved.index("relax.nn.max_pool2d") < moved.index("relax.add") < moved.index("relax.nn.relu")
    # a bias that differs across a pool window does not commute with the max: left alone
    kept = _op_order(schedule.pool_before_bias_relu(_conv_relu_pool((1, 2, 4, 4))))
    assert kept.index("relax.nn.relu") < kept.index("relax.nn.max_pool2d")


def test_padding_split_keeps_the_conv():
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((1, 1, 5, 5), "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            out = bb.emit_output(relax.op.nn.conv2d(x, relax.const(np.ones((1, 1, 3, 3), np.float32)),
                                                    padding=(1, 1)))
        bb.emit_func_output(out)
    mod = schedule.split_conv_padding(bb.get())
    assert _op_order(mod) == ["relax.nn.pad", "relax.nn.conv2d"]
    conv = [b.value for block in mod["main"].body.blocks for b in block.bindings
            if getattr(b.value.op, "name", "") == "relax.nn.conv2d"][0]
    assert [int(p) for p in conv.attrs.padding] == [0, 0, 0, 0]
    pad = [b.value for block in mod["main"].body.blocks for b in block.bindings
           if getattr(b.value.op, "name", "") == "relax.nn.pad"][0]
    assert [int(p) for p in pad.attrs.pad_width] == [0, 0, 0, 0, 1, 1, 1, 1]
