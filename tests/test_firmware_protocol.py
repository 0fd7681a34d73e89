"""firmware/protocol.c (the C side) against docs/protocol_vectors.json, and its fuzzer's short run.
No model needed: the parser and encoders are built alone with gcc + ASan/UBSan."""
import json
import shutil
import subprocess

import pytest

from tests.fixtures_tools import need
from utils import protocol as P
from utils.paths import ROOT

VECTORS = json.loads((ROOT / "docs" / "protocol_vectors.json").read_text())


def with_pauses(data: bytes, pauses=()) -> str:
    """protocol_check's input: the bytes in hex, `p` where the input pauses."""
    cuts = [0, *pauses, len(data)]
    return "p".join(data[a:b].hex() for a, b in zip(cuts, cuts[1:]))


def events(protocol_check, data: bytes, pauses=()) -> list:
    out = subprocess.run([str(protocol_check), "events"], input=with_pauses(data, pauses),
                         capture_output=True, text=True, check=True, timeout=30).stdout
    return [line.split(" #")[0] for line in out.splitlines()]


def stream_events(protocol_check, vector) -> list:
    return events(protocol_check, bytes.fromhex(vector["input_hex"]), vector.get("pauses", ()))


def replies(protocol_check, lines: list) -> list:
    out = subprocess.run([str(protocol_check), "replies"], input="\n".join(lines) + "\n",
                         capture_output=True, text=True, check=True, timeout=30).stdout
    return out.splitlines()


@pytest.mark.parametrize("vector", VECTORS["device_streams"], ids=lambda v: v["name"])
def test_device_stream_vectors(protocol_check, vector):
    assert stream_events(protocol_check, vector) == vector["events"]


def test_pause_vectors_need_their_pauses(protocol_check):
    """Each pause vector tests the pause: without its pauses the parser gives other events
    (for most, the request after the damage is lost)."""
    paused = [v for v in VECTORS["device_streams"] if v.get("pauses")]
    assert len(paused) >= 8
    changed = [v["name"] for v in paused
               if events(protocol_check, bytes.fromhex(v["input_hex"])) != v["events"]]
    keeps = {"slow_info", "slow_text_image", "pauses_inside_frames"}  # pauses that must not matter
    assert sorted(changed) == sorted(v["name"] for v in paused if v["name"] not in keeps)


def test_pauses_never_change_valid_requests(protocol_check):
    """A person at a terminal may stop anywhere: in every vector whose input is all requests,
    pauses at random places (not between a sync's two bytes) give the same events."""
    import random
    rng = random.Random(11)
    valid = [v for v in VECTORS["device_streams"]
             if v["events"] and not any(e.startswith("error") for e in v["events"])]
    assert len(valid) >= 10
    for vector in valid:
        data = bytes.fromhex(vector["input_hex"])
        allowed = [i for i in range(len(data) + 1) if not (i > 0 and data[i - 1] == 0xA5)]
        for _ in range(3):
            pauses = sorted(rng.sample(allowed, min(len(allowed), rng.randrange(1, 40))))
            assert events(protocol_check, data, pauses) == vector["events"], (vector["name"], pauses)


def test_a_repeated_pause_is_one_pause(protocol_check):
    for vector in VECTORS["device_streams"]:
        pauses = [p for p in vector.get("pauses", ()) for _ in range(3)]
        if pauses:
            data = bytes.fromhex(vector["input_hex"])
            assert events(protocol_check, data, pauses) == vector["events"], vector["name"]


def test_request_vectors_parse(protocol_check):
    for vector in VECTORS["requests"]:
        got = events(protocol_check, bytes.fromhex(vector["hex"]))
        if vector["type"] == P.MsgType.INFER:
            assert got == [f"infer bin seq={vector['seq']} crc={vector['pixels_crc32']}"]
        elif vector["type"] == P.MsgType.INFER_RLE:
            assert got == [f"infer rle seq={vector['seq']} crc={vector['pixels_crc32']}"]
        else:
            assert got == [f"info bin seq={vector['seq']}"]


def _floats(values):
    return " ".join(repr(float(v)) for v in values)


def test_reply_encoders_match_vectors(protocol_check):
    lines, expected = [], []
    for v in VECTORS["replies"]:
        if "steps" in v:
            time_us = -1 if v["time_us"] is None else v["time_us"]
            lines.append(f"short {v['seq']} {v['digit']} {v['time_unit']} {v['time']} {time_us} "
                         f"{_floats(v['scores'])}")
        elif "digit" in v:
            lines.append(f"result {v['seq']} {v['digit']} {v['time_unit']} {v['time']} {_floats(v['scores'])}")
        elif "fields" in v:
            lines.append(f"info {v['seq']} " + " ".join(f"{k}={x}" for k, x in v["fields"].items()))
        else:
            lines.append(f"error {v['seq']} {v['code']} {v['message']}")
        expected.append(v["hex"])
    assert replies(protocol_check, lines) == expected


def test_text_result_lines_match_vectors(protocol_check):
    vectors = VECTORS["text_results"]
    lines = [f"line {v['digit']} {v['time']} {v['time_unit']} {_floats(v['scores'])}" for v in vectors]
    assert replies(protocol_check, lines) == [v["line"].rstrip("\n") for v in vectors]


def test_error_lines_parse_back_in_python(protocol_check):
    """The C error line and the Python parser agree on names and details."""
    cases = [(code, f"detail for {code.wire_name}") for code in P.ErrorCode]
    lines = replies(protocol_check, [f"errline {int(c)} {d}" for c, d in cases])
    for (code, detail), line in zip(cases, lines):
        assert P.parse_text_reply(line) == P.DeviceError(None, int(code), detail)


def test_every_byte_split_gives_the_same_events(protocol_check):
    """The parser keeps no state outside proto_parser: feeding the vectors back to back gives
    the concatenation of their events (each vector starts at a line boundary)."""
    streams = [v for v in VECTORS["device_streams"] if v["name"] != "white_space_cut_by_frame"]
    data, pauses = b"", []
    for v in streams:
        pauses += [len(data) + p for p in v.get("pauses", ())]
        data += bytes.fromhex(v["input_hex"]) + b"\n"
    expected = [e for v in streams for e in v["events"]]
    assert events(protocol_check, data, pauses) == expected


def test_random_damage_then_a_frame_is_always_answered(protocol_check):
    """Any noise without a sync marker, a bad frame, a truncated frame: the next whole frame
    still gets through."""
    import random
    rng = random.Random(7)
    image = bytes(rng.randrange(256) for _ in range(784))
    tail = P.encode_infer(4242, image)
    chunks = []
    for i in range(30):
        noise = bytes(rng.choice([b for b in range(256) if b != 0xA5]) for _ in range(rng.randrange(50)))
        frame = bytearray(P.encode_infer(i, image))
        frame[rng.randrange(2, len(frame))] ^= 1 << rng.randrange(8)
        chunks.append(noise + bytes(frame[:rng.randrange(2, len(frame) + 1)]))
    for chunk in chunks:
        got = events(protocol_check, chunk + tail)
        assert got[-1] == f"infer bin seq=4242 crc={P.crc32(image):08x}", got


def test_rle_errors_read_as_in_python(protocol_check):
    """Random INFER_RLE payloads, intact frames: the C decoder accepts exactly those the
    Python one does, with the same pixels or the same detail text."""
    import random
    rng = random.Random(5)
    payloads = []
    for _ in range(300):
        tokens = bytearray()
        for _ in range(rng.randrange(0, 20)):
            token = rng.choice([rng.randrange(0x80), rng.randrange(0x80, 0x100)])
            tokens.append(token)
            if token >= 0x80:
                tokens += bytes(rng.randrange(256) for _ in range(token - 0x7F - rng.choice([0, 0, 1])))
        payloads.append(bytes(tokens[:784]))
    # and near misses of real images: a token dropped, added or changed
    for _ in range(100):
        image = bytes(rng.choice([0, 0, 0, 200]) for _ in range(784))
        payload = bytearray(P.rle_encode(image))
        payload[rng.randrange(len(payload))] = rng.randrange(256)
        payloads.append(bytes(payload[:784]))
    data = b"".join(P.encode_frame(P.MsgType.INFER_RLE, i, p) for i, p in enumerate(payloads))
    out = subprocess.run([str(protocol_check), "events"], input=data.hex(), capture_output=True,
                         text=True, check=True, timeout=60).stdout.splitlines()
    assert len(out) == len(payloads)
    for seq, (payload, line) in enumerate(zip(payloads, out)):
        try:
            pixels = P.rle_decode(payload)
        except ValueError as exc:
            assert line == f"error bin seq={seq} code=10 # bad_rle: {exc}"
        else:
            assert line == f"infer rle seq={seq} crc={P.crc32(pixels):08x}"


def test_fuzzer_short_run(tmp_path):
    need(shutil.which("clang-14") is not None or shutil.which("clang") is not None,
         "clang not installed: no libFuzzer (apt: clang, libclang-rt-14-dev)")
    result = subprocess.run(["bash", str(ROOT / "tools" / "fuzz_protocol.sh"), "--runs", "20000",
                             "--out", str(tmp_path / "fuzz")], capture_output=True, text=True,
                            timeout=300)
    need(result.returncode != 3, f"fuzzer cannot be built here: {result.stderr.strip()}")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Done 20000 runs" in result.stdout and "no crash" in result.stdout
