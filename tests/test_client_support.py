"""Helpers shared by the client tests (no tests here): a damaging relay pty, a silent pty,
running the clients as real processes."""
import json
import os
import select
import subprocess
import sys
import threading
import tty

from utils import protocol
from utils.paths import ROOT

TERMINAL = ROOT / "0401pc_terminal_sendimage.py"
UI = ROOT / "0402_pc_ui_sendImage.py"


def run_terminal(*args, timeout=120, env=None):
    """Run 0401 as a real process; returns the CompletedProcess (text)."""
    return subprocess.run([sys.executable, str(TERMINAL), *map(str, args)], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


def json_out(proc) -> dict:
    try:
        return json.loads(proc.stdout)
    except json.JSONDecodeError:
        raise AssertionError(f"0401 printed no JSON (rc {proc.returncode}):\n{proc.stdout[-2000:]}"
                             f"\n{proc.stderr[-2000:]}") from None


def assert_one_line_error(proc, *fragments):
    assert proc.returncode != 0, proc.stdout[-1000:]
    assert "Traceback" not in proc.stderr, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, proc.stderr
    for fragment in fragments:
        assert fragment in errors[0], errors[0]
    return errors[0]


class SilentPort:
    """A raw pty whose other end never answers: a board that is powered but silent."""

    def __init__(self):
        self.master, self.slave = os.openpty()
        tty.setraw(self.slave)
        self.port = os.ttyname(self.slave)

    def close(self):
        os.close(self.master)
        os.close(self.slave)


class DamagingRelay:
    """A pty between a client and a stand-in that forwards every byte both ways, except that
    it damages chosen reply frames from the device: damage = {frame number: function(bytes)
    -> bytes} (frame 0 is the first binary frame the device sends)."""

    def __init__(self, device_port, damage):
        self.damage = dict(damage)
        self.frames = 0
        self.master, self.slave = os.openpty()
        tty.setraw(self.slave)
        self.port = os.ttyname(self.slave)
        self.device = os.open(device_port, os.O_RDWR | os.O_NOCTTY)
        tty.setraw(self.device)
        self._stop_r, self._stop_w = os.pipe()
        self._from_device = bytearray()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        while True:
            ready, _, _ = select.select([self.master, self.device, self._stop_r], [], [])
            if self._stop_r in ready:
                return
            if self.master in ready:
                try:
                    data = os.read(self.master, 4096)
                except OSError:
                    return
                os.write(self.device, data)
            if self.device in ready:
                try:
                    data = os.read(self.device, 4096)
                except OSError:
                    return
                self._from_device += data
                self._forward_whole_frames()

    def _forward_whole_frames(self):
        buf = self._from_device
        while buf:
            if buf[0] != protocol.SYNC[0]:
                # text (e.g. the banner): pass through up to the next frame
                end = buf.find(protocol.SYNC[:1])
                end = len(buf) if end < 0 else end
                os.write(self.master, bytes(buf[:end]))
                del buf[:end]
                continue
            if len(buf) < protocol.HEADER_BYTES:
                return
            length = int.from_bytes(buf[5:7], "little")
            total = protocol.HEADER_BYTES + length + protocol.CRC_BYTES
            if len(buf) < total:
                return
            frame = bytes(buf[:total])
            del buf[:total]
            damage = self.damage.get(self.frames)
            self.frames += 1
            os.write(self.master, damage(frame) if damage else frame)

    def close(self):
        os.write(self._stop_w, b"x")
        self.thread.join(5)
        for fd in (self.master, self.slave, self.device, self._stop_r, self._stop_w):
            os.close(fd)


def flip_byte(offset):
    """Damage: invert one byte of the frame, so its CRC no longer matches."""
    def damage(frame):
        return frame[:offset] + bytes([frame[offset] ^ 0xFF]) + frame[offset + 1:]
    return damage


def prepend(noise: bytes):
    """Damage: line noise before an intact frame."""
    return lambda frame: noise + frame
