"""A tool that setup.sh installs and a test needs: a skip on a developer's machine without it,
a failure in CI (CI=true), where its absence means a broken set-up."""
import os
import subprocess
import sys

from utils.paths import ROOT

PROBE = '''
from tests.fixtures_tools import require_tools

def test_needs_a_tool_nobody_has():
    require_tools("no-such-tool-anywhere")
'''


def _run(tmp_path, ci):
    test = tmp_path / "test_probe.py"
    test.write_text(PROBE)
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    if ci:
        env["CI"] = "true"
    env["PYTHONPATH"] = str(ROOT)
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(test)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)


def test_missing_tool_skips_outside_ci(tmp_path):
    proc = _run(tmp_path, ci=False)
    assert proc.returncode == 0 and "1 skipped" in proc.stdout, proc.stdout


def test_missing_tool_fails_in_ci(tmp_path):
    proc = _run(tmp_path, ci=True)
    assert proc.returncode == 1 and "1 failed" in proc.stdout and "setup.sh installs it" in proc.stdout, proc.stdout
