"""Output paths that cannot be written, for the stages' "checked before the long work" tests.

Tests run as root, where chmod 0o555 stops nothing. An immutable folder (chattr +i) refuses
new files even to root; where the file system has no such flag, /proc/self refuses them too.
Import the fixture into a test module: `from tests.fixtures_outputs import read_only_dir`.
"""
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest


def _refuses_new_files(folder: Path) -> bool:
    try:
        fd, probe = tempfile.mkstemp(dir=folder)
    except OSError:
        return True
    os.close(fd)
    os.unlink(probe)
    return False


@pytest.fixture
def read_only_dir(tmp_path):
    """A folder in which nobody, root included, can create a file."""
    folder = tmp_path / "read-only"
    folder.mkdir()
    chattr = shutil.which("chattr")
    if chattr and subprocess.run([chattr, "+i", str(folder)], capture_output=True).returncode == 0:
        try:
            assert _refuses_new_files(folder), "chattr +i did not make the folder read-only"
            yield folder
        finally:
            subprocess.run([chattr, "-i", str(folder)], check=True)
        return
    folder = Path("/proc/self")
    assert _refuses_new_files(folder)
    yield folder


def bad_output_paths(read_only: Path, tmp_path: Path, name: str):
    """[(case, path, fragment of the one-line error)] for each way an output path is wrong:
    a folder that refuses writes, a parent that does not exist, a file where a folder should be."""
    a_file = tmp_path / "a-file"
    a_file.write_text("not a folder\n")
    return [
        ("read-only folder", read_only / name, "cannot write in folder"),
        ("missing parent", tmp_path / "no-such-parent" / "sub" / name, "does not exist"),
        ("file in place of the folder", a_file / name, "is a file, not a folder"),
    ]
