"""The compiler stage run once per test session, as a real process, on the quick QAT model.

    quick_mlf_tar     Path of pkg-style mnistCNN.tar made by
                      `0201tvm_no_optim.py --model <quick_qat_model> --out <tmp>/mnistCNN.tar --quick`
                      (verified against PyTorch on 1000 images by the stage itself)
    quick_mlf_dir     that tar unpacked
    quick_mlf_stage   the finished process (stdout, stderr) and the stage's report
"""
import json
import tarfile
from pathlib import Path

import pytest

from tests.fixtures_models import run_stage


@pytest.fixture(scope="session")
def quick_mlf_stage(quick_qat_model, tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("mlf")
    tar = out_dir / "mnistCNN.tar"
    reports = out_dir / "reports"
    proc = run_stage("0201tvm_no_optim.py", "--model", quick_qat_model, "--out", tar, "--quick",
                     "--build-dir", out_dir / "host-lib", reports_dir=reports)
    report = json.loads((reports / "0201tvm_no_optim.json").read_text())
    return {"tar": tar, "proc": proc, "report": report, "host_lib_dir": out_dir / "host-lib"}


@pytest.fixture(scope="session")
def quick_mlf_tar(quick_mlf_stage) -> Path:
    return quick_mlf_stage["tar"]


@pytest.fixture(scope="session")
def quick_mlf_dir(quick_mlf_tar, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("mlf-unpacked")
    with tarfile.open(quick_mlf_tar) as tar:
        tar.extractall(root, filter="data")
    return root
