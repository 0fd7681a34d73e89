"""The RIOT application on RIOT's native64 board: the firmware built by the top-level Makefile,
a Linux process behind a pty, answers MNIST images exactly as the host library does.

Needs a RIOT clone (RIOTBASE, default ./RIOT); without one these tests skip, saying so.
"""
import os
import random
import subprocess
import sys

import pytest

from utils import paths, protocol
from utils.reports import read_report
from utils.serial_link import Board
from utils.standin import StandIn
from utils.targets import native64


def test_make_without_riot_says_in_one_line_how_to_get_it(tmp_path):
    result = subprocess.run(["make", "-C", str(paths.ROOT), f"RIOTBASE={tmp_path / 'no-riot'}"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert "RIOT not found" in lines[0] and "git clone https://github.com/RIOT-OS/RIOT" in lines[0]


@pytest.fixture(scope="session")
def native64_build_dir(riot_base, tmp_path_factory):
    return tmp_path_factory.mktemp("native64-build")


@pytest.fixture(scope="module")
def native64_board(native64_build_dir, quick_mlf_tar, tmp_path_factory):
    """The native64 stand-in as every stand-in runs (utils.standin), on a link of its own."""
    standin = StandIn("native64", quick_mlf_tar,
                      link=tmp_path_factory.mktemp("native64-link") / "tinyml-native64",
                      build_dir=native64_build_dir)
    standin.start()
    yield standin
    standin.stop()


def test_native64_answers_100_images_like_the_host_library(riot_base, native64_board,
                                                            mnist_test_100, host_digits_100):
    images, host_digits = mnist_test_100[0], host_digits_100
    with Board(native64_board.port, timeout=30) as board:
        info = board.info()
        results = [board.infer(image) for image in images]
    assert info["board"] == "native64" and info["time_unit"] == "us"
    assert [r.digit for r in results] == host_digits
    assert all(r.time_unit == "us" for r in results)
    assert board.garbled == 0


def test_native64_text_form(riot_base, native64_board, mnist_test_100, host_digits_100):
    images, host_digits = mnist_test_100[0], host_digits_100
    with Board(native64_board.port, timeout=30) as board:
        digits = [board.infer_text(image).digit for image in images[:5]]
    assert digits == host_digits[:5]


def test_native64_survives_garbage(riot_base, native64_board, mnist_test_100, host_digits_100):
    images, host_digits = mnist_test_100[0], host_digits_100
    rng = random.Random(5)
    frame = protocol.encode_infer(7, images[1])
    bad_crc = frame[:-1] + bytes([frame[-1] ^ 0xFF])
    garbage = [
        bytes(rng.randrange(256) for _ in range(3000)),         # noise, 0xA5 and NULs included
        frame[:300],                                             # a truncated frame ...
        bad_crc,                                                 # ... and one with a bad CRC
        b"1 2 300 x\n", b"abc\n", b"0 " * 900 + b"\n",           # text errors
    ]
    with Board(native64_board.port, timeout=30) as board:
        for chunk in garbage:
            board.send_raw(chunk)
        errors = [m for m in board.read_messages(1.5) if isinstance(m, protocol.DeviceError)]
        after = board.infer(images[0])
        after_text = board.infer_text(images[2])
    assert errors, "the firmware reported none of the garbage"
    assert after.digit == host_digits[0] and after_text.digit == host_digits[2]
    assert native64_board.alive()


def test_native64_exits_when_the_terminal_hangs_up(riot_base, native64_board, tmp_path):
    launched = native64.launch(native64_board.elf, tmp_path / "run.log")
    process = launched.processes[0]
    try:
        for fd in launched.fds:
            os.close(fd)
        launched.fds = []
        assert process.wait(timeout=10) == 0
    finally:
        launched.stop()


def test_make_test_passes_on_native64(riot_base, native64_board, quick_mlf_tar):
    """`make BOARD=native64 test`: RIOT's testrunner runs tests/01-run.py against `make term`."""
    pytest.importorskip("pexpect", reason="RIOT's testrunner needs pexpect")
    result = subprocess.run(
        ["make", "-C", str(paths.ROOT), "BOARD=native64", f"RIOTBASE={riot_base}",
         f"UTVM_TAR={quick_mlf_tar}", f"BINDIRBASE={native64_board.build_dir}", "test"],
        capture_output=True, text=True, timeout=300,
        env={**os.environ, "MNIST_TEST_IMAGES": "5", "TESTRUNNER_START_DELAY": "1"})
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert "binary frames: 5 images" in result.stdout and "[SUCCESS]" in result.stdout


def test_riot_cli_measures_native64_with_one_progress_bar(riot_base, quick_mlf_tar):
    """`python -m utils.riot` for native64: the figures every stand-in gets, and one bar
    redrawn in place on stderr instead of a line per image."""
    images = 20
    result = subprocess.run([sys.executable, "-m", "utils.riot", "--boards", "native64",
                             "--tar", str(quick_mlf_tar), "--images", str(images)],
                            cwd=paths.ROOT, capture_output=True, timeout=600)
    # bytes, not text: text mode would turn the progress bar's \r into \n
    stderr = result.stderr.decode()
    assert result.returncode == 0, stderr[-2000:]
    figures = read_report("firmware")["native64"]
    assert figures["images"] == images and figures["predictions_match_host"] == 1.0
    assert figures["riot_commit"] and figures["text_bytes"] > 0
    # tqdm redraws with \r: one \n-ended line holds every state of the bar
    bar_lines = [line for line in stderr.split("\n") if "native64" in line]
    assert len(bar_lines) == 1 and f"{images}/{images}" in bar_lines[0], stderr
