"""Pooling on quantized tensors (utils.aot.layers.pool, utils.aot.layers.avgpool): MaxPool2d with
any kernel, stride, padding, dilation and ceil_mode; AvgPool2d, AdaptiveAvgPool2d and mean over
H×W, each with the arithmetic of the kernel PyTorch picks for it.

Two kinds of proof: the golden arithmetic against PyTorch's own ops on many random tensors,
shapes, windows, scales and zero points (both memory layouts, narrow value ranges that make
rounding ties common); then small models through quantized_script + check_bit_exact:
PyTorch == golden == the compiled library, bit for bit."""
import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.ao.quantization as tq

from tests.fixtures_layers import check_bit_exact, quantized_script
from utils.cli import StageError
from utils.aot.layers import MaxPool2d, QAvgPool
from utils.aot.layers import avgpool
from utils.aot.layers.pool import parse_max_pool_op

F32 = np.float32
# the tests build quint8 tensors directly, which torch 2.14 flags as deprecated on every call
pytestmark = pytest.mark.filterwarnings("ignore:torch.quantize_per_tensor:UserWarning")


@pytest.fixture(autouse=True)
def _keep_engine():
    """The tests switch torch's quantized engine; the next test finds it as it was."""
    before = torch.backends.quantized.engine
    yield
    torch.backends.quantized.engine = before


class _Parser:
    """What the pooling rules read of the parser: the input's example tensor, its
    quantization and the engine."""

    def __init__(self, example, engine):
        self.examples = [example]
        self.qparams = (float(example.q_scale()), int(example.q_zero_point()))
        self.engine = engine

    def need_quantized(self, what):
        pass

    def fail(self, what):
        raise StageError(f"unsupported {what}")


def _random_input(rng, channels, h, w):
    """A quint8 tensor with a random scale and zero point, in either layout; often in a narrow
    band around the zero point, where window averages land on .5 and rounding decides."""
    scale = float(F32(10 ** rng.uniform(-4, 1)))
    zp = int(rng.integers(0, 256))
    if rng.random() < 0.4:
        q = rng.integers(max(0, zp - 3), min(255, zp + 3) + 1, (1, channels, h, w))
    else:
        q = rng.integers(0, 256, (1, channels, h, w))
    q = q.astype(np.uint8)
    t = torch._make_per_tensor_quantized_tensor(torch.from_numpy(q), scale, zp)
    if rng.random() < 0.6:
        t = t.contiguous(memory_format=torch.channels_last)
    return q, t


def _avg_case(rng, h, w):
    kh, kw = int(rng.integers(1, min(h, 5) + 1)), int(rng.integers(1, min(w, 5) + 1))
    stride = [int(rng.integers(1, 4)), int(rng.integers(1, 4))] if rng.random() < 0.8 else []
    padding = [int(rng.integers(0, kh // 2 + 1)), int(rng.integers(0, kw // 2 + 1))]
    divisor = int(rng.integers(1, 20)) if rng.random() < 0.2 else None
    args = ([kh, kw], stride, padding, bool(rng.integers(0, 2)), bool(rng.integers(0, 2)), divisor)
    return (lambda t: F.avg_pool2d(t, *args)), (lambda p: avgpool.avg_pool_layer(p, "avg_pool2d", *args))


def _adaptive_case(rng, h, w):
    size = [int(rng.integers(1, h + 3)) if rng.random() < 0.7 else 1,
            int(rng.integers(1, w + 3)) if rng.random() < 0.7 else 1]
    return ((lambda t: F.adaptive_avg_pool2d(t, size)),
            (lambda p: avgpool.adaptive_avg_pool_layer(p, "adaptive", size)))


def _mean_case(rng, h, w):
    dims = [[2, 3], [-1, -2], [-2, -1], [3, 2]][int(rng.integers(0, 4))]
    keepdim = bool(rng.integers(0, 2))
    return (lambda t: torch.mean(t, dims, keepdim)), (lambda p: avgpool.mean_layer(p, "mean", dims, keepdim))


def _max_case(rng, h, w):
    kernel = [int(rng.integers(1, 5)), int(rng.integers(1, 5))]
    stride = [int(rng.integers(1, 4)), int(rng.integers(1, 4))] if rng.random() < 0.8 else []
    dilation = [int(rng.integers(1, 3)), int(rng.integers(1, 3))] if rng.random() < 0.5 else [1, 1]
    padding = [int(rng.integers(0, kernel[0] // 2 + 1)), int(rng.integers(0, kernel[1] // 2 + 1))]
    args = [None, kernel, stride, padding, dilation, bool(rng.integers(0, 2))]
    return (lambda t: F.max_pool2d(t, *args[1:])), (lambda p: parse_max_pool_op(p, _Node(), args))


class _Node:
    @staticmethod
    def kind():
        return "aten::max_pool2d"


CASES = {"avg_pool2d": _avg_case, "adaptive_avg_pool2d": _adaptive_case, "mean": _mean_case,
         "max_pool2d": _max_case}


@pytest.mark.parametrize("engine", ["qnnpack", "fbgemm"])
@pytest.mark.parametrize("op", sorted(CASES))
def test_golden_equals_pytorch_on_random_tensors(op, engine):
    """Every kernel PyTorch picks for the op (by engine, arguments and layout), on random cases."""
    if engine not in torch.backends.quantized.supported_engines:
        pytest.skip(f"this PyTorch has no {engine} engine")
    torch.backends.quantized.engine = engine
    rng = np.random.default_rng(sorted(CASES).index(op))
    cases, paths = 0, set()
    for _ in range(250):
        channels = int(rng.integers(1, 40)) if rng.random() < 0.85 else 1
        h, w = int(rng.integers(1, 13)), int(rng.integers(1, 13))
        q, t = _random_input(rng, channels, h, w)
        run_torch, make_layer = CASES[op](rng, h, w)
        try:
            expected = run_torch(t).int_repr().numpy()
        except RuntimeError:  # torch refuses it too (qnnpack's 1x1 pooling, an empty output)
            continue
        try:
            layer = make_layer(_Parser(t, engine))
        except StageError as e:
            assert "1x1 input" in str(e)  # the one case torch gets wrong
            continue
        got = layer.golden(q)
        assert got.shape == expected.shape
        assert np.array_equal(got, expected), (op, engine, t.shape, getattr(layer, "arithmetic", None))
        cases += 1
        paths.add(getattr(layer, "arithmetic", getattr(layer, "clamp_taps", None)))
    assert cases > 150
    expected_paths = {"avg_pool2d": {avgpool.ROUND_THEN_ADD, avgpool.ADD_THEN_ROUND},
                      "adaptive_avg_pool2d": {avgpool.ROUND_THEN_ADD, avgpool.RAW_TIMES},
                      "mean": {avgpool.ROUND_THEN_ADD, avgpool.RAW_OVER, avgpool.FLOAT_MEAN} - (
                          {avgpool.ROUND_THEN_ADD} if engine != "qnnpack" else set()),
                      "max_pool2d": {True, False} if engine == "qnnpack" else {False}}[op]
    assert paths == expected_paths


@pytest.mark.parametrize("threads", [1, 2, 8, 32])
def test_float_sum_order_is_atens(threads):
    """The order of the float additions in mean's dequantized path (sum_tree) against torch.sum
    of a channels-last tensor over H and W, bit for bit, for channel counts on each side of the
    vector widths, sums long enough for every level of the cascade, and large ones that ATen
    splits among its threads."""
    rng = np.random.default_rng(threads)
    shapes = [(c, h, w) for c in (2, 3, 4, 5, 7, 8, 9, 31, 32, 33, 40, 64, 70)
              for h, w in ((1, 3), (3, 5), (7, 7), (17, 16))]
    shapes += [(3, 64, 65), (33, 70, 61), (2, 1, 600), (36, 31, 31), (38, 30, 30), (70, 22, 22), (100, 20, 20)]
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for c, h, w in shapes:
            x = (rng.standard_normal((1, c, h, w)) * 10 ** rng.uniform(-3, 3)).astype(F32)
            t = torch.from_numpy(x).contiguous(memory_format=torch.channels_last)
            expected = torch.sum(t, (2, 3)).numpy().ravel()
            got = avgpool.sum_tree(avgpool.NumpySums(), x.reshape(c, h * w), avgpool.sum_loops(c, h * w, threads))
            assert np.array_equal(got.view(np.uint32), expected.view(np.uint32)), (c, h, w)
    finally:
        torch.set_num_threads(before)


# ----------------------------------------------------------------------------- models

class ConvPool(nn.Module):
    """QuantStub → conv (odd channels) → ReLU → the pooling (a module, or a function the trace
    inlines into the top-level graph, as x.mean(...) is) → flatten → linear → DeQuantStub."""

    def __init__(self, pool, in_shape, channels=5, conv=True):
        super().__init__()
        self.quant, self.dequant = tq.QuantStub(), tq.DeQuantStub()
        self.conv = nn.Conv2d(in_shape[1], channels, 3, padding=1) if conv else nn.Identity()
        self.relu = nn.ReLU() if conv else nn.Identity()
        self.pool = pool
        with torch.no_grad():
            features = self.pool(self.relu(self.conv(torch.zeros(in_shape)))).numel()
        self.fc = nn.Linear(features, 7)

    def forward(self, x):
        x = self.pool(self.relu(self.conv(self.quant(x))))
        return self.dequant(self.fc(torch.flatten(x, 1)))


MODELS = {
    # name: (pooling, input shape, conv before it, the layer record's arithmetic or max-pool taps)
    "max_3x3_s2_pad1": (lambda: nn.MaxPool2d(3, 2, padding=1), (1, 3, 9, 7), True, "max"),
    "max_2x2_ceil": (lambda: nn.MaxPool2d(2, ceil_mode=True), (1, 3, 7, 5), True, "max"),
    "max_dilation2_pad1": (lambda: nn.MaxPool2d(3, 1, padding=1, dilation=2), (1, 2, 7, 6), True, "clamp"),
    "max_3x2_s2_ceil_pad1": (lambda: nn.MaxPool2d((3, 2), 2, padding=1, ceil_mode=True), (1, 2, 8, 7), True,
                             "max"),
    "avg_2x2": (lambda: nn.AvgPool2d(2), (1, 3, 7, 5), True, avgpool.ROUND_THEN_ADD),
    "avg_3x3_s2_pad1_no_pad_count": (lambda: nn.AvgPool2d(3, 2, 1, count_include_pad=False), (1, 3, 9, 7), True,
                                     avgpool.ROUND_THEN_ADD),
    "avg_3x3_s2_ceil_no_pad_count": (lambda: nn.AvgPool2d(3, 2, 1, ceil_mode=True, count_include_pad=False),
                                     (1, 3, 8, 7), True, avgpool.ROUND_THEN_ADD),
    "avg_2x3_ceil_divisor": (lambda: nn.AvgPool2d((2, 3), 2, ceil_mode=True, divisor_override=5), (1, 2, 7, 5),
                             True, avgpool.ROUND_THEN_ADD),
    "avg_ceil_on_nchw_input": (lambda: nn.AvgPool2d(3, 2, 1, ceil_mode=True), (1, 2, 8, 7), False,
                               avgpool.ADD_THEN_ROUND),
    "global_adaptive_1": (lambda: nn.AdaptiveAvgPool2d(1), (1, 3, 7, 5), True, avgpool.ROUND_THEN_ADD),
    "adaptive_3x2_irregular": (lambda: nn.AdaptiveAvgPool2d((3, 2)), (1, 3, 7, 5), True, avgpool.ROUND_THEN_ADD),
    "adaptive_on_nchw_input": (lambda: nn.AdaptiveAvgPool2d((2, 3)), (1, 2, 7, 5), False, avgpool.RAW_TIMES),
    "mean_23": (lambda: (lambda x: x.mean([2, 3])), (1, 3, 7, 5), True, avgpool.ROUND_THEN_ADD),
    "mean_23_keepdim": (lambda: (lambda x: torch.mean(x, (2, 3), keepdim=True)), (1, 3, 6, 6), True,
                        avgpool.ROUND_THEN_ADD),
    "mean_negative_dims": (lambda: (lambda x: x.mean([-1, -2])), (1, 3, 7, 5), True, avgpool.FLOAT_MEAN),
    "mean_negative_dims_keepdim": (lambda: (lambda x: x.mean((-2, -1), keepdim=True)), (1, 3, 9, 9), True,
                                   avgpool.FLOAT_MEAN),
    "mean_on_nchw_input": (lambda: (lambda x: x.mean([-1, -2])), (1, 3, 7, 5), False, avgpool.RAW_OVER),
}


def _pool_layer(layers):
    return next(layer for layer in layers if isinstance(layer, (MaxPool2d, QAvgPool)))


@pytest.mark.parametrize("name", sorted(MODELS))
def test_pooling_model(name, tmp_path):
    make, shape, conv, arithmetic = MODELS[name]
    path = quantized_script(ConvPool(make(), shape, conv=conv), shape, tmp_path / f"{name}.pth")
    _, layers, _ = check_bit_exact(path)
    layer = _pool_layer(layers)
    if arithmetic in ("max", "clamp"):
        assert isinstance(layer, MaxPool2d) and layer.clamp_taps == (arithmetic == "clamp" or not layer.ceil_mode)
    else:
        assert layer.arithmetic == arithmetic


class WideMean(nn.Module):
    """37 channels (32 summed 4 vectors at a time, 5 one at a time) over 9x9: the float mean's
    whole summation order, then a linear layer."""

    def __init__(self):
        super().__init__()
        self.quant, self.dequant = tq.QuantStub(), tq.DeQuantStub()
        self.conv = nn.Conv2d(2, 37, 3, padding=1)
        self.fc = nn.Linear(37, 5)

    def forward(self, x):
        return self.dequant(self.fc(self.conv(self.quant(x)).mean((-1, -2))))


def test_float_mean_with_every_summation_loop(tmp_path):
    path = quantized_script(WideMean(), (1, 2, 9, 9), tmp_path / "wide_mean.pth")
    _, layers, _ = check_bit_exact(path)
    assert _pool_layer(layers).arithmetic == avgpool.FLOAT_MEAN


class PoolChain(nn.Module):
    """conv → max 3x3/2 (padding 1) → conv → avg 2x2 ceil → global average → linear."""

    def __init__(self):
        super().__init__()
        self.quant, self.dequant = tq.QuantStub(), tq.DeQuantStub()
        self.conv1, self.conv2 = nn.Conv2d(3, 6, 3, padding=1), nn.Conv2d(6, 9, 3, padding=1)
        self.max, self.avg = nn.MaxPool2d(3, 2, 1), nn.AvgPool2d(2, ceil_mode=True)
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(9, 4)

    def forward(self, x):
        x = self.max(F.relu(self.conv1(self.quant(x))))
        x = self.gap(self.avg(self.conv2(x)))
        return self.dequant(self.fc(torch.flatten(x, 1)))


def test_pooling_chain(tmp_path):
    path = quantized_script(PoolChain(), (1, 3, 15, 11), tmp_path / "chain.pth")
    _, layers, _ = check_bit_exact(path)
    assert [type(layer).__name__ for layer in layers].count("QAvgPool") == 2


@pytest.mark.parametrize("engine", ["fbgemm", "x86"])
def test_other_engines(engine, tmp_path):
    """Without qnnpack, avg_pool2d, adaptive pooling and mean([2, 3]) take the generic kernels."""
    if engine not in torch.backends.quantized.supported_engines:
        pytest.skip(f"this PyTorch has no {engine} engine")
    path = quantized_script(PoolChain(), (1, 3, 15, 11), tmp_path / "chain.pth", engine=engine)
    _, layers, _ = check_bit_exact(path, engine=engine)
    assert not _pool_layer(layers).clamp_taps


def test_qnnpack_ignores_count_include_pad_as_pytorch_does():
    """qnnpack's average pooling divides by kh*kw whatever count_include_pad says; the golden
    follows it, so a border window's average is not the float module's."""
    torch.backends.quantized.engine = "qnnpack"
    t = torch.quantize_per_tensor(torch.full((1, 2, 4, 4), 1.0), 0.01, 3, torch.quint8)
    layer = avgpool.avg_pool_layer(_Parser(t, "qnnpack"), "avg", [3, 3], [1, 1], [1, 1], False, False, None)
    expected = F.avg_pool2d(t, 3, 1, 1, count_include_pad=False).int_repr().numpy()
    got = layer.golden(t.int_repr().numpy())
    assert np.array_equal(got, expected)
    assert got[0, 0, 0, 0] == 3 + round(100 * 4 / 9)  # 4 pixels of 1.0 over 9, not over 4


def test_scrambled_1x1_input_is_refused():
    t = torch.quantize_per_tensor(torch.rand(1, 3, 1, 1), 0.01, 0, torch.quint8)
    with pytest.raises(StageError, match="1x1 input"):
        avgpool.adaptive_avg_pool_layer(_Parser(t, "qnnpack"), "adaptive", [2, 2])
    with pytest.raises(StageError, match="1x1 input"):
        parse_max_pool_op(_Parser(t, "qnnpack"), _Node(), [None, [2, 2], [1, 1], [1, 1], [1, 1], True])


def test_mean_over_other_dims_is_refused():
    t = torch.quantize_per_tensor(torch.rand(1, 3, 4, 4), 0.01, 0, torch.quint8)
    with pytest.raises(StageError, match="dims"):
        avgpool.mean_layer(_Parser(t, "qnnpack"), "aten::mean", [1, 2], False)
