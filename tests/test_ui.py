"""0402 under Xvfb against the host stand-in: real X events from xdotool, real pyserial.

Draw a stroke on the canvas, press Send, check the big label shows the stand-in's answer and a
screenshot shows the window; then the faults: the stand-in killed (the window says so and
lives on), reconnect through the port chooser, a wrong port.
"""
import json
import os
import queue
import select
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from PIL import Image

from tests.test_client_support import UI, SilentPort
from utils.paths import ROOT
from utils.serial_link import Board

EVENT_TIMEOUT = 30


@pytest.fixture(scope="module")
def display():
    """A private X server; -displayfd makes Xvfb pick a free display and tell us its number."""
    read_end, write_end = os.pipe()
    xvfb = subprocess.Popen(["Xvfb", "-displayfd", str(write_end), "-screen", "0", "1024x768x24",
                             "-nolisten", "tcp"], pass_fds=(write_end,),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    os.close(write_end)
    number = b""
    deadline = time.monotonic() + 20
    while not number.endswith(b"\n") and time.monotonic() < deadline:
        ready, _, _ = select.select([read_end], [], [], 1)
        if ready:
            chunk = os.read(read_end, 16)
            if not chunk:
                break
            number += chunk
    os.close(read_end)
    if not number.strip():
        xvfb.kill()
        pytest.fail("Xvfb did not report a display number")
    yield f":{number.decode().strip()}"
    xvfb.terminate()
    try:
        xvfb.wait(10)
    except subprocess.TimeoutExpired:
        xvfb.kill()
        xvfb.wait()


@pytest.fixture(scope="module")
def host_port(host_standin):
    return host_standin.port


class UIProcess:
    """0402 as a real process with --trace: its events arrive as JSON lines on stdout."""

    def __init__(self, display, *args):
        self.display = display
        self.env = {**os.environ, "DISPLAY": display, "GDK_BACKEND": "x11", "NO_AT_BRIDGE": "1"}
        self.proc = subprocess.Popen([sys.executable, str(UI), "--trace", *map(str, args)],
                                     cwd=ROOT, env=self.env, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True)
        self.events = queue.Queue()
        self.seen = []
        self.backlog = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.proc.stdout:
            try:
                self.events.put(json.loads(line))
            except json.JSONDecodeError:
                self.events.put({"event": "stdout", "text": line})

    def wait_for(self, kind, timeout=EVENT_TIMEOUT) -> dict:
        """The oldest event of this kind not yet waited for (others stay in the backlog)."""
        for position, event in enumerate(self.backlog):
            if event["event"] == kind:
                return self.backlog.pop(position)
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self.proc.poll() is not None and self.events.empty():
                raise AssertionError(f"no {kind!r} event from the UI; saw {self.seen[-10:]}; "
                                     f"stderr: {self.stderr_so_far()}")
            try:
                event = self.events.get(timeout=min(remaining, 0.5))
            except queue.Empty:
                continue
            self.seen.append(event)
            if event["event"] == kind:
                return event
            self.backlog.append(event)

    def stderr_so_far(self):
        return "" if self.proc.poll() is None else self.proc.stderr.read()[-2000:]

    def xdotool(self, *args):
        subprocess.run(["xdotool", *map(str, args)], env=self.env, check=True, timeout=10)

    def click(self, box):
        self.xdotool("mousemove", box["x"] + box["width"] // 2, box["y"] + box["height"] // 2,
                     "click", 1)

    def draw(self, canvas, points):
        """A mouse stroke through points given in canvas coordinates."""
        x0, y0 = canvas["x"], canvas["y"]
        self.xdotool("mousemove", x0 + points[0][0], y0 + points[0][1], "mousedown", 1)
        for x, y in points[1:]:
            time.sleep(0.03)
            self.xdotool("mousemove", x0 + x, y0 + y)
        self.xdotool("mouseup", 1)

    def type_port(self, port):
        """Pick a port the way a user does: select the port entry's text, type, Enter."""
        box = self.layout["port"]
        self.xdotool("mousemove", box["x"] + 20, box["y"] + box["height"] // 2, "click", "--repeat",
                     3, 1)
        self.xdotool("key", "ctrl+a")
        self.xdotool("type", "--delay", 5, port)
        self.xdotool("key", "Return")

    def screenshot(self, path):
        subprocess.run(["import", "-window", "root", str(path)], env=self.env, check=True,
                       timeout=20)
        return np.asarray(Image.open(path).convert("RGB"))

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError("the UI did not quit on SIGTERM")

    def start(self):
        self.layout = self.wait_for("layout")
        return self


def region(image, box):
    return image[box["y"]:box["y"] + box["height"], box["x"]:box["x"] + box["width"]]


def test_draw_send_and_the_label_shows_the_answer(display, host_port, tmp_path):
    ui = UIProcess(display, "--port", host_port).start()
    try:
        connected = ui.wait_for("connected")
        assert connected["port"] == host_port and connected["info"]["board"]
        # a '7': a bar across the top, then a long diagonal down
        ui.draw(ui.layout["canvas"], [(60, 60), (120, 58), (200, 60), (170, 120), (140, 180),
                                      (120, 240)])
        ui.wait_for("stroke")
        ui.click(ui.layout["send"])
        result = ui.wait_for("result")
        assert result["label_text"] == str(result["digit"])
        shot = ui.screenshot(tmp_path / "ui.png")
    finally:
        rc = ui.stop()
    assert rc == 0
    assert "Traceback" not in ui.proc.stderr.read()

    pixels = np.frombuffer(bytes.fromhex(result["pixels"]), np.uint8).reshape(28, 28)
    rows, cols = np.flatnonzero(pixels.any(1)), np.flatnonzero(pixels.any(0))
    assert max(rows[-1] - rows[0], cols[-1] - cols[0]) + 1 == 20  # MNIST's 20×20 box
    # the stand-in gives the same answer for the same 28×28 image
    with Board(host_port, timeout=5) as board:
        assert board.infer(pixels).digit == result["digit"]

    # the screenshot is not blank: the window's grey, the white stroke on the black canvas
    assert shot.std() > 20 and len(np.unique(shot.reshape(-1, 3), axis=0)) > 50
    canvas = region(shot, ui.layout["canvas"])
    ink = (canvas.min(axis=2) > 200).mean()
    assert 0.02 < ink < 0.5, ink
    assert (region(shot, ui.layout["digit"]).max(axis=2) < 80).mean() > 0.02  # the big digit


def test_random_image_standin_killed_reconnect_and_wrong_port(display, standin_factory):
    standin = standin_factory("host")
    port = standin.port
    silent = None
    ui = UIProcess(display, "--port", port, "--timeout", 3).start()
    try:
        ui.wait_for("connected")
        ui.click(ui.layout["random"])
        ui.click(ui.layout["send"])
        result = ui.wait_for("result")
        assert result["test_label"] is not None and result["label_text"] == str(result["digit"])

        standin.stop()
        ui.click(ui.layout["send"])
        error = ui.wait_for("error")
        assert port in error["message"] or "went away" in error["message"]
        assert ui.proc.poll() is None  # the window lives on

        standin = standin_factory("host")  # the board is back, on another port
        port = standin.port
        ui.type_port(port)
        assert ui.wait_for("connected")["port"] == port
        ui.click(ui.layout["send"])
        assert ui.wait_for("result")["label_text"] == str(result["digit"])

        ui.type_port("/dev/no-such-board")
        error = ui.wait_for("error")
        assert "/dev/no-such-board" in error["message"] and "ports that exist" in error["message"]

        # a silent board: the window stays responsive while the link waits, then says so
        silent = SilentPort()
        ui.type_port(silent.port)
        ui.click(ui.layout["random"])
        shown = ui.wait_for("test_image")
        error = ui.wait_for("error")
        assert ui.seen.index(shown) < ui.seen.index(error)
        assert silent.port in error["message"] and "115200" in error["message"]
    finally:
        rc = ui.stop()
        if silent is not None:
            silent.close()
    assert rc == 0
    assert "Traceback" not in ui.proc.stderr.read()


def test_quick_self_test(display, host_port):
    env = {**os.environ, "DISPLAY": display, "GDK_BACKEND": "x11", "NO_AT_BRIDGE": "1"}
    proc = subprocess.run([sys.executable, str(UI), "--port", host_port, "--quick"], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "the board says" in proc.stdout


def test_without_a_display_one_line_error():
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY")}
    proc = subprocess.run([sys.executable, str(UI), "--port", "/dev/null"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().startswith("error: cannot open a display")
