"""The convolution and linear units on the shapes people build: strided, depthwise, grouped and
dilated convolutions, Conv1d, fused conv-bn-relu, per-tensor and per-channel weights, odd
channel counts and sizes; PyTorch == golden == the compiled library, bit for bit."""
import pytest
import torch
import torch.nn as nn
import torch.ao.quantization as tq

from tests.fixtures_layers import check_bit_exact, quantized_script

PER_CHANNEL = tq.QConfig(activation=tq.HistogramObserver.with_args(reduce_range=False),
                         weight=tq.default_per_channel_weight_observer)
QCONFIGS = {"per_tensor": None, "per_channel": PER_CHANNEL}


class ConvHead(nn.Module):
    """QuantStub → conv (+ BN) → ReLU → flatten → linear → DeQuantStub."""

    def __init__(self, conv, head_in, bn=False):
        super().__init__()
        self.quant, self.dequant = tq.QuantStub(), tq.DeQuantStub()
        self.conv, self.relu = conv, nn.ReLU()
        self.bn = nn.BatchNorm2d(conv.out_channels) if bn else nn.Identity()
        self.fc = nn.Linear(head_in, 7)

    def forward(self, x):
        x = self.relu(self.bn(self.conv(self.quant(x))))
        return self.dequant(self.fc(torch.flatten(x, 1)))


CASES = {
    "stride2_pad1": (lambda: ConvHead(nn.Conv2d(3, 5, 3, stride=2, padding=1), 5 * 6 * 6), (1, 3, 11, 11)),
    "depthwise": (lambda: ConvHead(nn.Conv2d(6, 6, 3, padding=1, groups=6), 6 * 7 * 5), (1, 6, 7, 5)),
    "depthwise_stride2": (lambda: ConvHead(nn.Conv2d(4, 8, 3, stride=2, groups=4), 8 * 3 * 4), (1, 4, 7, 9)),
    "grouped": (lambda: ConvHead(nn.Conv2d(4, 6, 3, groups=2), 6 * 3 * 3), (1, 4, 5, 5)),
    "dilation2": (lambda: ConvHead(nn.Conv2d(2, 3, 3, dilation=2, padding=2), 3 * 9 * 9), (1, 2, 9, 9)),
    "pointwise": (lambda: ConvHead(nn.Conv2d(7, 3, 1), 3 * 4 * 3), (1, 7, 4, 3)),
}


@pytest.mark.parametrize("qconfig", sorted(QCONFIGS))
@pytest.mark.parametrize("case", sorted(CASES))
def test_convolutions(case, qconfig, tmp_path):
    make, shape = CASES[case]
    path = quantized_script(make(), shape, tmp_path / f"{case}.pth", qconfig=QCONFIGS[qconfig])
    check_bit_exact(path)


def test_conv_bn_relu_fused(tmp_path):
    model = ConvHead(nn.Conv2d(3, 5, 3, padding=1), 5 * 6 * 6, bn=True)
    with torch.no_grad():  # a BN that does something, so that folding it matters
        model.bn.running_mean.uniform_(-0.5, 0.5)
        model.bn.running_var.uniform_(0.5, 2.0)
        model.bn.weight.uniform_(0.5, 1.5)
    path = quantized_script(model, (1, 3, 6, 6), tmp_path / "cbr.pth", qconfig=PER_CHANNEL,
                            fuse=[("conv", "bn", "relu")])
    _, layers, _ = check_bit_exact(path)
    assert [type(layer).__name__ for layer in layers].count("QConv2d") == 1
    assert layers[1].relu  # the ReLU is the conv's


class Conv1dNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.quant, self.dequant = tq.QuantStub(), tq.DeQuantStub()
        self.conv, self.relu = nn.Conv1d(3, 5, 3, stride=2, padding=1), nn.ReLU()
        self.depthwise = nn.Conv1d(5, 5, 3, groups=5)
        self.fc = nn.Linear(5 * 3, 4)

    def forward(self, x):
        x = self.depthwise(self.relu(self.conv(self.quant(x))))
        return self.dequant(self.fc(torch.flatten(x, 1)))


@pytest.mark.parametrize("qconfig", sorted(QCONFIGS))
def test_conv1d(qconfig, tmp_path):
    path = quantized_script(Conv1dNet(), (1, 3, 10), tmp_path / "conv1d.pth", qconfig=QCONFIGS[qconfig],
                            fuse=[("conv", "relu")])
    _, layers, _ = check_bit_exact(path)
    assert sum(getattr(layer, "conv1d", False) for layer in layers) == 2


def test_per_channel_weights_keep_their_scales(tmp_path):
    path = quantized_script(CASES["grouped"][0](), (1, 4, 5, 5), tmp_path / "pc.pth", qconfig=PER_CHANNEL)
    _, layers, _ = check_bit_exact(path)
    conv = next(layer for layer in layers if type(layer).__name__ == "QConv2d")
    assert conv.multiplier.shape == (6,) and len(set(conv.multiplier.tolist())) > 1


def test_the_cortex_m_backend_takes_a_per_channel_grouped_conv(tmp_path):
    """A grouped, not depthwise, conv with per-channel weights has no Cortex-M kernel: 0202's
    per-layer lowering gives it the generic lowering, and the stage's check that its library
    has 0201's bits passes."""
    from tests.fixtures_models import run_stage
    path = quantized_script(CASES["grouped"][0](), (1, 4, 5, 5), tmp_path / "pc.pth", qconfig=PER_CHANNEL)
    proc = run_stage("0202tvm_optim.py", "--model", path, "--out", tmp_path / "x.tar", "--quick", check=False)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert (tmp_path / "x.tar").is_file()


@pytest.mark.parametrize("engine", ["fbgemm", "x86"])
@pytest.mark.parametrize("case", ["stride2_pad1", "depthwise_stride2", "grouped"])
def test_x86_and_fbgemm_arithmetic(case, engine, tmp_path):
    """Models converted for x86/fbgemm (torch's default qconfig there: per-channel weights,
    float bias) verify bit-exact under that engine."""
    make, shape = CASES[case]
    path = quantized_script(make(), shape, tmp_path / f"{case}.pth", engine=engine)
    check_bit_exact(path, engine=engine, count=200)
