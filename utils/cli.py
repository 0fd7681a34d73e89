"""What every stage script shares at its edge: one-line errors instead of tracebacks."""
import sys


class StageError(Exception):
    """A problem the user can fix; its message is one line that says what to do."""


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
