"""The main job end to end (quick budgets, host stand-in): every stage's CLI in sequence."""
import json
import subprocess
import sys

from utils import paths


def test_quick_pipeline_on_host_prints_every_stage_figure():
    done = subprocess.run([sys.executable, "-m", "utils.pipeline", "--quick", "--target", "host",
                           "--images", "200"], cwd=paths.ROOT, capture_output=True, text=True,
                          timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    summary = done.stdout.split("==== summary", 1)[1]
    for line_start in ("QAT LeNet-5", "TVM library", "TVM optimized", "firmware host", "on the device",
                       "validation"):
        assert line_start in summary
    reports = paths.BUILD_DIR / "quick" / "reports"
    validation = json.loads((reports / "0401pc_terminal_sendimage.json").read_text())
    assert validation["images"] == 200 and validation["answered"] == 200
    # two stand-ins by default, sharing the images; compact frames on the wire
    assert len(validation["boards"]) == 2 == json.loads((reports / "pipeline.json").read_text())["standins"]
    assert sum(board["answered"] for board in validation["boards"]) == 200
    assert validation["frame_form"] == "compact" and validation["wire_bytes_per_image"] < 795
    # the host stand-in runs the library 0202 verified bit-exact against 0201's: the digits
    # must agree exactly with the host int8 model
    assert validation["agreement_with_host"] == 1.0
    compiled = json.loads((reports / "0201tvm_no_optim.json").read_text())
    assert compiled["uint8_exact_fraction"] == 1.0
    optimized = json.loads((reports / "0202tvm_optim.json").read_text())
    assert optimized["vs_golden"]["bit_exact"] is True and optimized["uint8_exact_fraction"] == 1.0
    assert json.loads((reports / "pipeline.json").read_text())["library"] == "0202"
    assert "200 of 200 images answered" in summary
    assert json.loads((reports / "pipeline.json").read_text())["quick"] is True
