"""Stage 0201: the AOT compiler on real TVM, real gcc/arm-none-eabi-gcc, real MNIST, real torch."""
import json
import re
import subprocess

import numpy as np
import pytest
import torch

from tests.fixtures_models import run_stage
from tests.fixtures_outputs import bad_output_paths, read_only_dir  # noqa: F401 (a fixture)
from utils.aot import verify
from utils.aot.backends.generic import GENERIC
from utils.aot.compiler import compile_model
from utils.aot.golden import golden_int8
from utils.aot.host_library import HostLibrary
from utils.aot.torchscript import last_quantized_layer, parse_int8, torch_int8_reference
from utils.aot.model_file import images_to_input, load_model
from utils.cli import StageError
from utils.data import mnist_arrays
from utils.reports import model_hash

REPORT_KEYS = ["arena_bytes", "constant_bytes", "arm_text_bytes", "arm_data_bytes", "arm_bss_bytes",
               "images", "argmax_agreement", "uint8_exact_fraction", "max_abs_diff",
               "compile_seconds", "model_hash", "quick"]
F746_MODEL_FLASH = 68 * 1024
ARENA_BUDGET = 8 * 1024


@pytest.fixture(scope="module")
def last_1000_images():
    """Test images the stage's own quick check (a seeded subset) mostly did not use."""
    images, labels = mnist_arrays(False)
    return images[-1000:], labels[-1000:]


def _error_line(proc):
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode != 0 and len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    return lines[0]


# ----------------------------------------------------------------------------- the stage

def test_stage_passes_on_the_quick_qat_model(quick_mlf_stage, quick_qat_model):
    out, report = quick_mlf_stage["proc"].stdout, quick_mlf_stage["report"]
    assert "uint8 logits identical      100.00%" in out
    assert "argmax agreement            100.00%" in out
    for key in REPORT_KEYS:
        assert key in report, key
    assert report["kind"] == "int8" and report["quick"] is True
    assert report["images"] >= 1000
    assert report["uint8_exact_fraction"] == 1.0 and report["argmax_agreement"] == 1.0
    assert report["model_hash"] == model_hash(quick_qat_model)
    assert report["int8"]["model_hash"] == report["model_hash"]  # the per-kind section
    assert report["arena_bytes"] <= ARENA_BUDGET
    assert report["arm_text_bytes"] + report["arm_data_bytes"] <= F746_MODEL_FLASH
    assert report["warnings"] == []
    assert not verify.disallowed(report["arm_undefined_symbols"])


def test_tar_layout_and_metadata(quick_mlf_dir, quick_qat_model):
    root = quick_mlf_dir
    sources = sorted(p.name for p in (root / "codegen/host/src").glob("*.c"))
    assert sources == ["default_lib0.c", "default_lib1.c"]
    assert (root / "codegen/host/include/tvmgen_default.h").is_file()
    assert (root / "runtime/include/tvm/ffi/c_api.h").is_file()
    assert (root / "runtime/include/dlpack/dlpack.h").is_file()
    assert "R.nn.conv2d" in (root / "src/relax.txt").read_text()

    meta = json.loads((root / "metadata.json").read_text())
    assert meta["inputs"] == [{"name": "input0", "shape": [1, 1, 28, 28], "dtype": "float32",
                               "bytes": 3136, "meaning": "pixel / 255"}]
    assert meta["outputs"][0]["name"] == "output" and meta["outputs"][0]["shape"] == [1, 10]
    assert meta["outputs"][0]["dtype"] == "float32" and meta["outputs"][0]["bytes"] == 40
    assert meta["kind"] == "int8" and meta["model_hash"] == model_hash(quick_qat_model)
    assert meta["source_model"] == str(quick_qat_model)
    assert meta["tvm_version"].startswith("0.27")
    assert meta["cflags"] == []
    assert meta["constant_bytes"] > 50000  # the int8 weights, kept int8
    assert len(meta["kernels"]) >= 5 and all(k.startswith("tvmgen_default_") for k in meta["kernels"])
    for header in meta["runtime_headers"]:
        assert (root / header).is_file()

    # the header says what metadata.json says
    header = (root / "codegen/host/include/tvmgen_default.h").read_text()
    macros = dict(re.findall(r"#define (TVMGEN_DEFAULT_\w+) (.+)", header))
    assert macros["TVMGEN_DEFAULT_INPUT0_SIZE"] == "3136"
    assert macros["TVMGEN_DEFAULT_OUTPUT_SIZE"] == "40"
    assert int(macros["TVMGEN_DEFAULT_WORKSPACE_SIZE"]) == meta["arena_bytes"]
    assert macros["TVMGEN_DEFAULT_MODEL_HASH"] == f'"{meta["model_hash"]}"'
    assert "struct tvmgen_default_inputs {\n  void* input0;\n};" in header
    assert "struct tvmgen_default_outputs {\n  void* output;\n};" in header
    assert ("int32_t tvmgen_default_run(struct tvmgen_default_inputs* inputs, "
            "struct tvmgen_default_outputs* outputs);") in header


def test_kernels_carry_exact_float_constants(quick_mlf_dir):
    """TVM prints float immediates with 7 digits; the compiler must restore all 9."""
    kernels = (quick_mlf_dir / "codegen/host/src/default_lib1.c").read_text()
    literals = re.findall(r"(?<![\w.])\d\.\d+e[+-]\d+f", kernels)
    assert literals
    assert all(re.fullmatch(r"\d\.\d{8}e[+-]\d+f", lit) for lit in literals), set(literals)
    assert "TVMBackendAllocWorkspace(" not in kernels


# ----------------------------------------------------------------------------- host library

def test_host_library_is_bit_exact_with_torch(quick_mlf_tar, quick_qat_model, last_1000_images, tmp_path):
    images, labels = last_1000_images
    lib = HostLibrary(quick_mlf_tar, build_dir=tmp_path)
    out, logits = lib.run_with_logits(images)
    source = load_model(quick_qat_model, "int8")
    layers = parse_int8(source.module, source.input_shape)
    x = images_to_input(images)
    ref_out, ref_logits = torch_int8_reference(source.module, layers, x)
    assert out.shape == (1000, 10) and out.dtype == np.float32
    assert np.array_equal(logits, ref_logits)  # every uint8 logit of every image
    assert np.array_equal(out.argmax(1), ref_out.argmax(1))
    assert np.abs(out - ref_out).max() < 1e-5
    # the readable numpy golden model agrees with torch too
    assert np.array_equal(golden_int8(layers, x, stop_after=last_quantized_layer(layers)), ref_logits)
    # the model is a (quick) digit classifier, not noise
    assert np.mean(lib.predict(images) == labels) > 0.8


def test_host_library_caches_builds_and_reads_both_image_shapes(quick_mlf_tar, last_1000_images, tmp_path):
    images = last_1000_images[0][:20]
    first = HostLibrary(quick_mlf_tar, build_dir=tmp_path)
    built_at = first.so_path.stat().st_mtime_ns
    second = HostLibrary(quick_mlf_tar, build_dir=tmp_path)
    assert second.so_path == first.so_path and second.so_path.stat().st_mtime_ns == built_at
    assert np.array_equal(first.run(images), second.run(images.reshape(20, 784)))
    assert np.array_equal(second.predict(images), second.run(images).argmax(1))
    meta = json.loads((first.mlf_dir / "metadata.json").read_text())
    assert second.model_hash == meta["model_hash"] and second.arena_bytes == meta["arena_bytes"]


def test_library_builds_with_only_its_flags_warning_free_and_standalone(quick_mlf_dir, tmp_path):
    includes = [f"-I{quick_mlf_dir}/codegen/host/include", f"-I{quick_mlf_dir}/runtime/include"]
    objects = []
    for source in sorted((quick_mlf_dir / "codegen/host/src").glob("*.c")):
        obj = tmp_path / (source.stem + ".o")
        subprocess.run(["gcc", "-std=gnu11", "-O2", "-Wall", "-Wextra", "-Werror", *includes, "-c",
                        str(source), "-o", str(obj)], check=True)
        objects.append(obj)
    assert not verify.disallowed(verify.undefined_symbols(objects, nm="nm"))
    # a program of our own, the way firmware uses the API
    main_c = tmp_path / "main.c"
    main_c.write_text("""
#include <stdio.h>
#include "tvmgen_default.h"
static float input[TVMGEN_DEFAULT_INPUT0_SIZE / sizeof(float)];
static float output[TVMGEN_DEFAULT_OUTPUT_SIZE / sizeof(float)];
int main(void) {
  struct tvmgen_default_inputs in = {input};
  struct tvmgen_default_outputs out = {output};
  struct tvmgen_default_inputs missing = {0};
  if (tvmgen_default_run(&missing, &out) == 0) return 2;
  int rc = tvmgen_default_run(&in, &out);
  printf("%d %s %d %.6f\\n", rc, TVMGEN_DEFAULT_MODEL_HASH, TVMGEN_DEFAULT_WORKSPACE_SIZE, output[0]);
  return rc;
}
""")
    exe = tmp_path / "main"
    subprocess.run(["gcc", "-std=gnu11", "-Wall", "-Wextra", "-Werror", *includes, str(main_c),
                    *map(str, objects), "-lm", "-o", str(exe)], check=True)
    proc = subprocess.run([str(exe)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout
    rc, digest, arena, first_logprob = proc.stdout.split()
    meta = json.loads((quick_mlf_dir / "metadata.json").read_text())
    assert digest == meta["model_hash"] and int(arena) == meta["arena_bytes"]
    assert float(first_logprob) < 0.0


def test_cortex_m7_cross_compile(quick_mlf_dir, tmp_path):
    objects, warnings = verify.cross_compile(quick_mlf_dir, tmp_path)
    assert warnings == []
    sizes = verify.object_sizes(objects)
    meta = json.loads((quick_mlf_dir / "metadata.json").read_text())
    assert sizes["arm_text_bytes"] + sizes["arm_data_bytes"] <= F746_MODEL_FLASH
    assert sizes["arm_text_bytes"] > meta["constant_bytes"]  # the weights are in flash
    assert meta["arena_bytes"] <= sizes["arm_bss_bytes"] <= meta["arena_bytes"] + 64  # the arena is RAM
    symbols = verify.undefined_symbols(objects)
    assert not verify.disallowed(symbols)
    assert not any("TVM" in s or "malloc" in s or "free" == s for s in symbols)


def test_compiling_twice_gives_the_same_tar(quick_qat_model, tmp_path):
    source = load_model(quick_qat_model)
    first = compile_model(source, tmp_path / "a.tar", GENERIC).tar.read_bytes()
    assert compile_model(source, tmp_path / "b.tar", GENERIC).tar.read_bytes() == first


# ----------------------------------------------------------------------------- fp32

def test_fp32_model_through_the_stage(quick_qat_model, tmp_path):
    fp32 = quick_qat_model.parent / "qmnist_lenet5_fp32.pth"  # 0103 --quick's float LeNet-5
    assert fp32.is_file()
    tar = tmp_path / "fp32.tar"
    proc = run_stage("0201tvm_no_optim.py", "--model", fp32, "--out", tar, "--quick", "--images", 300,
                     "--build-dir", tmp_path / "host-lib", reports_dir=tmp_path / "reports")
    report = json.loads((tmp_path / "reports/0201tvm_no_optim.json").read_text())
    assert report["kind"] == "fp32" and report["images"] == 300
    assert report["max_abs_diff"] <= 1e-4 and report["argmax_agreement"] == 1.0
    assert "uint8_exact_fraction" not in report["fp32"]
    assert report["warnings"] == [] and not verify.disallowed(report["arm_undefined_symbols"])
    assert tar.is_file(), proc.stdout
    lib = HostLibrary(tar, build_dir=tmp_path / "host-lib")
    assert lib.metadata["kind"] == "fp32" and lib.model_hash == model_hash(fp32)


def test_fp32_torchscript_is_read_as_its_network(tmp_path):
    from utils.qmodel import QMnistModel
    torch.manual_seed(0)
    model = QMnistModel().eval()
    path = tmp_path / "lenet5_fp32_scripted.pth"
    torch.jit.trace(model, torch.zeros(1, 1, 28, 28)).save(str(path))
    source = load_model(path)
    assert source.kind == "fp32" and "QMnistModel" in source.network
    x = torch.rand(2, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(source.module(x), model(x))


# ----------------------------------------------------------------------------- bad input

def test_missing_model_names_the_file_and_the_stage_that_makes_it(tmp_path):
    missing = tmp_path / "qmnist_lenet5_scripted_int8.pth"
    line = _error_line(run_stage("0201tvm_no_optim.py", "--model", missing, "--out", tmp_path / "x.tar",
                                 check=False))
    assert str(missing) in line and "0103mnist_QAT.py" in line
    assert not (tmp_path / "x.tar").exists()


def test_corrupt_model_names_the_file_and_the_stage(tmp_path):
    corrupt = tmp_path / "mnist_cnn.pth"
    corrupt.write_bytes(b"\x00not a model" * 100)
    with pytest.raises(StageError, match=r"mnist_cnn\.pth is not a PyTorch model file.*0101mnist\.py"):
        load_model(corrupt)
    truncated = tmp_path / "qmnist_lenet5_scripted_int8.pth"
    with open(truncated, "wb") as f:  # a zip that stops half way
        import zipfile
        with zipfile.ZipFile(f, "w") as z:
            z.writestr("archive/constants.pkl", b"garbage")
    with pytest.raises(StageError, match=r"not a readable TorchScript model.*0103mnist_QAT\.py"):
        load_model(truncated)


def test_float_model_where_int8_is_asked_and_the_reverse(quick_qat_model, tmp_path):
    fp32 = quick_qat_model.parent / "qmnist_lenet5_fp32.pth"
    line = _error_line(run_stage("0201tvm_no_optim.py", "--model", fp32, "--kind", "int8",
                                 "--out", tmp_path / "x.tar", check=False))
    assert "is an fp32 model" in line and "--kind int8" in line
    with pytest.raises(StageError, match="is an int8 model.*--kind fp32"):
        load_model(quick_qat_model, "fp32")


def test_int8_state_dict_is_refused_with_the_file_to_use(tmp_path):
    from utils.quantize import prepare_ptq, to_int8
    from utils.qmodel import QMnistModel
    prepared = prepare_ptq(QMnistModel())
    prepared(torch.rand(4, 1, 28, 28))
    path = tmp_path / "qmnist_lenet5_ptq.pth"
    torch.save(to_int8(prepared).state_dict(), path)
    with pytest.raises(StageError, match="int8 state_dict.*scripted_int8"):
        load_model(path)


def test_unsupported_module_is_named_in_one_line(tmp_path):
    """A layer no unit takes (here a quantized Upsample): one line naming the module, the line
    of the model's forward and what to do; no traceback."""
    import torch.nn as nn
    from tests.fixtures_layers import quantized_script
    from torch.ao.quantization import DeQuantStub, QuantStub

    class UpsampleNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.quant, self.dequant = QuantStub(), DeQuantStub()
            self.conv = nn.Conv2d(1, 4, 3)
            self.up = nn.Upsample(scale_factor=2)
            self.fc = nn.Linear(4 * 12 * 12, 10)

        def forward(self, x):
            x = self.up(self.conv(self.quant(x)))
            return self.dequant(self.fc(torch.flatten(x, 1)))

    path = quantized_script(UpsampleNet(), (1, 1, 8, 8), tmp_path / "upsample_int8.pth")
    line = _error_line(run_stage("0201tvm_no_optim.py", "--model", path, "--out", tmp_path / "x.tar",
                                 check=False))
    assert "in module up (Upsample)" in line and "test_0201_compiler.py:" in line
    assert "run it in float after a DeQuantStub" in line


def test_verification_failures_are_named():
    ref = np.log(np.full((3, 10), 0.1, np.float32))
    ref[:, 3] += 1
    lib = ref.copy()
    logits = np.zeros((3, 10), np.uint8)
    other = logits.copy()
    other[1, 0] = 1
    figures = verify.compare_outputs(lib, ref, other, logits)
    assert figures["uint8_exact_fraction"] == pytest.approx(2 / 3)
    assert any("uint8 logits identical" in p for p in verify.failures("int8", figures))
    lib[2, 5] += 2.0  # another digit and a large difference
    figures = verify.compare_outputs(lib, ref)
    problems = " ".join(verify.failures("fp32", figures))
    assert "argmax agreement" in problems and "max abs diff" in problems


# ----------------------------------------------------------------------------- bad output paths

@pytest.mark.parametrize("stage", ["0201tvm_no_optim.py", "0202tvm_optim.py"])
def test_unwritable_out_is_one_line_before_any_work(stage, quick_qat_model, read_only_dir, tmp_path):
    for case, out, fragment in bad_output_paths(read_only_dir, tmp_path, "lib.tar"):
        proc = run_stage(stage, "--model", quick_qat_model, "--out", out, check=False, timeout=60)
        lines = [line for line in proc.stderr.splitlines() if line.strip()]
        assert proc.returncode != 0 and "Traceback" not in proc.stderr, (case, proc.stderr)
        assert len(lines) == 1 and fragment in lines[0] and "--out" in lines[0], (case, lines)
        assert "compiled" not in proc.stdout and "model " not in proc.stdout, case  # nothing ran


def test_input_shape_is_checked_in_one_line(quick_qat_model, tmp_path):
    proc = run_stage("0201tvm_no_optim.py", "--model", quick_qat_model, "--out", tmp_path / "x.tar",
                     "--input-shape", "2x1x28x28", check=False, timeout=60)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and "batch 1" in proc.stderr
