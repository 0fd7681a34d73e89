"""The firmware (0301mcu_mnist.c + the quick model's library) on both stand-ins, through a real
pty with real pyserial: images, faults, text form, info; the launcher's process hygiene."""
import json
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from utils import protocol as P
from utils import serial_link as L
from utils.aot import mlf
from utils.paths import ROOT
from utils.reports import read_report
from utils.targets import elf_sizes

TARGETS = ["host", "qemu-m7"]


@pytest.fixture(params=TARGETS)
def standin(request):
    return request.getfixturevalue("host_standin" if request.param == "host" else "qemu_standin")


@pytest.fixture
def board(standin):
    # full frames: these tests compare the float32 scores bit for bit
    with L.Board(standin.port, timeout=10, frames="full") as board:
        yield board
        # leave the session's stand-in resynchronised for the next test
        assert board.info()["protocol"] == "2"


def replies_before_barrier(board) -> list:
    """Everything the device said before answering a binary INFO: replies come in order, so
    this holds every answer to what was sent before, however slow the stand-in is."""
    board.info()
    return list(board.events)


def header_macros(standin):
    header = mlf.Unpacked(standin.build_dir / "mlf").header.read_text()
    return dict(re.findall(r"#define\s+(TVMGEN_DEFAULT_\w+)\s+(.+)", header))


def test_100_images_match_the_host_library(standin, board, mnist_test_100, host_digits_100,
                                           host_scores_100):
    images, labels = mnist_test_100
    results = [board.infer(image) for image in images]
    assert [r.seq for r in results] == list(range(results[0].seq, results[0].seq + 100))
    assert [r.digit for r in results] == host_digits_100
    scores = np.array([r.scores for r in results], np.float32)
    if standin.target == "host":
        # the same C, the same compiler and libm as the host library: bit for bit
        assert np.array_equal(scores, host_scores_100)
    else:
        # the same float32 arithmetic (no FMA contraction on the M7); only newlib's expf/logf
        # in log_softmax may round differently from glibc's (measured: 1 ulp, 2 of 1000 values)
        np.testing.assert_array_max_ulp(scores, host_scores_100, maxulp=4)
    assert all(len(r.scores) == 10 and sum(r.probabilities) == pytest.approx(1, abs=1e-3)
               for r in results)
    assert board.garbled == 0


def test_info_names_the_model_and_board(standin, board):
    info = board.info()
    macros = header_macros(standin)
    assert info["model"] == macros["TVMGEN_DEFAULT_MODEL_HASH"].strip().strip('"')
    assert int(info["arena"]) == int(macros["TVMGEN_DEFAULT_WORKSPACE_SIZE"].strip().rstrip("uUlL"))
    assert info["board"] == standin.target
    expected_unit = {"host": "us", "qemu-m7": "instructions"}[standin.target]
    assert info["time_unit"] == expected_unit and info["protocol"] == "2"
    # a pty has no rate; the emulated UART is programmed for the firmware's default
    assert info["baud"] == {"host": "0", "qemu-m7": "115200"}[standin.target]
    assert info == standin.info


def test_compact_frames_give_the_same_digits_and_the_scores_in_steps(
        standin, mnist_test_100, host_digits_100, host_scores_100):
    images, _ = mnist_test_100
    with L.Board(standin.port, timeout=10) as board:
        assert board.info()["protocol"] == "2" and board.form == "compact"
        before = board.bytes_out + board.bytes_in
        results = [board.infer(image) for image in images]
        wire = board.bytes_out + board.bytes_in - before
    assert [r.digit for r in results] == host_digits_100
    steps = [[P.score_steps(s) for s in row] for row in host_scores_100]
    if standin.target == "host":
        assert [[round(-16 * s) for s in r.scores] for r in results] == steps
    else:  # newlib's 1 ulp may move a score across a half step, by one step at most
        got = np.array([[round(-16 * s) for s in r.scores] for r in results])
        assert np.abs(got - np.array(steps)).max() <= 1
    assert all(r.time_us is None for r in results)  # these clocks have one unit only
    expected = sum(len(P.encode_infer_rle(1, image)) for image in images) + 100 * 31
    assert wire == expected and board.garbled == 0


def test_bad_rle_is_answered_and_the_next_frame_works(board, mnist_test_100, host_digits_100):
    board.send_raw(P.encode_frame(P.MsgType.INFER_RLE, 4100, b"\x7f" * 7))
    messages = replies_before_barrier(board)
    assert [(m.seq, m.code) for m in messages if isinstance(m, P.DeviceError)] == \
        [(4100, P.ErrorCode.BAD_RLE)]
    assert board.infer(mnist_test_100[0][5]).digit == host_digits_100[5]


def test_garbage_then_a_frame(board, mnist_test_100, host_digits_100):
    board.send_raw(bytes(range(256)).replace(b"\xa5", b"") * 3 + b"\x00junk 12 999")
    result = board.infer(mnist_test_100[0][0])
    assert result.digit == host_digits_100[0]
    errors = [e for e in board.events if isinstance(e, P.DeviceError)]
    assert errors and all(e.code == P.ErrorCode.GARBAGE for e in errors)


def test_truncated_frame_then_a_whole_one(board, mnist_test_100, host_digits_100):
    truncated = P.encode_infer(999, mnist_test_100[0][1])[:300]
    board.send_raw(truncated)
    result = board.infer(mnist_test_100[0][2])
    assert result.digit == host_digits_100[2]
    errors = [e for e in board.events if isinstance(e, P.DeviceError)]
    assert [(e.seq, e.code) for e in errors] == [(999, P.ErrorCode.BAD_CRC)]


def test_bad_crc_gets_an_error_then_the_next_frame_works(board, mnist_test_100, host_digits_100):
    frame = bytearray(P.encode_infer(4000, mnist_test_100[0][3]))
    frame[400] ^= 0x10
    board.send_raw(bytes(frame))
    messages = replies_before_barrier(board)
    errors = [m for m in messages if isinstance(m, P.DeviceError)]
    assert [(e.seq, e.code) for e in errors] == [(4000, P.ErrorCode.BAD_CRC)]
    assert board.infer(mnist_test_100[0][3]).digit == host_digits_100[3]


def test_bad_length_and_type(board):
    board.send_raw(P.encode_frame(P.MsgType.INFO, 4001, b"xy") + P.encode_frame(0x42, 4002))
    messages = replies_before_barrier(board)
    assert [(m.seq, m.code) for m in messages if isinstance(m, P.DeviceError)] == \
        [(4001, P.ErrorCode.BAD_LENGTH), (4002, P.ErrorCode.BAD_TYPE)]


def test_text_form_gives_the_binary_digit(board, mnist_test_100, host_digits_100):
    images = mnist_test_100[0]
    for i in range(5):
        text = board.infer_text(images[i])
        binary = board.infer(images[i])
        assert text.seq is None and text.digit == binary.digit == host_digits_100[i]
        assert [round(p * 1000) for p in text.probabilities] == P.permille(binary.scores)


@pytest.mark.parametrize("line, code", [
    (" ".join(["300"] + ["0"] * 783), P.ErrorCode.VALUE_TOO_LARGE),
    (" ".join(["0"] * 400 + ["ten"] + ["0"] * 383), P.ErrorCode.NOT_A_NUMBER),
    (" ".join(["0"] * 783), P.ErrorCode.WRONG_COUNT),
    (" ".join(["0"] * 785), P.ErrorCode.WRONG_COUNT),
    ("1 " * 2100, P.ErrorCode.LINE_TOO_LONG),
], ids=["over_255", "not_a_number", "783_values", "785_values", "line_too_long"])
def test_text_errors_then_a_valid_line(board, line, code, mnist_test_100, host_digits_100):
    board.send_raw(line.encode() + b"\r\n")
    messages = replies_before_barrier(board)
    errors = [m for m in messages if isinstance(m, P.DeviceError)]
    assert [(e.seq, e.code) for e in errors] == [(None, code)], errors
    assert board.infer_text(mnist_test_100[0][4]).digit == host_digits_100[4]


def test_text_info(board, standin):
    board.send_raw(b"info\r\n")
    infos = [m for m in replies_before_barrier(board) if isinstance(m, P.Info)]
    assert len(infos) == 1 and infos[0].seq is None and infos[0].fields == standin.info


def test_qemu_counts_instructions_deterministically(qemu_standin, mnist_test_100):
    with L.Board(qemu_standin.port, timeout=10) as board:
        first = [board.infer(image) for image in mnist_test_100[0][:3]]
        again = [board.infer(image) for image in mnist_test_100[0][:3]]
    assert {r.time_unit for r in first} == {"instructions"}
    # the timer ticks every 40 instructions: one tick of jitter at most
    assert all(abs(a.time - b.time) <= 40 for a, b in zip(first, again))
    assert all(10_000 < r.time < 1_000_000_000 for r in first)


def test_host_banner_and_eof(host_standin):
    """Run alone on pipes: the banner comes first, end of input ends the program."""
    out = subprocess.run([str(host_standin.elf)], input=P.encode_info_request(5), capture_output=True,
                         timeout=10)
    assert out.returncode == 0
    first, _, rest = out.stdout.partition(b"\n")
    assert first.decode() == "MNIST ready: " + P.format_info_fields(host_standin.info)
    assert P.ReplyParser().feed(rest) == [P.Info(5, host_standin.info)]


def test_qemu_elf_fits_the_f746_budget(qemu_standin):
    sizes = elf_sizes(qemu_standin.elf, "arm-none-eabi-size")
    assert 0 < sizes["text_bytes"] + sizes["data_bytes"] <= 1024 * 1024
    assert 0 < sizes["data_bytes"] + sizes["bss_bytes"] <= 320 * 1024


# ------------------------------------------------------------------ launcher and faults

def test_board_gone_when_the_standin_dies(standin_factory, mnist_test_100):
    standin = standin_factory("host")
    with L.Board(standin.port, timeout=5) as board:
        board.infer(mnist_test_100[0][0])
        os.kill(standin.pids[0], signal.SIGKILL)
        with pytest.raises(L.BoardGone):
            for image in mnist_test_100[0]:
                board.infer(image)


def _pid_gone(pid, within=5.0):
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        # a zombie child of this process counts as gone once reaped by its parent
        try:
            if open(f"/proc/{pid}/stat").read().split()[2] == "Z":
                return True
        except OSError:
            return True
        time.sleep(0.05)
    return False


@pytest.mark.parametrize("stop_signal", [signal.SIGINT, signal.SIGKILL])
def test_cli_prints_the_port_and_leaves_no_orphans(quick_mlf_tar, host_standin, tmp_path, stop_signal):
    """`python -m utils.standin` prints the port; Ctrl-C stops everything, and even a killed
    launcher takes its firmware process with it."""
    link = tmp_path / "cli-host"
    env = dict(os.environ, TINYML_STANDIN_DIR=str(tmp_path / "registry"))
    cli = subprocess.Popen([sys.executable, "-m", "utils.standin", "--target", "host",
                            "--tar", str(quick_mlf_tar), "--link", str(link),
                            "--build-dir", str(host_standin.build_dir)],
                           cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        port = cli.stdout.readline().strip()
        assert port == str(link), cli.stderr.read() if not port else port
        (entry,) = [json.loads(p.read_text()) for p in (tmp_path / "registry").glob("*.json")]
        firmware_pid = entry["pids"][0]
        with L.Board(port, timeout=5) as board:
            assert board.info()["board"] == "host"
        cli.send_signal(stop_signal)
        cli.wait(10)
        assert _pid_gone(firmware_pid), "the firmware outlived its launcher"
        if stop_signal == signal.SIGINT:
            assert not link.exists() and not list((tmp_path / "registry").glob("*.json"))
    finally:
        if cli.poll() is None:
            cli.kill()
            cli.wait()


def test_cli_check_writes_the_figures(quick_mlf_tar, qemu_standin, tmp_path):
    result = subprocess.run([sys.executable, "-m", "utils.standin", "--target", "qemu-m7",
                             "--tar", str(quick_mlf_tar), "--link", str(tmp_path / "check-qemu"),
                             "--build-dir", str(qemu_standin.build_dir), "--check", "20"],
                            cwd=ROOT, capture_output=True, timeout=300)
    # bytes, not text: text mode would turn the progress bar's \r into \n
    stderr = result.stderr.decode()
    assert result.returncode == 0, stderr
    figures = read_report("firmware")["qemu-m7"]
    assert figures["images"] == 20 and figures["predictions_match_host"] == 1.0
    assert figures["instructions_per_inference"] > 0 and figures["text_bytes"] > 0
    assert {"data_bytes", "bss_bytes", "images_per_second"} <= set(figures)
    # one progress bar, redrawn in place (\r), not a line per image
    bar_lines = [line for line in stderr.split("\n") if "qemu-m7" in line]
    assert len(bar_lines) == 1 and "20/20" in bar_lines[0], stderr


def test_missing_tar_is_one_line(tmp_path):
    result = subprocess.run([sys.executable, "-m", "utils.standin", "--target", "host",
                             "--tar", str(tmp_path / "none.tar"), "--link", str(tmp_path / "x")],
                            cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1 and "0201" in result.stderr


# /proc refuses new files even to root, for whom a chmod'ed folder would still be writable.
@pytest.mark.parametrize("link, says", [("/proc/tinyml-link-test", "cannot write in folder /proc"),
                                        ("{tmp}/missing/parent/port", "does not exist")])
@pytest.mark.parametrize("check", [[], ["--check", "5"]])
def test_unwritable_link_is_one_line_before_any_build(quick_mlf_tar, tmp_path, link, says, check):
    link = link.format(tmp=tmp_path)
    build_dir = tmp_path / "build"
    result = subprocess.run([sys.executable, "-m", "utils.standin", "--target", "host",
                             "--tar", str(quick_mlf_tar), "--link", link,
                             "--build-dir", str(build_dir), *check],
                            cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 1, result.stdout + result.stderr
    assert result.stderr.count("\n") == 1 and "--link" in result.stderr and says in result.stderr, \
        result.stderr
    assert "Traceback" not in result.stderr and not build_dir.exists()
