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
import io
import json
import re
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path

from utils.cli import StageError

SRC = Path("codegen/host/src")
INCLUDE = Path("codegen/host/include")
RUNTIME_INCLUDE = Path("runtime/include")
STD = "-std=gnu11"


def wheel_include_dirs():
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
    import tvm
    licence = Path(tvm.__file__).parent / "LICENSE"
    if licence.is_file():
        shutil.copyfile(licence, root / "runtime" / "LICENSE")
    metadata = dict(metadata, runtime_headers=[str(RUNTIME_INCLUDE / rel) for _, rel in headers])
    (root / "src").mkdir(parents=True, exist_ok=True)
    (root / "src" / "relax.txt").write_text(relax_text)
    (root / "metadata.json").write_text(json.dumps(metadata, indent=2, sort_keys=True) + "\n")
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
    try:
        with tarfile.open(tar_path) as tar:
            tar.extractall(into, filter="data")
    except (tarfile.TarError, OSError) as exc:
        raise StageError(f"cannot unpack {tar_path}: {exc}; remake it with 0201tvm_no_optim.py") from None
    if not (into / INCLUDE / "tvmgen_default.h").is_file():
        raise StageError(f"{tar_path} is not a Model Library Format tar (no {INCLUDE}/tvmgen_default.h)")
    return into


def read_metadata(mlf_dir: Path) -> dict:
    return json.loads((Path(mlf_dir) / "metadata.json").read_text())
