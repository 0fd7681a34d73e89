"""The stages' edges: --help, argparse errors, one-line errors for bad model files and for
output paths that cannot be written (found before any training starts), the 0102 report."""
import json
import re

import pytest
import torch

from tests.fixtures_models import run_stage
from tests.fixtures_outputs import bad_output_paths, read_only_dir  # noqa: F401 (fixture)
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
        assert fragment in lines[0], lines[0]
    return lines[0]


@pytest.mark.parametrize("script", STAGES)
def test_help_shows_defaults(script):
    proc = run_stage(script, "--help", timeout=120)
    assert "--quick" in proc.stdout and "(default:" in proc.stdout
    # each option says its default once, and never as a bare None
    options = re.split(r"\n  -", proc.stdout.split("options:", 1)[1])
    for option in options:
        assert option.count("default:") <= 1, option
    assert "default: None" not in proc.stdout
    if script == "0101mnist.py":
        assert "learning rate (default: 0.05 onecycle, 1.0 adadelta)" in " ".join(
            proc.stdout.split())


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


def test_corrupt_and_mismatched_weights_say_what_the_file_is(tmp_path):
    """In our words: what the file is, what was expected; none of torch's own messages."""
    expected = "expected a float state_dict of MnistModel, as `python3 0101mnist.py` saves"
    corrupt = tmp_path / "mnist_cnn.pth"
    corrupt.write_bytes(b"PK\x03\x04 this is not a model" * 10)
    text = tmp_path / "notes.pth"
    text.write_text("hello")  # torch.load's own message for this: "(101)"
    whole = tmp_path / "whole_model.pth"
    torch.save(MnistModel(), whole)  # torch: "Weights only load failed..."
    script = tmp_path / "script.pth"
    torch.jit.trace(MnistModel().eval(), torch.rand(1, 1, 28, 28)).save(str(script))
    lenet = tmp_path / "lenet.pth"
    torch.save(QMnistModel().state_dict(), lenet)
    for path, found in ((corrupt, "is a damaged or truncated PyTorch file"),
                        (text, "is not a PyTorch file"),
                        (whole, "is a PyTorch file holding Python objects, not a state_dict"),
                        (script, "is a TorchScript float model"),
                        (lenet, "is a float state_dict of QMnistModel (LeNet-5)")):
        proc = run_stage("0102quantization.py", "--weights", path, "--out-dir", tmp_path,
                         check=False, timeout=120)
        line = assert_one_line_error(proc, f"{path} {found}", f"; {expected}")
        assert "(101)" not in line and "PytorchStreamReader" not in line
        assert "weights_only" not in line and "Weights only" not in line
    int8_state = tmp_path / "int8_state.pth"
    prepared = quantize.prepare_ptq(QMnistModel())
    prepared(torch.rand(4, 1, 28, 28))
    torch.save(quantize.to_int8(prepared).state_dict(), int8_state)
    with pytest.raises(StageError, match="is an int8 state_dict"):
        quantize.load_fp32_model(QMnistModel(), int8_state)


@pytest.mark.parametrize("script, option", [
    ("0101mnist.py", "--out"),
    ("0102quantization.py", "--out-dir"),
    ("0103mnist_QAT.py", "--out"),
])
def test_unwritable_outputs_fail_before_training(script, option, read_only_dir, tmp_path):
    """Every way an output path can be wrong ends in one line, before any training: nothing
    on stdout, no progress bar on stderr."""
    name = "int8" if option == "--out-dir" else "model.pth"
    for case, path, fragment in bad_output_paths(read_only_dir, tmp_path, name):
        proc = run_stage(script, "--quick", option, path, check=False, timeout=120)
        assert_one_line_error(proc, f"{option} {path}", fragment)
        assert proc.stdout == "", (case, proc.stdout)


@pytest.mark.parametrize("script, args", [
    ("0101mnist.py", ["--out", "{tmp}/fp32.pth", "--plot", "{ro}/curves.png"]),
    ("0102quantization.py", ["--model", "lenet5", "--train-epochs", "1", "--weights",
                             "{ro}/lenet.pth", "--out-dir", "{tmp}"]),
    ("0103mnist_QAT.py", ["--out", "{tmp}/int8.pth", "--fp32-out", "{ro}/fp32.pth"]),
])
def test_other_outputs_are_checked_before_training(script, args, read_only_dir, tmp_path):
    args = [a.format(tmp=tmp_path, ro=read_only_dir) for a in args]
    proc = run_stage(script, "--quick", *args, check=False, timeout=120)
    option = next(a for a in args if str(read_only_dir) in a)
    assert_one_line_error(proc, f"{args[args.index(option) - 1]} {option}",
                          "cannot write in folder")
    assert proc.stdout == ""
    assert not list(tmp_path.glob("*.pth"))


def test_ptq_report_has_a_section_per_model_and_names_the_latest(tmp_path):
    """Two runs into one reports folder: each model's figures in its own section, the top
    level those of the latest run, with "model" saying which."""
    reports = tmp_path / "reports"
    weights = {"mnist": tmp_path / "mnist_cnn.pth", "lenet5": tmp_path / "lenet5_fp32.pth"}
    # untrained weights: the report's layout is under test, not the accuracy
    torch.save(MnistModel().state_dict(), weights["mnist"])
    torch.save(QMnistModel().state_dict(), weights["lenet5"])
    sections = {}
    for model in ("mnist", "lenet5"):
        run_stage("0102quantization.py", "--quick", "--calib-batches", "2", "--model", model,
                  "--weights", weights[model], "--out-dir", tmp_path, reports_dir=reports)
        report = json.loads((reports / "0102quantization.json").read_text())
        sections[model] = report[model]
        top = {k: v for k, v in report.items() if k not in ("mnist", "lenet5")}
        assert top == report[model] and top["model"] == model
    assert report["mnist"] == sections["mnist"]  # the lenet5 run left it as it was
    assert report["mnist"]["model_hash"] != report["lenet5"]["model_hash"]
    assert report["lenet5"]["model_path"].endswith("qmnist_lenet5_ptq_scripted_int8.pth")


@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_load_int8_model_errors(tmp_path, quick_qat_model):
    with pytest.raises(StageError, match=r"qmnist_lenet5_scripted_int8\.pth not found.*"
                                         r"python3 0103mnist_QAT\.py"):
        quantize.load_int8_model(tmp_path / "qmnist_lenet5_scripted_int8.pth")
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(quick_qat_model.read_bytes()[:5000])
    expected = "; expected a TorchScript int8 model"
    with pytest.raises(StageError, match="is a damaged or truncated PyTorch file" + expected) \
            as info:
        quantize.load_int8_model(truncated)
    assert "\n" not in str(info.value)
    # an fp32 state_dict where the int8 model belongs: name both kinds, not "likely corrupted"
    state = tmp_path / "state.pth"
    torch.save(QMnistModel().state_dict(), state)
    with pytest.raises(StageError, match=r"is a float state_dict of QMnistModel \(LeNet-5\)"
                                         + expected) as info:
        quantize.load_int8_model(state)
    assert "corrupted" not in str(info.value)
    fp32_script = tmp_path / "fp32_script.pth"
    torch.jit.trace(QMnistModel().eval(), torch.rand(1, 1, 28, 28)).save(str(fp32_script))
    with pytest.raises(StageError, match="is a TorchScript float model" + expected):
        quantize.load_int8_model(fp32_script)
    mnist_state = tmp_path / "mnist_state.pth"
    torch.save(MnistModel().state_dict(), mnist_state)
    with pytest.raises(StageError, match="is a float state_dict of MnistModel; expected a float "
                                         "state_dict of QMnistModel"):
        quantize.load_fp32_model(QMnistModel(), mnist_state)
