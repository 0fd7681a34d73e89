"""Check a compiled model library against PyTorch and measure it for the Cortex-M7.

- host: the tar's C compiled with gcc (HostLibrary) on the MNIST test images, compared with
  PyTorch on the same float32 pixel/255 inputs: int8 → the uint8 logits identical on every
  image and the same digit; fp32 → max |difference| <= 1e-4 and the same digit.
- Cortex-M7: the library's objects cross-compiled with arm-none-eabi-gcc -Os, their
  text/data/bss (arm-none-eabi-size), and `nm -u`: nothing but libm/libc basics.
"""
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np

from utils.cli import StageError
from utils.aot import mlf

FP32_TOLERANCE = 1e-4
ARM_GCC = "arm-none-eabi-gcc"
ARM_SIZE = "arm-none-eabi-size"
ARM_NM = "arm-none-eabi-nm"
ARM_CFLAGS = ["-mcpu=cortex-m7", "-mthumb", "-mfpu=fpv5-sp-d16", "-mfloat-abi=hard", "-Os",
              "-std=gnu11", "-Wall", "-Wextra", "-ffunction-sections", "-fdata-sections"]
# What a library that needs no runtime may still call: libm, libc's memory functions and
# the compiler's own helpers (libgcc: __aeabi_*, soft division...).
ALLOWED_UNDEFINED = re.compile(r"^(expf|logf|nearbyintf|roundf|floorf|ceilf|fabsf|sqrtf|tanhf|powf|"
                               r"erff|exp|log|memcpy|memset|memmove|__aeabi_\w+|__\w+di\d|__\w+si\d)$")


def ulp_distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Units in the last place between float32 arrays (0 = the same bits)."""
    def ordered(x):
        bits = np.ascontiguousarray(x, np.float32).view(np.int32).astype(np.int64)
        return np.where(bits < 0, -(bits + 2**31), bits)
    return np.abs(ordered(a) - ordered(b))


def compare_outputs(out, ref_out, logits=None, ref_logits=None) -> dict:
    """How far two runs of a model on the same images agree: the one comparison every check
    uses (library vs PyTorch, library vs the golden backend's, device vs host). `bit_exact`:
    int8 (logits given) the uint8 logits of every image are identical; fp32 every output is
    the same bits."""
    # one row per input, whatever the model's output shape
    out = np.ascontiguousarray(out, np.float32).reshape(len(out), -1)
    ref_out = np.ascontiguousarray(ref_out, np.float32).reshape(len(ref_out), -1)
    same_bits = np.all(out.reshape(len(out), -1).view(np.uint32) == ref_out.reshape(len(ref_out), -1).view(np.uint32),
                       axis=1)
    figures = {
        "images": int(len(ref_out)),
        "argmax_agreement": float(np.mean(out.argmax(1) == ref_out.argmax(1))),
        "max_abs_diff": float(np.max(np.abs(out.astype(np.float64) - ref_out))),
        "max_ulp": int(ulp_distance(out, ref_out).max()),
        "outputs_identical_fraction": float(same_bits.mean()),
    }
    if logits is not None:
        logits = np.asarray(logits).reshape(len(logits), -1)
        identical = np.all(logits == np.asarray(ref_logits).reshape(len(logits), -1), axis=1)
        figures["uint8_exact_fraction"] = float(identical.mean())
        figures["bit_exact"] = bool(identical.all())
    else:
        figures["bit_exact"] = bool(same_bits.all())
    return figures


# A PT2E program is a float reference the integer library cannot match bit for bit: it must
# equal the golden integer model, and agree with the program on the argmax this often.
PT2E_ARGMAX_GOAL = 0.999


def failures(kind, figures, flow="eager") -> list:
    problems = []
    if kind == "int8" and flow == "pt2e":
        golden = figures["vs_golden_model"]
        if not golden["bit_exact"]:
            problems.append(f"uint8 logits identical to the golden integer model on "
                            f"{golden['uint8_exact_fraction']:.4%} of inputs < 100 %")
        if figures["argmax_agreement"] < PT2E_ARGMAX_GOAL:
            problems.append(f"argmax agreement with PyTorch's Q/DQ program {figures['argmax_agreement']:.4%} "
                            f"< {PT2E_ARGMAX_GOAL:.1%}")
        return problems
    if figures["argmax_agreement"] < 1.0:
        problems.append(f"argmax agreement {figures['argmax_agreement']:.4%} < 100 %")
    if kind == "int8" and figures["uint8_exact_fraction"] < 1.0:
        problems.append(f"uint8 logits identical on {figures['uint8_exact_fraction']:.4%} of images < 100 %")
    if kind == "fp32" and figures["max_abs_diff"] > FP32_TOLERANCE:
        problems.append(f"max abs diff {figures['max_abs_diff']:.3g} > {FP32_TOLERANCE}")
    return problems


def _need(tool):
    if shutil.which(tool) is None:
        raise StageError(f"{tool} not found; install gcc-arm-none-eabi and libnewlib-arm-none-eabi "
                         f"(apt, see apt-packages.txt)")


def cross_compile(mlf_dir: Path, out_dir: Path):
    """Compile each library source for the Cortex-M7; returns (objects, compiler warnings)."""
    _need(ARM_GCC)
    mlf_dir, out_dir = Path(mlf_dir), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    cflags = mlf.read_metadata(mlf_dir).get("cflags", [])
    objects, warnings = [], []
    for source in sorted((mlf_dir / mlf.SRC).glob("*.c")):
        obj = out_dir / (source.stem + ".o")
        cmd = ([ARM_GCC] + ARM_CFLAGS + list(cflags) + [f"-I{mlf_dir / mlf.INCLUDE}",
               f"-I{mlf_dir / mlf.RUNTIME_INCLUDE}", "-c", str(source), "-o", str(obj)])
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            first = next((line for line in proc.stderr.splitlines() if "error" in line), proc.stderr.strip())
            raise StageError(f"{ARM_GCC} failed on {source.name}: {first}")
        warnings += [line for line in proc.stderr.splitlines() if "warning:" in line]
        objects.append(obj)
    return objects, warnings


def object_sizes(objects) -> dict:
    """Summed text/data/bss of the objects (Berkeley format of arm-none-eabi-size)."""
    _need(ARM_SIZE)
    proc = subprocess.run([ARM_SIZE, "-B"] + [str(o) for o in objects], capture_output=True, text=True,
                          check=True)
    text = data = bss = 0
    for line in proc.stdout.splitlines()[1:]:
        fields = line.split()
        text, data, bss = text + int(fields[0]), data + int(fields[1]), bss + int(fields[2])
    return {"arm_text_bytes": text, "arm_data_bytes": data, "arm_bss_bytes": bss,
            "arm_flash_bytes": text + data}


def undefined_symbols(objects, nm=ARM_NM) -> list:
    """What the library's objects need from outside it (`nm -u` minus what they define)."""
    def symbols(flag):
        proc = subprocess.run([nm, flag] + [str(o) for o in objects], capture_output=True, text=True,
                              check=True)
        return {line.split()[-1] for line in proc.stdout.splitlines()
                if line.strip() and not line.endswith(":") and len(line.split()) >= 2}
    return sorted(symbols("-u") - symbols("--defined-only"))


def disallowed(symbols) -> list:
    return [s for s in symbols if not ALLOWED_UNDEFINED.match(s)]


def measure_arm(mlf_tar_or_dir) -> dict:
    """Cross-compile the library alone; sizes, undefined symbols and warnings."""
    with tempfile.TemporaryDirectory(prefix="mlf-arm-") as tmp:
        tmp = Path(tmp)
        source = Path(mlf_tar_or_dir)
        mlf_dir = source if source.is_dir() else mlf.unpack(source, tmp / "mlf")
        objects, warnings = cross_compile(mlf_dir, tmp / "obj")
        figures = object_sizes(objects)
        figures["arm_undefined_symbols"] = undefined_symbols(objects)
        figures["arm_warnings"] = warnings
    return figures
