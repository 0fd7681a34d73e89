#!/usr/bin/env python3
"""`make test`: the firmware on a flashed STM32F746G-DISCO (or `make BOARD=native64 test`),
checked the way RIOT's own tests/pkg/*/tests/01-run.py do: RIOT's testrunner opens
`make term` and the script expects replies on it.

It asks for INFO, sends MNIST test images and expects the digits the host build of the same
model library gives (utils.aot.host_library), then garbage and a valid image after it. Text form
(784 numbers on a line) on every board: `make term` is a line terminal (pyterm)
on a real board. On native boards the terminal is the process's own pty, so binary frames
are checked too, after switching that pty to raw.

Environment: MNIST_TEST_IMAGES (default 10), UTVM_TAR (the model tar the firmware was
built from, default pkg/mnistCNN/mnistCNN.tar), RIOT_TEST_TIMEOUT (seconds per reply, 10).
"""
import os
import struct
import sys
import tty
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import pexpect  # noqa: E402
from testrunner.spawn import find_exc_origin, setup_child, teardown_child  # noqa: E402

from utils import paths, protocol  # noqa: E402
from utils.data import mnist_arrays  # noqa: E402

IMAGES = int(os.environ.get("MNIST_TEST_IMAGES") or 10)
TIMEOUT = int(os.environ.get("RIOT_TEST_TIMEOUT") or 10)
NATIVE = os.environ.get("BOARD", "").startswith("native")
TEXT_RESULT = rb"prediction: (\d) time: (\d+) (us|cycles|instructions) probs_permille:(?: \d+){10}"


def expected_digits(images):
    from utils.aot.host_library import HostLibrary
    tar = Path(os.environ.get("UTVM_TAR") or paths.MLF_TAR)
    return [int(d) for d in HostLibrary(tar).predict(images)]


def check_info(child):
    child.sendline(b"info")
    child.expect(rb"info: (model=\S+ arena=\d+ board=\S+ clock_hz=\d+ time_unit=\w+ baud=\d+ protocol=\d+)")
    info = protocol.parse_info_fields(child.match.group(1).decode())
    board = os.environ.get("BOARD")
    assert board is None or info["board"] == board, f"the device says board={info['board']}"
    print(f"info: {info}")


def check_text_images(child, images, want):
    for i, image in enumerate(images):
        child.send(protocol.encode_text_image(image))
        child.expect(TEXT_RESULT)
        digit = int(child.match.group(1))
        assert digit == want[i], f"text image {i}: device {digit}, host library {want[i]}"
    print(f"text form: {len(images)} images, digits as the host library's")


def check_binary_images(child, images, want):
    # `make term` on native gives the firmware a fresh pty, which echoes and rewrites CR/LF
    tty.setraw(child.child_fd)
    for i, image in enumerate(images):
        seq = 0x100 + i
        child.send(protocol.encode_infer(seq, image))
        head = protocol.SYNC + struct.pack("<BH", protocol.MsgType.RESULT, seq)
        child.expect_exact(head)
        rest = 2 + protocol.RESULT_PAYLOAD_BYTES + protocol.CRC_BYTES
        child.expect(rb"(?s).{%d}" % rest)
        (result,) = protocol.ReplyParser().feed(head + child.match.group(0))
        assert result.digit == want[i], f"frame {i}: device {result.digit}, host {want[i]}"
    print(f"binary frames: {len(images)} images, digits as the host library's")


def check_garbage_then_image(child, image, digit):
    child.sendline(b"12 x7 300")
    child.expect(rb"error: not_a_number")
    child.sendline(b"1 2 300")
    child.expect(rb"error: value_too_large")
    child.sendline(b"0 " * 10)
    child.expect(rb"error: wrong_count")
    child.send(protocol.encode_text_image(image))
    child.expect(TEXT_RESULT)
    assert int(child.match.group(1)) == digit, "wrong digit after garbage"
    print("garbage: error replies, then the next image answered right")


def testfunc(child):
    images, _ = mnist_arrays(train=False)
    images = images[:IMAGES]
    want = expected_digits(images)
    check_info(child)
    check_text_images(child, images, want)
    check_garbage_then_image(child, images[0], want[0])
    if NATIVE:
        check_binary_images(child, images, want)


def main():
    # bytes, not RIOT's default unicode child: frames are binary
    child = setup_child(TIMEOUT, spawnclass=pexpect.spawn, env=os.environ,
                        logfile=sys.stdout.buffer if os.environ.get("MNIST_TEST_ECHO") else None)
    try:
        testfunc(child)
    except (pexpect.TIMEOUT, pexpect.EOF) as exc:
        where = find_exc_origin(sys.exc_info()[2])
        print(f"{type(exc).__name__} in expect script at \"{where[0]}\" ({where[1]}:{where[2]})")
        print(f"last output: {child.before[-300:]!r}")
        return 1
    except AssertionError as exc:
        print(f"FAILED: {exc}")
        return 1
    finally:
        teardown_child(child)
    print("[SUCCESS]")
    return 0


if __name__ == "__main__":
    sys.exit(main())
