"""Tools that setup.sh installs (apt-packages.txt): a test that needs one skips on a developer's
machine without it, but fails in CI (CI=true), where setup.sh ran and a missing tool is a
broken set-up, not a reason to test less. RIOT, which no registry has, stays a clean skip."""
import os
import shutil

import pytest

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def missing_tools(*tools) -> list:
    return [tool for tool in tools if shutil.which(tool) is None]


def require_tools(*tools, hint="apt-packages.txt; bash setup.sh"):
    """Skip (fail in CI) unless every tool is on the PATH."""
    missing = missing_tools(*tools)
    if missing:
        need(False, f"{', '.join(missing)} not installed ({hint})")


def need(condition, why):
    """Skip (fail in CI) with `why` unless `condition`."""
    if not condition:
        if IN_CI:
            pytest.fail(f"{why}: setup.sh installs it, so CI must have it")
        pytest.skip(why)
