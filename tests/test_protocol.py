"""utils.protocol against docs/protocol_vectors.json and against damage (Python side)."""
import json
import math
import random
import re
import struct
import zlib

import numpy as np
import pytest

from utils import protocol as P
from utils.paths import ROOT

VECTORS = json.loads((ROOT / "docs" / "protocol_vectors.json").read_text())
RAMP = bytes(i % 256 for i in range(784))


def pattern_pixels():
    return bytes(0 if (i // 28) % 3 == 0 else (i * 37 + 11) % 256 for i in range(784))


def as_dict(m):
    """The vectors' JSON form of a parsed message."""
    if isinstance(m, P.Result):
        d = {"kind": "result", "seq": m.seq, "digit": m.digit, "time": m.time, "time_unit": m.time_unit}
        if m.seq is None:
            d["permille"] = P.permille(m.scores)
        else:
            d["scores"] = m.scores
        return d
    if isinstance(m, P.Info):
        return {"kind": "info", "seq": m.seq, "fields": m.fields}
    if isinstance(m, P.DeviceError):
        return {"kind": "error", "seq": m.seq, "code": m.code, "message": m.message}
    if isinstance(m, P.TextLine):
        return {"kind": "text", "text": m.text}
    if isinstance(m, P.Garbled):
        return {"kind": "garbled", "bytes": len(m.data)}
    raise AssertionError(f"unexpected message {m!r}")


# ------------------------------------------------------------------ vectors

@pytest.mark.parametrize("vector", VECTORS["requests"], ids=lambda v: v["name"])
def test_request_vectors_encode(vector):
    if vector["type"] == P.MsgType.INFER:
        pixels = RAMP if vector["pixels"].startswith("ramp") else pattern_pixels()
        assert f"{zlib.crc32(pixels):08x}" == vector["pixels_crc32"]
        assert P.encode_infer(vector["seq"], pixels).hex() == vector["hex"]
    else:
        assert P.encode_info_request(vector["seq"]).hex() == vector["hex"]


def test_request_vector_layout_by_hand():
    """The byte layout of docs/protocol.md, checked field by field, not through the encoder."""
    frame = bytes.fromhex(VECTORS["requests"][0]["hex"])
    assert len(frame) == 795 == P.INFER_FRAME_BYTES
    assert frame[:2] == b"\xa5\x5a" and frame[2] == 1
    assert struct.unpack_from("<HH", frame, 3) == (1, 784)
    assert frame[7:791] == RAMP
    assert struct.unpack_from("<I", frame, 791)[0] == zlib.crc32(frame[2:791])
    info = bytes.fromhex(VECTORS["requests"][2]["hex"])
    assert info.hex() == "a55a023412000095bc09dc"


@pytest.mark.parametrize("vector", VECTORS["replies"], ids=lambda v: v["name"])
def test_reply_vectors_encode_and_parse(vector):
    frame = bytes.fromhex(vector["hex"])
    if "digit" in vector:
        assert P.encode_result(vector["seq"], vector["digit"], vector["time"], vector["time_unit"],
                               vector["scores"]) == frame
        expected = P.Result(vector["seq"], vector["digit"], vector["time"], vector["time_unit"],
                            vector["scores"])
    elif "fields" in vector:
        assert P.encode_info_reply(vector["seq"], vector["fields"]) == frame
        expected = P.Info(vector["seq"], vector["fields"])
    else:
        assert P.encode_error(vector["seq"], vector["code"], vector["message"]) == frame
        expected = P.DeviceError(vector["seq"], vector["code"], vector["message"])
    assert P.ReplyParser().feed(frame) == [expected]


@pytest.mark.parametrize("vector", VECTORS["reply_streams"], ids=lambda v: v["name"])
def test_reply_streams_whole_and_byte_by_byte(vector):
    data = bytes.fromhex(vector["hex"])
    assert [as_dict(m) for m in P.ReplyParser().feed(data)] == vector["expect"]
    parser = P.ReplyParser()
    one_by_one = []
    for i in range(len(data)):
        one_by_one += parser.feed(data[i:i + 1])
    assert [as_dict(m) for m in one_by_one] == vector["expect"]
    assert parser.pending == b""


@pytest.mark.parametrize("vector", VECTORS["text_results"], ids=lambda v: v["time_unit"])
def test_text_result_format(vector):
    assert P.format_text_result(vector["digit"], vector["time"], vector["time_unit"],
                                vector["scores"]) == vector["line"]


@pytest.mark.parametrize("vector", VECTORS["text_lines"], ids=lambda v: v["line"][:20])
def test_text_line_vectors(vector):
    parsed = P.parse_text_reply(vector["line"])
    assert (None if parsed is None else as_dict(parsed)) == vector["expect"]


def test_pause_vectors_are_well_formed():
    """`pauses`: increasing offsets into the input, at most its length; every text image in a
    pause vector is the one encode_text_image makes, so a host sending it is what is tested."""
    paused = [v for v in VECTORS["device_streams"] if "pauses" in v]
    assert len(paused) >= 8
    image = P.encode_text_image(RAMP)
    for vector in paused:
        data, pauses = bytes.fromhex(vector["input_hex"]), vector["pauses"]
        assert pauses and pauses == sorted(set(pauses)), vector["name"]
        assert 0 <= pauses[0] and pauses[-1] <= len(data), vector["name"]
        if any(e.startswith("infer text") for e in vector["events"]):
            assert image in data, vector["name"]


def test_resync_pause_is_one_constant():
    """The pause of docs/protocol.md is the firmware's and the host's."""
    header = (ROOT / "firmware" / "protocol.h").read_text()
    (ms,) = re.findall(r"#define PROTO_RESYNC_PAUSE_MS (\d+)", header)
    assert P.RESYNC_PAUSE_S == int(ms) / 1000
    assert f"at least {ms} ms" in (ROOT / "docs" / "protocol.md").read_text()


# ------------------------------------------------------------------ encoders

def test_encode_infer_accepts_arrays_and_bytes():
    image = np.arange(784, dtype=np.int64).reshape(28, 28) % 256
    frame = P.encode_infer(9, image)
    assert frame == P.encode_infer(9, bytes(image.reshape(-1).astype(np.uint8)))
    assert frame == P.encode_infer(9, image.astype(np.uint8).reshape(-1))
    assert frame == P.encode_infer(9, bytearray(RAMP))


@pytest.mark.parametrize("bad, words", [
    (np.zeros(783, np.uint8), "784"),
    (np.zeros((28, 27)), "784"),
    (np.full(784, 256), "0..255"),
    (np.full(784, -1), "0..255"),
    (np.full(784, 0.5), "whole"),
    (b"\x00" * 785, "784"),
])
def test_encode_infer_rejects_bad_images(bad, words):
    with pytest.raises(ValueError, match=words):
        P.encode_infer(1, bad)


def test_seq_must_fit_u16():
    with pytest.raises(ValueError):
        P.encode_info_request(0x10000)


def test_text_image_is_one_line_of_784_values():
    line = P.encode_text_image(RAMP)
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert [int(t) for t in line.split()] == list(RAMP)


def test_crc_is_zlib():
    assert P.crc32(b"123456789") == 0xCBF43926  # the CRC-32 check value


# ------------------------------------------------------------------ parser robustness

def test_result_probabilities_sum_to_one():
    scores = [math.log(p) for p in (0.05,) * 9 + (0.55,)]
    result = P.Result(1, 9, 10, "us", scores)
    assert sum(result.probabilities) == pytest.approx(1.0)


def test_parse_text_reply_rejects_malformed():
    with pytest.raises(ValueError):
        P.parse_text_reply("prediction: 7 time: 12 us probs_permille: 1 2")
    with pytest.raises(ValueError):
        P.parse_text_reply("error: no_such_error: x")
    assert P.parse_text_reply("hello") is None


def test_random_noise_never_hides_a_following_reply():
    """Any noise without a sync marker, then a reply: the reply always comes out intact."""
    rng = random.Random(1)
    reply = P.encode_result(77, 3, 5, "us", [-1.0] * 10)
    for _ in range(200):
        noise = bytes(rng.choice([b for b in range(256) if b != 0xA5]) for _ in range(rng.randrange(0, 300)))
        messages = P.ReplyParser().feed(noise + reply)
        assert messages[-1] == P.Result(77, 3, 5, "us", [-1.0] * 10)
        assert all(isinstance(m, (P.Garbled, P.TextLine, P.Result, P.Info, P.DeviceError)) for m in messages)


def test_garbled_byte_count_accounts_for_every_skipped_byte():
    damaged = bytearray(P.encode_result(5, 1, 2, "us", [-2.0] * 10))
    damaged[20] ^= 0x40
    good = P.encode_info_reply(6, {"board": "x"})
    messages = P.ReplyParser().feed(bytes(damaged) + good)
    assert messages[-1] == P.Info(6, {"board": "x"})
    assert sum(len(m.data) for m in messages if isinstance(m, P.Garbled)) == len(damaged)


def test_random_bytes_never_crash_the_parser():
    rng = random.Random(2)
    parser = P.ReplyParser()
    for _ in range(300):
        chunk = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 64)))
        if rng.random() < 0.2:
            chunk += P.SYNC
        for message in parser.feed(chunk):
            assert isinstance(message, (P.Garbled, P.TextLine, P.Result, P.Info, P.DeviceError))
    assert len(parser.pending) <= P.MAX_FRAME + P.MAX_TEXT_LINE
