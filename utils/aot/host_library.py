"""Run a Model Library Format tar on this PC: compile its C with gcc into a shared object
and call it through ctypes. Inputs are float32 arrays of the model's input shape; uint8
MNIST images become pixel / 255 in float32, the same bits as the firmware's
`(float)pixel / 255.0f` (IEEE division is correctly rounded in both).

    lib = HostLibrary("pkg/mnistCNN/mnistCNN.tar")
    logprobs = lib.run(images_uint8)      # float32 [N, 10]
    digits = lib.predict(images_uint8)    # int64 [N]
    out, logits = lib.outputs(x)          # any model: float32 [N, outputs], uint8 logits or None

Builds are cached by the tar's content hash under build/host-lib/<hash>/ (or build_dir).
The harness also compiles the library's debug tap (TVMGEN_DEFAULT_DEBUG_TAP): for int8
models `run_with_logits` returns the uint8 logits the library computed, recovered exactly
from the dequantized tensor the last kernel reads. Firmware builds never define it.
"""
import ctypes
import hashlib
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np

from utils import paths
from utils.cli import StageError
from utils.aot import mlf

HOST_CFLAGS = ["-std=gnu11", "-O2", "-fPIC", "-Wall", "-Wextra", "-ffp-contract=off"]

HARNESS_C = r"""
/* Host harness: runs the library on N float inputs. */
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include "tvmgen_default.h"

#define IN_FLOATS (TVMGEN_DEFAULT_INPUT0_SIZE / sizeof(float))
#define OUT_FLOATS (TVMGEN_DEFAULT_OUTPUT_SIZE / sizeof(float))

#ifdef TVMGEN_DEFAULT_DEBUG_TAP
const void* tvmgen_default_debug_tap_ptr(void);
#endif

int32_t harness_input_floats(void) { return (int32_t)IN_FLOATS; }
int32_t harness_output_floats(void) { return (int32_t)OUT_FLOATS; }
int32_t harness_arena_bytes(void) { return TVMGEN_DEFAULT_WORKSPACE_SIZE; }
const char* harness_model_hash(void) { return TVMGEN_DEFAULT_MODEL_HASH; }

int32_t harness_run(const float* in, int32_t count, float* out, uint8_t* tap, int32_t tap_bytes) {
  static float input[IN_FLOATS];
  static float output[OUT_FLOATS];
  struct tvmgen_default_inputs inputs = {input};
  struct tvmgen_default_outputs outputs = {output};
  for (int32_t n = 0; n < count; ++n) {
    memcpy(input, in + (size_t)n * IN_FLOATS, sizeof(input));
    int32_t rc = tvmgen_default_run(&inputs, &outputs);
    if (rc != 0) {
      return rc;
    }
    memcpy(out + (size_t)n * OUT_FLOATS, output, sizeof(output));
#ifdef TVMGEN_DEFAULT_DEBUG_TAP
    if (tap != NULL) {
      memcpy(tap + (size_t)n * (size_t)tap_bytes, tvmgen_default_debug_tap_ptr(), (size_t)tap_bytes);
    }
#else
    (void)tap;
    (void)tap_bytes;
#endif
  }
  return 0;
}
"""


def content_hash(mlf_path) -> str:
    """16 hex digits of the tar's bytes (or of an unpacked tree's files and names)."""
    path = Path(mlf_path)
    digest = hashlib.sha256()
    if path.is_dir():
        for file in sorted(p for p in path.rglob("*") if p.is_file()):
            digest.update(str(file.relative_to(path)).encode() + b"\0" + file.read_bytes())
    else:
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def compile_shared(mlf_dir: Path, out_so: Path, extra_flags=()):
    """gcc the library + harness into a shared object; raises StageError with gcc's message."""
    mlf_dir = Path(mlf_dir)
    metadata = mlf.read_metadata(mlf_dir)
    harness = out_so.parent / "harness.c"
    harness.write_text(HARNESS_C)
    sources = sorted((mlf_dir / mlf.SRC).glob("*.c"))
    defines = [f"-D{metadata['debug_tap']['define']}"] if "debug_tap" in metadata else []
    cmd = (["gcc"] + HOST_CFLAGS + list(metadata.get("cflags", [])) + list(extra_flags) + defines
           + [f"-I{mlf_dir / mlf.INCLUDE}", f"-I{mlf_dir / mlf.RUNTIME_INCLUDE}", "-shared", "-o", str(out_so)]
           + [str(s) for s in sources] + [str(harness), "-lm"])
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        first = next((line for line in proc.stderr.splitlines() if "error" in line), proc.stderr.strip())
        raise StageError(f"host gcc failed on the model library: {first}")
    return proc.stderr


class HostLibrary:
    def __init__(self, mlf_path_or_tar, build_dir=None):
        source = Path(mlf_path_or_tar)
        if not source.exists():
            raise StageError(f"model library {source} not found; make it with `python3 0201tvm_no_optim.py`")
        self.source = source
        self.hash = content_hash(source)
        base = Path(build_dir) if build_dir else paths.BUILD_DIR / "host-lib"
        self.dir = base / self.hash
        self.so_path = self.dir / "libmodel.so"
        if not self.so_path.is_file():
            self._build(base)
        self.mlf_dir = self.dir / "mlf"
        self.metadata = mlf.read_metadata(self.mlf_dir)
        self.warnings = (self.dir / "gcc-warnings.txt").read_text()
        self._lib = ctypes.CDLL(str(self.so_path))
        self._lib.harness_run.restype = ctypes.c_int32
        self._lib.harness_run.argtypes = [ctypes.c_void_p, ctypes.c_int32, ctypes.c_void_p,
                                          ctypes.c_void_p, ctypes.c_int32]
        self._lib.harness_model_hash.restype = ctypes.c_char_p
        self.input_floats = self._lib.harness_input_floats()
        self.output_floats = self._lib.harness_output_floats()
        self.arena_bytes = self._lib.harness_arena_bytes()
        self.model_hash = self._lib.harness_model_hash().decode()
        self.input_shape = tuple(self.metadata["inputs"][0]["shape"])

    def _build(self, base: Path):
        # Built beside its final place and renamed, so concurrent users never see half a build.
        base.mkdir(parents=True, exist_ok=True)
        staging = base / f".{self.hash}.{os.getpid()}"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        try:
            if self.source.is_dir():
                shutil.copytree(self.source, staging / "mlf")
            else:
                mlf.unpack(self.source, staging / "mlf")
            warnings = compile_shared(staging / "mlf", staging / "libmodel.so")
            (staging / "gcc-warnings.txt").write_text(warnings)
            try:
                staging.rename(self.dir)
            except OSError:
                if not self.so_path.is_file():
                    raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def as_input(self, x):
        """float32 [N, input floats]: float arrays as they are; uint8 images as pixel / 255."""
        x = np.asarray(x)
        if x.dtype == np.uint8:
            x = x.astype(np.float32) / np.float32(255.0)
        if x.dtype != np.float32 or x.size % self.input_floats:
            raise StageError(f"{self.source} takes float32 inputs of shape {list(self.input_shape)}, not "
                             f"{x.dtype} {list(x.shape)}")
        return np.ascontiguousarray(x.reshape(-1, self.input_floats))

    def _run(self, x, with_tap):
        images = self.as_input(x)
        count = len(images)
        out = np.zeros((count, self.output_floats), np.float32)
        tap = None
        tap_bytes = 0
        if with_tap:
            info = self.metadata.get("debug_tap")
            if info is None:
                raise StageError(f"{self.source} has no debug tap (an fp32 model or an old tar)")
            tap = np.zeros((count,) + tuple(info["shape"][1:]), np.dtype(info["dtype"]))
            tap_bytes = tap.nbytes // max(count, 1)
        rc = self._lib.harness_run(images.ctypes.data, count, out.ctypes.data,
                                   None if tap is None else tap.ctypes.data, tap_bytes)
        if rc != 0:
            raise StageError(f"tvmgen_default_run returned {rc}")
        return out, tap

    def run(self, x) -> np.ndarray:
        """float32 [N, outputs] for N inputs (float32 of the input shape, or uint8 images)."""
        return self._run(x, False)[0]

    def run_with_tap(self, x):
        """(outputs [N, outputs], the debug tap's tensor per input)."""
        return self._run(x, True)

    def run_with_logits(self, x):
        """int8 models: (outputs, uint8 logits as the library computed them), the logits
        recovered from the dequantized values of the debug tap, or of the output itself."""
        quant = self.metadata.get("logits_quantization")
        if quant is None:
            raise StageError(f"{self.source} is not an int8 model library")
        if quant.get("from") == "output":
            out = self._run(x, False)[0]
            return out, mlf.uint8_logits_from_tap(out, self.metadata)
        out, tap = self._run(x, True)
        return out, mlf.uint8_logits_from_tap(tap, self.metadata)

    def outputs(self, images_uint8):
        """(outputs, uint8 logits) for a library of either kind; the logits are None for fp32."""
        if "logits_quantization" in self.metadata:
            return self.run_with_logits(images_uint8)
        return self.run(images_uint8), None

    def predict(self, x) -> np.ndarray:
        return self.run(x).argmax(axis=1).astype(np.int64)
