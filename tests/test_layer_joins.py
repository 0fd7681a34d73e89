"""The joins (utils.aot.layers.joins): add, add_relu, mul, mul_relu and cat of quantized tensors.

First the golden arithmetic against PyTorch's own ops, exhaustively: every pair of uint8
operands (256 x 256) for several (scale, zero point) triples, and every byte at every channel
position of a cat, through each path torch takes (qnnpack's add, the channels-last cat kernel's
vector body and scalar tail, the dequantize → cat → quantize path). Then small models through
quantized_script + check_bit_exact (PyTorch == golden == the compiled library, bit for bit),
each library also cross-compiled for the Cortex-M7."""
import functools
import warnings

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.ao.quantization as tq

from tests.fixtures_layers import ENGINE, check_bit_exact, quantized_script
from tests.fixtures_tools import require_tools
from utils.aot.backends.generic import GENERIC
from utils.aot.compiler import compile_model
from utils.aot.layers.joins import (CAT_VECTOR_FLOATS, add_layer, add_parameters, cat_layer, mul_layer,
                                    requantize_scalar, requantize_vector, segment_of)
from utils.aot.model_file import load_model
from utils.aot.verify import disallowed, measure_arm
from utils.cli import StageError

# every (a, b) byte pair once
PAIRS_A = np.repeat(np.arange(256, dtype=np.uint8), 256)
PAIRS_B = np.tile(np.arange(256, dtype=np.uint8), 256)

# (a_scale, a_zp, b_scale, b_zp, out_scale, out_zp): typical residual adds, equal scales, zero
# points at both ends, and input-to-output ratios at both ends of qnnpack's range (shift 14 and 31)
ADD_QPARAMS = [
    (0.02, 128, 0.03, 120, 0.05, 127),
    (0.1, 0, 0.1, 0, 0.2, 0),
    (0.0123, 7, 0.0456, 250, 0.031, 64),
    (1.0, 0, 1.0, 0, 1.0, 255),
    (0.5, 3, 0.001, 200, 0.01, 100),
    (0.9, 255, 0.7, 0, 0.0036, 10),
    (0.0011, 31, 0.0013, 77, 1.1, 201),
    (0.00793, 1, 0.0185, 31, 0.00893, 2),
]


def _q(raw, scale, zero_point, channels_last=False):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch deprecates making quantized tensors by hand
        t = torch._make_per_tensor_quantized_tensor(torch.from_numpy(np.ascontiguousarray(raw)), scale, zero_point)
    return t.contiguous(memory_format=torch.channels_last) if channels_last else t


def _random_qparams(seed, count, out_scale_factor):
    rng = np.random.default_rng(seed)
    found = []
    for _ in range(count):
        a_scale, b_scale = (float(s) for s in 10 ** rng.uniform(-3, 0, 2))
        zps = [int(z) for z in rng.integers(0, 256, 3)]
        found.append((a_scale, zps[0], b_scale, zps[1], out_scale_factor(a_scale, b_scale, rng), zps[2]))
    return found


def _binary_cases(qparams, kind, shapes):
    """(golden, torch) byte arrays of `kind` on every byte pair, laid out in each of `shapes`."""
    make = add_layer if "add" in kind else mul_layer
    op = getattr(torch.ops.quantized, kind.split("::")[1])
    a_scale, a_zp, b_scale, b_zp, out_scale, out_zp = qparams
    layer = make(kind, (a_scale, a_zp), (b_scale, b_zp), out_scale, out_zp)
    rng = np.random.default_rng(1)
    for shape, channels_last in shapes:
        n = int(np.prod(shape))
        a = PAIRS_A[:n] if n == len(PAIRS_A) else rng.integers(0, 256, n, dtype=np.uint8)
        b = PAIRS_B[:n] if n == len(PAIRS_B) else rng.integers(0, 256, n, dtype=np.uint8)
        a, b = a.reshape(shape), b.reshape(shape)
        got = op(_q(a, a_scale, a_zp, channels_last), _q(b, b_scale, b_zp, channels_last), out_scale, out_zp)
        assert (got.q_scale(), got.q_zero_point()) == (out_scale, out_zp)
        yield layer.golden(a, b), got.int_repr().numpy()


# the whole byte-pair grid flat and as a channels-last 4-d tensor, and qnnpack's short paths:
# fewer than 8 elements (its scalar loop), and 8-element vectors with a tail
ADD_SHAPES = [((1, 65536), False), ((1, 256, 16, 16), True), ((1, 5), False), ((1, 3, 3, 3), True)]


@pytest.mark.parametrize("kind", ["quantized::add", "quantized::add_relu"])
def test_add_every_byte_pair(kind):
    torch.backends.quantized.engine = ENGINE
    cases = ADD_QPARAMS + _random_qparams(2, 24, lambda a, b, rng: (a + b) * float(10 ** rng.uniform(-0.5, 0.5)))
    checked = 0
    for qparams in cases:
        if kind.endswith("_relu") and qparams[5] == 255:
            continue  # qnnpack refuses an empty output range; so does add_layer
        for golden, got in _binary_cases(qparams, kind, ADD_SHAPES):
            assert np.array_equal(golden, got), f"{kind} {qparams}: {np.mean(golden != got):.2%} of outputs differ"
            checked += 1
    assert checked >= 4 * 30


def test_add_parameters_follow_qnnpack():
    # the largest ratio sets the shift: its multiplier lands in [2**21, 2**22)
    a_mult, b_mult, shift = add_parameters(0.02, 0.03, 0.05)[0]
    assert shift == 22 and 2 ** 21 <= max(a_mult, b_mult) < 2 ** 22
    # ratios qnnpack refuses, and those whose shift would pass 31
    assert add_parameters(1.0, 1.0, 0.001)[0] is None
    assert add_parameters(0.001, 0.001, 100.0)[0] is None
    assert add_parameters(0.001, 0.001, 1.5)[0] is None and add_parameters(0.001, 0.001, 0.9)[0] is not None
    with pytest.raises(StageError, match="empty output range"):
        add_layer("quantized::add_relu", (0.1, 0), (0.1, 0), 0.2, 255)


MUL_SHAPES = [((1, 65536), False), ((1, 256, 16, 16), True), ((1, 5), False)]


@pytest.mark.parametrize("kind", ["quantized::mul", "quantized::mul_relu"])
def test_mul_every_byte_pair(kind):
    torch.backends.quantized.engine = ENGINE
    fixed = [(0.02, 128, 0.03, 120, 0.05, 127), (0.1, 0, 0.1, 0, 0.2, 0), (0.0123, 7, 0.0456, 250, 0.031, 64),
             (0.9, 255, 0.7, 0, 3.5, 10)]
    cases = fixed + _random_qparams(3, 24, lambda a, b, rng: a * b * float(10 ** rng.uniform(1, 3)))
    for qparams in cases:
        for golden, got in _binary_cases(qparams, kind, MUL_SHAPES):
            assert np.array_equal(golden, got), f"{kind} {qparams}: {np.mean(golden != got):.2%} of outputs differ"


@pytest.mark.parametrize("shapes", [((1, 5, 7, 9), (1, 5, 1, 1)), ((1, 37, 3, 5), (1, 37, 1, 1)),
                                    ((1, 4, 6, 6), (1, 1, 6, 6)), ((1, 3, 1, 1), (1, 3, 4, 5))])
@pytest.mark.parametrize("channels_last", [False, True])
def test_mul_broadcasts(shapes, channels_last):
    torch.backends.quantized.engine = ENGINE
    rng = np.random.default_rng(4)
    for a_scale, a_zp, b_scale, b_zp, out_scale, out_zp in _random_qparams(5, 6, lambda a, b, r: a * b * 40):
        a = rng.integers(0, 256, shapes[0], dtype=np.uint8)
        b = rng.integers(0, 256, shapes[1], dtype=np.uint8)
        got = torch.ops.quantized.mul(_q(a, a_scale, a_zp, channels_last), _q(b, b_scale, b_zp), out_scale, out_zp)
        layer = mul_layer("quantized::mul", (a_scale, a_zp), (b_scale, b_zp), out_scale, out_zp)
        assert np.array_equal(layer.golden(a, b), got.int_repr().numpy())


# ----------------------------------------------------------------------------- cat

@functools.lru_cache
def _differing_cat_qparams(count, seed=6):
    """(in_scale, in_zp, out_scale, out_zp) where the vector body and the scalar tail of torch's
    channels-last cat give some byte different outputs (about one random set in 3000)."""
    rng = np.random.default_rng(seed)
    found = []
    while len(found) < count:
        in_scale, out_scale = (float(s) for s in 10 ** rng.uniform(-3, 0, 2))
        in_zp, out_zp = (int(z) for z in rng.integers(0, 256, 2))
        everything = np.arange(256, dtype=np.uint8)
        qparams = (in_scale, in_zp, out_scale, out_zp)
        if not np.array_equal(requantize_scalar(everything, *qparams), requantize_vector(everything, *qparams)):
            found.append(qparams)
    return tuple(found)


def _cat_qparams():
    rng = np.random.default_rng(7)
    plain = [(float(s_in), int(z_in), float(s_out), int(z_out))
             for s_in, s_out, z_in, z_out in zip(10 ** rng.uniform(-3, 0, 6), 10 ** rng.uniform(-3, 0, 6),
                                                 rng.integers(0, 256, 6), rng.integers(0, 256, 6))]
    return plain + list(_differing_cat_qparams(8))


# lengths of the joined axis on both sides of the kernel's 8-float vectors and its 32-byte loop
CAT_LENGTHS = (1, 7, 8, 13, 24, 37, 70)
# (layout of the inputs, traced dim): the channels-last kernel (dim 1) and the dequantize → cat →
# quantize path (NCHW inputs, another dim, or quantized::cat's dim -3, which it does not wrap)
CAT_PATHS = [("channels_last", 1), ("contiguous", 1), ("channels_last", 2), ("channels_last", -3),
             ("contiguous", -1)]


def _cat_inputs(length, layout, dim, qparams):
    """A 4-d tensor holding every byte at every position of the joined axis (which is `length`
    long), and a second input quantized like the output (torch copies or round-trips it)."""
    in_scale, in_zp, out_scale, out_zp = qparams
    axis = dim % 4
    bytes_axis = 3 if axis != 3 else 2
    shape = [1, 2, 2, 2]
    shape[axis], shape[bytes_axis] = length, 256
    view = [1, 1, 1, 1]
    view[bytes_axis] = 256
    x = np.broadcast_to(np.arange(256, dtype=np.uint8).reshape(view), shape).copy()
    shape[axis] = 3
    other = np.random.default_rng(8).integers(0, 256, shape, dtype=np.uint8)
    channels_last = layout == "channels_last"
    return _q(x, in_scale, in_zp, channels_last), _q(other, out_scale, out_zp, channels_last)


@pytest.mark.parametrize("path", CAT_PATHS, ids=[f"{layout}-dim{dim}" for layout, dim in CAT_PATHS])
@pytest.mark.parametrize("kind", ["quantized::cat", "quantized::cat_relu"])
def test_quantized_cat_every_byte(kind, path):
    torch.backends.quantized.engine = ENGINE
    layout, dim = path
    op = getattr(torch.ops.quantized, kind.split("::")[1])
    for qparams in _cat_qparams():
        for length in CAT_LENGTHS:
            x, other = _cat_inputs(length, layout, dim, qparams)
            for tensors in ([x, other], [other, x, x]):
                got = op(tensors, dim, qparams[2], qparams[3])
                layer = cat_layer(kind, dim, 4, [(segment_of(t, dim % 4),) for t in tensors], qparams[2:])
                golden = layer.golden(*[t.int_repr().numpy() for t in tensors])
                assert np.array_equal(golden, got.int_repr().numpy()), \
                    f"{kind} {path} {qparams} length {length}: {np.sum(golden != got.int_repr().numpy())} bytes differ"


@pytest.mark.parametrize("path", [("channels_last", 1), ("channels_last", -3), ("contiguous", 1)],
                         ids=["channels_last-dim1", "channels_last-dim-3", "contiguous-dim1"])
def test_torch_cat_every_byte(path):
    """torch.cat on quantized tensors (aten::cat): the output takes the first input's qparams."""
    layout, dim = path
    for qparams in _cat_qparams():
        for length in CAT_LENGTHS:
            x, other = _cat_inputs(length, layout, dim, qparams)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # torch warns that the qparams differ
                got = torch.cat([other, x, other], dim)
            tensors = [other, x, other]
            layer = cat_layer("aten::cat", dim, 4, [(segment_of(t, dim % 4),) for t in tensors])
            assert (layer.out_scale, layer.out_zero_point) == (got.q_scale(), got.q_zero_point())
            golden = layer.golden(*[t.int_repr().numpy() for t in tensors])
            assert np.array_equal(golden, got.int_repr().numpy()), f"aten::cat {path} {qparams} length {length}"


def test_cat_paths_differ_where_expected():
    """The two requantizations torch's cat uses are told apart by the tests above: they differ
    on some bytes, and the channels-last kernel uses the vector one on whole 8-channel runs."""
    qparams = _differing_cat_qparams(1)[0]
    x, other = _cat_inputs(13, "channels_last", 1, qparams)
    layer = cat_layer("quantized::cat", 1, 4, [(segment_of(x, 1),), (segment_of(other, 1),)], qparams[2:])
    assert layer.vector_channels == (CAT_VECTOR_FLOATS, 0) and layer.copied == (False, True)
    got = torch.ops.quantized.cat([x, other], 1, qparams[2], qparams[3]).int_repr().numpy()[0, :13, 0, :]
    everything = np.arange(256, dtype=np.uint8)
    assert all(np.array_equal(got[c], requantize_vector(everything, *qparams)) for c in range(8))
    assert all(np.array_equal(got[c], requantize_scalar(everything, *qparams)) for c in range(8, 13))


# ----------------------------------------------------------------------------- models

def check_model(path):
    """check_bit_exact, then the library cross-compiled for the Cortex-M7: no warnings and
    nothing from outside it but what every library may use."""
    source, layers, x = check_bit_exact(path)
    require_tools("arm-none-eabi-gcc")
    tar = path.parent / f"{path.stem}-{GENERIC.name}.tar"  # where check_bit_exact put the library
    figures = measure_arm(tar)
    assert figures["arm_warnings"] == [] and disallowed(figures["arm_undefined_symbols"]) == []
    return source, layers, x


class Residual(nn.Module):
    """conv → ReLU → conv → add_relu with the skip, then an add without ReLU: a ResNet block."""

    def __init__(self, channels=5):
        super().__init__()
        self.quant, self.dequant = tq.QuantStub(), tq.DeQuantStub()
        self.stem, self.stem_relu = nn.Conv2d(3, channels, 3, padding=1), nn.ReLU()
        self.conv1, self.relu1 = nn.Conv2d(channels, channels, 3, padding=1), nn.ReLU()
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)
        self.skip, self.tail = nn.quantized.FloatFunctional(), nn.quantized.FloatFunctional()
        self.fc = nn.Linear(channels * 7 * 9, 6)

    def forward(self, x):
        x = self.stem_relu(self.stem(self.quant(x)))
        y = self.conv2(self.relu1(self.conv1(x)))
        x = self.skip.add_relu(y, x)
        x = self.tail.add(x, y)
        return self.dequant(self.fc(torch.flatten(x, 1)))


def test_residual_block(tmp_path):
    torch.manual_seed(0)
    path = quantized_script(Residual(), (1, 3, 7, 9), tmp_path / "residual.pth",
                            fuse=[("stem", "stem_relu"), ("conv1", "relu1")])
    _, layers, _ = check_model(path)
    adds = [layer for layer in layers if type(layer).__name__ == "QAdd"]
    assert [layer.relu for layer in adds] == [True, False]


class Branches(nn.Module):
    """Two branches with different ranges (a ReLU one and a signed one), joined by
    QFunctional.cat with the model's input, by torch.cat, and by a torch.cat of a torch.cat
    (which TorchScript merges into one)."""

    def __init__(self, wide=11, narrow=3):
        super().__init__()
        self.quant, self.dequant = tq.QuantStub(), tq.DeQuantStub()
        self.a, self.a_relu = nn.Conv2d(3, wide, 3, padding=1), nn.ReLU()
        self.b = nn.Conv2d(3, narrow, 1)
        self.join = nn.quantized.FloatFunctional()
        self.fc = nn.Linear((2 * wide + 2 * narrow + 3) * 5 * 7, 4)

    def forward(self, x):
        x = self.quant(x)
        a, b = self.a_relu(self.a(x)), self.b(x)
        y = self.join.cat([a, b, x], dim=1)
        z = torch.cat([b, a], 1)
        w = torch.cat([y, z], 1)  # z's only use: TorchScript makes this cat([y, b, a])
        return self.dequant(self.fc(torch.flatten(w, 1)))


def test_branches_joined_by_cat(tmp_path):
    torch.manual_seed(0)
    model = Branches()
    with torch.no_grad():
        # the ReLU branch reaches further up than the signed one, so the join's range is neither's
        model.a.weight.mul_(3.0)
    path = quantized_script(model, (1, 3, 5, 7), tmp_path / "branches.pth", fuse=[("a", "a_relu")])
    _, layers, _ = check_model(path)
    cats = [layer for layer in layers if type(layer).__name__ == "QCat"]
    assert [cat.op for cat in cats] == ["quantized::cat", "aten::cat", "aten::cat"]
    join, inner, outer = cats
    out = (join.out_scale, join.out_zero_point)
    assert all((s.scale, s.zero_point) != out for s in join.flat()), "the join should requantize every input"
    assert inner.merged and not outer.merged and len(outer.flat()) == 3


class ChannelsLastCat(nn.Module):
    """QFunctional.cat of convolution outputs only: torch's channels-last kernel, its 8-channel
    vector runs (13 = 8 + 5 channels) and its scalar tail."""

    def __init__(self):
        super().__init__()
        self.quant, self.dequant = tq.QuantStub(), tq.DeQuantStub()
        self.a, self.b = nn.Conv2d(2, 13, 3, padding=1), nn.Conv2d(2, 9, 3, stride=1, padding=1)
        self.b_relu = nn.ReLU()
        self.join = nn.quantized.FloatFunctional()
        self.fc = nn.Linear(22 * 6 * 3, 5)

    def forward(self, x):
        x = self.quant(x)
        y = self.join.cat([self.a(x), self.b_relu(self.b(x))], dim=1)
        return self.dequant(self.fc(torch.flatten(y, 1)))


def test_channels_last_cat(tmp_path):
    torch.manual_seed(0)
    path = quantized_script(ChannelsLastCat(), (1, 2, 6, 3), tmp_path / "cl_cat.pth", fuse=[("b", "b_relu")])
    _, layers, _ = check_model(path)
    cat = next(layer for layer in layers if type(layer).__name__ == "QCat")
    assert cat.vector_channels == (8, 8)


class Gated(nn.Module):
    """mul of two branches, and a squeeze-excite style mul by a per-channel [1, C, 1, 1] gate."""

    def __init__(self, channels=7):
        super().__init__()
        self.quant, self.dequant = tq.QuantStub(), tq.DeQuantStub()
        self.a, self.b = nn.Conv2d(3, channels, 3, padding=1), nn.Conv2d(3, channels, 1)
        self.gate = nn.Conv2d(channels, channels, (5, 3))  # the whole 5 x 3 plane → [1, C, 1, 1]
        self.mul, self.excite = nn.quantized.FloatFunctional(), nn.quantized.FloatFunctional()
        self.fc = nn.Linear(channels * 5 * 3, 3)

    def forward(self, x):
        x = self.quant(x)
        y = self.mul.mul(self.a(x), self.b(x))
        y = self.excite.mul(y, self.gate(y))
        return self.dequant(self.fc(torch.flatten(y, 1)))


def test_mul_and_broadcast_mul(tmp_path):
    torch.manual_seed(0)
    path = quantized_script(Gated(), (1, 3, 5, 3), tmp_path / "gated.pth")
    _, layers, _ = check_model(path)
    assert [type(layer).__name__ for layer in layers].count("QMul") == 2


class BroadcastAdd(nn.Module):
    def __init__(self):
        super().__init__()
        self.quant, self.dequant = tq.QuantStub(), tq.DeQuantStub()
        self.a, self.gate = nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(3, 4, (4, 4))
        self.add = nn.quantized.FloatFunctional()

    def forward(self, x):
        x = self.quant(x)
        return self.dequant(self.add.add(self.a(x), self.gate(x)))


def test_broadcast_add_is_refused_in_one_line(tmp_path):
    torch.manual_seed(0)
    path = quantized_script(BroadcastAdd(), (1, 3, 4, 4), tmp_path / "badd.pth")
    # the refusal names the QFunctional, the shapes and what to do
    with pytest.raises(StageError, match=r"quantized::add \(add\) of shapes \[1, 4, 4, 4\] and \[1, 4, 1, 1\].*"
                                         r"of one shape only") as error:
        compile_model(load_model(path, "int8"), tmp_path / "badd.tar", GENERIC)
    assert "\n" not in str(error.value)


class FloatCat(nn.Module):
    def __init__(self):
        super().__init__()
        self.quant, self.dequant = tq.QuantStub(), tq.DeQuantStub()
        self.conv = nn.Conv2d(1, 2, 3)

    def forward(self, x):
        y = self.dequant(self.conv(self.quant(x)))
        return torch.cat([y, y], 1)


def test_cat_of_float_tensors_is_refused_in_one_line(tmp_path):
    torch.manual_seed(0)
    path = quantized_script(FloatCat(), (1, 1, 5, 5), tmp_path / "fcat.pth")
    with pytest.raises(StageError, match=r"^aten::cat \(test_layer_joins.py:\d+\) of float tensors: .* before the DeQuantStub$"):
        compile_model(load_model(path, "int8"), tmp_path / "fcat.tar", GENERIC)
