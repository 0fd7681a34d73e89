"""Several boards at once (0401 --port A --port B, utils.validate with a list of boards) and
the client's choice of frames, against real stand-ins behind real ptys.

The split: every image is recorded exactly once, answered by one board or unanswered, also
when a stand-in is killed in the middle of the run (its image in flight goes to the board
still running) and when all of them are. The frames: compact INFER_RLE where the board's
info says protocol 2, the 795-byte frame where a device says protocol 1, text on request.
"""
import json
import os
import re
import select
import signal
import subprocess
import sys
import threading
import time
import tty
from collections import Counter

import numpy as np
import pytest

from tests.test_client_support import TERMINAL, json_out, run_terminal
from utils import protocol
from utils.data import mnist_arrays
from utils.paths import ROOT
from utils.serial_link import Board
from utils.validate import validate


@pytest.fixture(scope="module")
def test_set():
    return mnist_arrays(train=False)


@pytest.fixture(scope="module")
def reference_digits(host_standin, test_set):
    """The stand-in's digits for the first 600 test images, one board, one image at a time."""
    images, _ = test_set
    with Board(host_standin.port, timeout=10) as board:
        board.info()
        return [board.infer(image).digit for image in images[:600]]


def _kill(standin):
    """SIGKILL, not a clean stop: the board just vanishes under the client."""
    for pid in standin.pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _check_once(summary, outcomes, count):
    positions = Counter(o.index for o in outcomes)
    assert all(n == 1 for n in positions.values()), "an image recorded twice"
    assert summary["images"] == len(outcomes) == len(positions)
    assert summary["images"] + summary["not_sent"] == count
    assert summary["answered"] + summary["unanswered"] == summary["images"]
    assert sum(b["images"] for b in summary["boards"]) == summary["images"]
    assert sum(b["answered"] for b in summary["boards"]) == summary["answered"]


def test_two_boards_share_the_images_each_answered_once(standin_factory, test_set,
                                                         reference_digits):
    images, labels = test_set
    a, b = standin_factory("host"), standin_factory("host")
    outcomes = []
    with Board(a.port, timeout=10) as board_a, Board(b.port, timeout=10) as board_b:
        summary = validate([board_a, board_b], images[:600], labels[:600], progress=False,
                           on_result=outcomes.append)
    _check_once(summary, outcomes, 600)
    assert summary["answered"] == 600 and summary["stopped"] is None
    assert sorted(o.index for o in outcomes) == list(range(600))
    assert [o.digit for o in sorted(outcomes, key=lambda o: o.index)] == reference_digits
    by_port = {entry["port"]: entry for entry in summary["boards"]}
    assert set(by_port) == {a.port, b.port}
    assert all(entry["images"] > 0 and entry["frame_form"] == "compact" for entry in by_port.values())
    assert {o.port for o in outcomes} == {a.port, b.port}
    expected_wire = np.mean([len(protocol.encode_infer_rle(1, im)) for im in images[:600]]) + 31
    assert summary["wire_bytes_per_image"] == pytest.approx(expected_wire)


def test_a_board_killed_mid_run_hands_its_image_to_the_other(standin_factory, test_set,
                                                             reference_digits):
    images, labels = test_set
    a, b = standin_factory("host"), standin_factory("host")
    outcomes = []

    def on_result(outcome):
        outcomes.append(outcome)
        if sum(o.port == b.port for o in outcomes) == 50:
            _kill(b)  # from inside the run: b is mid-request or about to be

    with Board(a.port, timeout=5) as board_a, Board(b.port, timeout=5) as board_b:
        summary = validate([board_a, board_b], images[:600], labels[:600], progress=False,
                           on_result=on_result)
    _check_once(summary, outcomes, 600)
    # a keeps going: nothing is lost, nothing is answered twice
    assert summary["answered"] == 600 and summary["unanswered"] == 0 and summary["not_sent"] == 0
    assert [o.digit for o in sorted(outcomes, key=lambda o: o.index)] == reference_digits
    by_port = {entry["port"]: entry for entry in summary["boards"]}
    assert by_port[b.port]["stopped"] and by_port[a.port]["stopped"] is None
    assert 50 <= by_port[b.port]["answered"] < 600 - 50
    assert summary["stopped"] is None  # every image was answered


def test_all_boards_killed_the_rest_is_unanswered_or_not_sent(standin_factory, test_set):
    images, labels = test_set
    a, b = standin_factory("host"), standin_factory("host")
    outcomes = []

    def on_result(outcome):
        outcomes.append(outcome)
        if len(outcomes) == 40:
            _kill(a)
        if len(outcomes) == 80:
            _kill(b)

    with Board(a.port, timeout=5) as board_a, Board(b.port, timeout=5) as board_b:
        summary = validate([board_a, board_b], images[:2000], labels[:2000], progress=False,
                           on_result=on_result)
    _check_once(summary, outcomes, 2000)
    assert 80 <= summary["answered"] < 2000
    assert summary["unanswered"] <= 2  # at most the image each board had in flight
    assert summary["not_sent"] > 0
    assert summary["stopped"].startswith("2 of 2 boards stopped")
    assert all(entry["stopped"] for entry in summary["boards"])


def _progress(proc, answered: int) -> bytes:
    """0401's stderr (its progress bar) until it shows `answered` images."""
    seen = b""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        chunk = proc.stderr.read1(4096)
        if not chunk:
            break
        seen += chunk
        counts = [int(c) for c in re.findall(rb"(\d+)/10000", seen)]
        if counts and counts[-1] >= answered:
            break
    return seen


def test_0401_two_ports_one_killed_exit_0_and_a_line_per_board(standin_factory):
    """The command line: --port twice (once as a comma list), one stand-in killed by its
    pid during the run; the other finishes; each index once in the results."""
    a, b, c = standin_factory("host"), standin_factory("host"), standin_factory("host")
    proc = subprocess.Popen([sys.executable, str(TERMINAL), "--port", a.port,
                             "--port", f"{b.port},{c.port}", "--all", "--json", "--no-host"],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out = b""
    try:
        stderr = _progress(proc, 500)
        _kill(b)
        out, rest = proc.communicate(timeout=120)
        stderr += rest
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    stderr = stderr.decode(errors="replace")
    assert proc.returncode == 0, stderr[-2000:]
    assert "Traceback" not in stderr
    summary = json.loads(out)
    indices = [r["index"] for r in summary["results"]]
    assert sorted(indices) == list(range(10000))  # each once
    assert summary["answered"] == 10000 and summary["unanswered"] == 0
    by_port = {entry["port"]: entry for entry in summary["boards"]}
    assert list(by_port) == [a.port, b.port, c.port]
    assert by_port[b.port]["stopped"] and not by_port[a.port]["stopped"]
    assert sum(entry["answered"] for entry in by_port.values()) == 10000
    assert {r["port"] for r in summary["results"]} == {a.port, b.port, c.port}


def test_0401_text_summary_has_a_line_per_board(standin_factory):
    a, b = standin_factory("host"), standin_factory("host")
    proc = run_terminal("--port", f"{a.port},{b.port}", "--count", 60, "--no-host")
    assert proc.returncode == 0, proc.stderr
    assert "per board (2)" in proc.stdout
    for port in (a.port, b.port):
        assert f"  {port}: host " in proc.stdout
    assert "(compact frames)" in proc.stdout


@pytest.mark.parametrize("frames, request_type", [("full", protocol.MsgType.INFER),
                                                  ("compact", protocol.MsgType.INFER_RLE)])
def test_forced_frames_reach_the_device_as_asked(host_standin, test_set, reference_digits,
                                                 frames, request_type):
    images, _ = test_set
    with Board(host_standin.port, timeout=10, frames=frames) as board:
        board.info()
        assert board.form == frames
        start = board.bytes_out
        digits = [board.infer(image).digit for image in images[:20]]
        sent = board.bytes_out - start
    assert digits == reference_digits[:20]
    encode = protocol.encode_infer if frames == "full" else protocol.encode_infer_rle
    assert sent == sum(len(encode(1, image)) for image in images[:20])


def test_text_frames_on_request(host_standin, test_set, reference_digits):
    images, _ = test_set
    with Board(host_standin.port, timeout=10, frames="text") as board:
        board.info()
        results = [board.infer(image) for image in images[:5]]
    assert [r.digit for r in results] == reference_digits[:5]
    assert all(r.seq is None for r in results)  # text replies carry no seq


class Protocol1Device:
    """A device of protocol 1 on a pty: it answers INFO without INFER_RLE, refuses type 03
    as bad_type and answers INFER frames. The client must fall back to the 795-byte frame.
    (The stand-ins all speak protocol 2; an older firmware is what this plays.)"""

    def __init__(self):
        self.master, slave = os.openpty()
        tty.setraw(slave)
        self.port = os.ttyname(slave)
        self._slave = slave
        self.types = []
        self._stop = False
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self):
        buffer = b""
        while not self._stop:
            ready, _, _ = select.select([self.master], [], [], 0.05)
            if not ready:
                continue
            buffer += os.read(self.master, 4096)
            while len(buffer) >= 7 and buffer[:2] == protocol.SYNC:
                length = int.from_bytes(buffer[5:7], "little")
                if len(buffer) < 11 + length:
                    break
                frame, buffer = buffer[:11 + length], buffer[11 + length:]
                kind, seq = frame[2], int.from_bytes(frame[3:5], "little")
                self.types.append(kind)
                if kind == protocol.MsgType.INFO:
                    reply = protocol.encode_info_reply(seq, {"model": "m", "board": "old",
                                                             "time_unit": "us", "protocol": 1})
                elif kind == protocol.MsgType.INFER:
                    digit = frame[7 + 300] % 10  # any function of the pixels will do
                    reply = protocol.encode_result(seq, digit, 5, "us", [-2.3] * 10)
                else:
                    reply = protocol.encode_error(seq, protocol.ErrorCode.BAD_TYPE,
                                                  f"type 0x{kind:02x}")
                os.write(self.master, reply)

    def close(self):
        self._stop = True
        self._thread.join()
        os.close(self.master)
        os.close(self._slave)


def test_a_protocol_1_device_gets_795_byte_frames(test_set):
    images, _ = test_set
    device = Protocol1Device()
    try:
        proc = run_terminal("--port", device.port, "--count", 10, "--json", "--no-host")
    finally:
        device.close()
    assert proc.returncode == 0, proc.stderr
    summary = json_out(proc)
    assert summary["answered"] == 10 and summary["frame_form"] == "full"
    assert summary["frame_bytes"] == protocol.INFER_FRAME_BYTES
    assert device.types == [protocol.MsgType.INFO] + [protocol.MsgType.INFER] * 10
    assert [r["digit"] for r in summary["results"]] == [int(im.reshape(-1)[300]) % 10
                                                        for im in images[:10]]
