"""The benchmark in --quick mode: real TVM, real arm-none-eabi-gcc, real QEMU with the
counting plugin, on the quick QAT model and its float LeNet-5, a few test images; the models'
rows (0201 and 0202 each, per-layer breakdown, cycle estimate, published peers) on the quick
models; the profiling hook in the AOT glue."""
import json
import os
import re
import subprocess
import sys
import tarfile

import numpy as np
import pytest

from tests.fixtures_models import run_stage
from utils import bench, bench_peers, paths
from utils.aot import verify
from utils.aot.backends import BACKENDS
from utils.aot.compiler import compile_model
from utils.aot.emit import PROFILE_DEFINE, PROFILE_FUNCTION, PROFILE_MARK
from utils.aot.model_file import load_model
from utils.targets import qemu_m7
from utils.zoo.catalog import MLPERF
from utils.zoo.models import REFERENCE_MACS

VARIANT_NAMES = {"fp32_no_optim", "fp32_optim", "int8_no_optim", "int8_optim"}
ROW_KEYS = ["instructions_per_inference", "instructions_min", "instructions_max", "instructions_per_mac",
            "macs", "flash_bytes", "arena_bytes", "stack_peak_bytes", "ram_bytes", "bit_exact",
            "outputs_bitwise_identical", "max_ulp", "max_abs_diff", "images", "opt_level",
            "by_opt_level", "model_hash", "accuracy"]
LENET5_MACS = 416_520  # conv1 117 600 + conv2 240 000 + conv3 48 000 + fc1 10 080 + fc2 840
IMAGES = 2


def _bench(models, tmp, name, *args):
    int8, fp32 = models
    return run_stage("bench/bench.py", "--quick", "--images", IMAGES, "--int8-model", int8,
                     "--fp32-model", fp32, "--build-dir", tmp / "build", "--reports-dir", tmp / name,
                     "--models", "none", *args, check=False)


@pytest.fixture(scope="module")
def models(quick_qat_model):
    return quick_qat_model, quick_qat_model.parent / "qmnist_lenet5_fp32.pth"


@pytest.fixture(scope="module")
def runs(models, tmp_path_factory):
    """Two runs of the quick bench sharing one build folder; their reports."""
    tmp = tmp_path_factory.mktemp("bench")
    docs_chart = paths.ROOT / "docs" / "img" / "bench.png"
    docs_before = docs_chart.read_bytes(), docs_chart.stat().st_mtime_ns
    first = _bench(models, tmp, "r1", "--variants", "int8_no_optim,int8_optim,fp32_no_optim")
    second = _bench(models, tmp, "r2")
    reports = []
    for proc, name in ((first, "r1"), (second, "r2")):
        report = json.loads((tmp / name / "bench.json").read_text())
        failed = {v: row.get("error") for v, row in report["variants"].items() if row["status"] != "ok"}
        # every variant asked for is measured: the main one (the Cortex-M backend's int8) above all
        assert not failed and proc.returncode == 0, (failed, proc.stdout[-2000:] + proc.stderr[-2000:])
        assert "Traceback" not in proc.stderr
        reports.append(report)
    docs_after = docs_chart.read_bytes(), docs_chart.stat().st_mtime_ns
    return {"reports": reports, "dir": tmp, "stdout": first.stdout, "docs_chart_untouched": docs_before == docs_after}


def _ok(report):
    return {name: row for name, row in report["variants"].items() if row["status"] == "ok"}


def test_report_keys(runs):
    first, second = runs["reports"]
    assert set(first["variants"]) == {"int8_no_optim", "int8_optim", "fp32_no_optim"}
    assert set(second["variants"]) == {"int8_no_optim", "int8_optim"}
    assert set(first["variants"]) <= VARIANT_NAMES
    assert first["quick"] is True and first["images"] == IMAGES and first["opt_levels"] == ["-O2"]
    assert set(_ok(first)) == set(first["variants"]) and set(_ok(second)) == set(second["variants"])
    for name, row in first["variants"].items():
        for key in ROW_KEYS:
            assert key in row, (name, key)
        assert row["images"] == IMAGES and row["opt_level"] == "-O2" and list(row["by_opt_level"]) == ["-O2"]
        assert row["backend"] == ("generic" if name.endswith("no_optim") else "cortex_m")
    for suffix in ("md", "png"):
        assert (runs["dir"] / "r1" / f"bench.{suffix}").stat().st_size > 100
    assert (runs["dir"] / "r1" / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # generated outputs go under the reports folder; the README's chart is copied there by hand
    assert runs["docs_chart_untouched"]
    md = (runs["dir"] / "r1" / "bench.md").read_text()
    assert "stand in for cycles" in md and "| int8_no_optim | -O2 |" in md


def test_counts_positive_exact_and_repeatable(runs):
    first, second = runs["reports"]
    for name, row in _ok(first).items():
        level = row["by_opt_level"]["-O2"]
        counts = level["instructions_per_image"]
        assert len(counts) == IMAGES and all(c > 100_000 for c in counts), (name, counts)
        assert row["instructions_min"] <= row["instructions_per_inference"] <= row["instructions_max"]
        assert min(counts) == row["instructions_min"] and max(counts) == row["instructions_max"]
        # the same image run twice in one boot costs the same
        assert level["repeat_identical"] and row["counts_repeatable"]
        # the markers alone cost a handful of instructions, subtracted from every count
        assert 0 < level["marker_overhead_instructions"] < 20
        # the firmware timer under -icount shift=0 (one tick per 40 instructions) agrees
        assert level["timer_minus_plugin_max_abs"] <= 2 * bench.TIMER_RESOLUTION, (name, level)
        assert row["macs"] == LENET5_MACS
        assert row["instructions_per_mac"] == pytest.approx(row["instructions_per_inference"] / LENET5_MACS,
                                                            abs=1e-3)
    for name, row in _ok(second).items():  # a second QEMU run: the very same counts
        if name in _ok(first):
            assert row["by_opt_level"]["-O2"]["instructions_per_image"] == \
                _ok(first)[name]["by_opt_level"]["-O2"]["instructions_per_image"], name


def test_outputs_match_the_host_build(runs):
    first, _ = runs["reports"]
    ok = _ok(first)
    for name in ("int8_no_optim", "int8_optim"):
        row = ok[name]
        level = row["by_opt_level"]["-O2"]
        assert row["bit_exact"] is True and level["uint8_exact_fraction"] == 1.0, name
        assert level["tap_build_outputs_identical"] is True
        assert level["argmax_agreement"] == 1.0
        # newlib's expf/logf against glibc's: at most an ulp or two in the log-probs
        assert row["outputs_bitwise_identical"] == (row["max_ulp"] == 0)
        assert row["max_ulp"] <= 4
        assert row["accuracy"] >= 0.5  # the quick model, 2 images: 0, 1 or 2 right; sanity only
    # the Cortex-M backend's int8 library computes exactly what the generic one's does
    assert ok["int8_optim"]["matches_golden"] is True, ok["int8_optim"]["vs_golden"]
    assert ok["int8_optim"]["vs_golden"]["uint8_exact_fraction"] == 1.0
    assert "matches_golden" not in ok["int8_no_optim"]
    fp32 = ok["fp32_no_optim"]
    assert fp32["by_opt_level"]["-O2"]["argmax_agreement"] == 1.0
    assert fp32["max_abs_diff"] <= 1e-4
    assert fp32["bit_exact"] == fp32["outputs_bitwise_identical"]
    # RAM is the static arena plus the measured stack peak
    for row in ok.values():
        assert 0 < row["stack_peak_bytes"] < 16 * 1024
        assert row["ram_bytes"] == row["arena_bytes"] + row["stack_peak_bytes"]
        assert row["flash_bytes"] > 10_000


def test_progress_is_shown(runs):
    out = runs["stdout"]
    assert "[1/3] int8_no_optim" in out and "instructions per inference" in out


def test_missing_model_is_an_error_row(tmp_path):
    proc = _bench((tmp_path / "missing.pth", tmp_path / "missing_fp32.pth"), tmp_path, "r",
                  "--variants", "int8_no_optim")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    row = json.loads((tmp_path / "r" / "bench.json").read_text())["variants"]["int8_no_optim"]
    assert row["status"] == "error" and "not found" in row["error"]
    assert "not measured: int8_no_optim" in proc.stderr


@pytest.mark.parametrize("args, message", [
    (["--variants", "int8_fast"], "unknown int8_fast"),
    (["--opt-levels=O9"], "-O9"),
    (["--images", "0"], "--images"),
])
def test_bad_arguments_are_one_line(tmp_path, args, message):
    proc = _bench((tmp_path / "a.pth", tmp_path / "b.pth"), tmp_path, "r", *args)
    assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr


def test_ulp_distance():
    a = np.array([1.0, -2.5, 0.0, -0.0], np.float32)
    b = np.nextafter(a, np.float32(np.inf))
    assert list(verify.ulp_distance(a, a)) == [0, 0, 0, 0]
    assert list(verify.ulp_distance(a, b)) == [1, 1, 1, 1]
    assert verify.ulp_distance(np.array([-1e-45], np.float32), np.array([1e-45], np.float32))[0] == 2


def test_mlperf_shaped_zoo_models_run_on_the_emulator(models, tmp_path):
    """The MLPerf Tiny shapes (their quick zoo weights), one input each on QEMU's Cortex-M7:
    a figure row per model under `models`, bit-exact with the host library; the Cortex-M
    backend may refuse one, in one line."""
    env = dict(os.environ, TINYML_REPORTS_DIR=str(tmp_path / "zoo-reports"))
    zoo = subprocess.run([sys.executable, "-m", "utils.zoo", "--quick", "--models", *MLPERF, "--backends",
                          "generic"], cwd=paths.ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert zoo.returncode == 0, zoo.stdout[-2000:] + zoo.stderr[-2000:]
    proc = run_stage("bench/bench.py", "--quick", "--variants", "int8_no_optim", "--models", "mlperf",
                     "--int8-model", models[0],
                     "--build-dir", tmp_path / "build", "--reports-dir", tmp_path / "r", check=False)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    report = json.loads((tmp_path / "r" / "bench.json").read_text())
    assert report["variants"]["int8_no_optim"]["status"] == "ok"
    short = {zoo: name for name, zoo in bench_peers.MODELS.items()}
    for name in MLPERF:
        rows = report["models"][short[name]]["variants"]
        generic = rows["int8_no_optim"]
        assert generic["status"] == "ok", (name, generic.get("error"))
        assert generic["bit_exact"] is True and generic["instructions_per_inference"] > 100_000
        assert generic["macs"] == REFERENCE_MACS[name] == bench_peers.PEERS[short[name]]["macs"]
        optim = rows["int8_optim"]
        if optim["status"] == "ok":
            assert optim["bit_exact_with_host"] and optim["bit_exact_with_0201"], (name, optim["vs_golden"])
        else:  # a refusal, in one line
            assert optim["refused"] is True and "\n" not in optim["error"], (name, optim["error"])


# ------------------------------------------------------------------ the models' rows

MODEL_ROW_KEYS = ["instructions_per_inference", "macs", "instructions_per_mac", "arena_bytes",
                  "stack_peak_bytes", "flash_bytes", "bit_exact_with_host", "bit_exact_with_0201",
                  "estimated_cycles", "estimated_ms_216mhz", "vs_peer", "per_layer", "stage"]


@pytest.fixture(scope="module")
def models_run(models, tmp_path_factory):
    """`bench.py --quick` for its default quick models (LeNet-5 and the autoencoder, whose quick
    weights the zoo makes here), the LeNet variants skipped."""
    tmp = tmp_path_factory.mktemp("bench-models")
    env = dict(os.environ, TINYML_REPORTS_DIR=str(tmp / "zoo-reports"))
    zoo = subprocess.run([sys.executable, "-m", "utils.zoo", "--quick", "--models", "fc_autoencoder",
                          "--backends", "generic"], cwd=paths.ROOT, env=env, capture_output=True, text=True,
                         timeout=900)
    assert zoo.returncode == 0, zoo.stdout[-2000:] + zoo.stderr[-2000:]
    docs = paths.ROOT / "docs" / "img"
    before = {p.name: p.read_bytes() for p in docs.glob("*.png")}
    proc = run_stage("bench/bench.py", "--quick", "--variants", "none", "--int8-model", models[0],
                     "--build-dir", tmp / "build", "--reports-dir", tmp / "r", check=False)
    after = {p.name: p.read_bytes() for p in docs.glob("*.png")}
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stdout[-3000:] + proc.stderr[-3000:]
    return {"report": json.loads((tmp / "r" / "bench.json").read_text()), "dir": tmp / "r",
            "stdout": proc.stdout, "docs_untouched": before == after}


def test_models_rows_have_both_backends_and_the_peer(models_run):
    report = models_run["report"]
    assert set(report["models"]) == {"lenet5", "ad"}
    for name, model in report["models"].items():
        assert model["peer"] == bench_peers.peer_row(name)
        assert "TCG-plugin" in model["peer"]["sources"]["tflm"]
        for variant, row in model["variants"].items():
            assert row["stage"] == {"int8_no_optim": "0201", "int8_optim": "0202"}[variant]
            if row["status"] != "ok":  # 0202 may refuse a model, in one line; never crash
                assert variant == "int8_optim" and row["refused"] is True and "\n" not in row["error"]
                continue
            for key in MODEL_ROW_KEYS:
                assert key in row, (name, variant, key)
            assert row["bit_exact_with_host"] is True and row["bit_exact_with_0201"] is True
            assert row["macs"] == model["peer"]["macs"]
            vs = row["vs_peer"]
            assert vs["tflm_cmsis_nn_over_ours"] == pytest.approx(
                model["peer"]["tflm_cmsis_nn_instructions"] / row["instructions_per_inference"], rel=1e-3)
            assert vs["arena_vs_tflm"] == pytest.approx(row["arena_bytes"] / model["peer"]["tflm_arena_bytes"],
                                                        rel=1e-3)
            if "tflm_flatbuffer_bytes" in model["peer"]:
                assert vs["flash_vs_tflm_flatbuffer"] == pytest.approx(
                    row["flash_bytes"] / model["peer"]["tflm_flatbuffer_bytes"], rel=1e-3)
            if "tflm_flash_bytes" in model["peer"]:
                assert model["peer"]["tflm_flash_bytes"] > model["peer"]["tflm_flatbuffer_bytes"]
                assert vs["flash_vs_tflm"] == pytest.approx(row["flash_bytes"] / model["peer"]["tflm_flash_bytes"],
                                                            rel=1e-3)
            if model["peer"].get("convolutional"):
                assert vs["arena_below_half_tflm"] == (row["arena_bytes"] < model["peer"]["tflm_arena_bytes"] / 2)
        assert model["variants"]["int8_no_optim"]["status"] == "ok"
    assert "meets_goal" in report["models"]["lenet5"]["variants"]["int8_optim"]
    for suffix in ("md", "png"):
        assert (models_run["dir"] / f"bench_models.{suffix}").stat().st_size > 100
    md = (models_run["dir"] / "bench_models.md").read_text()
    assert "| lenet5 | int8_optim (0202) |" in md and "TFLM+CMSIS-NN" in md
    # the committed chart under docs/img is copied there by hand from a real run
    assert models_run["docs_untouched"]


def test_cycle_estimate_per_variant(models_run):
    for name, model in models_run["report"]["models"].items():
        for variant, row in model["variants"].items():
            if row["status"] != "ok":
                continue
            level = row["by_opt_level"][row["opt_level"]]
            # the plugin's block counts, weighed by their lengths, are its exact instruction count
            assert level["estimate_block_counts_match_plugin"] is True, (name, variant)
            cycles = row["estimated_cycles"]
            assert row["estimated_ms_216mhz"] == pytest.approx(cycles / 216e3, rel=1e-3)
            # two instructions a cycle at best; no block costs more than a few cycles an instruction
            assert row["instructions_per_inference"] / 2 <= cycles <= 4 * row["instructions_per_inference"]
    check = models_run["report"]["cycle_estimate_validation"]
    assert check["within_tolerance"] is True and len(check["loops"]) >= 8


def test_per_layer_breakdown_covers_every_instruction(models_run):
    """The profiling build's segments: each kernel call and the glue between them add up to the
    profiling build's count, one entry per kernel call of the library."""
    out = models_run["stdout"]
    assert "per layer (profiling build" in out
    for name, model in models_run["report"]["models"].items():
        for variant, row in model["variants"].items():
            if row["status"] != "ok":
                continue
            per_layer = row["per_layer"]
            assert per_layer["profile_segments_add_up"] is True
            layers = per_layer["layers"]
            assert [layer["index"] for layer in layers] == list(range(len(layers))) and layers
            assert all(layer["instructions"] > 0 for layer in layers)
            assert sum(layer["instructions"] for layer in layers) + per_layer["glue_instructions"] == \
                per_layer["profile_instructions_per_inference"]
            # the marks cost a few instructions per call; the breakdown is of the same library
            assert abs(per_layer["profile_marks_cost_instructions"]) < 0.02 * row["instructions_per_inference"]
            # the layers' cycle estimates and the glue's add up to the whole build's, which is
            # within the marks' cost of the default build's
            cycles = [layer["estimated_cycles"] for layer in layers]
            assert all(c > 0 for c in cycles)
            assert abs(sum(cycles) + per_layer["glue_estimated_cycles"] - per_layer["profile_estimated_cycles"]) \
                <= len(layers) + 1
            assert per_layer["profile_estimated_cycles"] == pytest.approx(row["estimated_cycles"], rel=0.02)


def _compile_glue(c_file, include_dirs, opt, out, defines=()):
    obj = out.with_suffix(".o")
    subprocess.run([qemu_m7.CC, *qemu_m7.LIB_FLAGS, opt, *defines, *[f"-I{d}" for d in include_dirs],
                    "-c", str(c_file), "-o", str(obj)], check=True, capture_output=True)
    listing = subprocess.run(["arm-none-eabi-objdump", "-d", "-j", ".text.tvmgen_default_run", str(obj)],
                             check=True, capture_output=True, text=True).stdout
    return listing.split("Disassembly of section", 1)[1]


@pytest.mark.parametrize("backend", ["generic", "cortex_m"])
def test_profile_hook_leaves_the_default_build_unchanged(quick_qat_model, tmp_path, backend):
    """The glue with the hook compiles, without -DTVMGEN_DEFAULT_PROFILE, to the very code of
    the same glue with the hook's lines taken out; with it, to two calls per kernel call."""
    compiled = compile_model(load_model(quick_qat_model, "int8"), tmp_path / "lib.tar", BACKENDS[backend])
    with tarfile.open(compiled.tar) as tar:
        tar.extractall(tmp_path / "lib")
    root = tmp_path / "lib"
    glue = root / "codegen" / "host" / "src" / "default_lib0.c"
    text = glue.read_text()
    calls = len(compiled.metadata["calls"])
    assert text.count(f"{PROFILE_MARK}(") == 2 * calls + 2  # the calls + the hook's two definitions
    start = text.index(f"#ifdef {PROFILE_DEFINE}")
    end = text.index("#endif", start) + len("#endif")
    stripped = text[:start] + text[end:]
    stripped = re.sub(rf"^\s*{PROFILE_MARK}\(\d+, [01]\);\n", "", stripped, flags=re.M)
    assert PROFILE_MARK not in stripped and PROFILE_FUNCTION not in stripped
    bare = tmp_path / "bare.c"
    bare.write_text(stripped)
    includes = [root / "codegen" / "host" / "include", root / "runtime" / "include"]
    for opt in ("-Os", "-O2"):
        with_hook = _compile_glue(glue, includes, opt, tmp_path / f"hook{opt}")
        without = _compile_glue(bare, includes, opt, tmp_path / f"bare{opt}")
        assert with_hook == without, opt
        profiled = _compile_glue(glue, includes, opt, tmp_path / f"prof{opt}", [f"-D{PROFILE_DEFINE}"])
        assert profiled.count(f"<{PROFILE_FUNCTION}>") == 2 * calls, opt
