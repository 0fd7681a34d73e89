"""Quantization steps on real data and on the models the stages really make."""
import copy
import importlib

import numpy as np
import pytest
import torch
from torch.ao.quantization import fuse_modules

from tests.fixtures_models import stage_report
from utils import quantize
from utils.data import mnist_arrays
from utils.model import MnistModel
from utils.qmodel import QMnistModel
from utils.reports import model_hash
from utils.train import images_to_tensor, mnist_loader, subset_indices

torch.set_num_threads(2)


def stage_module(name):
    return importlib.import_module(name)


def subset_of_test_set(limit, seed=1):
    """uint8 test images and labels of the quick modes' fixed subset."""
    images, labels = mnist_arrays(False)
    picked = subset_indices(len(labels), limit, seed)
    return images[picked], labels[picked]


def lenet5_fp32(quick_qat_model):
    return quantize.load_fp32_model(QMnistModel(), quick_qat_model.parent / "qmnist_lenet5_fp32.pth")


def fp32_argmax(model, images):
    with torch.no_grad():
        return model.eval()(images_to_tensor(images)).argmax(1).numpy()


# --- fusion ---------------------------------------------------------------------------------

@pytest.mark.parametrize("network", [QMnistModel, MnistModel])
def test_fusion_keeps_the_float_function(network):
    torch.manual_seed(0)
    model = network().eval()
    x = images_to_tensor(subset_of_test_set(256)[0])
    with torch.no_grad():
        expected = model(x)
        fused = quantize.fused_eval(model)
        got = fused(x)
    assert any("ReLU" in type(m).__name__ and "intrinsic" in type(m).__module__
               for m in fused.modules()), "nothing was fused"
    assert torch.equal(got, expected)


def test_fusion_on_trained_lenet5_and_the_seeds_wrong_fusion(quick_qat_model):
    model = lenet5_fp32(quick_qat_model)
    images, _ = subset_of_test_set(1000)
    x = images_to_tensor(images)
    with torch.no_grad():
        expected = model(x)
        assert torch.equal(quantize.fused_eval(model)(x), expected)
        # Fusing fc1 with relu3, which runs before fc1, would move the ReLU.
        wrong = fuse_modules(copy.deepcopy(model), [["fc1", "relu3"]])
        agreement = (wrong.eval()(x).argmax(1) == expected.argmax(1)).float().mean().item()
    assert agreement < 0.99


# --- calibration ----------------------------------------------------------------------------

def test_calibration_sets_the_observers(quick_qat_model):
    prepared = quantize.prepare_ptq(lenet5_fp32(quick_qat_model))
    with pytest.warns(UserWarning, match="observer"):
        before = quantize.observer_scales(prepared)
    seen = quantize.calibrate(prepared, mnist_loader(True, 64, limit=512), batches=4)
    after = quantize.observer_scales(prepared)
    assert seen == 256
    assert set(before) == set(after) and len(after) >= 5
    changed = [name for name in after if after[name] != before[name]]
    assert sorted(changed) == sorted(after), f"unchanged scales: {set(after) - set(changed)}"
    assert all(0 < s < 1 for s in after.values())
    # the input is pixel/255 in [0,1], so the input quantizer's step is 1/255
    assert after["quant.activation_post_process"] == pytest.approx(1 / 255, rel=0.02)


# --- int8 vs fp32 ---------------------------------------------------------------------------

def test_ptq_lenet5_agrees_with_its_fp32_model(quick_qat_model, quick_ptq_lenet5):
    images, labels = subset_of_test_set(2000)
    fp32 = fp32_argmax(lenet5_fp32(quick_qat_model), images)
    int8, _ = quantize.predict_int8(quantize.load_int8_model(quick_ptq_lenet5), images)
    assert (fp32 == labels).mean() > 0.9, "fp32 model too weak for a meaningful comparison"
    assert (int8 == fp32).mean() >= 0.99


def test_ptq_mnist_agrees_with_its_fp32_model(quick_fp32_model, quick_ptq_mnist):
    images, labels = subset_of_test_set(2000)
    fp32 = fp32_argmax(quantize.load_fp32_model(MnistModel(), quick_fp32_model), images)
    int8, _ = quantize.predict_int8(quantize.load_int8_model(quick_ptq_mnist), images)
    assert (fp32 == labels).mean() > 0.9
    assert (int8 == fp32).mean() >= 0.99


# --- the input contract: the reported accuracy on plain pixel/255 input -----------------------

def test_qat_model_contract_and_reported_accuracy(quick_qat_model):
    report = stage_report(quick_qat_model, "0103mnist_QAT")
    stage = stage_module("0103mnist_QAT")
    assert report["quick"] is True and report["test_images"] == stage.QUICK_TEST_IMAGES
    assert report["model_hash"] == model_hash(quick_qat_model)
    images, labels = subset_of_test_set(stage.QUICK_TEST_IMAGES)
    model = quantize.load_int8_model(quick_qat_model)
    digits, logprobs = quantize.predict_int8(model, images)
    accuracy = 100.0 * (digits == labels).mean()
    assert accuracy == pytest.approx(report["int8_accuracy"], abs=0.005)
    assert accuracy > 90
    # one image as the firmware sends it: [1,1,28,28] float pixel/255 → 10 log-probabilities
    with torch.no_grad():
        out = model(images_to_tensor(images[:1]))
    assert out.shape == (1, 10)
    assert torch.exp(out).sum().item() == pytest.approx(1.0, abs=1e-3)
    assert np.array_equal(out.numpy()[0], logprobs[0])


def test_fp32_model_contract_and_reported_accuracy(quick_fp32_model):
    report = stage_report(quick_fp32_model, "0101mnist")
    stage = stage_module("0101mnist")
    images, labels = subset_of_test_set(stage.QUICK_TEST_IMAGES)
    model = quantize.load_fp32_model(MnistModel(), quick_fp32_model)
    accuracy = 100.0 * (fp32_argmax(model, images) == labels).mean()
    assert accuracy == pytest.approx(report["test_accuracy"], abs=0.005)
    assert report["quick"] is True and report["model_hash"]


def test_ptq_reports(quick_ptq_lenet5, quick_ptq_mnist):
    for path, model in ((quick_ptq_lenet5, "lenet5"), (quick_ptq_mnist, "mnist")):
        report = stage_report(path, "0102quantization")[model]
        images, labels = subset_of_test_set(report["test_images"])
        digits, _ = quantize.predict_int8(quantize.load_int8_model(path), images)
        assert 100.0 * (digits == labels).mean() == pytest.approx(report["int8_accuracy"],
                                                                   abs=0.005)
        assert report["calib_images"] == report["calib_batches"] * 64
        assert report["int8_bytes"] < report["fp32_bytes"] / 3
    assert stage_report(quick_ptq_mnist, "0102quantization")["model"] == "mnist"


# --- TorchScript ----------------------------------------------------------------------------

def test_torchscript_round_trip(quick_qat_model, tmp_path):
    prepared = quantize.prepare_ptq(lenet5_fp32(quick_qat_model))
    quantize.calibrate(prepared, mnist_loader(True, 64, limit=512), batches=8)
    eager = quantize.to_int8(prepared)
    path = tmp_path / "roundtrip_int8.pth"
    quantize.save_scripted(eager, path)
    loaded = quantize.load_int8_model(path)
    images, _ = subset_of_test_set(500)
    x = images_to_tensor(images)
    with torch.no_grad():
        assert torch.equal(loaded(x), eager(x))
        # traced with batch 1, it must still run batched and give the same per-image results
        assert torch.equal(loaded(x[:1]), loaded(x)[:1])
    assert quantize.check_round_trip(eager, path, mnist_loader(False, 250, limit=500)) == 500


def test_stage_reports_its_round_trip(quick_qat_model):
    report = stage_report(quick_qat_model, "0103mnist_QAT")
    assert report["torchscript_matches_eager"] is True
    assert report["model_bytes"] == quick_qat_model.stat().st_size
