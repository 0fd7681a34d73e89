"""What every stage script shares at its edge: one-line errors instead of tracebacks."""
import argparse
import os
import sys
import tempfile
from pathlib import Path

from utils.data import DatasetMissing


ONE_LINE_LIMIT = 240


class StageError(Exception):
    """A problem the user can fix; its message is one line that says what to do."""


def one_line(exc, limit=ONE_LINE_LIMIT) -> str:
    """An exception's message as one line for an error of our own: its first non-empty line,
    white space folded, cut at `limit` characters; the exception's type when it says nothing."""
    lines = [" ".join(line.split()) for line in str(exc).splitlines()]
    text = next((line for line in lines if line), "")
    return text[:limit] if text else type(exc).__name__


class DefaultsHelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """--help with each option's default, except where it would say nothing or say it twice:
    a help text that states its default in words (a None that means "computed from other
    options"), an unset option (None) and an off flag (False)."""

    def _get_help_string(self, action):
        help_text = action.help or ""
        flag_off = action.default is False and action.nargs == 0
        if "default:" in help_text or action.default is None or flag_off:
            return help_text
        return super()._get_help_string(action)


def positive_int(text: str) -> int:
    """argparse type: an integer of at least 1 (a baud rate, a count)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def positive_float(text: str) -> float:
    """argparse type: a finite number above 0 (a timeout in seconds)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not 0.0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a number above 0, got {text}")
    return value


def _probe_writable(folder: Path, what: str, given: Path):
    """Create and remove a file in folder: os.access says yes to root even where the file
    system refuses (read-only mount, immutable folder, /proc, /sys)."""
    try:
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".write-test-")
    except OSError as exc:
        raise StageError(f"{what} {given}: cannot write in folder {folder} "
                         f"({exc.strerror or one_line(exc)}); choose a writable folder") from None
    os.close(fd)
    os.unlink(probe)


def _check_folder(folder: Path, what: str, given: Path):
    """`folder` takes the output: it must be a writable folder, or be missing with a writable
    parent (the stage then creates that one level, as mkdir does; a mistyped path several
    levels deep is more likely a typo than a wish)."""
    if folder.is_dir():
        return _probe_writable(folder, what, given)
    if folder.exists():
        raise StageError(f"{what} {given}: {folder} is a file, not a folder; "
                         f"choose another {what}")
    parent = folder.parent
    if parent.is_dir():
        return _probe_writable(parent, what, given)
    blocker = next((p for p in parent.parents if p.exists()), None)
    if parent.exists() or (blocker is not None and not blocker.is_dir()):
        raise StageError(f"{what} {given}: {parent if parent.exists() else blocker} is a file, "
                         f"not a folder; choose another {what}")
    raise StageError(f"{what} {given}: folder {parent} does not exist; create it "
                     f"(mkdir -p {folder}) or choose another {what}")


def check_output_dir(directory, what="--out-dir") -> Path:
    """Check, before any long work starts, that files can be written into `directory`.

    It may be missing if its parent is a writable folder. A missing parent, a file where a
    folder should be, or a folder that refuses writes raises StageError: one line naming the
    option `what` and saying what to do. Returns `directory` as a Path; creates nothing."""
    directory = Path(directory)
    _check_folder(directory, what, directory)
    return directory


def check_output_path(path, what="--out") -> Path:
    """Check, before any long work starts, that the file `path` can be written: it is not a
    folder, an existing file accepts writes, and its folder passes check_output_dir.
    Returns `path` as a Path; creates nothing."""
    path = Path(path)
    if path.is_dir():
        raise StageError(f"{what} {path} is a folder; give a file name")
    if not path.exists():
        _check_folder(path.parent, what, path)
        return path
    try:
        # append mode writes nothing: the file and its time stamps stay as they are
        with open(path, "ab"):
            pass
    except OSError as exc:
        raise StageError(f"{what} {path}: cannot overwrite it ({exc.strerror or one_line(exc)}); "
                         f"choose another {what}") from None
    return path


def run(main, argv=None):
    """Run a stage's main(); expected failures print one line on stderr and exit non-zero."""
    try:
        return main(argv)
    except (StageError, DatasetMissing) as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
