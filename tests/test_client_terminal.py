"""0401 and utils.validate against the host stand-in behind a pty: real processes, real pyserial.

Fault cases: a wrong port, a silent board, the stand-in killed mid-run, garbage injected both
ways (into the device's input, and into its replies through a damaging relay pty). Bad input
(an unwritable --plot, a huge PNG, a wrong or missing --host-model, a nonsense --baud or
--timeout) fails before the port is opened: those tests point at a port that does not exist,
so an error about the port would mean the check came too late.
"""
import json
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from PIL import Image

from tests.fixtures_outputs import read_only_dir  # noqa: F401 (fixture)
from tests.test_client_support import (TERMINAL, UI, DamagingRelay, SilentPort,
                                       assert_one_line_error, flip_byte, json_out, prepend,
                                       run_terminal)
from utils import protocol
from utils.data import mnist_arrays
from utils.paths import ROOT
from utils.qmodel import QMnistModel
from utils.reports import model_hash, read_report
from utils.serial_link import Board
from utils.validate import FRAME_BYTES, validate

REPORT_KEYS = ("images", "accuracy", "agreement_with_host", "device_us_median",
               "images_per_second", "frame_bytes", "round_trip_ms", "answered", "unanswered",
               "model", "port", "baud", "wire_bytes_per_image", "boards", "time_comparison")


@pytest.fixture(scope="module")
def test_set():
    return mnist_arrays(train=False)


@pytest.fixture(scope="module")
def host_port(host_standin):
    return host_standin.port


@pytest.fixture(scope="module")
def device_digits(host_port, test_set):
    """The stand-in's digits for the first 40 test images, asked directly through a Board."""
    images, _ = test_set
    with Board(host_port, timeout=5) as board:
        return [board.infer(image).digit for image in images[:40]]


def test_count_json_summary_and_report(host_port, quick_qat_model, test_set, device_digits):
    images, labels = test_set
    proc = run_terminal("--port", host_port, "--count", 40, "--json", "--host-model",
                        quick_qat_model)
    assert proc.returncode == 0, proc.stderr
    summary = json_out(proc)
    assert summary["images"] == 40 and summary["answered"] == 40 and summary["unanswered"] == 0
    digits = [r["digit"] for r in summary["results"]]
    assert [r["index"] for r in summary["results"]] == list(range(40))
    assert digits == device_digits  # the same answers as a direct query of the stand-in
    assert summary["accuracy"] == pytest.approx(np.mean(np.array(digits) == labels[:40]))
    assert summary["accuracy"] > 0.8
    assert sum(map(sum, summary["confusion"])) == 40
    # the stand-in runs the compiled quick model; the host runs the same model in PyTorch
    assert summary["model"] == model_hash(quick_qat_model)
    assert summary["model_matches_host"] is True
    assert summary["agreement_with_host"] >= 0.95
    # the stand-in speaks protocol 2: compact frames, and every byte on the wire is counted
    assert summary["frame_form"] == "compact"
    request_bytes = [len(protocol.encode_infer_rle(1, image)) for image in images[:40]]
    assert summary["frame_bytes"] == pytest.approx(np.mean(request_bytes))
    assert summary["wire_bytes_per_image"] == pytest.approx(
        np.mean(request_bytes) + protocol.RESULT_SHORT_FRAME_BYTES)
    assert summary["frame_bytes"] < FRAME_BYTES
    (board,) = summary["boards"]
    assert board["port"] == host_port and board["images"] == 40 and board["answered"] == 40
    assert board["agreement_with_host"] == summary["agreement_with_host"]
    assert summary["device_time_unit"] == "us" and summary["device_us_median"] > 0
    assert summary["device_time_min"] <= summary["device_time_median"] <= summary["device_time_p99"]
    assert summary["round_trip_ms"] > 0 and summary["images_per_second"] > 10
    report = read_report("0401pc_terminal_sendimage")
    for key in REPORT_KEYS:
        assert key in report, key
    assert report["images"] == 40 and report["port"] == host_port and report["baud"] == 115200


def test_one_image_by_index_and_from_a_file(host_port, test_set, device_digits, tmp_path):
    images, labels = test_set
    proc = run_terminal("--port", host_port, "--index", 3, "--no-host")
    assert proc.returncode == 0, proc.stderr
    assert f"image 3: digit {device_digits[3]} label {labels[3]}" in proc.stdout
    assert re.search(r"time \d+ us", proc.stdout)
    assert "Traceback" not in proc.stderr

    # a photo-like PNG of test image 3: dark ink on light paper, 10× larger
    big = Image.fromarray(255 - images[3]).resize((280, 280), Image.Resampling.BILINEAR)
    big.save(tmp_path / "digit.png")
    proc = run_terminal("--port", host_port, "--file", tmp_path / "digit.png", "--json")
    assert proc.returncode == 0, proc.stderr
    result = json_out(proc)["results"][0]
    assert result["label"] is None and result["digit"] == labels[3]
    assert len(result["probabilities"]) == 10
    assert abs(sum(result["probabilities"]) - 1) < 0.01

    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    proc = run_terminal("--port", host_port, "--file", tmp_path / "broken.jpg")
    assert_one_line_error(proc, "broken.jpg")


def test_text_summary_and_plot(host_port, tmp_path):
    png = tmp_path / "confusion.png"
    proc = run_terminal("--port", host_port, "--count", 25, "--start", 100, "--no-host",
                        "--plot", png)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "images sent 25: answered 25, unanswered 0" in out
    assert "accuracy on the device" in out and "label\\digit" in out
    assert re.search(r"device time +min \d+ us, median \d+ us, p99 \d+ us", out)
    assert re.search(r"\d+ bytes per image on the wire \(compact frames\)", out)
    with Image.open(png) as image:
        assert image.size[0] > 300 and len(np.unique(np.asarray(image.convert("L")))) > 10


NO_BOARD = "/dev/no-such-board"


def test_unwritable_plot_fails_before_any_image(read_only_dir, tmp_path):
    png = read_only_dir / "confusion.png"
    proc = run_terminal("--port", NO_BOARD, "--count", 3, "--no-host", "--plot", png, timeout=60)
    assert_one_line_error(proc, f"--plot {png}", "cannot write in folder")
    a_file = tmp_path / "a-file"
    a_file.write_text("")
    proc = run_terminal("--port", NO_BOARD, "--count", 3, "--no-host", "--plot",
                        a_file / "confusion.png", timeout=60)
    assert_one_line_error(proc, "--plot", "is a file, not a folder")


def test_huge_png_is_refused_in_one_line(tmp_path):
    """A 15000×15000 PNG (PIL's decompression-bomb limit); 1-bit, so it is small on disk."""
    huge = tmp_path / "huge.png"
    Image.new("1", (15000, 15000)).save(huge)
    proc = run_terminal("--port", NO_BOARD, "--file", huge, timeout=60)
    assert_one_line_error(proc, str(huge), "pixels", "scale it down")


def test_wrong_or_missing_host_model_is_an_error(tmp_path):
    fp32 = tmp_path / "lenet5_fp32.pth"
    torch.save(QMnistModel().state_dict(), fp32)
    proc = run_terminal("--port", NO_BOARD, "--count", 3, "--host-model", fp32, timeout=60)
    line = assert_one_line_error(proc, f"--host-model {fp32}",
                                 "is a float state_dict of QMnistModel",
                                 "expected a TorchScript int8 model", "--no-host")
    assert "corrupted" not in line
    # asked for by name, so its absence is an error, not a note (exit 0 before)
    missing = tmp_path / "missing.pth"
    proc = run_terminal("--port", NO_BOARD, "--count", 3, "--host-model", missing, timeout=60)
    assert_one_line_error(proc, f"--host-model {missing} not found", "--no-host")


@pytest.mark.parametrize("client", [TERMINAL, UI], ids=["0401", "0402"])
@pytest.mark.parametrize("args, message", [
    (["--baud", "0"], "argument --baud: must be at least 1"),
    (["--baud", "-9600"], "argument --baud: must be at least 1"),
    (["--timeout", "-1"], "argument --timeout: must be a number above 0"),
    (["--timeout", "0"], "argument --timeout: must be a number above 0"),
])
def test_nonsense_baud_and_timeout_are_argparse_errors(client, args, message):
    proc = subprocess.run([sys.executable, str(client), "--port", NO_BOARD, *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "usage:" in proc.stderr and message in proc.stderr
    assert "Traceback" not in proc.stderr


def test_wrong_port_lists_the_ports():
    proc = run_terminal("--port", "/dev/no-such-board", "--count", 3, timeout=60)
    assert_one_line_error(proc, "/dev/no-such-board", "ports that exist")


def test_silent_board_times_out_naming_port_and_baud():
    silent = SilentPort()
    try:
        started = time.monotonic()
        proc = run_terminal("--port", silent.port, "--count", 3, "--timeout", 1, "--baud", 57600,
                            timeout=60)
        assert time.monotonic() - started < 20
        assert_one_line_error(proc, silent.port, "57600")
    finally:
        silent.close()


def _read_progress_until(proc, answered: int) -> bytearray:
    """0401's stderr up to the moment its progress bar shows `answered` images (or it ends)."""
    stderr = bytearray()
    while True:
        chunk = proc.stderr.read1(4096)
        if not chunk:
            return stderr
        stderr += chunk
        counts = re.findall(rb"(\d+)/10000", stderr)
        if counts and int(counts[-1]) >= answered:
            return stderr


def test_standin_killed_mid_run(standin_factory):
    """The board vanishes: a clear error, the answered count, the summary, a clean exit."""
    standin = standin_factory("host")
    port = standin.port
    try:
        proc = subprocess.Popen([sys.executable, str(TERMINAL), "--port", port, "--all", "--json",
                                 "--no-host"], cwd=ROOT, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE)
        # kill the stand-in once the progress bar shows a few hundred answers
        stderr = _read_progress_until(proc, 300)
        standin.stop()
        out, rest = proc.communicate(timeout=60)
        stderr += rest
    finally:
        standin.stop()
    stderr = stderr.decode(errors="replace")
    assert proc.returncode == 1, stderr[-2000:]
    assert "Traceback" not in stderr
    summary = json.loads(out)
    assert summary["answered"] >= 300
    assert summary["images"] == summary["answered"] + summary["unanswered"]
    assert summary["images"] + summary["not_sent"] == 10000
    assert summary["unanswered"] <= 1  # at most the image in flight
    assert summary["stopped"].startswith(f"board gone after {summary['answered']} answered")
    assert f"error: board gone after {summary['answered']} answered images" in stderr


def test_garbled_replies_are_reported_and_the_run_goes_on(host_port, device_digits):
    """Damage the device's replies on their way back: a bad CRC costs that image only (reported
    unanswered), line noise before a reply costs nothing."""
    noise = b"\x00\xff line noise \xa5\x13\x07 more\n"
    relay = DamagingRelay(host_port, {5: flip_byte(7), 12: prepend(noise)})
    try:
        proc = run_terminal("--port", relay.port, "--count", 20, "--timeout", 1, "--json",
                            "--no-host")
    finally:
        relay.close()
    assert proc.returncode == 0, proc.stderr
    summary = json_out(proc)
    # frame 0 is the INFO reply, so frame 5 answers image 4
    assert summary["images"] == 20 and summary["answered"] == 19
    assert summary["unanswered_indices"] == [4]
    assert summary["unanswered_reasons"] == {"timeout": 1}
    assert summary["garbled_bytes"] >= len(noise)
    answered = {r["index"]: r["digit"] for r in summary["results"] if r["digit"] is not None}
    assert answered == {i: device_digits[i] for i in range(20) if i != 4}


def test_garbage_into_the_device_then_validate(host_port, test_set, device_digits):
    """Garbage on the wire to the device (a truncated frame, noise, a bad text line): the
    device resyncs, validate() loses nothing and the answers are the clean ones."""
    images, labels = test_set
    good = protocol.encode_infer(0xFFF0, images[0])  # a seq the Board will not use soon
    with Board(host_port, timeout=5) as board:
        board.send_raw(good[:300])                 # a frame cut short ...
        board.send_raw(b"\x01\x02 noise \xff\n")   # ... noise ...
        board.send_raw(b"1 2 300\n")               # ... a bad text line
        board.send_raw(good[:-1] + b"\x00")        # a bad CRC
        summary = validate(board, images[:20], labels[:20], progress=False)
    assert summary["answered"] == 20 and summary["unanswered"] == 0
    assert summary["skipped_messages"] >= 1  # the device's error replies, skipped by seq
    assert summary["accuracy"] == pytest.approx(np.mean(np.array(device_digits[:20]) == labels[:20]))


def _default_sigint():
    """preexec_fn: Ctrl-C as in a terminal. A shell starts background jobs (CI scripts run
    with `&`) with SIGINT ignored, children inherit that, and a Python started so never
    turns Ctrl-C into KeyboardInterrupt."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_ctrl_c_prints_the_summary_so_far(host_port):
    proc = subprocess.Popen([sys.executable, str(TERMINAL), "--port", host_port, "--all",
                             "--no-host"], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, preexec_fn=_default_sigint)
    stderr = _read_progress_until(proc, 100)
    proc.send_signal(signal.SIGINT)
    out, rest = proc.communicate(timeout=60)
    out, stderr = out.decode(), stderr + rest
    assert proc.returncode == 130, out
    assert "Traceback" not in stderr.decode(errors="replace")
    sent = re.search(r"images sent (\d+): answered (\d+), unanswered (\d+), (\d+) not sent", out)
    assert sent, out
    images, answered, unanswered, not_sent = map(int, sent.groups())
    assert images == answered + unanswered and images + not_sent == 10000 and answered >= 100
    assert "stopped early: interrupted" in out and "confusion matrix" in out
