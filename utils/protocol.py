"""The serial protocol of docs/protocol.md, as a pure codec: bytes in, messages out, no I/O.

The firmware (firmware/protocol.c), the serial link, the clients and the tests all share this
module; docs/protocol_vectors.json holds the vectors both the C and the Python side test against.

Requests are built with encode_*; replies are read by ReplyParser, which takes the device's
byte stream in any chunks and returns whole messages: binary frames (RESULT, INFO_REPLY, ERROR)
and text lines (parsed when they are replies, TextLine otherwise, e.g. the boot banner).
Damaged input becomes a Garbled message and the parser resynchronises on the next sync marker
or line, so one bad byte never costs more than the message it hit.
"""
import math
import struct
import zlib
from dataclasses import dataclass, field
from enum import IntEnum

import numpy as np

# 2: INFER_RLE requests and RESULT_SHORT replies; a device that reports protocol=1 in its
# INFO takes INFER (795 bytes) and the text form only.
PROTOCOL_VERSION = 2
COMPACT_SINCE_VERSION = 2
PIXELS = 784
SIDE = 28
SYNC = b"\xa5\x5a"
HEADER_BYTES = 7            # sync(2) type(1) seq(2) len(2)
CRC_BYTES = 4
MAX_PAYLOAD = PIXELS        # the largest payload either side may announce
MAX_FRAME = HEADER_BYTES + MAX_PAYLOAD + CRC_BYTES
INFER_FRAME_BYTES = HEADER_BYTES + PIXELS + CRC_BYTES  # 795
RESULT_PAYLOAD_BYTES = 46
RESULT_SHORT_PAYLOAD_BYTES = 20
RESULT_FRAME_BYTES = HEADER_BYTES + RESULT_PAYLOAD_BYTES + CRC_BYTES              # 57
RESULT_SHORT_FRAME_BYTES = HEADER_BYTES + RESULT_SHORT_PAYLOAD_BYTES + CRC_BYTES  # 31
# RLE tokens (docs/protocol.md, "INFER_RLE"): 0x00..0x7F is a run of 1..128 zero pixels,
# 0x80..0xFF announces 1..128 literal pixel bytes.
RLE_MAX_RUN = 128
# RESULT_SHORT scores: -log-probability in steps of 1/16, saturating at 255 (p < 1.2e-7).
SCORE_STEPS_PER_UNIT = 16
NO_MICROSECONDS = 0xFFFFFFFF
MAX_TEXT_LINE = 4096        # both directions: longer lines are refused (device) / garbled (host)
# Quiet input for this long ends a text line the device can no longer read as a request
# (PROTO_RESYNC_PAUSE_MS; docs/protocol.md, "Pauses"): after damage, a host stays quiet this
# long before its next text request. Frames need no pause.
RESYNC_PAUSE_S = 0.100


class MsgType(IntEnum):
    INFER = 0x01
    INFO = 0x02
    INFER_RLE = 0x03
    RESULT = 0x81
    INFO_REPLY = 0x82
    ERROR = 0x83
    RESULT_SHORT = 0x84


class ErrorCode(IntEnum):
    BAD_CRC = 1
    BAD_LENGTH = 2
    BAD_TYPE = 3
    GARBAGE = 4
    VALUE_TOO_LARGE = 5
    NOT_A_NUMBER = 6
    WRONG_COUNT = 7
    LINE_TOO_LONG = 8
    INFERENCE_FAILED = 9
    BAD_RLE = 10

    @property
    def wire_name(self) -> str:
        """The name as it appears on the wire: `error: <wire_name>: ...`."""
        return self.name.lower()


TIME_UNITS = {0: "us", 1: "cycles", 2: "instructions"}
TIME_UNIT_CODES = {name: code for code, name in TIME_UNITS.items()}


def crc32(data: bytes) -> int:
    """CRC-32 (IEEE 802.3), the frame checksum: the same as zlib.crc32."""
    return zlib.crc32(bytes(data)) & 0xFFFFFFFF


# ---------------------------------------------------------------- messages

@dataclass
class Result:
    """An inference reply. seq is None for the text form; scores are 10 log-probabilities
    (from the text form they are log(permille/1000), so coarser and -inf for 0 permille)."""
    seq: int | None
    digit: int
    time: int
    time_unit: str
    scores: list = field(default_factory=list)
    # RESULT_SHORT only: the same inference in microseconds when the device has a µs clock
    # besides its cycle counter (None: not reported or no such clock).
    time_us: int | None = None

    @property
    def probabilities(self) -> list:
        return [math.exp(s) for s in self.scores]


@dataclass
class Info:
    seq: int | None
    fields: dict

    def __getitem__(self, key):
        return self.fields[key]


@dataclass
class DeviceError:
    """An error the device reported. seq is None when it came as a text line."""
    seq: int | None
    code: int
    message: str

    @property
    def name(self) -> str:
        try:
            return ErrorCode(self.code).wire_name
        except ValueError:
            return f"error_{self.code}"

    def __str__(self):
        return f"{self.name}: {self.message}" if self.message else self.name


@dataclass
class TextLine:
    """A text line from the device that is no reply, e.g. the boot banner."""
    text: str


@dataclass
class Garbled:
    """Bytes from the device that made no message; the parser skipped exactly these bytes
    (for a frame with a bad CRC only its sync: the rest is scanned again)."""
    data: bytes
    reason: str


# ---------------------------------------------------------------- requests

def encode_frame(msg_type: int, seq: int, payload: bytes = b"") -> bytes:
    """A whole frame: sync, type, seq, len, payload, CRC-32 of type..payload."""
    if not 0 <= seq <= 0xFFFF:
        raise ValueError(f"seq {seq} does not fit in u16")
    if len(payload) > 0xFFFF:
        raise ValueError(f"payload of {len(payload)} bytes does not fit in u16")
    body = struct.pack("<BHH", int(msg_type), seq, len(payload)) + bytes(payload)
    return SYNC + body + struct.pack("<I", crc32(body))


def pixel_bytes(pixels) -> bytes:
    """784 pixel bytes from bytes, a list or a numpy array (784 or 28x28, values 0..255)."""
    if isinstance(pixels, (bytes, bytearray, memoryview)):
        data = bytes(pixels)
    else:
        array = np.asarray(pixels)
        if array.size != PIXELS:
            raise ValueError(f"an image has {PIXELS} pixels (28x28), got shape {array.shape}")
        if array.dtype.kind not in "iub":
            if not np.all(np.isfinite(array)) or not np.all(array == np.round(array)):
                raise ValueError("pixels must be whole numbers 0..255 (uint8), got fractions")
        if array.size and (array.min() < 0 or array.max() > 255):
            raise ValueError(f"pixels must be 0..255, got {array.min()}..{array.max()}")
        data = array.astype(np.uint8).reshape(-1).tobytes()
    if len(data) != PIXELS:
        raise ValueError(f"an image has {PIXELS} pixels (28x28), got {len(data)}")
    return data


def encode_infer(seq: int, pixels) -> bytes:
    return encode_frame(MsgType.INFER, seq, pixel_bytes(pixels))


def rle_encode(pixels) -> bytes:
    """The INFER_RLE payload of an image: zero runs as one token, other pixels as literals.

    A run of one or two zeros between non-zero pixels stays inside the literal run: as its
    own token it would cost as much or more (a run token and a new literal token). Any
    payload that decodes to the image is valid; this one is what the test vectors use."""
    data = pixel_bytes(pixels)
    out = bytearray()
    i, n = 0, len(data)
    while i < n:
        j = i
        if data[i] == 0:
            while j < n and data[j] == 0 and j - i < RLE_MAX_RUN:
                j += 1
            out.append(j - i - 1)
        else:
            while j < n and j - i < RLE_MAX_RUN:
                if data[j]:
                    j += 1
                    continue
                k = j
                while k < n and data[k] == 0 and k - j < 3:
                    k += 1
                if k - j <= 2 and k < n and data[k] and k - i <= RLE_MAX_RUN:
                    j = k
                    continue
                break
            out.append(0x7F + (j - i))
            out += data[i:j]
        i = j
    return bytes(out)


def rle_decode(payload: bytes) -> bytes:
    """The 784 pixels of an INFER_RLE payload; ValueError with the device's detail text
    (docs/protocol.md) for a payload the device refuses as bad_rle."""
    pixels = bytearray()
    i = 0
    while i < len(payload):
        token = payload[i]
        i += 1
        if token < 0x80:
            count, literal = token + 1, b""
        else:
            count = token - 0x7F
            literal = payload[i:i + count]
            i += len(literal)
        if len(pixels) + count > PIXELS:
            raise ValueError(f"rle runs past 784 pixels at payload byte {i - len(literal) - 1}")
        if token < 0x80:
            pixels += bytes(count)
        elif len(literal) < count:
            pixels += literal
            break
        else:
            pixels += literal
    if len(pixels) != PIXELS:
        raise ValueError(f"rle ends after {len(pixels)} pixels, expected 784")
    return bytes(pixels)


def encode_infer_rle(seq: int, pixels) -> bytes | None:
    """An INFER_RLE frame, or None when the compressed image would not be shorter than 784
    bytes (send encode_infer then)."""
    payload = rle_encode(pixels)
    if len(payload) >= PIXELS:
        return None
    return encode_frame(MsgType.INFER_RLE, seq, payload)


def encode_info_request(seq: int) -> bytes:
    return encode_frame(MsgType.INFO, seq)


def encode_text_image(pixels) -> bytes:
    """The text form: 784 decimal values separated by spaces, one line."""
    return (" ".join(str(b) for b in pixel_bytes(pixels)) + "\n").encode("ascii")


TEXT_INFO_REQUEST = b"info\n"


# ---------------------------------------------------------------- replies (device side encoders)
# The device writes these; Python has them for the test vectors and for tests of the parser.

def encode_result(seq: int, digit: int, time: int, time_unit: str, scores) -> bytes:
    payload = struct.pack("<BBI", digit, TIME_UNIT_CODES[time_unit], time)
    payload += struct.pack("<10f", *scores)
    return encode_frame(MsgType.RESULT, seq, payload)


def score_steps(score: float) -> int:
    """A log-probability as RESULT_SHORT carries it: round(-16 * score), clamped to 0..255
    (NaN: 255), as the firmware computes it."""
    if not score > -1e6:  # NaN, -inf
        return 255
    return max(0, min(255, int(math.floor(-score * SCORE_STEPS_PER_UNIT + 0.5))))


def encode_result_short(seq: int, digit: int, time: int, time_unit: str, scores,
                        time_us: int | None = None) -> bytes:
    payload = struct.pack("<BBII", digit, TIME_UNIT_CODES[time_unit], time,
                          NO_MICROSECONDS if time_us is None else time_us)
    payload += bytes(score_steps(s) for s in scores)
    return encode_frame(MsgType.RESULT_SHORT, seq, payload)


def encode_info_reply(seq: int, fields: dict) -> bytes:
    return encode_frame(MsgType.INFO_REPLY, seq, format_info_fields(fields).encode("ascii"))


def encode_error(seq: int, code: int, message: str) -> bytes:
    return encode_frame(MsgType.ERROR, seq, bytes([int(code)]) + message.encode("ascii"))


def format_info_fields(fields: dict) -> str:
    return " ".join(f"{key}={value}" for key, value in fields.items())


def permille(scores) -> list:
    """Per-mille probabilities as the firmware prints them: round(exp(score) * 1000)."""
    return [int(math.exp(s) * 1000.0 + 0.5) for s in scores]


def format_text_result(digit: int, time: int, time_unit: str, scores) -> str:
    probs = " ".join(str(p) for p in permille(scores))
    return f"prediction: {digit} time: {time} {time_unit} probs_permille: {probs}\n"


def format_text_error(code: int, message: str) -> str:
    return f"error: {ErrorCode(code).wire_name}: {message}\n"


# ---------------------------------------------------------------- reply parsing

def parse_info_fields(text: str) -> dict:
    fields = {}
    for pair in text.split():
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"not a key=value pair: {pair!r}")
        fields[key] = value
    return fields


_ERROR_CODES_BY_NAME = {code.wire_name: int(code) for code in ErrorCode}


def parse_text_reply(line) -> Result | Info | DeviceError | None:
    """One text line from the device as a reply, or None when it is no reply (e.g. the banner).

    Raises ValueError for a line that starts like a reply but is malformed."""
    if isinstance(line, (bytes, bytearray)):
        line = line.decode("ascii")
    line = line.rstrip("\r\n")
    if line.startswith("prediction:"):
        tokens = line.split()
        # prediction: D time: T UNIT probs_permille: p0 .. p9
        if (len(tokens) != 16 or tokens[2] != "time:" or tokens[5] != "probs_permille:"
                or tokens[4] not in TIME_UNIT_CODES):
            raise ValueError(f"malformed prediction line: {line!r}")
        digit, time = int(tokens[1]), int(tokens[3])
        probs = [int(t) for t in tokens[6:]]
        if not 0 <= digit <= 9 or time < 0 or any(p < 0 or p > 1000 for p in probs):
            raise ValueError(f"prediction line out of range: {line!r}")
        scores = [math.log(p / 1000.0) if p > 0 else float("-inf") for p in probs]
        return Result(None, digit, time, tokens[4], scores)
    if line.startswith("info:"):
        return Info(None, parse_info_fields(line[len("info:"):]))
    if line.startswith("error:"):
        rest = line[len("error:"):].strip()
        name, _, message = rest.partition(":")
        name = name.strip()
        if name not in _ERROR_CODES_BY_NAME:
            raise ValueError(f"unknown error name in {line!r}")
        return DeviceError(None, _ERROR_CODES_BY_NAME[name], message.strip())
    return None


def decode_reply_frame(msg_type: int, seq: int, payload: bytes):
    """A checked frame's payload as a message; ValueError if it does not fit its type."""
    if msg_type == MsgType.RESULT:
        if len(payload) != RESULT_PAYLOAD_BYTES:
            raise ValueError(f"RESULT payload of {len(payload)} bytes, expected {RESULT_PAYLOAD_BYTES}")
        digit, unit, time = struct.unpack_from("<BBI", payload)
        if digit > 9 or unit not in TIME_UNITS:
            raise ValueError(f"RESULT with digit {digit}, time unit {unit}")
        scores = list(struct.unpack_from("<10f", payload, 6))
        return Result(seq, digit, time, TIME_UNITS[unit], scores)
    if msg_type == MsgType.RESULT_SHORT:
        if len(payload) != RESULT_SHORT_PAYLOAD_BYTES:
            raise ValueError(f"RESULT_SHORT payload of {len(payload)} bytes, expected "
                             f"{RESULT_SHORT_PAYLOAD_BYTES}")
        digit, unit, time, time_us = struct.unpack_from("<BBII", payload)
        if digit > 9 or unit not in TIME_UNITS:
            raise ValueError(f"RESULT_SHORT with digit {digit}, time unit {unit}")
        scores = [-q / SCORE_STEPS_PER_UNIT for q in payload[10:]]
        return Result(seq, digit, time, TIME_UNITS[unit], scores,
                      None if time_us == NO_MICROSECONDS else time_us)
    if msg_type == MsgType.INFO_REPLY:
        return Info(seq, parse_info_fields(payload.decode("ascii")))
    if msg_type == MsgType.ERROR:
        if not payload:
            raise ValueError("ERROR frame without a code")
        return DeviceError(seq, payload[0], payload[1:].decode("ascii", errors="replace"))
    raise ValueError(f"unknown reply type 0x{msg_type:02x}")


def _printable_line(data: bytes) -> bool:
    return all(0x20 <= b < 0x7F or b in (0x09, 0x0D) for b in data)


class ReplyParser:
    """Splits the device's byte stream into messages. Feed it any chunks.

    A frame with a bad CRC, an impossible length or an unknown type becomes Garbled and the
    scan restarts at the byte after its sync, so a frame hidden inside the damage is still
    found. Text is read line by line; a sync marker inside a line ends the line."""

    def __init__(self, max_payload: int = MAX_PAYLOAD, max_line: int = MAX_TEXT_LINE):
        self.max_payload = max_payload
        self.max_line = max_line
        self._buffer = bytearray()

    @property
    def pending(self) -> bytes:
        """Bytes held back waiting for the rest of a frame or line."""
        return bytes(self._buffer)

    def feed(self, data: bytes) -> list:
        self._buffer += data
        messages = []
        while self._buffer:
            message, used = self._next(self._buffer)
            if used == 0:
                break
            del self._buffer[:used]
            if message is not None:
                messages.append(message)
        return messages

    def _next(self, buf: bytearray):
        """(message or None, bytes consumed); consumed 0 means: wait for more bytes."""
        if buf[0] == SYNC[0]:
            if len(buf) < 2:
                return None, 0
            if buf[1] != SYNC[1]:
                return Garbled(bytes(buf[:1]), "sync byte 0xa5 without 0x5a"), 1
            return self._frame(buf)
        return self._text(buf)

    def _frame(self, buf: bytearray):
        if len(buf) < HEADER_BYTES:
            return None, 0
        msg_type, seq, length = struct.unpack_from("<BHH", buf, 2)
        if length > self.max_payload:
            return Garbled(bytes(buf[:2]), f"frame type 0x{msg_type:02x} seq {seq} announces "
                                          f"{length} payload bytes, over {self.max_payload}"), 2
        total = HEADER_BYTES + length + CRC_BYTES
        if len(buf) < total:
            return None, 0
        frame = bytes(buf[:total])
        (crc,) = struct.unpack_from("<I", frame, total - CRC_BYTES)
        if crc != crc32(frame[2:total - CRC_BYTES]):
            # Only the sync is dropped: the scan resumes inside the damaged frame.
            return Garbled(frame[:2], f"bad crc in a {total}-byte frame"), 2
        try:
            return decode_reply_frame(msg_type, seq, frame[HEADER_BYTES:total - CRC_BYTES]), total
        except (ValueError, UnicodeDecodeError) as exc:
            # The frame is intact but makes no sense: skip all of it.
            return Garbled(frame, str(exc)), total

    def _text(self, buf: bytearray):
        end = -1
        for i, b in enumerate(buf):
            if b == 0x0A or b == SYNC[0]:
                end = i
                break
            if i >= self.max_line:
                return Garbled(bytes(buf[:i]), "text line too long"), i
        if end < 0:
            return None, 0
        if buf[end] == SYNC[0]:
            # a frame starts inside a line: the partial line is damage, unless only white space
            chunk = bytes(buf[:end])
            if chunk.strip() == b"":
                return None, end
            return Garbled(chunk, "unterminated text line"), end
        raw = bytes(buf[:end])
        used = end + 1
        if not _printable_line(raw):
            return Garbled(raw + b"\n", "unprintable bytes in a text line"), used
        text = raw.decode("ascii").rstrip("\r")
        if text.strip() == "":
            return None, used
        try:
            reply = parse_text_reply(text)
        except ValueError as exc:
            return Garbled(raw + b"\n", str(exc)), used
        return (reply if reply is not None else TextLine(text)), used
