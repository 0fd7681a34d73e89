"""Talking to the board (or a stand-in behind a pty) over a serial port with pyserial.

Board wraps one open port: it numbers requests, sends them with utils.protocol, and waits for
the reply with the same sequence number, skipping (and keeping count of) anything else the
device says. Every failure is a LinkError subclass whose message is one line a user can act on.

Images go in the smallest form the device takes: after info(), a device that reports
protocol 2 or later gets INFER_RLE frames (answered with RESULT_SHORT), any other the 795-byte
INFER frame; `frames` forces one form ("compact", "full" or "text"). Requests may be
pipelined: send_infer() returns a sequence number, wait_result() collects its reply, so the
next image crosses the wire while the device classifies the current one.
"""
import collections
import os
import termios
import time

import serial
import serial.tools.list_ports

from utils import protocol, running_standins
from utils.cli import one_line

STLINK_VID = 0x0483          # STMicroelectronics: the ST-LINK/V2-1 virtual COM port
DEFAULT_PORT = "/dev/ttyACM0"
DEFAULT_BAUD = 115200
MAX_EVENTS = 1000
FRAME_FORMS = ("auto", "compact", "full", "text")
# What pyserial raises when the port goes away under it. termios.error is no OSError: pyserial's
# flush() calls tcdrain(), which raises it on a pty whose other end has just closed.
PORT_ERRORS = (serial.SerialException, OSError, termios.error)


class LinkError(Exception):
    """A serial link problem, explained in one line."""


class PortNotFound(LinkError):
    pass


class BoardTimeout(LinkError):
    pass


class BoardGone(LinkError):
    pass


class DeviceErrorReply(LinkError):
    """The device answered the request with an error."""

    def __init__(self, error: protocol.DeviceError):
        super().__init__(f"device error {error}")
        self.error = error


def list_port_names() -> list:
    """Every serial port a user could pick: the system's, then running stand-ins' links."""
    names = [p.device for p in serial.tools.list_ports.comports()]
    return names + [p for p in running_standins.ports() if p not in names]


def auto_detect_port():
    """The ST-LINK's virtual COM port if a board is plugged in, else a running stand-in, else None."""
    for info in serial.tools.list_ports.comports():
        if info.vid == STLINK_VID:
            return info.device
    ports = running_standins.ports()
    return ports[0] if ports else None


def _describe_ports() -> str:
    names = list_port_names()
    return ", ".join(names) if names else "none"


class Board:
    """One open serial link to the firmware. Use as a context manager.

    .garbled counts the bytes of damaged replies skipped; .events keeps the latest skipped
    messages (Garbled, TextLine such as the boot banner, replies to other requests)."""

    def __init__(self, port: str, baud: int = DEFAULT_BAUD, timeout: float = 5.0,
                 frames: str = "auto"):
        if frames not in FRAME_FORMS:
            raise ValueError(f"frames must be one of {', '.join(FRAME_FORMS)}, got {frames!r}")
        self.port = port
        self.baud = baud
        self.timeout = timeout
        self.frames = frames
        self.compact = frames == "compact"  # auto: decided by info()
        self.device_info = {}
        self.bytes_out = 0   # every byte written and read, for the wire figures
        self.bytes_in = 0
        self.garbled = 0
        self.skipped = 0
        self.events = collections.deque(maxlen=MAX_EVENTS)
        self._seq = 0
        self._parser = protocol.ReplyParser()
        self._pending = collections.deque()
        if "://" not in port and not os.path.exists(port):
            raise PortNotFound(f"serial port {port} does not exist; ports that exist: {_describe_ports()}")
        try:
            # The read timeout only paces the wait loop; the real deadline is self.timeout.
            self._serial = serial.serial_for_url(port, baudrate=baud, timeout=0.05,
                                                 write_timeout=max(timeout, 1.0))
        except (*PORT_ERRORS, ValueError) as exc:  # ValueError: a baud rate pyserial refuses
            if not os.path.exists(port):
                raise PortNotFound(f"serial port {port} does not exist; ports that exist: "
                                   f"{_describe_ports()}") from None
            raise LinkError(f"cannot open {port}: {one_line(exc)}") from None

    # ------------------------------------------------------------ context manager
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        if getattr(self, "_serial", None) is not None:
            try:
                self._serial.close()
            except PORT_ERRORS:
                pass
            self._serial = None

    # ------------------------------------------------------------ requests
    def next_seq(self) -> int:
        self._seq = (self._seq + 1) & 0xFFFF
        return self._seq

    @property
    def form(self) -> str:
        """How images go out now: compact (INFER_RLE), full (INFER) or text."""
        if self.frames == "text":
            return "text"
        return "compact" if self.compact else "full"

    def infer(self, pixels) -> protocol.Result:
        """Send one image in the board's form (see the module docstring); the device's Result."""
        if self.frames == "text":
            return self.infer_text(pixels)
        return self.wait_result(self.send_infer(pixels))

    def send_infer(self, pixels) -> int:
        """Send one image as a frame without waiting; its seq, for wait_result()."""
        seq = self.next_seq()
        frame = protocol.encode_infer_rle(seq, pixels) if self.compact else None
        self.send_raw(frame or protocol.encode_infer(seq, pixels))
        return seq

    def wait_result(self, seq: int) -> protocol.Result:
        """The device's Result for the image sent with `seq` (DeviceErrorReply, BoardTimeout)."""
        return self._wait(lambda m: isinstance(m, (protocol.Result, protocol.DeviceError))
                          and m.seq == seq, f"the reply to image seq {seq}")

    def infer_text(self, pixels) -> protocol.Result:
        """Send one image in the text form; the device's (coarser) text Result."""
        self.send_raw(protocol.encode_text_image(pixels))
        return self._wait(lambda m: isinstance(m, (protocol.Result, protocol.DeviceError))
                          and m.seq is None, "the reply to a text image")

    def info(self) -> dict:
        """The device's INFO pairs: model, arena, board, clock_hz, time_unit, protocol."""
        seq = self.next_seq()
        self.send_raw(protocol.encode_info_request(seq))
        reply = self._wait(lambda m: isinstance(m, (protocol.Info, protocol.DeviceError))
                           and m.seq == seq, f"the reply to info seq {seq}")
        self.device_info = dict(reply.fields)
        if self.frames == "auto":
            try:
                version = int(reply.fields.get("protocol", "1"))
            except ValueError:
                version = 1
            self.compact = version >= protocol.COMPACT_SINCE_VERSION
        return reply.fields

    def send_raw(self, data: bytes):
        """Write bytes as they are (fault tests, text lines)."""
        if self._serial is None:
            raise BoardGone(f"{self.port} is closed")
        try:
            self._serial.write(data)
            self._serial.flush()
            self.bytes_out += len(data)
        except serial.SerialTimeoutException:
            raise BoardTimeout(f"no progress writing to {self.port} at {self.baud} baud "
                               f"for {self.timeout:g} s; is the board running?") from None
        except PORT_ERRORS as exc:
            raise BoardGone(f"{self.port} went away while writing: {one_line(exc)}") from None

    def read_messages(self, duration: float) -> list:
        """Every message that arrives within `duration` seconds (for tests and fault handling)."""
        deadline = time.monotonic() + duration
        messages = list(self._pending)
        self._pending.clear()
        while time.monotonic() < deadline:
            messages += self._read_some()
        return messages

    # ------------------------------------------------------------ internals
    def _read_some(self) -> list:
        if self._serial is None:
            raise BoardGone(f"{self.port} is closed")
        try:
            data = self._serial.read(max(1, self._serial.in_waiting))
        except PORT_ERRORS as exc:
            raise BoardGone(f"{self.port} went away: {one_line(exc)}") from None
        self.bytes_in += len(data)
        return self._parser.feed(data) if data else []

    def _wait(self, wanted, what: str):
        deadline = time.monotonic() + self.timeout
        while True:
            while self._pending:
                message = self._pending.popleft()
                if wanted(message):
                    if isinstance(message, protocol.DeviceError):
                        raise DeviceErrorReply(message)
                    return message
                self._skip(message)
            if time.monotonic() >= deadline:
                raise BoardTimeout(f"no answer from {self.port} at {self.baud} baud within "
                                   f"{self.timeout:g} s (waiting for {what}); is the board "
                                   f"running and the baud rate right?")
            self._pending.extend(self._read_some())

    def _skip(self, message):
        self.skipped += 1
        if isinstance(message, protocol.Garbled):
            self.garbled += len(message.data)
        self.events.append(message)
