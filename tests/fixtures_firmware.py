"""Fixtures of stage 03 (firmware core and stand-ins), shared with the clients' and RIOT tests.

    host_standin, qemu_standin   session-wide stand-ins built from quick_mlf_tar, each on its
                                 own link in a temp dir; use .port with utils.serial_link.Board.
                                 Leave them resynchronised (end with a valid request) and alive.
    standin_factory              function-scoped: start_standin(target) -> a fresh StandIn that
                                 the test may kill; stopped after the test.
    protocol_check               firmware/test/protocol_check.c built with gcc + ASan/UBSan.
    mnist_test_100               the first 100 MNIST test images (uint8) and labels.
    host_digits_100              the host library's digits for them (HostLibrary of quick_mlf_tar);
    host_scores_100              and its float32 log-probabilities [100, 10].
"""
import subprocess

import pytest

from tests.fixtures_tools import require_tools
from utils.aot.host_library import HostLibrary
from utils.data import mnist_arrays
from utils.paths import ROOT
from utils.standin import StandIn


def _require_tools(*tools):
    require_tools(*tools)


@pytest.fixture(scope="session")
def protocol_check(tmp_path_factory):
    _require_tools("gcc")
    out = tmp_path_factory.mktemp("protocol_check") / "protocol_check"
    firmware = ROOT / "firmware"
    subprocess.run(["gcc", "-std=gnu11", "-O1", "-g", "-Wall", "-Wextra", "-Werror",
                    "-fsanitize=address,undefined", "-fno-sanitize-recover=all", f"-I{firmware}",
                    str(firmware / "protocol.c"), str(firmware / "test" / "protocol_check.c"),
                    "-lm", "-o", str(out)], check=True)
    return out


def _start(target, mlf_tar, directory):
    standin = StandIn(target, mlf_tar, link=directory / f"tinyml-{target}",
                      build_dir=directory / f"build-{target}")
    standin.start()
    return standin


@pytest.fixture(scope="session")
def host_standin(quick_mlf_tar, tmp_path_factory):
    _require_tools("gcc")
    standin = _start("host", quick_mlf_tar, tmp_path_factory.mktemp("host-standin"))
    yield standin
    standin.stop()


@pytest.fixture(scope="session")
def qemu_standin(quick_mlf_tar, tmp_path_factory):
    _require_tools("arm-none-eabi-gcc", "qemu-system-arm")
    standin = _start("qemu-m7", quick_mlf_tar, tmp_path_factory.mktemp("qemu-standin"))
    yield standin
    standin.stop()


@pytest.fixture
def standin_factory(quick_mlf_tar, tmp_path_factory):
    """start_standin(target) -> StandIn; reuses the session's build folder, new process."""
    started = []
    builds = tmp_path_factory.getbasetemp() / "standin-factory-builds"

    def start_standin(target="host"):
        link = tmp_path_factory.mktemp(f"fresh-{target}") / f"tinyml-{target}"
        standin = StandIn(target, quick_mlf_tar, link=link, build_dir=builds / target)
        started.append(standin)
        standin.start()
        return standin

    yield start_standin
    for standin in started:
        standin.stop()


@pytest.fixture(scope="session")
def mnist_test_100():
    images, labels = mnist_arrays(train=False)
    return images[:100].copy(), labels[:100].copy()


@pytest.fixture(scope="session")
def host_scores_100(quick_mlf_tar, mnist_test_100):
    return HostLibrary(quick_mlf_tar).run(mnist_test_100[0])


@pytest.fixture(scope="session")
def host_digits_100(quick_mlf_tar, mnist_test_100):
    return [int(d) for d in HostLibrary(quick_mlf_tar).predict(mnist_test_100[0])]
