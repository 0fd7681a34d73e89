"""Models made by the real stage scripts in quick mode, once per test session.

`quick_qat_model` is what later stages (compiler, firmware) test against: a TorchScript int8
LeNet-5, input [1,1,28,28] float = pixel/255, output 10 log-probabilities.
Each fixture's stage writes its report beside its model: <model dir>/reports/<stage>.json.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from utils.paths import ROOT

STAGE_TIMEOUT = 300


def run_stage(script, *args, reports_dir=None, timeout=STAGE_TIMEOUT, check=True):
    """Run a top-level stage script as a real process; returns the CompletedProcess."""
    env = dict(os.environ)
    if reports_dir is not None:
        env["TINYML_REPORTS_DIR"] = str(reports_dir)
    proc = subprocess.run([sys.executable, str(ROOT / script), *map(str, args)], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{script} {' '.join(map(str, args))} exited {proc.returncode}:\n"
                             f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def stage_report(model_path, stage) -> dict:
    """The report a fixture's stage wrote beside its model."""
    return json.loads((Path(model_path).parent / "reports" / f"{stage}.json").read_text())


@pytest.fixture(scope="session")
def quick_qat_model(tmp_path_factory):
    """Path of a scripted int8 LeNet-5 made by `0103mnist_QAT.py --quick` (about 97 % accurate).
    Its float LeNet-5 (before QAT) is beside it: qmnist_lenet5_fp32.pth."""
    out = tmp_path_factory.mktemp("qat") / "qmnist_lenet5_scripted_int8.pth"
    run_stage("0103mnist_QAT.py", "--quick", "--out", out, reports_dir=out.parent / "reports")
    return out


@pytest.fixture(scope="session")
def quick_fp32_model(tmp_path_factory):
    """Path of an MnistModel state_dict made by `0101mnist.py --quick` (about 93 % accurate)."""
    out = tmp_path_factory.mktemp("fp32") / "mnist_cnn.pth"
    run_stage("0101mnist.py", "--quick", "--out", out, reports_dir=out.parent / "reports")
    return out


@pytest.fixture(scope="session")
def quick_ptq_lenet5(quick_qat_model, tmp_path_factory):
    """Path of the scripted int8 LeNet-5 that `0102quantization.py --model lenet5 --quick`
    makes from the float LeNet-5 of quick_qat_model."""
    out_dir = tmp_path_factory.mktemp("ptq_lenet5")
    run_stage("0102quantization.py", "--quick", "--model", "lenet5",
              "--weights", quick_qat_model.parent / "qmnist_lenet5_fp32.pth",
              "--out-dir", out_dir, reports_dir=out_dir / "reports")
    return out_dir / "qmnist_lenet5_ptq_scripted_int8.pth"


@pytest.fixture(scope="session")
def quick_ptq_mnist(quick_fp32_model, tmp_path_factory):
    """Path of the scripted int8 MnistModel that `0102quantization.py --quick` makes
    from quick_fp32_model."""
    out_dir = tmp_path_factory.mktemp("ptq_mnist")
    run_stage("0102quantization.py", "--quick", "--weights", quick_fp32_model,
              "--out-dir", out_dir, reports_dir=out_dir / "reports")
    return out_dir / "mnist_cnn_quant_scripted_int8.pth"
