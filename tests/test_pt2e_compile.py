"""0201 takes the PyTorch 2 path: fp32 torch.export programs of any architecture, PT2E int8
Q/DQ programs (torchao's prepare_pt2e/convert_pt2e), float TorchScript of other networks and
state_dicts with --model-class; bad programs are one line."""
import json
import sys
import warnings

import numpy as np
import pytest
import torch
import torch.nn as nn
from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
from torchao.testing.pt2e._xnnpack_quantizer import XNNPACKQuantizer, get_symmetric_quantization_config

from tests.fixtures_models import run_stage
from utils.data import mnist_arrays
from utils.qmodel import QMnistModel


class LeNetBN(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(1, 6, 5, padding=2), nn.BatchNorm2d(6)
        self.conv2, self.bn2 = nn.Conv2d(6, 16, 5), nn.BatchNorm2d(16)
        self.fc = nn.Linear(16 * 5 * 5, 10)

    def forward(self, x):
        x = torch.max_pool2d(torch.relu(self.bn1(self.conv1(x))), 2)
        x = torch.max_pool2d(torch.relu(self.bn2(self.conv2(x))), 2)
        return torch.log_softmax(self.fc(torch.flatten(x, 1)), 1)


class DepthwiseSeparable(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.pw = nn.Conv2d(8, 16, 1)
        self.fc = nn.Linear(16, 5)

    def forward(self, x):
        x = nn.functional.relu6(self.stem(x))
        x = nn.functional.relu6(self.pw(nn.functional.relu6(self.dw(x))))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


class Residual(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 6, 3, padding=1), nn.Conv2d(6, 6, 3, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(12, 4)

    def forward(self, x):
        y = torch.relu(self.a(x))
        z = torch.relu(self.b(y) + y)
        x = torch.cat([z, y], 1)
        return torch.softmax(self.fc(torch.flatten(self.pool(x), 1)), 1)


FP32 = {"lenet_bn": (LeNetBN, (1, 1, 28, 28)), "depthwise_relu6": (DepthwiseSeparable, (1, 3, 16, 16)),
        "residual": (Residual, (1, 3, 12, 12))}


def _exported(model, shape):
    torch.manual_seed(0)
    model = model.eval()
    for module in model.modules():  # BN statistics that matter
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.3, 0.3)
            module.running_var.uniform_(0.5, 2.0)
    return torch.export.export(model, (torch.rand(shape),))


def _stage(tmp_path, model, *args, check=True):
    reports = tmp_path / "reports"
    proc = run_stage("0201tvm_no_optim.py", "--model", model, "--out", tmp_path / "lib.tar", *args,
                     reports_dir=reports, check=check)
    report = reports / "0201tvm_no_optim.json"
    return proc, (json.loads(report.read_text()) if report.is_file() else None)


@pytest.mark.parametrize("name", sorted(FP32))
def test_fp32_programs_of_other_architectures(name, tmp_path):
    network, shape = FP32[name]
    torch.manual_seed(0)
    path = tmp_path / f"{name}.pt2"
    torch.export.save(_exported(network(), shape), str(path))
    _, report = _stage(tmp_path, path, "--images", 200)
    assert report["kind"] == "fp32" and report["max_abs_diff"] <= 1e-4 and report["argmax_agreement"] == 1.0


def test_fp32_torchscript_and_state_dict_of_another_network(tmp_path, monkeypatch):
    torch.manual_seed(0)
    model = Residual().eval()
    script = tmp_path / "residual_script.pth"
    torch.jit.trace(model, torch.rand(1, 3, 12, 12)).save(str(script))
    _, report = _stage(tmp_path, script, "--images", 100)
    assert report["kind"] == "fp32" and report["max_abs_diff"] <= 1e-4
    # a state_dict names its network with --model-class (a module importable from the cwd)
    state = tmp_path / "residual_state.pth"
    torch.save(model.state_dict(), state)
    proc, _ = _stage(tmp_path, state, "--input-shape", "1x3x12x12", check=False)
    assert proc.returncode == 1 and "--model-class" in proc.stderr and "Traceback" not in proc.stderr
    _, report = _stage(tmp_path, state, "--input-shape", "1x3x12x12", "--images", 100,
                       "--model-class", "tests.test_pt2e_compile:Residual")
    assert report["max_abs_diff"] <= 1e-4


def _pt2e(model, shape, calibration, path):
    """torch.export → prepare_pt2e (torchao's XNNPACK quantizer, per-channel) → calibrate →
    convert_pt2e → export → save."""
    model = model.eval()
    example = (calibration[:1],)
    quantizer = XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        prepared = prepare_pt2e(torch.export.export(model, example).module(), quantizer)
        for i in range(len(calibration)):
            prepared(calibration[i:i + 1])
        converted = convert_pt2e(prepared)
        torch.export.save(torch.export.export(converted, example), str(path))
    return path


@pytest.mark.parametrize("name", ["depthwise_relu6", "residual"])
def test_pt2e_int8_programs(name, tmp_path):
    network, shape = FP32[name]
    torch.manual_seed(0)
    path = _pt2e(network(), shape, torch.rand((16,) + shape[1:]), tmp_path / f"{name}_int8.pt2")
    _, report = _stage(tmp_path, path, "--images", 300)
    assert report["flow"] == "pt2e" and report["kind"] == "int8"
    assert report["vs_golden_model"]["bit_exact"] is True      # the library is the golden integer model
    assert report["argmax_agreement"] >= 0.999                 # against PyTorch's float Q/DQ program
    assert 0 <= report["max_lsb_diff"] <= 8 and report["uint8_exact_fraction"] > 0.5


def test_pt2e_lenet5_on_mnist(quick_qat_model, tmp_path):
    """LeNet-5 (the quick QAT run's float weights) quantized by PT2E: bit-exact with the golden
    integer model on MNIST test images, argmax within the goal of PyTorch's program."""
    model = QMnistModel()
    model.load_state_dict(torch.load(quick_qat_model.parent / "qmnist_lenet5_fp32.pth", weights_only=True))
    images, _ = mnist_arrays(True)
    calibration = torch.from_numpy(images[:64].astype(np.float32)[:, None] / np.float32(255))
    path = _pt2e(model, (1, 1, 28, 28), calibration, tmp_path / "lenet5_int8.pt2")
    _, report = _stage(tmp_path, path, "--images", 2000)
    assert report["inputs"] == "mnist" and report["images"] == 2000
    assert report["vs_golden_model"]["bit_exact"] is True and report["argmax_agreement"] >= 0.999


def test_bad_programs_are_one_line(tmp_path):
    # dynamic shapes
    dynamic = tmp_path / "dynamic.pt2"
    batch = torch.export.Dim("batch", min=1, max=8)
    torch.export.save(torch.export.export(LeNetBN().eval(), (torch.rand(2, 1, 28, 28),),
                                          dynamic_shapes={"x": {0: batch}}), str(dynamic))
    # quantize/dequantize nodes but no quantized layer
    class OnlyPool(nn.Module):
        def forward(self, x):
            qd = torch.ops.quantized_decomposed
            q = qd.quantize_per_tensor(x, 0.01, 0, -128, 127, torch.int8)
            y = torch.max_pool2d(qd.dequantize_per_tensor(q, 0.01, 0, -128, 127, torch.int8), 2)
            q = qd.quantize_per_tensor(y, 0.01, 0, -128, 127, torch.int8)
            return qd.dequantize_per_tensor(q, 0.01, 0, -128, 127, torch.int8)
    no_layers = tmp_path / "no_layers.pt2"
    torch.export.save(torch.export.export(OnlyPool(), (torch.rand(1, 1, 8, 8),)), str(no_layers))
    # a truncated archive
    truncated = tmp_path / "truncated.pt2"
    truncated.write_bytes(dynamic.read_bytes()[:2000])
    for path, fragment in ((dynamic, "dynamic shapes"), (no_layers, "no quantized conv or linear"),
                           (truncated, "")):
        proc, _ = _stage(tmp_path, path, check=False)
        errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
        assert proc.returncode == 1 and "Traceback" not in proc.stderr and len(errors) == 1, proc.stderr
        assert fragment in errors[0], errors[0]


if __name__ == "__main__":
    sys.exit(pytest.main([__file__]))


@pytest.mark.parametrize("name", ["mnist_separable", "mnist_residual", "ds_cnn", "resnet8", "mobilenet_v1_025",
                                  "fc_autoencoder"])
def test_pt2e_versions_of_the_zoo_models(name, tmp_path):
    """Each zoo network (random weights) through the project's PT2E quantizer: 0201 compiles
    it and the library equals the golden integer model on synthetic inputs."""
    from utils.aot.backends.generic import GENERIC
    from utils.aot.compiler import compile_model
    from utils.aot.golden import golden_int8
    from utils.aot.host_library import HostLibrary
    from utils.aot.model_file import load_model
    from utils.aot.torchscript import last_quantized_layer
    from utils.quantize_pt2e import export_int8, prepare_ptq, save_program, to_int8
    from utils.zoo.catalog import BY_NAME
    from utils.zoo.make import as_float, synthetic_inputs

    entry = BY_NAME[name]
    torch.manual_seed(0)
    shape = entry.input_shape
    calibration = torch.from_numpy(as_float(synthetic_inputs(shape, 8, 1), shape))
    prepared = prepare_ptq(entry.network().eval(), shape)
    with torch.no_grad():
        prepared(calibration)
    path = save_program(export_int8(to_int8(prepared), shape), tmp_path / f"{name}.pt2")
    source = load_model(path)
    assert source.flow == "pt2e" and source.input_shape == tuple(shape)
    compiled = compile_model(source, tmp_path / f"{name}.tar", GENERIC)
    x = as_float(synthetic_inputs(shape, 6, 0), shape)
    _, logits = HostLibrary(compiled.tar, build_dir=tmp_path / "host").outputs(x)
    golden = golden_int8(compiled.layers, x, stop_after=last_quantized_layer(compiled.layers))
    assert np.array_equal(logits, np.asarray(golden).reshape(logits.shape))
