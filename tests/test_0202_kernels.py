"""The Cortex-M chain kernels on shapes LeNet-5 does not have, bit for bit against 0201's
library: on the host (the plain-C micro-kernels) and on the emulated Cortex-M7 (the DSP ones,
in assembly). Each network is built so that a given kernel path and its edge cases run:

- one input channel, pooled (utvm_rowpairs_u8 + utvm_pool_pairs_p4c2): an even kernel height
  (row pairs only), a one-row kernel (the odd last row only) with an even width;
- int16 pooled input (utvm_pool_s16_p4c2) with a pair count that no unroll factor divides;
- uint8 input of 3 channels, pooled (rows widened on the stack, odd pixel stride: unaligned
  word loads);
- fully connected layers (utvm_widen_u8_x4 + utvm_dense_c4) whose inputs are not a multiple
  of 4 and whose outputs leave a partial block of channels;
- per-channel requantization multipliers and a fused ReLU6 (a PT2E program) on every path.
The networks end with their DeQuantStub, so the outputs are dequantized logits: the same
float bits on the host and on the emulator."""
import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.ao.quantization as tq

from tests.fixtures_layers import quantized_script
from tests.fixtures_tools import require_tools
from utils import bench
from utils.aot import mlf
from utils.aot.backends.cortex_m import CORTEX_M
from utils.aot.backends.generic import GENERIC
from utils.aot.compiler import compile_model
from utils.aot.host_library import HostLibrary
from utils.aot.model_file import load_model


class RowPairs(nn.Module):
    """1 channel, a 4x5 kernel (even height), then int16 pooled with 7 pairs per row."""
    shape = (1, 1, 27, 28)
    calls = ("utvm_rowpairs_u8(", "utvm_pool_pairs_p4c2(", "utvm_pool_s16_p4c2(x, ", "utvm_dense_c4(")

    def __init__(self):
        super().__init__()
        self.quant, self.dequant = tq.QuantStub(), tq.DeQuantStub()
        self.conv1 = nn.Conv2d(1, 2, (4, 5), padding=(0, 2))   # 24x28 -> pool 12x14
        self.conv2 = nn.Conv2d(2, 4, (3, 7), padding=(1, 3))   # int16 in, seg 14: 7 pairs
        self.fc1 = nn.Linear(4 * 6 * 7, 10)                      # 168 in, 10 out: 4 + 4 + 2
        self.fc2 = nn.Linear(10, 6)                              # 10 in: 2 groups + 2

    def forward(self, x):
        x = torch.max_pool2d(torch.relu(self.conv1(self.quant(x))), 2)
        x = torch.max_pool2d(self.conv2(x), 2)
        x = torch.relu(self.fc1(torch.flatten(x, 1)))
        return self.dequant(self.fc2(x))


class OneRow(nn.Module):
    """1 channel, a 1x4 kernel: no row pairs, the last row alone, two full pairs."""
    shape = (1, 1, 16, 19)
    calls = ("utvm_rowpairs_u8(", "utvm_pool_pairs_p4c2(", "utvm_dense_c4(")

    def __init__(self):
        super().__init__()
        self.quant, self.dequant = tq.QuantStub(), tq.DeQuantStub()
        self.conv = nn.Conv2d(1, 4, (1, 4))                     # 16x16 -> pool 8x8
        self.fc = nn.Linear(4 * 8 * 8, 3)                        # one partial block of 3

    def forward(self, x):
        x = torch.max_pool2d(torch.relu(self.conv(self.quant(x))), 2)
        return self.dequant(self.fc(torch.flatten(x, 1)))


class Colour(nn.Module):
    """3 uint8 channels pooled (5 pairs per row, odd pixel stride), then an unpooled int16 conv."""
    shape = (1, 3, 20, 22)
    calls = ("utvm_widen_u8_s16(", "utvm_pool_s16_p4c2(rows_ptr, ", "utvm_dense_c4(")

    def __init__(self):
        super().__init__()
        self.quant, self.dequant = tq.QuantStub(), tq.DeQuantStub()
        self.conv1 = nn.Conv2d(3, 4, 3)                          # 18x20 -> pool 9x10
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1)
        self.fc = nn.Linear(4 * 9 * 10, 5)                       # 360 in

    def forward(self, x):
        x = torch.max_pool2d(torch.relu(self.conv1(self.quant(x))), 2)
        x = torch.relu(self.conv2(x))
        return self.dequant(self.fc(torch.flatten(x, 1)))


class PerChannel(nn.Module):
    """The PyTorch 2 flow (per-channel weights, ReLU6 fused as the clip's upper bound): the
    RowPairs shapes, then an unpooled int16 conv with an odd output width, and the head."""
    shape = (1, 1, 27, 28)
    flow = "pt2e"
    calls = ("utvm_rowpairs_u8(", "utvm_pool_s16_p4c2(x, ", "utvm_dot_s16_p2c2(", "utvm_dense_c4(",
             "utvm_requantize_bits(")

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 2, (4, 5), padding=(0, 2))
        self.conv2 = nn.Conv2d(2, 4, (3, 7), padding=(1, 3))
        self.conv3 = nn.Conv2d(4, 4, 3, padding=1)              # 6x7: odd width, no pool
        self.fc1 = nn.Linear(4 * 6 * 7, 10)
        self.fc2 = nn.Linear(10, 6)
        with torch.no_grad():  # outputs beyond 6, so each ReLU6 clips some
            for layer in (self.conv1, self.conv3, self.fc1):
                layer.weight.mul_(40.0)

    def forward(self, x):
        x = torch.max_pool2d(nn.functional.relu6(self.conv1(x)), 2)
        x = torch.max_pool2d(torch.relu(self.conv2(x)), 2)
        x = nn.functional.relu6(self.conv3(x))
        x = nn.functional.relu6(self.fc1(torch.flatten(x, 1)))
        return self.fc2(x)


NETS = [RowPairs, OneRow, Colour, PerChannel]


def _pt2e_program(model, shape, path):
    from utils.quantize_pt2e import export_int8, prepare_ptq, save_program, to_int8
    torch.manual_seed(0)
    prepared = prepare_ptq(model, shape)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for _ in range(16):
            prepared(torch.rand((4,) + tuple(shape[1:]), generator=generator))
        # activation ranges wider than calibration saw (as training may leave them): a ReLU6's
        # 6.0 then falls below 255 and becomes the requantization's upper clip
        for module in prepared.modules():
            if hasattr(module, "max_val") and module.max_val.numel() == 1:
                module.max_val.mul_(1.5)
    return save_program(export_int8(to_int8(prepared), shape), path)


@pytest.fixture(scope="module", params=NETS, ids=[net.__name__ for net in NETS])
def libraries(request, tmp_path_factory):
    net = request.param
    tmp = tmp_path_factory.mktemp(net.__name__)
    if getattr(net, "flow", "eager") == "pt2e":
        path = _pt2e_program(net(), net.shape, tmp / "int8.pt2")
    else:
        path = quantized_script(net(), net.shape, tmp / "int8.pth", low=0.0, high=1.0)
    source = load_model(path, "int8")
    optim = compile_model(source, tmp / "optim.tar", CORTEX_M)
    base = compile_model(source, tmp / "base.tar", GENERIC)
    rng = np.random.default_rng(7)
    inputs = rng.integers(0, 256, (40,) + tuple(net.shape[1:]), dtype=np.uint8)
    return net, optim, base, inputs, tmp


def load_and_read(compiled):
    return compiled.layers


def _same_bits(a, b):
    return np.array_equal(np.asarray(a, np.float32).view(np.uint32), np.asarray(b, np.float32).view(np.uint32))


def test_the_chain_kernels_run(libraries):
    """The kernels this file is about are the ones compiled (not the per-layer lowering)."""
    net, optim, _, _, tmp = libraries
    if net is PerChannel:
        layers = load_and_read(optim)
        assert any(np.ndim(getattr(layer, "multiplier", 0)) for layer in layers)
        assert any(getattr(layer, "clip_high", 255) < 255 for layer in layers)
    source = mlf.unpack_once(optim.tar, tmp / "unpacked")
    kernels = "".join(p.read_text() for p in source.sources)
    for call in net.calls:
        assert call in kernels, call


def test_same_bits_on_the_host(libraries):
    _, optim, base, inputs, _ = libraries
    floats = bench.bytes_to_inputs(inputs)
    optim_out, optim_logits = HostLibrary(optim.tar).run_with_logits(floats)
    base_out, base_logits = HostLibrary(base.tar).run_with_logits(floats)
    assert np.array_equal(optim_logits, base_logits)
    assert _same_bits(optim_out, base_out)
    assert len(np.unique(base_logits)) > 3  # varied values, not a constant


def _on_the_emulator(tar, inputs, directory):
    plugin = bench.build_plugin(directory)
    images_c = bench.write_images_c(inputs.reshape(len(inputs), -1), directory / "images.c")
    elf = bench.build_elf(tar, directory / "fw", "-O2", images_c, tap=False).elf
    outputs = int(np.prod(load_outputs_shape(tar)))
    passes = bench.run_on_qemu(elf, plugin, outputs)[1:len(inputs) + 1]
    assert all(p.rc == 0 for p in passes)
    return np.stack([p.output for p in passes])


def load_outputs_shape(tar):
    import json
    import tarfile
    with tarfile.open(tar) as t:
        return json.load(t.extractfile("metadata.json"))["outputs"][0]["shape"]


def test_same_bits_on_the_emulator(libraries):
    require_tools("qemu-system-arm", "arm-none-eabi-gcc")
    _, optim, base, inputs, tmp = libraries
    inputs = inputs[:8]
    fast = _on_the_emulator(optim.tar, inputs, tmp / "emu-optim")
    slow = _on_the_emulator(base.tar, inputs, tmp / "emu-base")
    host = HostLibrary(optim.tar).run(bench.bytes_to_inputs(inputs))
    assert _same_bits(fast, slow)
    assert _same_bits(fast, host)  # dequantized logits: no libm in between
