"""Models made by the real stage scripts in quick mode, once per test session.

`quick_qat_model` is what later stages (compiler, firmware) test against: a TorchScript int8
LeNet-5, input [1,1,28,28] float = pixel/255, output 10 log-probabilities.
"""
import subprocess
import sys

import pytest

from utils.paths import ROOT

STAGE_TIMEOUT = 300


def run_stage(script, *args, timeout=STAGE_TIMEOUT, check=True):
    """Run a top-level stage script as a real process; returns the CompletedProcess."""
    proc = subprocess.run([sys.executable, str(ROOT / script), *map(str, args)], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{script} {' '.join(map(str, args))} exited {proc.returncode}:\n"
                             f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


@pytest.fixture(scope="session")
def quick_qat_model(tmp_path_factory):
    """Path of a scripted int8 LeNet-5 made by `0103mnist_QAT.py --quick` (about 97 % accurate)."""
    out = tmp_path_factory.mktemp("qat") / "qmnist_lenet5_scripted_int8.pth"
    run_stage("0103mnist_QAT.py", "--quick", "--out", out)
    return out


@pytest.fixture(scope="session")
def quick_fp32_model(tmp_path_factory):
    """Path of an MnistModel state_dict made by `0101mnist.py --quick`."""
    out = tmp_path_factory.mktemp("fp32") / "mnist_cnn.pth"
    run_stage("0101mnist.py", "--quick", "--out", out)
    return out
