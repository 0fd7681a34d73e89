"""The main job on the PT2E path, as CI runs it: `python3 -m utils.pipeline --flow pt2e --quick`
(0103 --flow pt2e → 0201/0202 on the .pt2 program → firmware → qemu-m7 stand-in → 0401)."""
import json
import subprocess
import sys

from utils import paths


def test_quick_pt2e_pipeline_deploys_0202s_library():
    """The PT2E LeNet-5 (per-channel weights, fused ReLU6 clips) goes through 0202's kernels too;
    the firmware gets 0202's library, checked bit-exact against 0201's by the stage."""
    done = subprocess.run([sys.executable, "-m", "utils.pipeline", "--flow", "pt2e", "--quick"],
                          cwd=paths.ROOT, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    out = paths.BUILD_DIR / "quick-pt2e"
    reports = out / "reports"
    program = out / "qmnist_lenet5_int8.pt2"
    summary = done.stdout.split("==== summary", 1)[1]
    for line_start in ("QAT LeNet-5", "TVM library", "largest difference from PyTorch's Q/DQ program",
                       "TVM optimized", "firmware qemu-m7", "on the device", "validation"):
        assert line_start in summary, line_start
    assert "not deployed" not in summary
    assert "error:" not in done.stderr

    qat = json.loads((reports / "0103mnist_QAT.json").read_text())
    assert set(qat) == {"pt2e"} and qat["pt2e"]["model_path"] == str(program)
    compiled = json.loads((reports / "0201tvm_no_optim.json").read_text())["pt2e"]
    assert compiled["model_hash"] == qat["pt2e"]["model_hash"]
    assert compiled["vs_golden_model"]["bit_exact"] is True and compiled["argmax_agreement"] >= 0.999
    assert (reports / "0202tvm_optim.json").exists()

    job = json.loads((reports / "pipeline.json").read_text())
    assert job["flow"] == "pt2e" and job["quick"] is True and job["library"] == "0202"
    assert job["optimize_refused"] is None
    assert job["pt2e"]["library"] == "0202"

    validation = json.loads((reports / "0401pc_terminal_sendimage.json").read_text())
    assert validation["images"] == 300 and validation["answered"] == 300
    assert validation["host_model"] == str(program) and validation["model_matches_host"] is True
    # the board runs the library that equals the golden integer model; the host runs
    # PyTorch's Q/DQ program, which the library agrees with on the argmax >= 99.9 % of the time
    assert validation["agreement_with_host"] >= 0.99
    assert "300 of 300 images answered" in summary
