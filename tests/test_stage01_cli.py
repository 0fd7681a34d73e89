"""The stages' edges: --help, argparse errors, and one-line errors for bad model files."""
import pytest
import torch

from tests.fixtures_models import run_stage
from utils import quantize
from utils.cli import StageError
from utils.model import MnistModel
from utils.qmodel import QMnistModel

STAGES = ["0101mnist.py", "0102quantization.py", "0103mnist_QAT.py"]


def assert_one_line_error(proc, *fragments):
    assert proc.returncode == 1, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: ") and "Traceback" not in proc.stderr
    for fragment in fragments:
        assert fragment in lines[0]


@pytest.mark.parametrize("script", STAGES)
def test_help_shows_defaults(script):
    proc = run_stage(script, "--help", timeout=120)
    assert "--quick" in proc.stdout and "(default:" in proc.stdout


@pytest.mark.parametrize("script, args, message", [
    ("0101mnist.py", ["--epochs", "0"], "--epochs must be at least 1"),
    ("0101mnist.py", ["--lr", "fast"], "invalid float value"),
    ("0102quantization.py", ["--model", "resnet"], "invalid choice"),
    ("0102quantization.py", ["--calib-batches", "0"], "--calib-batches must be at least 1"),
    ("0102quantization.py", ["--train-epochs", "2"], "--train-epochs is for --model lenet5"),
    ("0103mnist_QAT.py", ["--qat-epochs", "-1"], "--qat-epochs must be at least 1"),
    ("0103mnist_QAT.py", ["--no-such-option"], "unrecognized arguments"),
])
def test_bad_arguments_are_argparse_errors(script, args, message):
    proc = run_stage(script, *args, check=False, timeout=120)
    assert proc.returncode == 2
    assert "usage:" in proc.stderr and message in proc.stderr
    assert "Traceback" not in proc.stderr


def test_missing_weights_names_file_and_stage(tmp_path):
    missing = tmp_path / "mnist_cnn.pth"
    proc = run_stage("0102quantization.py", "--weights", missing, "--out-dir", tmp_path,
                     check=False, timeout=120)
    assert_one_line_error(proc, str(missing), "0101mnist.py")
    missing = tmp_path / "lenet.pth"
    proc = run_stage("0102quantization.py", "--model", "lenet5", "--weights", missing,
                     "--out-dir", tmp_path, check=False, timeout=120)
    assert_one_line_error(proc, str(missing), "0103mnist_QAT.py", "--train-epochs")


def test_corrupt_and_mismatched_weights_are_one_line_errors(tmp_path):
    corrupt = tmp_path / "mnist_cnn.pth"
    corrupt.write_bytes(b"PK\x03\x04 this is not a model" * 10)
    proc = run_stage("0102quantization.py", "--weights", corrupt, "--out-dir", tmp_path,
                     check=False, timeout=120)
    assert_one_line_error(proc, str(corrupt), "not a readable weights file")
    lenet = tmp_path / "lenet.pth"
    torch.save(QMnistModel().state_dict(), lenet)
    proc = run_stage("0102quantization.py", "--weights", lenet, "--out-dir", tmp_path,
                     check=False, timeout=120)
    assert_one_line_error(proc, str(lenet), "does not fit MnistModel")


@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_load_int8_model_errors(tmp_path, quick_qat_model):
    with pytest.raises(StageError, match=r"qmnist_lenet5_scripted_int8\.pth not found.*"
                                         r"python3 0103mnist_QAT\.py"):
        quantize.load_int8_model(tmp_path / "qmnist_lenet5_scripted_int8.pth")
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(quick_qat_model.read_bytes()[:5000])
    with pytest.raises(StageError, match="not a readable TorchScript model") as info:
        quantize.load_int8_model(truncated)
    assert "\n" not in str(info.value)
    state = tmp_path / "state.pth"
    torch.save(QMnistModel().state_dict(), state)
    with pytest.raises(StageError, match="not a readable TorchScript model"):
        quantize.load_int8_model(state)
    fp32_script = tmp_path / "fp32_script.pth"
    torch.jit.trace(QMnistModel().eval(), torch.rand(1, 1, 28, 28)).save(str(fp32_script))
    with pytest.raises(StageError, match="not an int8"):
        quantize.load_int8_model(fp32_script)
    mnist_state = tmp_path / "mnist_state.pth"
    torch.save(MnistModel().state_dict(), mnist_state)
    with pytest.raises(StageError, match="does not fit QMnistModel"):
        quantize.load_fp32_model(QMnistModel(), mnist_state)
