"""Pauses on a real stand-in (docs/protocol.md, "Pauses"): noise without a newline, a pause, then
a text image is answered; a person typing slowly is answered as usual. The host and qemu-m7
stand-ins, and RIOT native64 when there is a RIOT clone, each through its pty with pyserial,
with real wall-clock pauses (on qemu-m7 they become emulated time)."""
import random
import time

import pytest

from utils import protocol as P
from utils import serial_link as L
from utils.standin import StandIn

TARGETS = ["host", "qemu-m7", "native64"]
PAUSE = 3 * P.RESYNC_PAUSE_S   # well over the device's pause, even on a loaded machine
GAP = 2.5 * P.RESYNC_PAUSE_S   # between a slow typist's keys: each gap is a pause


@pytest.fixture(scope="module")
def native64_standin(riot_base, quick_mlf_tar, tmp_path_factory):
    directory = tmp_path_factory.mktemp("native64-resync")
    standin = StandIn("native64", quick_mlf_tar, link=directory / "tinyml-native64",
                      build_dir=directory / "build-native64")
    standin.start()
    yield standin
    standin.stop()


@pytest.fixture(params=TARGETS)
def standin(request):
    fixture = {"host": "host_standin", "qemu-m7": "qemu_standin",
               "native64": "native64_standin"}[request.param]
    return request.getfixturevalue(fixture)


@pytest.fixture
def board(standin):
    with L.Board(standin.port, timeout=20) as board:
        yield board
        # leave the session's stand-in resynchronised for the next test
        assert board.info()["protocol"] == str(P.PROTOCOL_VERSION)


def noise(seed: int, size: int = 300) -> bytes:
    """Random bytes without a line end or a sync byte (the sync cases are their own tests)."""
    rng = random.Random(seed)
    allowed = [b for b in range(256) if b not in (0x0A, 0x0D, 0xA5)]
    return bytes([0x01]) + bytes(rng.choice(allowed) for _ in range(size - 1))


def send_slowly(board, pieces, gap: float):
    for i, piece in enumerate(pieces):
        if i:
            time.sleep(gap)
        board.send_raw(piece)


def replies_until_text_reply(board, kind, timeout: float = 20) -> list:
    """Every message up to and including the first text-form `kind` (Result or Info)."""
    deadline = time.monotonic() + timeout
    messages = []
    while time.monotonic() < deadline:
        messages += board.read_messages(0.1)
        if any(isinstance(m, kind) and m.seq is None for m in messages):
            return messages
    raise AssertionError(f"no text {kind.__name__} within {timeout} s; got {messages}")


def cut_frame(image) -> bytes:
    """A frame the sender gave up on: its header and a hundred of its 784 pixels."""
    return P.encode_infer(4321, image)[:P.HEADER_BYTES + 100]


@pytest.mark.parametrize("damage", ["noise", "noise_then_lone_sync", "noise_then_cut_frame",
                                    "printable_junk"])
def test_damage_pause_then_a_text_image_is_answered(board, damage, mnist_test_100,
                                                    host_digits_100):
    image = mnist_test_100[0][0]
    garbage = {
        "noise": noise(1),
        "noise_then_lone_sync": noise(2) + b"\xa5",
        "noise_then_cut_frame": noise(3) + cut_frame(mnist_test_100[0][1]),
        "printable_junk": b"12 7 x",  # "x" is reported at the pause: it is no value
    }[damage]
    board.send_raw(garbage)
    time.sleep(PAUSE)
    board.send_raw(P.encode_text_image(image))
    messages = replies_until_text_reply(board, P.Result)
    (result,) = [m for m in messages if isinstance(m, P.Result)]
    assert result.seq is None and result.digit == host_digits_100[0]
    errors = [m for m in messages if isinstance(m, P.DeviceError)]
    # one report of the damage; a frame cut by the image is its own (binary) error
    expected = {"noise": [None], "noise_then_lone_sync": [None, None],
                "noise_then_cut_frame": [None, 4321], "printable_junk": [None]}[damage]
    assert [e.seq for e in errors] == expected, errors
    assert messages.index(result) == len(messages) - 1


def test_without_the_pause_the_image_is_lost(board, mnist_test_100):
    """What the pause is for: noise and a text image in one go make one garbage line."""
    board.send_raw(noise(1) + P.encode_text_image(mnist_test_100[0][0]))
    board.info()  # a barrier: every reply to what was sent before has come
    messages = list(board.events)
    assert not any(isinstance(m, P.Result) for m in messages)
    assert [m.code for m in messages if isinstance(m, P.DeviceError)] == [P.ErrorCode.GARBAGE]


def test_info_typed_slowly_is_answered(board, standin):
    """A person typing `info` in a terminal, each key after a gap longer than the pause."""
    board.read_messages(0.1)
    send_slowly(board, [b"i", b"n", b"f", b"o", b"\r"], GAP)
    messages = replies_until_text_reply(board, P.Info)
    assert [m for m in messages if not isinstance(m, P.TextLine)] == [P.Info(None, standin.info)]


def test_a_text_image_sent_with_gaps_is_answered(board, mnist_test_100, host_digits_100):
    """Gaps inside a value and after a space: a line that can still be a request is kept."""
    line = P.encode_text_image(mnist_test_100[0][2])
    inside_value = next(i for i in range(1000, len(line)) if line[i - 1:i + 1].isdigit())
    after_space = line.index(b" ", inside_value) + 1
    board.read_messages(0.1)
    send_slowly(board, [line[:inside_value], line[inside_value:after_space], line[after_space:]],
                PAUSE)
    messages = replies_until_text_reply(board, P.Result)
    assert [(m.seq, m.digit) for m in messages if not isinstance(m, P.TextLine)] == \
        [(None, host_digits_100[2])]


def test_the_pause_lasts_as_long_as_the_spec_says(board):
    """A lone token that is no value is reported only when the pause ends it: the time from
    sending it to the report is the device's pause. On qemu-m7 this checks that emulated time
    keeps to the host's clock while the CPU sleeps (it would jump ahead with -icount sleep=off)."""
    board.read_messages(0.1)
    sent = time.monotonic()
    board.send_raw(b"x")
    while not (errors := [m for m in board.read_messages(0.005) if isinstance(m, P.DeviceError)]):
        assert time.monotonic() - sent < 10, "no report of the token at the pause"
    took = time.monotonic() - sent
    assert [(e.seq, e.code) for e in errors] == [(None, P.ErrorCode.NOT_A_NUMBER)]
    print(f"pause measured: {took * 1000:.0f} ms")
    # never early; late by the scheduling of a loaded machine at most
    assert P.RESYNC_PAUSE_S * 0.95 <= took < P.RESYNC_PAUSE_S + 2
