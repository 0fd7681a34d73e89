"""Shared fixtures. Each stage's fixtures live in their own module, listed here."""
import os
import tempfile

# Quick runs in tests must never overwrite the real figures in reports/.
os.environ.setdefault("TINYML_REPORTS_DIR", tempfile.mkdtemp(prefix="tinyml-test-reports-"))

pytest_plugins = [
    "tests.fixtures_models",
    "tests.fixtures_compiler",
    "tests.fixtures_firmware",
    "tests.fixtures_riot",
]
