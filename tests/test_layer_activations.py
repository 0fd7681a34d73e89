"""The activations on a quantized tensor (lookup tables, utils.aot.layers.lut; ReLU's max,
utils.aot.layers.activation) and the model's output (log_softmax, softmax, sigmoid, tanh or
the dequantized values, utils.aot.layers.softmax): PyTorch == golden == the compiled library,
the uint8 bit for bit, the float outputs within a few ulp (exp, log and tanh are libm's in the C
and numpy's in the golden)."""
import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.ao.nn.quantized as nnq
import torch.ao.quantization as tq

from tests.fixtures_layers import check_bit_exact, quantized_script
from utils.cli import StageError
from utils.aot.golden import golden_int8
from utils.aot.host_library import HostLibrary
from utils.aot.layers import QLookup, QRelu
from utils.aot.layers.lut import build_lookup, op_callable, relabelled
from utils.aot.verify import ulp_distance

# float outputs: the C's expf/logf/tanhf against numpy's float32 ones
MAX_ULP = 4


class ConvAct(nn.Module):
    """QuantStub → conv (odd channels and sizes) → the activation → DeQuantStub."""

    def __init__(self, act, channels=5):
        super().__init__()
        self.quant, self.dequant = tq.QuantStub(), tq.DeQuantStub()
        self.conv = nn.Conv2d(3, channels, 3, padding=1)
        self.act = act
        self.ff = nnq.FloatFunctional()

    def forward(self, x):
        x = self.conv(self.quant(x))
        x = self.act(self, x) if callable(self.act) and not isinstance(self.act, nn.Module) else self.act(x)
        return self.dequant(x)


class LinearAct(nn.Module):
    """QuantStub → flatten → linear (7 outputs) → the activation → DeQuantStub."""

    def __init__(self, act, features):
        super().__init__()
        self.quant, self.dequant = tq.QuantStub(), tq.DeQuantStub()
        self.fc = nn.Linear(features, 7)
        self.act = act

    def forward(self, x):
        return self.dequant(self.act(self.fc(torch.flatten(self.quant(x), 1))))


def _qonly(quantized, float_fallback):
    """An op that exists only for quantized tensors (torch.ops.quantized.*_relu): the float model
    calibrates through `float_fallback`, the converted one traces the quantized op."""
    return lambda model, x: quantized(x) if x.is_quantized else float_fallback(x)


MODULES = {
    "Hardswish": lambda: nn.Hardswish(),
    "ReLU6": lambda: nn.ReLU6(),
    "LeakyReLU": lambda: nn.LeakyReLU(0.1),
    "ELU": lambda: nn.ELU(0.7),
    "Sigmoid": lambda: nn.Sigmoid(),
    "Tanh": lambda: nn.Tanh(),
    "Hardsigmoid": lambda: nn.Hardsigmoid(),
    "Hardtanh": lambda: nn.Hardtanh(-0.5, 0.75),
    "GELU": lambda: nn.GELU(),
    "Threshold": lambda: nn.Threshold(0.1, -0.2),
}
OPS = {
    "aten::relu6": lambda m, x: F.relu6(x),
    "aten::relu6_": lambda m, x: F.relu6(x, inplace=True),
    "aten::hardtanh": lambda m, x: F.hardtanh(x, -0.3, 0.7),
    "aten::hardtanh_": lambda m, x: F.hardtanh(x, inplace=True),
    "aten::clamp": lambda m, x: torch.clamp(x, -0.2, 0.5),
    "aten::clamp int": lambda m, x: x.clamp(0, 1),
    "aten::hardsigmoid": lambda m, x: F.hardsigmoid(x),
    "aten::hardsigmoid_": lambda m, x: F.hardsigmoid(x, inplace=True),
    "aten::sigmoid": lambda m, x: torch.sigmoid(x),
    "aten::tanh": lambda m, x: torch.tanh(x),
    "aten::leaky_relu": lambda m, x: F.leaky_relu(x, 0.2),
    "aten::leaky_relu_": lambda m, x: F.leaky_relu(x, 0.01, inplace=True),
    "aten::gelu": lambda m, x: F.gelu(x),
    "aten::threshold": lambda m, x: F.threshold(x, 0.05, 0.3),
    "aten::relu_": lambda m, x: F.relu(x, inplace=True),
    "quantized::add_scalar": lambda m, x: m.ff.add_scalar(x, 0.3),
    "quantized::mul_scalar": lambda m, x: m.ff.mul_scalar(x, -0.7),
    "quantized::add_scalar_relu": _qonly(lambda x: torch.ops.quantized.add_scalar_relu(x, -0.25),
                                         lambda x: F.relu(x - 0.25)),
    "quantized::mul_scalar_relu": _qonly(lambda x: torch.ops.quantized.mul_scalar_relu(x, 1.5),
                                         lambda x: F.relu(x * 1.5)),
}


def _kinds(layers):
    return [type(layer).__name__ for layer in layers]


@pytest.mark.parametrize("name", sorted(MODULES))
def test_module_activation_after_conv(name, tmp_path):
    path = quantized_script(ConvAct(MODULES[name]()), (1, 3, 7, 5), tmp_path / f"{name}.pth")
    _, layers, _ = check_bit_exact(path)
    assert _kinds(layers) == ["Quantize", "QConv2d", "QLookup", "Dequantize"]
    assert layers[2].op == name


@pytest.mark.parametrize("name", sorted(OPS))
def test_op_on_quantized_tensor(name, tmp_path):
    path = quantized_script(ConvAct(OPS[name], channels=7), (1, 3, 5, 9), tmp_path / "op.pth")
    _, layers, _ = check_bit_exact(path)
    layer = layers[2]
    if name == "aten::relu_":
        assert isinstance(layer, QRelu) and layer.inplace
    else:
        assert isinstance(layer, QLookup) and layer.op == name.split()[0]


@pytest.mark.parametrize("name", ["Hardswish", "Sigmoid", "LeakyReLU", "ReLU6"])
def test_module_activation_after_linear(name, tmp_path):
    path = quantized_script(LinearAct(MODULES[name](), 3 * 5), (1, 3, 5), tmp_path / f"{name}.pth")
    _, layers, _ = check_bit_exact(path)
    assert isinstance(layers[-2], QLookup) and layers[-2].relabel is None  # 2-d: nothing to relabel


@pytest.mark.parametrize("engine", ["x86", "fbgemm"])
@pytest.mark.parametrize("name", ["Hardswish", "ReLU6", "Sigmoid", "ELU"])
def test_other_engines(name, engine, tmp_path):
    if engine not in torch.backends.quantized.supported_engines:
        pytest.skip(f"this PyTorch has no {engine} engine")
    path = quantized_script(ConvAct(MODULES[name]()), (1, 3, 6, 5), tmp_path / f"{name}.pth", engine=engine)
    _, layers, _ = check_bit_exact(path, engine=engine)
    assert layers[2].relabel is None  # only qnnpack's clamp hands on its result relabelled


def test_relu6_after_qnnpack_conv_is_relabelled_as_pytorch_does(tmp_path):
    """qnnpack's clamp on the channels-last conv output writes NHWC values into a tensor it
    calls contiguous (PyTorch's bug, fixed for the other qnnpack activations in
    pytorch/pytorch#46077): the library follows PyTorch, a transpose after the min and max."""
    path = quantized_script(ConvAct(MODULES["ReLU6"]()), (1, 3, 4, 6), tmp_path / "relu6.pth")
    with pytest.warns(UserWarning, match="scrambled"):
        _, layers, x = check_bit_exact(path)
    layer = layers[2]
    assert layer.relabel == (0, 2, 3, 1) and layer.clip is not None
    conv_out = golden_int8(layers, x, stop_after=1)
    assert not np.array_equal(layer.golden(conv_out), np.clip(conv_out, *layer.clip))


def test_relu_keeps_its_max(tmp_path):
    path = quantized_script(ConvAct(nn.ReLU()), (1, 3, 5, 5), tmp_path / "relu.pth")
    _, layers, _ = check_bit_exact(path)
    assert isinstance(layers[2], QRelu)


class Chain(nn.Module):
    """Several activations in a row, with a residual add of an activation's output."""

    def __init__(self):
        super().__init__()
        self.quant, self.dequant = tq.QuantStub(), tq.DeQuantStub()
        self.conv1, self.conv2 = nn.Conv2d(3, 3, 3, padding=1), nn.Conv2d(3, 3, 1)
        self.hswish, self.sigmoid = nn.Hardswish(), nn.Sigmoid()
        self.ff = nnq.FloatFunctional()

    def forward(self, x):
        x = self.hswish(self.conv1(self.quant(x)))
        y = self.ff.mul_scalar(self.sigmoid(self.conv2(x)), 0.5)
        return self.dequant(F.leaky_relu(y, 0.1))


def test_activation_chain(tmp_path):
    path = quantized_script(Chain(), (1, 3, 9, 7), tmp_path / "chain.pth")
    _, layers, _ = check_bit_exact(path)
    assert _kinds(layers).count("QLookup") == 4


# ----------------------------------------------------------------------------- the tables

class _Parser:
    """What build_lookup reads of the parser: the input's quantization and example tensor."""

    def __init__(self, scale, zero_point, example_shape=(1, 5, 7, 3), channels_last=True):
        raw = torch.zeros(example_shape, dtype=torch.uint8)
        self.qparams = (scale, zero_point)
        self.layers = []
        example = torch._make_per_tensor_quantized_tensor(raw, scale, zero_point)
        self.examples = [example.contiguous(memory_format=torch.channels_last) if channels_last else example]

    def need_quantized(self, what):
        pass


EXHAUSTIVE = {
    "quantized::hardswish": lambda t: torch.ops.quantized.hardswish(t, 0.031, 9),
    "quantized::elu": lambda t: torch.ops.quantized.elu(t, 0.023, 71, 0.9, 1.0, 1.0),
    "quantized::leaky_relu": lambda t: torch.ops.quantized.leaky_relu(t, 0.1, False, 0.017, 40),
    "aten::sigmoid": torch.sigmoid,
    "aten::tanh": torch.tanh,
    "aten::hardsigmoid": F.hardsigmoid,
    "aten::relu6": F.relu6,
    "aten::leaky_relu": lambda t: F.leaky_relu(t, 0.1),
    "aten::gelu": F.gelu,
    "quantized::add_scalar": lambda t: torch.ops.quantized.add_scalar(t, 0.4),
    "quantized::mul_scalar": lambda t: torch.ops.quantized.mul_scalar(t, -1.3),
}
QPARAMS = [(0.05, 128), (0.0173, 3), (0.11, 250), (0.0039215, 0)]


@pytest.mark.parametrize("engine", ["qnnpack", "x86"])
@pytest.mark.parametrize("name", sorted(EXHAUSTIVE))
def test_table_is_pytorch_on_all_256_inputs(name, engine):
    """Every uint8 input, in a 1-d tensor and in an odd channels-last 4-d one: the table's
    output is PyTorch's, except that at the tie bytes PyTorch's scalar tail loop may give the
    other neighbour (utils.aot.layers.lut), and then only there."""
    if engine not in torch.backends.quantized.supported_engines:
        pytest.skip(f"this PyTorch has no {engine} engine")
    torch.backends.quantized.engine = engine
    op = EXHAUSTIVE[name]
    for scale, zero_point in QPARAMS:
        layer = build_lookup(_Parser(scale, zero_point, channels_last=False), name, op, name)
        every = torch._make_per_tensor_quantized_tensor(torch.arange(256, dtype=torch.uint8), scale, zero_point)
        result = op(every)
        assert (result.q_scale(), result.q_zero_point()) == (layer.out_scale, layer.out_zero_point)
        assert np.array_equal(result.int_repr().numpy(), layer.table), (scale, zero_point)
        for v in range(256):
            single = op(torch._make_per_tensor_quantized_tensor(torch.tensor([v], dtype=torch.uint8), scale,
                                                                zero_point)).int_repr().item()
            assert single == layer.table[v] or v in layer.ties, (scale, zero_point, v)
        # all 256 values at every position of an odd channels-last tensor (a qnnpack conv's output)
        laid_out = build_lookup(_Parser(scale, zero_point), name, op, name)
        raw = np.roll(np.arange(11 * 5 * 7 * 3) % 256, 13).astype(np.uint8).reshape(11, 5, 7, 3)
        tensor = torch._make_per_tensor_quantized_tensor(torch.from_numpy(raw), scale, zero_point)
        got = op(tensor.contiguous(memory_format=torch.channels_last)).int_repr().numpy()
        differ = got != laid_out.golden(raw)
        assert np.isin(relabelled(raw, laid_out.relabel)[differ], laid_out.ties).all(), (scale, zero_point)


def test_ties_are_where_pytorch_depends_on_the_position():
    """aten::leaky_relu with its input's quantization and slope 0.1: (q - zp) * 0.1 is often an exact
    half step; torch's vector body and scalar tail round it to different neighbours. The table
    holds the vector body's answer, which PyTorch gives all but the last elements."""
    torch.backends.quantized.engine = "qnnpack"

    def op(t):
        return F.leaky_relu(t, 0.1)

    layer = build_lookup(_Parser(0.11, 250, channels_last=False), "leaky", op, "aten::leaky_relu",
                         (0.1,))
    assert layer.ties  # e.g. q = 205: -4.95 * 0.1 / 0.11 = -4.5 exactly
    v = layer.ties[0]
    full = op(torch._make_per_tensor_quantized_tensor(torch.full((4096,), v, dtype=torch.uint8), 0.11, 250))
    assert (full.int_repr().numpy() == layer.table[v]).all()
    odd = op(torch._make_per_tensor_quantized_tensor(torch.full((4095,), v, dtype=torch.uint8), 0.11, 250))
    assert odd.int_repr().numpy()[-1] != layer.table[v]  # the tail's answer


def test_clip_tables_lower_without_a_table():
    torch.backends.quantized.engine = "x86"
    for kind, op in [("aten::relu6", F.relu6), ("aten::hardtanh", lambda t: F.hardtanh(t, -0.3, 0.7))]:
        layer = build_lookup(_Parser(0.02, 100), kind, op, kind)
        assert layer.clip is not None and layer.relabel is None
        lo, hi = layer.clip
        assert np.array_equal(layer.table, np.clip(np.arange(256), lo, hi))
    torch.backends.quantized.engine = "qnnpack"


def test_op_callable_is_pytorchs():
    assert op_callable("aten::clamp") is torch.ops.aten.clamp
    assert op_callable("quantized::add_scalar") is torch.ops.quantized.add_scalar


# ----------------------------------------------------------------------------- model outputs

class Head(nn.Module):
    """QuantStub → conv → ReLU → flatten → linear (odd sizes) → DeQuantStub → `out`."""

    def __init__(self, out, classes=7):
        super().__init__()
        self.quant, self.dequant = tq.QuantStub(), tq.DeQuantStub()
        self.conv, self.relu = nn.Conv2d(3, 5, 3), nn.ReLU()
        self.fc = nn.Linear(5 * 3 * 5, classes)
        self.out = out

    def forward(self, x):
        x = self.fc(torch.flatten(self.relu(self.conv(self.quant(x))), 1))
        x = self.dequant(x)
        return self.out(x) if isinstance(self.out, nn.Module) else self.out(self, x)


class ConvOut(nn.Module):
    """No flatten: the output is the dequantized 4-d conv output (or an activation of it)."""

    def __init__(self, out):
        super().__init__()
        self.quant, self.dequant = tq.QuantStub(), tq.DeQuantStub()
        self.conv = nn.Conv2d(3, 5, 3)
        self.out = out

    def forward(self, x):
        return self.out(self, self.dequant(self.conv(self.quant(x))))


OUTPUTS = {
    # name: (model, meaning in metadata.json, output layer)
    "softmax": (lambda: Head(lambda m, x: F.softmax(x, dim=1)), "probabilities", "Softmax"),
    "torch.softmax_-1": (lambda: Head(lambda m, x: torch.softmax(x, -1)), "probabilities", "Softmax"),
    "nn.Softmax": (lambda: Head(nn.Softmax(dim=1)), "probabilities", "Softmax"),
    "log_softmax_-1": (lambda: Head(lambda m, x: F.log_softmax(x, dim=-1)), "log-probabilities", "LogSoftmax"),
    "nn.LogSoftmax": (lambda: Head(nn.LogSoftmax(dim=1)), "log-probabilities", "LogSoftmax"),
    "sigmoid": (lambda: Head(lambda m, x: torch.sigmoid(x)), "sigmoid outputs", "FloatActivation"),
    "nn.Sigmoid": (lambda: Head(nn.Sigmoid(), classes=1), "sigmoid outputs", "FloatActivation"),
    "tanh": (lambda: Head(lambda m, x: torch.tanh(x)), "tanh outputs", "FloatActivation"),
    "none": (lambda: Head(nn.Identity()), "the model's outputs", "Dequantize"),
    "none_4d": (lambda: ConvOut(lambda m, x: x), "the model's outputs", "Dequantize"),
    "softmax_4d_channels": (lambda: ConvOut(lambda m, x: F.softmax(x, dim=1)), "probabilities", "Softmax"),
    "sigmoid_4d": (lambda: ConvOut(lambda m, x: torch.sigmoid(x)), "sigmoid outputs", "FloatActivation"),
}


@pytest.mark.parametrize("name", sorted(OUTPUTS))
def test_model_output(name, tmp_path):
    make, meaning, last = OUTPUTS[name]
    path = quantized_script(make(), (1, 3, 5, 7), tmp_path / "out.pth")
    source, layers, x = check_bit_exact(path, count=32)
    assert type(layers[-1]).__name__ == last
    library = HostLibrary(tmp_path / "out-generic.tar", build_dir=tmp_path / "build")
    metadata = library.metadata
    assert metadata["outputs"][0]["meaning"] == meaning
    assert metadata["logits_quantization"]["from"] == ("output" if last == "Dequantize" else "debug_tap")
    out, _ = library.outputs(x)
    golden = np.asarray(golden_int8(layers, x), np.float32).reshape(out.shape)
    if last == "Dequantize":
        assert np.array_equal(out.view(np.uint32), golden.view(np.uint32))
    else:
        assert ulp_distance(out, golden).max() <= MAX_ULP
    torch_out = source.module(torch.from_numpy(x)).numpy().reshape(out.shape)
    assert np.allclose(out, torch_out, rtol=0, atol=2e-6)


def test_softmax_over_the_batch_is_refused(tmp_path):
    path = quantized_script(Head(lambda m, x: F.softmax(x, dim=0)), (1, 3, 5, 7), tmp_path / "batch.pth")
    with pytest.raises(StageError, match="batch dimension"):
        check_bit_exact(path)


def test_activation_on_the_float_output_is_refused_in_one_line(tmp_path):
    path = quantized_script(Head(lambda m, x: F.hardsigmoid(x)), (1, 3, 5, 7), tmp_path / "float.pth")
    with pytest.raises(StageError, match="aten::hardsigmoid on the float output after the DeQuantStub"):
        check_bit_exact(path)
