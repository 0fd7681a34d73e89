"""The model zoo: the MLPerf Tiny shapes have the reference MACs and TF 'same' output sizes,
every zoo network quantizes (torch.ao eager, qnnpack) and traces, and `python3 -m utils.zoo
--quick` checks them all without a traceback: the built-ins bit-exact, refusals one line."""
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn as nn

from utils.paths import ROOT
from utils.zoo.catalog import BY_NAME, ZOO
from utils.quantize import to_int8
from utils.zoo.make import (as_float, prepare_zoo_ptq, prepare_zoo_qat, quiet, random_init,
                            synthetic_inputs, trace)
from utils.zoo.models import REFERENCE_MACS, count_macs

MLPERF = ["ds_cnn", "resnet8", "mobilenet_v1_025", "fc_autoencoder"]
OWN = [entry.name for entry in ZOO if entry.recipe != "stage"]
REPORT_KEYS = {"macs", "accepted", "uint8_exact_fraction", "argmax_agreement", "arena_bytes", "flash_bytes",
               "inputs", "images"}


def test_mlperf_macs_are_the_reference_models():
    # the figures of the reference .tflite files, written out here so REFERENCE_MACS cannot drift
    expected = {"ds_cnn": 2_656_768, "resnet8": 12_501_632, "mobilenet_v1_025": 7_489_664,
                "fc_autoencoder": 264_192}
    assert REFERENCE_MACS == expected
    for name in MLPERF:
        entry = BY_NAME[name]
        assert count_macs(entry.network(), entry.input_shape) == expected[name], name


def test_mac_counter_counts_groups_strides_and_linear():
    model = nn.Sequential(nn.Conv2d(4, 8, 3, padding=1, groups=2),    # 8*5*5 out x 2 x 9 = 3600
                          nn.Conv2d(8, 6, (1, 3), stride=2),          # 6*3*2 out x 8 x 3 = 864
                          nn.Flatten(), nn.Linear(36, 7))             # 36 x 7 = 252
    assert count_macs(model, (1, 4, 5, 5)) == 3600 + 864 + 252
    conv1d = nn.Sequential(nn.Conv1d(3, 5, 4))                        # 5*7 out x 3 x 4 = 420
    assert count_macs(conv1d, (1, 3, 10)) == 420


@pytest.mark.parametrize("name", ["ds_cnn", "resnet8", "mobilenet_v1_025"])
def test_mlperf_convs_have_tf_same_output_sizes(name):
    """Keras 'same': every conv's output is ceil(input / stride) in each spatial dimension."""
    entry = BY_NAME[name]
    model = entry.network().eval()
    seen = []

    def hook(module, inputs, output):
        expected = [math.ceil(size / stride) for size, stride in zip(inputs[0].shape[2:], module.stride)]
        seen.append((list(output.shape[2:]), expected))

    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            module.register_forward_hook(hook)
    with torch.no_grad():
        model(torch.zeros(entry.input_shape))
    assert seen and all(got == want for got, want in seen), seen


def test_synthetic_inputs_are_deterministic_and_span_the_range():
    shape = BY_NAME["ds_cnn"].input_shape
    a = synthetic_inputs(shape, 50, 0)
    assert a.shape == (50,) + shape[1:] and a.dtype == np.uint8
    assert np.array_equal(a, synthetic_inputs(shape, 50, 0))
    assert not np.array_equal(a[10:], synthetic_inputs(shape, 50, 1)[10:])
    assert a[0].max() == 0 and a[1].min() == 255 and a.min() == 0 and a.max() == 255
    x = as_float(a, shape)
    assert x.dtype == np.float32 and x.min() == 0.0 and x.max() == 1.0
    flat = synthetic_inputs(BY_NAME["fc_autoencoder"].input_shape, 12, 0)
    assert flat.shape == (12, 640) and len({row.tobytes() for row in flat}) == 12


# the quantized ops each network must show once converted, proof that its new layers got through
EXPECTED_OPS = {
    "mnist_separable": {"quantized::hardswish", "quantized::conv2d", "aten::adaptive_avg_pool2d"},
    "mnist_residual": {"quantized::add_relu", "quantized::add", "quantized::cat", "quantized::conv2d_relu"},
    "ds_cnn": {"quantized::conv2d_relu", "aten::avg_pool2d", "aten::softmax"},
    "resnet8": {"quantized::add_relu", "quantized::conv2d", "aten::avg_pool2d"},
    "mobilenet_v1_025": {"quantized::conv2d_relu", "aten::avg_pool2d"},
    "fc_autoencoder": {"quantized::linear_relu", "quantized::linear"},
}


@pytest.mark.parametrize("name", OWN)
def test_zoo_network_quantizes_fused_and_traces(name):
    entry = BY_NAME[name]
    x = as_float(synthetic_inputs(entry.input_shape, 16, 0), entry.input_shape)
    model = random_init(entry.network(), x, seed=0)
    prepared = prepare_zoo_ptq(model)
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in prepared.modules()), \
        "every BatchNorm folds into its conv or linear"
    with torch.no_grad():
        prepared(torch.from_numpy(x))
    int8_model = to_int8(prepared)
    traced = trace(int8_model, entry.input_shape)
    kinds = {node.kind() for node in traced.inlined_graph.nodes()}
    assert EXPECTED_OPS[name] <= kinds, EXPECTED_OPS[name] - kinds
    with torch.no_grad(), quiet():
        assert torch.equal(traced(torch.from_numpy(x)), int8_model(torch.from_numpy(x)))
    assert traced(torch.from_numpy(x[:1])).shape[0] == 1


@pytest.mark.parametrize("name", ["mnist_separable", "mnist_residual"])
def test_mnist_networks_train_under_fake_quantization(name):
    entry = BY_NAME[name]
    qat = prepare_zoo_qat(entry.network())
    x = torch.rand((8,) + entry.input_shape[1:])
    loss = nn.functional.nll_loss(qat(x), torch.arange(8) % 10)
    loss.backward()
    grads = [p.grad for p in qat.parameters() if p.requires_grad]
    assert grads and all(g is not None for g in grads)


def test_zoo_quick_reports_every_model(tmp_path):
    """The zoo end to end in quick mode, built-ins trained here: every model has its row;
    LeNet-5 and MnistModel are accepted and bit-exact with PyTorch on both backends; a
    refused model has accepted false and one line saying why; nothing raises."""
    env = dict(os.environ, TINYML_REPORTS_DIR=str(tmp_path / "reports"))
    proc = subprocess.run([sys.executable, "-m", "utils.zoo", "--quick", "--own-builtins",
                           "--weights-dir", tmp_path, "--out-dir", tmp_path / "libs"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "Traceback" not in proc.stdout + proc.stderr
    models = json.loads((tmp_path / "reports" / "zoo.json").read_text())["models"]
    assert set(models) == set(BY_NAME)
    for name, row in models.items():
        assert REPORT_KEYS <= set(row), (name, REPORT_KEYS - set(row))
        assert row["inputs"] == BY_NAME[name].inputs and row["images"] == 20
        assert row["inputs_about"].lower().startswith(row["inputs"])
        assert row["macs"] == count_macs(BY_NAME[name].network(), BY_NAME[name].input_shape)
        assert not any(r.get("crashed") for r in row["backends"].values()), (name, row["backends"])
        for backend, result in row["backends"].items():
            if not result["accepted"]:
                assert result["error"] and "\n" not in result["error"], (name, backend)
    for name in ("lenet5", "mnist_cnn"):
        for backend in ("generic", "cortex_m"):
            result = models[name]["backends"][backend]
            assert result["accepted"] and "error" not in result, (name, backend, result.get("error"))
            assert result["uint8_exact_fraction"] == 1.0 and result["argmax_agreement"] == 1.0
            assert result["arena_bytes"] > 0 and result["flash_bytes"] > 0
        assert models[name]["backends"]["cortex_m"]["same_bits_as_generic"]
        assert models[name]["accepted"] and models[name]["uint8_exact_fraction"] == 1.0
