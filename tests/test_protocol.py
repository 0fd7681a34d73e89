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


def bar_pixels():
    return bytes(255 if 4 <= i // 28 <= 23 and 12 <= i % 28 <= 15
                 else (128 if 4 <= i // 28 <= 23 and i % 28 == 16 else 0) for i in range(784))


# the named images of the request vectors, by the word their description starts with
NAMED_PIXELS = {"ramp": lambda: RAMP, "pattern": pattern_pixels, "bar": bar_pixels,
                "blank": lambda: bytes(784)}


def as_dict(m):
    """The vectors' JSON form of a parsed message."""
    if isinstance(m, P.Result):
        d = {"kind": "result", "seq": m.seq, "digit": m.digit, "time": m.time, "time_unit": m.time_unit}
        if m.time_us is not None:
            d["time_us"] = m.time_us
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
    if vector["type"] in (P.MsgType.INFER, P.MsgType.INFER_RLE):
        pixels = NAMED_PIXELS[vector["pixels"].split(":")[0]]()
        assert f"{zlib.crc32(pixels):08x}" == vector["pixels_crc32"]
        encode = P.encode_infer if vector["type"] == P.MsgType.INFER else P.encode_infer_rle
        assert encode(vector["seq"], pixels).hex() == vector["hex"]
        if vector["type"] == P.MsgType.INFER_RLE:
            frame = bytes.fromhex(vector["hex"])
            assert P.rle_decode(frame[P.HEADER_BYTES:-P.CRC_BYTES]) == pixels
            assert len(frame) == P.HEADER_BYTES + vector["payload_bytes"] + P.CRC_BYTES
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
    # the blank image: 6 runs of 128 zeros and one of 16 (tokens 0x7f x 6, 0x0f)
    (blank,) = [v for v in VECTORS["requests"] if v["name"] == "infer_rle_blank"]
    frame = bytes.fromhex(blank["hex"])
    assert frame[:7] == bytes.fromhex("a55a03") + struct.pack("<HH", blank["seq"], 7)
    assert frame[7:14] == b"\x7f" * 6 + b"\x0f"
    assert struct.unpack_from("<I", frame, 14)[0] == zlib.crc32(frame[2:14])


def test_result_short_vector_layout_by_hand():
    (vector,) = [v for v in VECTORS["replies"] if v["name"] == "result_short_cycles"]
    frame = bytes.fromhex(vector["hex"])
    assert len(frame) == P.RESULT_SHORT_FRAME_BYTES == 31
    assert frame[2] == 0x84 and struct.unpack_from("<HH", frame, 3) == (1, 20)
    assert struct.unpack_from("<BBII", frame, 7) == (7, 1, 3812345, 17650)
    assert list(frame[17:27]) == vector["steps"] == [round(-16 * s) for s in vector["scores"]]


@pytest.mark.parametrize("vector", VECTORS["replies"], ids=lambda v: v["name"])
def test_reply_vectors_encode_and_parse(vector):
    frame = bytes.fromhex(vector["hex"])
    if "steps" in vector:
        assert P.encode_result_short(vector["seq"], vector["digit"], vector["time"],
                                     vector["time_unit"], vector["scores"], vector["time_us"]) == frame
        expected = P.Result(vector["seq"], vector["digit"], vector["time"], vector["time_unit"],
                            [-q / 16 for q in vector["steps"]], vector["time_us"])
    elif "digit" in vector:
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


# ------------------------------------------------------------------ INFER_RLE

def test_rle_round_trips_mnist_and_edge_images():
    from utils.data import mnist_arrays
    images, _ = mnist_arrays(train=False)
    rng = np.random.default_rng(3)
    edge = [bytes(784), bytes([255]) * 784, RAMP, pattern_pixels(), bar_pixels(),
            bytes([0, 7] * 392), bytes([7, 0, 0] * 261 + [7]), bytes([0, 0, 9] * 261 + [0])]
    edge += [rng.choice([0, 0, 0, 1, 255], 784).astype(np.uint8).tobytes() for _ in range(200)]
    for image in edge + [im.tobytes() for im in images[::50]]:
        payload = P.rle_encode(image)
        assert P.rle_decode(payload) == image
        frame = P.encode_infer_rle(1, image)
        assert frame is None if len(payload) >= 784 else P.rle_decode(frame[7:-4]) == image


def test_rle_encoder_never_exceeds_its_worst_case():
    """Literal runs of 128: 784 pixels cost 791 bytes at most; then the 795-byte frame is used."""
    assert len(P.rle_encode(bytes([255]) * 784)) == 791
    assert P.encode_infer_rle(1, bytes([255]) * 784) is None


@pytest.mark.parametrize("payload, message", [
    (b"", "ends after 0 pixels"),
    (b"\x7f" * 7, "runs past 784 pixels at payload byte 6"),
    (b"\x7f" * 6 + b"\x0d\x81\x05", "ends after 783 pixels"),       # a literal run cut short
    (b"\x7f" * 6 + b"\x0e\x81\x05\x06", "runs past 784 pixels at payload byte 7"),
])
def test_rle_decode_refuses_bad_payloads(payload, message):
    with pytest.raises(ValueError, match=message):
        P.rle_decode(payload)


def test_score_steps_round_and_saturate():
    assert [P.score_steps(s) for s in (0.0, -0.03125, -0.0625, -15.9375, -15.96875, -1e9,
                                       float("nan"), float("-inf"), 0.5)] == \
        [0, 1, 1, 255, 255, 255, 255, 255, 0]
