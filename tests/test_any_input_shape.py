"""A model of another shape than MNIST's (1x3x32x32 in, 6 out): 0201 reads the shape from
the TorchScript, verifies on synthetic inputs, and carries the shape into metadata.json and
tvmgen_default.h; the host library follows it; the MNIST firmware refuses it at compile time
in one line."""
import json
import tarfile

import numpy as np
import pytest
import torch.nn as nn
import torch.ao.quantization as tq

from tests.fixtures_layers import quantized_script
from tests.fixtures_models import run_stage
from utils.aot.host_library import HostLibrary
from utils.targets import TargetError, linux_process

SHAPE = (1, 3, 32, 32)


class Colour(nn.Module):
    def __init__(self):
        super().__init__()
        self.quant, self.dequant = tq.QuantStub(), tq.DeQuantStub()
        self.conv = nn.Conv2d(3, 4, 3, stride=2)
        self.relu = nn.ReLU()
        self.fc = nn.Linear(4 * 15 * 15, 6)

    def forward(self, x):
        x = self.relu(self.conv(self.quant(x)))
        return self.dequant(self.fc(x.reshape(x.size(0), -1)))


@pytest.fixture(scope="module")
def colour_tar(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("shape")
    model = quantized_script(Colour(), SHAPE, tmp / "colour.pth", low=0.0, high=1.0)
    tar = tmp / "colour.tar"
    reports = tmp / "reports"
    proc = run_stage("0201tvm_no_optim.py", "--model", model, "--out", tar, "--images", 300,
                     reports_dir=reports)
    assert "synthetic inputs (input [1, 3, 32, 32])" in proc.stdout
    return tar, json.loads((reports / "0201tvm_no_optim.json").read_text())


def test_the_shape_reaches_metadata_header_and_report(colour_tar):
    tar, report = colour_tar
    assert report["inputs"] == "synthetic" and report["input_shape"] == list(SHAPE)
    assert report["uint8_exact_fraction"] == 1.0 and report["images"] == 300
    with tarfile.open(tar) as t:
        meta = json.load(t.extractfile("metadata.json"))
        header = t.extractfile("codegen/host/include/tvmgen_default.h").read().decode()
    assert meta["inputs"][0]["shape"] == list(SHAPE) and meta["outputs"][0]["shape"] == [1, 6]
    assert f"#define TVMGEN_DEFAULT_INPUT0_SIZE {4 * 3 * 32 * 32}" in header
    assert "#define TVMGEN_DEFAULT_OUTPUT_SIZE 24" in header
    assert meta["logits_quantization"]["from"] == "output"  # the model ends with its DeQuantStub


def test_the_host_library_follows_the_shape(colour_tar):
    tar, _ = colour_tar
    lib = HostLibrary(tar)
    x = np.random.default_rng(0).uniform(0, 1, (5,) + SHAPE[1:]).astype(np.float32)
    out, logits = lib.outputs(x)
    assert out.shape == (5, 6) and logits.shape == (5, 6)
    with pytest.raises(Exception, match="takes float32 inputs of shape"):
        lib.outputs(np.zeros((2, 784), np.float32))


def test_the_mnist_firmware_refuses_it_in_one_line(colour_tar, tmp_path):
    tar, _ = colour_tar
    with pytest.raises(TargetError) as caught:
        linux_process.build(tar, tmp_path / "fw")
    message = str(caught.value)
    assert "\n" not in message and "28x28" in message
