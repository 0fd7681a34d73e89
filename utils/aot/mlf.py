"""Pack a compiled model as a Model Library Format tar, the layout microTVM's tvmc wrote:

    codegen/host/src/default_lib0.c      our AOT glue: constants, arena, tvmgen_default_run
    codegen/host/src/default_lib1.c      TVM's kernels (C codegen)
    codegen/host/include/tvmgen_default.h
    runtime/include/**                   the header-only TVM / tvm-ffi / dlpack headers the
                                         sources include, copied from the installed wheels
    runtime/LICENSE                      their licence (Apache-2.0)
    metadata.json
    src/relax.txt                        the Relax IR the library was compiled from

Compiling it needs only -std=gnu11 -I codegen/host/include -I runtime/include and -lm.
The tar is deterministic (sorted names, zero times and owners): the same model gives the
same bytes, so builds keyed by the tar's hash are reused.
"""
import hashlib
import io
import json
import re
import shutil
import subprocess
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from utils.cli import StageError, one_line

# tvm is imported inside the functions that pack a library, never at the top: the firmware
# side (stand-ins, RIOT, bench) reads the layout from here and must not pay TVM's import time.

SRC = Path("codegen/host/src")
INCLUDE = Path("codegen/host/include")
RUNTIME_INCLUDE = Path("runtime/include")
HEADER = INCLUDE / "tvmgen_default.h"
METADATA = Path("metadata.json")
STD = "-std=gnu11"
# In a folder unpacked by unpack_once: the hash of the tar it came from.
STAMP = ".tar-sha256"


def wheel_include_dirs():
    # deferred: TVM's import time is paid only where a library is packed (see the top)
    import tvm
    import tvm_ffi
    return [Path(tvm.__file__).parent / "include", Path(tvm_ffi.__file__).parent / "include"]


def runtime_headers(src_dir: Path, include_dir: Path):
    """(wheel include root, relative path) of every header the sources include, via gcc -MM."""
    roots = wheel_include_dirs()
    sources = sorted(src_dir.glob("*.c"))
    cmd = ["gcc", STD, "-MM", f"-I{include_dir}"] + [f"-I{r}" for r in roots] + [str(s) for s in sources]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise StageError(f"the generated C does not preprocess: {proc.stderr.strip().splitlines()[0]}")
    found = set()
    for dep in re.split(r"[\s\\]+", proc.stdout):
        path = Path(dep)
        for root in roots:
            if path.is_absolute() and root in path.parents:
                found.add((root, path.relative_to(root)))
    return sorted(found, key=lambda item: str(item[1]))


def write_tree(root: Path, files: dict, metadata: dict, relax_text: str):
    """Lay out the MLF tree under root from {relative path: text}."""
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    headers = runtime_headers(root / SRC, root / INCLUDE)
    for wheel_root, rel in headers:
        target = root / RUNTIME_INCLUDE / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(wheel_root / rel, target)
    import tvm  # deferred: see wheel_include_dirs
    licence = Path(tvm.__file__).parent / "LICENSE"
    if licence.is_file():
        shutil.copyfile(licence, root / "runtime" / "LICENSE")
    metadata = dict(metadata, runtime_headers=[str(RUNTIME_INCLUDE / rel) for _, rel in headers])
    (root / "src").mkdir(parents=True, exist_ok=True)
    (root / "src" / "relax.txt").write_text(relax_text)
    (root / METADATA).write_text(json.dumps(metadata, indent=2, sort_keys=True) + "\n")
    return metadata


def pack(root: Path, out_tar: Path):
    """Deterministic tar of the tree (written to a temp file, then moved into place)."""
    out_tar = Path(out_tar)
    out_tar.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path in sorted(p for p in root.rglob("*")):
            info = tar.gettarinfo(str(path), arcname=str(path.relative_to(root)))
            info.mtime = 0
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            info.mode = 0o755 if path.is_dir() else 0o644
            if path.is_file():
                with open(path, "rb") as f:
                    tar.addfile(info, f)
            else:
                tar.addfile(info)
    with tempfile.NamedTemporaryFile(dir=out_tar.parent, prefix=".mlf-", delete=False) as tmp:
        tmp.write(buffer.getvalue())
    Path(tmp.name).chmod(0o644)
    Path(tmp.name).replace(out_tar)
    return out_tar


def unpack(tar_path, into: Path) -> Path:
    """Extract an MLF tar into `into` (which must not exist yet or be empty)."""
    into = Path(into)
    try:
        tar = tarfile.open(tar_path)
    except (tarfile.TarError, OSError) as exc:
        raise StageError(f"cannot read {tar_path}: {one_line(exc)}; remake it with "
                         f"0201tvm_no_optim.py") from None
    with tar:
        try:
            tar.extractall(into, filter="data")
        except tarfile.TarError as exc:  # a damaged member, or one the data filter refuses
            raise StageError(f"cannot unpack {tar_path}: {one_line(exc)}; remake it with "
                             f"0201tvm_no_optim.py") from None
        except OSError as exc:  # the tar is fine; the folder it goes to is not
            raise StageError(f"cannot unpack {tar_path} into {into}: {one_line(exc)}") from None
    if not (into / HEADER).is_file() or not Unpacked(into).sources:
        raise StageError(f"{tar_path} is not a Model Library Format tar (no {HEADER} or "
                         f"{SRC}/*.c); remake it with 0201tvm_no_optim.py")
    return into


def tar_hash(tar_path) -> str:
    """The tar's identity: builds, unpacked trees and figures are keyed by its content."""
    return hashlib.sha256(Path(tar_path).read_bytes()).hexdigest()[:16]


def unpack_once(tar_path, into: Path) -> "Unpacked":
    """The tar unpacked in `into`/mlf, extracted only when that tree came from other bytes
    (a stamp holds the tar's hash), so rebuilds against the same tar find the same files,
    time stamps included."""
    root = Path(into) / "mlf"
    stamp = root / STAMP
    digest = tar_hash(tar_path)
    if not (stamp.is_file() and stamp.read_text() == digest):
        staging = Path(into) / "mlf.tmp"
        shutil.rmtree(staging, ignore_errors=True)
        unpack(tar_path, staging)
        (staging / STAMP).write_text(digest)
        shutil.rmtree(root, ignore_errors=True)
        staging.rename(root)
    return Unpacked(root)


@dataclass(frozen=True)
class Unpacked:
    """An unpacked Model Library Format tree: what a C build of the model needs from it."""
    root: Path

    @property
    def include_dirs(self) -> list:
        return [self.root / INCLUDE, self.root / RUNTIME_INCLUDE]

    @property
    def sources(self) -> list:
        return sorted((self.root / SRC).glob("*.c"))

    @property
    def header(self) -> Path:
        return self.root / HEADER

    @property
    def files(self) -> list:
        return [p for p in self.root.rglob("*") if p.is_file()]

    @property
    def metadata(self) -> dict:
        return read_metadata(self.root)

    @property
    def cflags(self) -> list:
        """Flags the compiler asks for in metadata.json (the library's optimisation level,
        defines its code needs); none when it names none."""
        try:
            return list(self.metadata.get("cflags", []))
        except (OSError, ValueError):
            return []


def read_metadata(mlf_dir: Path) -> dict:
    return json.loads((Path(mlf_dir) / METADATA).read_text())


# The library's debug tap: with this defined, default_lib0.c keeps a copy of the tensor the
# last kernel reads (int8: the dequantized logits); host harnesses only, never firmware.
DEBUG_TAP_DEFINE = "TVMGEN_DEFAULT_DEBUG_TAP"


def uint8_logits_from_tap(tap_values, metadata):
    """Recover q from the dequantized logits (q - zp) * s: exact, |q - zp| <= 255."""
    quant = metadata["logits_quantization"]
    q = np.rint(tap_values.astype(np.float64) / np.float32(quant["scale"])) + quant["zero_point"]
    return np.clip(q, 0, 255).astype(np.uint8)
