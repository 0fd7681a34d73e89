"""What every stage script shares at its edge: one-line errors instead of tracebacks."""
import sys


ONE_LINE_LIMIT = 240


class StageError(Exception):
    """A problem the user can fix; its message is one line that says what to do."""


def one_line(exc, limit=ONE_LINE_LIMIT) -> str:
    """An exception's message as one line for an error of our own: its first non-empty line,
    white space folded, cut at `limit` characters; the exception's type when it says nothing."""
    lines = [" ".join(line.split()) for line in str(exc).splitlines()]
    text = next((line for line in lines if line), "")
    return text[:limit] if text else type(exc).__name__


def run(main, argv=None):
    """Run a stage's main(); expected failures print one line on stderr and exit non-zero."""
    from utils.data import DatasetMissing
    try:
        return main(argv)
    except (StageError, DatasetMissing) as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
