"""The Cortex-M backend's per-layer lowering (utils/aot/backends/cortex_m/graph.py and the
channels-last kernels of kernels_nhwc.h) against 0201's library of the same model, bit for
bit, on the shapes the networks people build have and LeNet-5 has not: depthwise 1x1, 3x3
and 5x5 convolutions with 5, 6, 7 or 9 channels on odd images, strided and padded; pointwise
convolutions on 4k channels (the pointwise kernel) and not (either kernel); DS-CNN's 10x4
stride-2 first layer on one channel; Conv1d; ResNet's 1x1 stride-2 shortcut, a residual add
and a cat; dense layers of odd sizes after a flatten of a channels-last tensor (its columns
permuted) and after a global average pool; dense layers on more inputs than the paired dense
kernel sums in one chunk, and with -128 weights that force its pairs' roles, other pairs, or
its grouped layout; per-channel weights, ReLU6 (eager: a lookup that relabels memory; PT2E:
fused as the clip bounds); inputs that are not MNIST; layers whose output the arena planner
lets overwrite their input as they go.

Each model runs on the host (gcc, the plain-C kernels) on a few dozen inputs over its
QuantStub's whole range, and on the emulated Cortex-M7 (QEMU mps2-an500 through
utils/bench.py's harness, the DSP kernels) on a few, each input byte a float over the same
range. The 0202 library must call the kernels the model's layers need and, on the M7, run
DSP instructions in each, so a layer that silently takes the generic lowering, a model the
chain planner takes instead, or a build without the DSP path fails its test."""
import json
import re
import subprocess
import tarfile
import warnings
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.ao.quantization as tq
from torch.ao.nn.quantized import FloatFunctional

from tests.fixtures_layers import quantized_script
from tests.fixtures_tools import require_tools
from utils import bench
from utils.aot.backends.cortex_m import CORTEX_M
from utils.aot.backends.generic import GENERIC
from utils.aot import mlf
from utils.aot.compiler import compile_model
from utils.aot.golden import golden_int8
from utils.aot.host_library import HostLibrary
from utils.aot.model_file import load_model
from utils.aot.stage import synthetic_inputs
from utils.aot.torchscript import last_quantized_layer
from utils.quantize_pt2e import export_int8, prepare_ptq, save_program, to_int8

PER_CHANNEL = tq.QConfig(activation=tq.HistogramObserver.with_args(reduce_range=False),
                         weight=tq.default_per_channel_weight_observer)
HOST_INPUTS = 40
EMULATOR_RANDOM_INPUTS = 8   # besides all-0, all-255 and a ramp
# utvm_<kind>[_<what it fuses>]_u8s<weight bits>(: the conv and dense kernels of kernels_nhwc.h,
# by the kind of layer they run (others, e.g. pools, are not counted)
KERNEL_NAME = r"utvm_(pointwise|conv|depthwise|dense)(?:_[a-z]+)*_u8s\d+"
KERNEL_CALL = re.compile(rf"\b{KERNEL_NAME}\(")
TVM_FUNCTION = re.compile(r"(?m)^TVM_DLL int32_t (\w+)\([^;{]*\)\s*\{")
# instructions only the DSP extension has: gcc emits them from the intrinsics, never from plain C
DSP_MNEMONICS = ("smlad", "smlabb", "smlatt", "sxtb16", "uxtb16", "ssub16", "sxtab16", "uxtab16")


# ----------------------------------------------------------------------------- the models

class Depthwise(nn.Module):
    """QuantStub → depthwise conv (ReLU fused) → flatten (a channels-last tensor) → dense to
    32 + C → ReLU → dense to 9 + C → DeQuantStub (dense sizes of every remainder mod 4)."""

    def __init__(self, channels, kernel, stride, padding, shape, bias=True):
        super().__init__()
        h, w = shape
        oh, ow = ((h + 2 * padding - kernel) // stride + 1, (w + 2 * padding - kernel) // stride + 1)
        self.quant, self.dequant = tq.QuantStub(), tq.DeQuantStub()
        self.dw = nn.Conv2d(channels, channels, kernel, stride, padding, groups=channels, bias=bias)
        self.relu = nn.ReLU()
        hidden, out = 32 + channels, 9 + channels
        self.fc1, self.relu1, self.fc2 = nn.Linear(channels * oh * ow, hidden), nn.ReLU(), nn.Linear(hidden, out)

    fuse = (("dw", "relu"), ("fc1", "relu1"))

    def forward(self, x):
        x = torch.flatten(self.relu(self.dw(self.quant(x))), 1)
        return self.dequant(self.fc2(self.relu1(self.fc1(x))))


class Pointwise(nn.Module):
    """1x1 convolutions on 35 pixels: 8 → 7 and 12 → 9 channels (the pointwise kernel: input
    channels a multiple of 4, odd outputs), 7 → 6 and 6 → 12 (the general kernel: input
    channels not a multiple of 4), a Hardswish (eager: a lookup table, applied to the
    channels-last tensor as it is) and a flatten into a dense layer."""

    def __init__(self):
        super().__init__()
        self.quant, self.dequant = tq.QuantStub(), tq.DeQuantStub()
        self.pw1, self.relu = nn.Conv2d(8, 7, 1), nn.ReLU()
        self.pw2 = nn.Conv2d(7, 6, 1)
        self.pw3, self.act = nn.Conv2d(6, 12, 1), nn.Hardswish()
        self.pw4 = nn.Conv2d(12, 9, 1)
        self.fc = nn.Linear(9 * 5 * 7, 13)

    fuse = (("pw1", "relu"),)

    def forward(self, x):
        x = self.pw2(self.relu(self.pw1(self.quant(x))))
        x = self.pw4(self.act(self.pw3(x)))
        return self.dequant(self.fc(torch.flatten(x, 1)))


class ReLU6AfterConv(nn.Module):
    """Eager ReLU6 after a pointwise conv: qnnpack's clamp hands on its result with the
    channels-last order read as NCHW, and the library reproduces that (QLookup.relabel): a
    lookup that is not elementwise."""

    def __init__(self):
        super().__init__()
        self.quant, self.dequant = tq.QuantStub(), tq.DeQuantStub()
        self.pw, self.relu6 = nn.Conv2d(8, 7, 1), nn.ReLU6()
        self.fc = nn.Linear(7 * 5 * 7, 13)

    def forward(self, x):
        return self.dequant(self.fc(torch.flatten(self.relu6(self.pw(self.quant(x))), 1)))


class Conv1dNet(nn.Module):
    """On a 3 x 21 signal: Conv1d 3 → 5, kernel 3, stride 2, padding 1 (ReLU fused), a
    depthwise Conv1d, kernel 5, padding 2, a pointwise Conv1d 5 → 7, flatten, dense."""

    def __init__(self):
        super().__init__()
        self.quant, self.dequant = tq.QuantStub(), tq.DeQuantStub()
        self.conv, self.relu = nn.Conv1d(3, 5, 3, stride=2, padding=1), nn.ReLU()
        self.dw = nn.Conv1d(5, 5, 5, padding=2, groups=5)
        self.pw = nn.Conv1d(5, 7, 1)
        self.fc = nn.Linear(7 * 11, 13)

    fuse = (("conv", "relu"),)

    def forward(self, x):
        x = self.pw(self.dw(self.relu(self.conv(self.quant(x)))))
        return self.dequant(self.fc(torch.flatten(x, 1)))


class DSCNNStem(nn.Module):
    """DS-CNN's first layer (1 channel, 10x4 kernel, stride 2, padding (5, 1)) on a 49x10
    spectrogram with 9 filters, a depthwise 3x3, its 24x5 average pool and the dense head."""

    def __init__(self):
        super().__init__()
        self.quant, self.dequant = tq.QuantStub(), tq.DeQuantStub()
        self.conv1, self.relu1 = nn.Conv2d(1, 9, (10, 4), 2, (5, 1)), nn.ReLU()
        self.dw, self.relu2 = nn.Conv2d(9, 9, 3, padding=1, groups=9), nn.ReLU()
        self.pool = nn.AvgPool2d((24, 5))
        self.fc = nn.Linear(9, 13)

    fuse = (("conv1", "relu1"), ("dw", "relu2"))

    def forward(self, x):
        x = self.pool(self.relu2(self.dw(self.relu1(self.conv1(self.quant(x))))))
        return self.dequant(self.fc(torch.flatten(x, 1)))


class ResidualCat(nn.Module):
    """On 3x20x18: a 3-channel 3x3 stride-2 stem, a ResNet block (3x3 stride 2, 3x3, and the
    1x1 stride-2 shortcut beside them, add + ReLU), a cat of the block's output with its first
    conv's, a pointwise conv to 11 channels, global average pool, a 1x1 conv on its one pixel
    to 37 channels, dense 37 → 13."""

    def __init__(self):
        super().__init__()
        self.quant, self.dequant = tq.QuantStub(), tq.DeQuantStub()
        self.stem, self.relu0 = nn.Conv2d(3, 8, 3, 2, 1), nn.ReLU()
        self.conv1, self.relu1 = nn.Conv2d(8, 12, 3, 2, 1), nn.ReLU()
        self.conv2 = nn.Conv2d(12, 12, 3, padding=1)
        self.shortcut = nn.Conv2d(8, 12, 1, 2)
        self.add, self.cat = FloatFunctional(), FloatFunctional()
        self.pw = nn.Conv2d(24, 11, 1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head, self.relu2 = nn.Conv2d(11, 37, 1), nn.ReLU()
        self.fc = nn.Linear(37, 13)

    fuse = (("stem", "relu0"), ("conv1", "relu1"), ("head", "relu2"))

    def forward(self, x):
        x = self.relu0(self.stem(self.quant(x)))
        a = self.relu1(self.conv1(x))
        y = self.add.add_relu(self.shortcut(x), self.conv2(a))
        x = self.pool(self.pw(self.cat.cat([y, a], 1)))
        return self.dequant(self.fc(torch.flatten(self.relu2(self.head(x)), 1)))


class ResidualInPlace(nn.Module):
    """On 3x12x10, ResNet-8's two kinds of block: a 3x3 stem to 8 channels; a block at stride
    1 (3x3, 3x3, add of the block's input + ReLU: one kernel, row by row, whose output takes
    the input's bytes); a block at stride 2 (3x3 stride 2 to 16, 3x3, add of a 1x1 stride-2
    shortcut + ReLU: the add's output may take the shortcut's bytes); global average pool,
    dense 16 → 6."""

    def __init__(self):
        super().__init__()
        self.quant, self.dequant = tq.QuantStub(), tq.DeQuantStub()
        self.stem, self.relu0 = nn.Conv2d(3, 8, 3, padding=1), nn.ReLU()
        self.conv1, self.relu1 = nn.Conv2d(8, 8, 3, padding=1), nn.ReLU()
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.down, self.relu2 = nn.Conv2d(8, 16, 3, 2, 1), nn.ReLU()
        self.conv3 = nn.Conv2d(16, 16, 3, padding=1)
        self.shortcut = nn.Conv2d(8, 16, 1, 2)
        self.add1, self.add2 = FloatFunctional(), FloatFunctional()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, 6)

    fuse = (("stem", "relu0"), ("conv1", "relu1"), ("down", "relu2"))

    def forward(self, x):
        x = self.relu0(self.stem(self.quant(x)))
        x = self.add1.add_relu(self.conv2(self.relu1(self.conv1(x))), x)
        x = self.add2.add_relu(self.shortcut(x), self.conv3(self.relu2(self.down(x))))
        return self.dequant(self.fc(torch.flatten(self.pool(x), 1)))


class SeparableReLU6(nn.Module):
    """For PT2E (per-channel weights, ReLU6 fused as the clip bounds, no bias where the layer
    has none): a 3x3 stride-2 stem, a depthwise 3x3 on 8 channels without bias, a pointwise
    8 → 11, and beside them a pointwise 8 → 11 without bias and with a wider range, all three
    joined by a cat. The quantizer gives the cat's inputs the cat's quantization, which spans
    the wide one's range, so the ReLU6 of the depthwise and of the first pointwise clip below
    255. Then global average pool, dense 30 → 5. A float model: the quantizer places the
    quantizes."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, 2, 1)
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False)
        self.pw = nn.Conv2d(8, 11, 1)
        self.wide = nn.Conv2d(8, 11, 1, bias=False)
        with torch.no_grad():
            self.wide.weight.mul_(16)
        self.fc = nn.Linear(30, 5)

    def forward(self, x):
        x = nn.functional.relu6(self.stem(x))
        y = nn.functional.relu6(self.dw(x))
        z = torch.cat([nn.functional.relu6(self.pw(y)), self.wide(x), y], 1)
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(z, 1), 1))


# a weight of -M quantizes to -128 when M is the tensor's largest magnitude: with M = 127.5 / 2^10
# the per-tensor scale M / 127.5 is exact and -M / scale the tie -127.5, which rounds to -128
EXTREME = 127.5 / 1024


def _weights_within(linear, bound):
    """Uniform weights in [-bound, bound] * EXTREME, for the entries set below to stand out."""
    linear.weight.uniform_(-bound * EXTREME, bound * EXTREME)
    return linear.weight


class DenseRows(nn.Module):
    """On a 601-sample signal (inputs not a multiple of 4, and more than the 256 over which the
    paired dense kernel sums in one chunk): dense 601 → 37 (ReLU), dense 37 → 11, odd channel
    counts. fc1's channel 0 has every weight at 115, channel 1 at -128 and channel 3 at 127:
    pairs (0, 1) and (2, 3) carry them as the high channel, whose sum over 601 inputs near the
    top of the range leaves what one chunk's T - S can hold (2^23 in size)."""

    def __init__(self):
        super().__init__()
        self.quant, self.dequant = tq.QuantStub(), tq.DeQuantStub()
        self.fc1, self.relu, self.fc2 = nn.Linear(601, 37), nn.ReLU(), nn.Linear(37, 11)
        with torch.no_grad():
            w = _weights_within(self.fc1, 0.9)
            w[0], w[1], w[3] = 0.9 * EXTREME, -EXTREME, EXTREME

    fuse = (("fc1", "relu"),)

    def forward(self, x):
        return self.dequant(self.fc2(self.relu(self.fc1(self.quant(x)))))


class DensePairing(nn.Module):
    """Weights at -128 that the paired dense kernel cannot put in a pair's high byte where the
    pair's other channel is negative: dense 50 → 22 (ReLU) whose channel 1 has -128 at input 5
    where channel 0 is negative (the pair (0, 1) swaps its roles), channels 4 and 5 -128 at
    inputs 7 and 9 where the other is negative (neither role works: they pair with 6 and 7);
    then dense 22 → 9 whose channels 0 to 3 each have -128 at their own input where the other
    three are negative (no pairs of the group fit: the layer takes the grouped kernel)."""

    def __init__(self):
        super().__init__()
        self.quant, self.dequant = tq.QuantStub(), tq.DeQuantStub()
        self.fc1, self.relu, self.fc2 = nn.Linear(50, 22), nn.ReLU(), nn.Linear(22, 9)
        with torch.no_grad():
            w = _weights_within(self.fc1, 0.9)
            w[1, 5], w[0, 5] = -EXTREME, -0.5 * EXTREME
            w[4, 7], w[5, 7], w[5, 9], w[4, 9] = -EXTREME, -0.5 * EXTREME, -EXTREME, -0.5 * EXTREME
            w = _weights_within(self.fc2, 0.9)
            w[:4, :4] = -0.5 * EXTREME
            for k in range(4):
                w[k, k] = -EXTREME

    fuse = (("fc1", "relu"),)

    def forward(self, x):
        return self.dequant(self.fc2(self.relu(self.fc1(self.quant(x)))))


@dataclass(frozen=True)
class Case:
    make: object            # () → nn.Module
    shape: tuple            # the model's input shape
    kernels: dict           # kind → how many layers the 0202 library runs with a KERNEL_NAME kernel;
                            # "a|b": either (a 1x1 layer the backend may give either kernel)
    qconfig: object = None  # eager: None (per-tensor) or PER_CHANNEL
    pt2e: bool = False      # quantized by utils/quantize_pt2e.py (per-channel) instead of eager
    calibration: tuple = (-1.0, 1.0)    # the float range calibrated on: the QuantStub's


def _dw(channels, kernel, stride, padding, shape, bias=True):
    return lambda: Depthwise(channels, kernel, stride, padding, shape, bias)


RESIDUAL_KERNELS = {"conv": 3, "pointwise|conv": 2, "pointwise": 1, "dense": 1}
CASES = {
    "dw3x3_s1_p1_c7_7x9": Case(_dw(7, 3, 1, 1, (7, 9)), (1, 7, 7, 9), {"depthwise": 1, "dense": 2}),
    "dw3x3_s1_p0_c6_7x9": Case(_dw(6, 3, 1, 0, (7, 9), bias=False), (1, 6, 7, 9), {"depthwise": 1, "dense": 2}),
    "dw3x3_s2_p0_c6_9x7": Case(_dw(6, 3, 2, 0, (9, 7)), (1, 6, 9, 7), {"depthwise": 1, "dense": 2}),
    "dw3x3_s2_p1_c7_7x9": Case(_dw(7, 3, 2, 1, (7, 9)), (1, 7, 7, 9), {"depthwise": 1, "dense": 2}),
    "dw3x3_s2_p1_c7_7x9_per_channel": Case(_dw(7, 3, 2, 1, (7, 9)), (1, 7, 7, 9), {"depthwise": 1, "dense": 2},
                                           qconfig=PER_CHANNEL),
    # the input's zero point not 128
    "dw5x5_s1_p2_c9_9x7": Case(_dw(9, 5, 1, 2, (9, 7)), (1, 9, 9, 7), {"depthwise": 1, "dense": 2},
                               calibration=(-0.3, 1.0)),
    # one tap per output (0201's generic schedule gets a one-term sum wrong: this case fails there)
    "dw1x1_s1_p0_c5_3x7": Case(_dw(5, 1, 1, 0, (3, 7)), (1, 5, 3, 7), {"depthwise": 1, "dense": 2}),
    # every window leaves the image
    "dw5x5_s1_p2_c6_3x4": Case(_dw(6, 5, 1, 2, (3, 4)), (1, 6, 3, 4), {"depthwise": 1, "dense": 2}),
    "dw5x5_s2_p1_c5_11x8": Case(_dw(5, 5, 2, 1, (11, 8)), (1, 5, 11, 8), {"depthwise": 1, "dense": 2}),
    "pointwise": Case(Pointwise, (1, 8, 5, 7), {"pointwise": 2, "pointwise|conv": 2, "dense": 1}),
    "pointwise_per_channel": Case(Pointwise, (1, 8, 5, 7), {"pointwise": 2, "pointwise|conv": 2, "dense": 1},
                                  qconfig=PER_CHANNEL),
    "eager_relu6_after_pointwise": Case(ReLU6AfterConv, (1, 8, 5, 7), {"pointwise": 1, "dense": 1}),
    "residual_in_place_3x12x10": Case(ResidualInPlace, (1, 3, 12, 10), {"conv": 5, "dense": 1}),
    "conv1d_3x21": Case(Conv1dNet, (1, 3, 21), {"conv": 1, "depthwise": 1, "pointwise|conv": 1, "dense": 1}),
    "dscnn_stem": Case(DSCNNStem, (1, 1, 49, 10), {"conv": 1, "depthwise": 1, "dense": 1}),
    "residual_cat_3x20x18": Case(ResidualCat, (1, 3, 20, 18), RESIDUAL_KERNELS),
    "residual_cat_3x20x18_per_channel": Case(ResidualCat, (1, 3, 20, 18), RESIDUAL_KERNELS,
                                             qconfig=PER_CHANNEL),
    "pt2e_relu6_per_channel_3x20x18": Case(SeparableReLU6, (1, 3, 20, 18),
                                           {"conv": 1, "depthwise": 1, "pointwise": 2, "dense": 1}, pt2e=True),
    # inputs mostly above the zero point: large sums of the extreme channels
    "dense_rows_601": Case(DenseRows, (1, 601), {"dense": 2}, calibration=(-0.1, 1.0)),
    "dense_pairing_50": Case(DensePairing, (1, 50), {"dense": 2}),
}
# ----------------------------------------------------------------------------- building

@dataclass
class Built:
    layers: list
    golden_tar: Path        # 0201's library
    optim_tar: Path         # 0202's
    low: float              # the QuantStub's range, in floats
    high: float
    directory: Path


def _pt2e_program(model, shape, path, calibration):
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        prepared = prepare_ptq(model.eval(), shape)
        with torch.no_grad():
            low, high = calibration
            prepared(low + (high - low) * torch.rand((16,) + tuple(shape[1:]), generator=generator))
        return save_program(export_int8(to_int8(prepared), shape), path)


def _build(name, directory):
    case = CASES[name]
    torch.manual_seed(0)
    model = case.make()
    if case.pt2e:
        path = _pt2e_program(model, case.shape, directory / f"{name}.pt2", case.calibration)
    else:
        path = quantized_script(model, case.shape, directory / f"{name}.pth", qconfig=case.qconfig,
                                fuse=getattr(model, "fuse", ()), low=case.calibration[0],
                                high=case.calibration[1])
    source = load_model(path, "int8")
    assert source.input_shape == case.shape
    golden = compile_model(source, directory / "golden.tar", GENERIC)
    optim = compile_model(source, directory / "optim.tar", CORTEX_M)
    quantize = next(layer for layer in golden.layers if type(layer).__name__ == "Quantize")
    low = float((0 - quantize.zero_point) * quantize.scale)
    high = float((255 - quantize.zero_point) * quantize.scale)
    return Built(golden.layers, golden.tar, optim.tar, low, high, directory)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    cache = {}

    def get(name):
        if name not in cache:
            cache[name] = _build(name, tmp_path_factory.mktemp(name))
        return cache[name]
    return get


def _c_sources(tar):
    with tarfile.open(tar) as t:
        return [t.extractfile(m).read().decode() for m in t.getmembers()
                if m.isfile() and m.name.startswith("codegen/host/src/") and m.name.endswith(".c")]


def layer_kernel_calls(tar) -> dict:
    """The library's TVM-generated functions (not the kernels' own source the backend puts
    before them) → the kinds of the kernels (KERNEL_NAME) each calls."""
    found = {}
    for text in _c_sources(tar):
        heads = list(TVM_FUNCTION.finditer(text))
        for head, after in zip(heads, heads[1:] + [None]):
            kinds = KERNEL_CALL.findall(text[head.end():after.start() if after else len(text)])
            if kinds:
                found[head.group(1)] = kinds
    return found


def kernel_calls(tar) -> dict:
    """kind → how many calls of its kernels (KERNEL_NAME) the library makes."""
    return dict(Counter(kind for kinds in layer_kernel_calls(tar).values() for kind in kinds))


def kernels_match(calls, expected) -> bool:
    """Whether the calls (kind → count) are exactly the expected layers' (Case.kernels): each
    call one layer whose kind it is, the one-kind layers served first."""
    left = Counter(calls)
    for kinds in sorted(expected, key=lambda k: k.count("|")):
        for _ in range(expected[kinds]):
            kind = next((k for k in kinds.split("|") if left[k] > 0), None)
            if kind is None:
                return False
            left[kind] -= 1
    return not +left


# utvm_dense_u8s8's call: (..., n, out_c, paired, chunk, m_stride, zp, lo, hi)
DENSE_CALL = re.compile(r"\butvm_dense_u8s8\([^;]*?(\d+), (\d+), (\d+), (\d+), -?\d+, -?\d+, -?\d+, -?\d+\);")


def dense_layouts(tar) -> dict:
    """(inputs, outputs) of each dense layer → its weights' layout in the library: 0 grouped,
    1 paired, 2 paired with the channels computed out of order (kernels_nhwc.h)."""
    return {(int(n), int(o)): int(paired) for text in _c_sources(tar) for n, o, paired, _ in DENSE_CALL.findall(text)}


def dense_chunks(tar) -> dict:
    """(inputs, outputs) of each dense layer → the inputs per chunk of its paired sums."""
    return {(int(n), int(o)): int(chunk) for text in _c_sources(tar) for n, o, _, chunk in DENSE_CALL.findall(text)}


def _same_bits(a, b):
    return np.array_equal(np.asarray(a, np.float32).view(np.uint32), np.asarray(b, np.float32).view(np.uint32))


def _differing_inputs(a, b):
    a, b = np.asarray(a).reshape(len(a), -1), np.asarray(b).reshape(len(b), -1)
    return np.flatnonzero(np.any(a != b, axis=1)).tolist()


# ----------------------------------------------------------------------------- the host

@pytest.mark.parametrize("name", list(CASES))
def test_host_library_same_bits_as_0201(name, built):
    b = built(name)
    calls = kernel_calls(b.optim_tar)
    assert kernels_match(calls, CASES[name].kernels), \
        (f"0202's library calls {calls}, expected {CASES[name].kernels}: a layer fell back to the generic "
         f"lowering, or the chain planner took the model")
    case = CASES[name]
    x = synthetic_inputs(case.shape, HOST_INPUTS, 1, b.low, b.high)
    base_out, base_logits = HostLibrary(b.golden_tar, build_dir=b.directory / "host").outputs(x)
    optim_out, optim_logits = HostLibrary(b.optim_tar, build_dir=b.directory / "host").outputs(x)
    # the golden integer model (0201's tests hold it to PyTorch) tells which side a difference is on
    golden = np.asarray(golden_int8(b.layers, x, stop_after=last_quantized_layer(b.layers))).reshape(base_logits.shape)
    assert len({row.tobytes() for row in golden}) > HOST_INPUTS // 2, "the inputs hardly vary the logits"
    differing = _differing_inputs(optim_logits, golden)
    assert not differing, f"0202's uint8 logits differ from the golden model's on inputs {differing} of {HOST_INPUTS}"
    differing = _differing_inputs(base_logits, golden)
    assert not differing, (f"0201's uint8 logits differ from the golden model's on inputs {differing} of "
                           f"{HOST_INPUTS} (a generic-backend bug: 0202 has the golden bits)")
    assert _same_bits(optim_out, base_out)


def test_the_cases_reach_what_they_name(built):
    """What the cases are named for reaches their layers: per-channel multipliers, the PT2E
    ReLU6 bounds and missing biases, the eager lookups, an input zero point not 128."""
    def convs(name):
        return [layer for layer in built(name).layers if type(layer).__name__ in ("QConv2d", "QLinear")]
    for name in ("dw3x3_s2_p1_c7_7x9_per_channel", "pointwise_per_channel", "residual_cat_3x20x18_per_channel",
                 "pt2e_relu6_per_channel_3x20x18"):
        assert all(np.size(layer.multiplier) > 1 for layer in convs(name) if type(layer).__name__ == "QConv2d"), name
    assert all(np.size(layer.multiplier) == 1 for layer in convs("pointwise"))
    clipped = [layer for layer in convs("pt2e_relu6_per_channel_3x20x18") if layer.clip_high < 255]
    assert {layer.groups > 1 for layer in clipped} == {True, False}  # a depthwise and a pointwise
    assert "QLookup" in [type(layer).__name__ for layer in built("pointwise").layers]  # eager Hardswish
    assert any(getattr(layer, "relabel", None) for layer in built("eager_relu6_after_pointwise").layers)
    assert convs("dw5x5_s1_p2_c9_9x7")[0].in_zero_point not in (0, 128)
    unbiased = [layer for layer in convs("pt2e_relu6_per_channel_3x20x18") if layer.bias is None]
    assert {layer.groups > 1 for layer in unbiased} == {True, False}
    # the extreme channels, whose sums need more than one chunk, in the paired layout
    fc1, _ = [np.asarray(layer.weight, np.int32) for layer in convs("dense_rows_601")]
    assert (fc1[0] == 115).all() and (fc1[1] == -128).all() and (fc1[3] == 127).all()
    x_zp = convs("dense_rows_601")[0].in_zero_point
    assert 128 * (255 - x_zp) * 601 > 2 ** 23 and 128 * 255 * 256 < 2 ** 23
    layouts = dense_layouts(built("dense_rows_601").optim_tar)
    assert layouts.keys() == {(601, 37), (37, 11)} and layouts[(601, 37)] == 1 and layouts[(37, 11)] > 0
    assert dense_chunks(built("dense_rows_601").optim_tar)[(601, 37)] == 256
    # ordinary weights: a row of more than 256 inputs in one chunk
    assert dense_chunks(built("dw5x5_s1_p2_c9_9x7").optim_tar)[(567, 41)] == 568
    # the -128 weights: pair (0, 1) swapped, channels 4 and 5 re-paired; fc2's first group unpairable
    fc1, fc2 = [np.asarray(layer.weight, np.int32) for layer in convs("dense_pairing_50")]
    assert fc1[1, 5] == -128 and fc1[0, 5] < 0 and fc1[4, 7] == fc1[5, 9] == -128 and fc1[5, 7] < 0 > fc1[4, 9]
    assert all(fc2[k, k] == -128 and (np.delete(fc2[:4, k], k) < 0).all() for k in range(4))
    assert dense_layouts(built("dense_pairing_50").optim_tar) == {(50, 22): 2, (22, 9): 0}


def test_layers_run_in_place(built):
    """The arena planner lets these layers write over their input as they go (the emulator
    test then holds their bits): depthwise at stride 1 and 2, pointwise, strided
    convolutions, a residual add that takes its other operand's bytes, and a
    stride-1 ResNet block run row by row as one kernel."""
    def in_place(name):
        with tarfile.open(built(name).optim_tar) as t:
            return set(json.load(t.extractfile("metadata.json"))["in_place"])
    # only where sharing makes the arena smaller: in the smallest cases a dense layer's
    # widened input is the arena's peak
    for name in ("dscnn_stem", "dw3x3_s2_p1_c7_7x9", "dw5x5_s2_p1_c5_11x8"):
        assert "tvmgen_default_dw" in in_place(name), name
    assert "tvmgen_default_conv1" in in_place("dscnn_stem")   # DS-CNN's 10x4 stride-2 first layer
    assert "tvmgen_default_pw1" in in_place("pointwise")
    assert {"tvmgen_default_conv2", "tvmgen_default_down", "tvmgen_default_conv3"} <= \
        in_place("residual_in_place_3x12x10")
    # the one call of the block kernel (its definition reads "(const uint8_t* x")
    source = "".join(_c_sources(built("residual_in_place_3x12x10").optim_tar))
    assert len(re.findall(r"\butvm_conv_pair_add_u8s\d+\(x,", source)) == 1


# ----------------------------------------------------------------------------- the emulated M7

@pytest.fixture(scope="module")
def plugin(tmp_path_factory):
    require_tools("qemu-system-arm", "arm-none-eabi-gcc", "arm-none-eabi-objdump", "gcc")
    return bench.build_plugin(tmp_path_factory.mktemp("plugin"))


def _emulator_bytes(shape, seed):
    """Input bytes (a byte b is the float low + (high - low) * b / 255 on both sides): the
    range's two ends, random bytes, a ramp."""
    n = int(np.prod(shape[1:]))
    rng = np.random.default_rng(seed)
    rows = [np.zeros(n), np.full(n, 255)] + [rng.integers(0, 256, n) for _ in range(EMULATOR_RANDOM_INPUTS)]
    rows.append(np.arange(n) * 255 // max(n - 1, 1))
    return np.stack(rows).astype(np.uint8)


def disassembly(elf) -> dict:
    """function (a gcc clone's suffix dropped) → its instructions, from arm-none-eabi-objdump."""
    text = subprocess.run(["arm-none-eabi-objdump", "-d", str(elf)], capture_output=True, text=True,
                          check=True).stdout
    bodies, current = {}, None
    for line in text.splitlines():
        head = re.match(r"^[0-9a-f]+ <([^>.]+)[^>]*>:$", line)
        if head:
            current = head.group(1)
            bodies.setdefault(current, [])
        elif current:
            bodies[current].append(line)
    return {name: "\n".join(lines) for name, lines in bodies.items()}


def layers_without_dsp(elf, calls) -> list:
    """The layer functions of `calls` (layer_kernel_calls) whose code runs no DSP instruction,
    neither inlined nor in the out-of-line kernel they call."""
    bodies = disassembly(elf)

    def dsp(name):
        return any(re.search(rf"\t{m}\b", bodies.get(name, "")) for m in DSP_MNEMONICS)

    def out_of_line(kind):
        return [name for name in bodies if (re.fullmatch(KERNEL_NAME, name) or (None, None))[1] == kind]
    return [(function, kind) for function, kinds in calls.items() for kind in kinds
            if not (dsp(function) or any(dsp(name) for name in out_of_line(kind)))]


@pytest.mark.parametrize("name", list(CASES))
def test_emulated_cortex_m7_same_bits_as_0201(name, built, plugin):
    """0202 on the M7 against the golden model and 0201 on the host: the models end in their
    DeQuantStub, whose float32 (q - zp) * scale both FPUs round alike, so the output bits must
    be 0201's."""
    b = built(name)
    images = _emulator_bytes(CASES[name].shape, seed=len(name))
    span = b.high - b.low
    x = bench.bytes_to_inputs(images, b.low, span).reshape((len(images),) + CASES[name].shape[1:])
    base_out, base_logits = HostLibrary(b.golden_tar, build_dir=b.directory / "host").outputs(x)
    assert len({row.tobytes() for row in base_logits}) > 2, "the inputs hardly vary the logits"

    images_c = bench.write_images_c(images, b.directory / "m7" / "bench_images.c", b.low, span)
    # the opt level the library asks for, as the firmware builds it (bench would override it)
    metadata = HostLibrary(b.optim_tar, build_dir=b.directory / "host").metadata
    opt = next((flag for flag in reversed(metadata.get("cflags", [])) if flag.startswith("-O")), "-Os")
    build = bench.build_elf(b.optim_tar, b.directory / "m7" / "fw", opt, images_c, tap=False)
    calls = layer_kernel_calls(b.optim_tar)
    assert calls and not layers_without_dsp(build.elf, calls), \
        f"layers whose M7 code has no DSP instruction: {layers_without_dsp(build.elf, calls)}"
    passes = bench.run_on_qemu(build.elf, plugin, outputs=base_out.shape[1])
    runs = passes[1:]   # the empty pass first; then each input, then a repeat of the first
    assert len(runs) == len(images) + 1 and all(p.rc == 0 for p in runs), [(p.index, p.rc) for p in runs]
    device_out = np.stack([p.output for p in runs[:len(images)]])
    assert _same_bits(runs[-1].output, device_out[0])
    golden = np.asarray(golden_int8(b.layers, x, stop_after=last_quantized_layer(b.layers))).reshape(base_logits.shape)
    assert metadata["logits_quantization"]["from"] == "output"
    differing = _differing_inputs(mlf.uint8_logits_from_tap(device_out, metadata), golden)
    assert not differing, \
        f"0202 on the emulated M7 differs from the golden model on inputs {differing} of {len(images)}"
    differing = _differing_inputs(device_out.view(np.uint32), base_out.view(np.uint32))
    assert not differing, \
        f"0202 on the emulated M7 differs from 0201 on the host on inputs {differing} of {len(images)}"
