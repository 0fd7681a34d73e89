"""utils.serial_link's failure modes on a real pty (no firmware needed): every one is a LinkError
with a one-line message naming what to check."""
import os
import threading
import tty

import pytest

from utils import protocol as P
from utils import serial_link as L


@pytest.fixture
def pty_pair():
    master, slave = os.openpty()
    tty.setraw(slave)
    yield master, os.ttyname(slave)
    for fd in (master, slave):
        try:
            os.close(fd)
        except OSError:
            pass


def test_port_not_found_lists_ports():
    with pytest.raises(L.PortNotFound) as err:
        L.Board("/dev/ttyNOPE0")
    assert "/dev/ttyNOPE0" in str(err.value) and "ports that exist" in str(err.value)
    assert "\n" not in str(err.value)


def test_silent_board_times_out_naming_port_and_baud(pty_pair):
    _, port = pty_pair
    with L.Board(port, baud=57600, timeout=0.3) as board:
        with pytest.raises(L.BoardTimeout) as err:
            board.info()
    assert port in str(err.value) and "57600" in str(err.value)


def test_board_gone_when_the_other_side_closes(pty_pair):
    master, port = pty_pair
    with L.Board(port, timeout=3) as board:
        threading.Timer(0.2, os.close, [master]).start()
        with pytest.raises(L.BoardGone):
            board.info()


def test_board_gone_when_the_pty_vanishes_mid_read(pty_pair):
    """Half a reply, then the device side closes while the client reads: BoardGone, one line."""
    master, port = pty_pair
    with L.Board(port, timeout=3) as board:
        os.write(master, P.encode_info_reply(1, {"board": "half"})[:6])

        def vanish():
            os.close(master)
        threading.Timer(0.2, vanish).start()
        with pytest.raises(L.BoardGone) as err:
            board.read_messages(3)
    assert port in str(err.value) and "\n" not in str(err.value)


def test_every_call_on_a_vanished_pty_is_a_link_error(pty_pair):
    """After the device side is gone, each request fails as BoardGone, never with pyserial's or
    termios' own exceptions."""
    master, port = pty_pair
    with L.Board(port, timeout=1) as board:
        os.close(master)
        for call in (board.info, lambda: board.infer(bytes(P.PIXELS)),
                     lambda: board.infer_text(bytes(P.PIXELS)), lambda: board.send_raw(b"info\n"),
                     lambda: board.read_messages(0.2)):
            with pytest.raises(L.BoardGone) as err:
                call()
            assert "\n" not in str(err.value)


def test_a_path_that_is_no_serial_port_is_a_link_error(tmp_path):
    not_a_port = tmp_path / "notes.txt"
    not_a_port.write_text("not a tty")
    with pytest.raises(L.LinkError) as err:
        L.Board(str(not_a_port))
    assert str(not_a_port) in str(err.value) and "\n" not in str(err.value)


def _read_request_seq(master: int, like: bytes) -> int:
    """Read one whole request, as long as `like`, from the device side; return its seq."""
    request = b""
    while len(request) < len(like):
        request += os.read(master, 1024)
    return int.from_bytes(request[3:5], "little")


def test_replies_matched_by_seq_and_noise_counted(pty_pair):
    """A hand-written responder: noise and an unrelated reply first, then the matching one."""
    master, port = pty_pair

    def respond():
        seq = _read_request_seq(master, P.encode_info_request(0))
        os.write(master, b"\x01\x02junk\n" + P.encode_info_reply(seq + 1, {"board": "other"})
                 + P.encode_info_reply(seq, {"board": "me"}))

    thread = threading.Thread(target=respond)
    thread.start()
    with L.Board(port, timeout=3) as board:
        assert board.info() == {"board": "me"}
        assert board.garbled == 7 and board.skipped == 2
    thread.join()


def test_device_error_reply_raises(pty_pair):
    master, port = pty_pair

    def respond():
        seq = _read_request_seq(master, P.encode_infer(0, bytes(P.PIXELS)))
        os.write(master, P.encode_error(seq, P.ErrorCode.INFERENCE_FAILED, "run returned -1"))

    thread = threading.Thread(target=respond)
    thread.start()
    with L.Board(port, timeout=3) as board:
        with pytest.raises(L.DeviceErrorReply) as err:
            board.infer(bytes(784))
    thread.join()
    assert err.value.error.code == P.ErrorCode.INFERENCE_FAILED
    assert "inference_failed" in str(err.value)
