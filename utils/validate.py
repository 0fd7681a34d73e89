"""Validate the model on the target: send test images through a utils.serial_link.Board and
summarise what came back, like a vendor's "validate on target".

`validate(board, images, labels)` is what 0401 and the pipeline call. It never loses an image:
every image it sends is either answered or counted (and listed) as unanswered, and it returns
the summary so far when the board vanishes or the user presses Ctrl-C.

Summary keys (also the keys of reports/0401pc_terminal_sendimage.json):
  images             images sent (answered + unanswered); not_sent: requested but never sent
  answered, unanswered, unanswered_indices, unanswered_reasons {timeout, device_error, ...}
  accuracy           device digits equal to the labels, over the answered labelled images
  agreement_with_host  device digits equal to the host PyTorch int8 model's, over the answered
  host_accuracy      the host int8 model's accuracy on the same answered images
  confusion          10×10 counts, rows = label, columns = device digit
  device_time_min/median/p99/max + device_time_unit  the device's own measurement of the inference
                     (us, cycles or instructions: whatever the firmware reports)
  device_us_median   the median in microseconds: the device time when its unit is us, cycles
                     converted with the board's clock_hz when that is known, else None (QEMU
                     counts instructions, which have no wall-clock meaning)
  round_trip_ms (median), round_trip_ms_p99   PC-side time from writing a frame to its reply
  images_per_second  answered images per second of wall time, round trip included
  frame_bytes, reply_bytes, baud_limit_images_per_second = baud / (frame_bytes × 10 bits)
                     (8N1: 10 bits a byte; a pty ignores the baud rate, a real UART does not)
  garbled_bytes, skipped_messages, device_errors   damage seen on the link, resynchronised
  model, board, port, baud, stopped (None, or why the run ended early), interrupted
"""
import os
import sys
import time
from dataclasses import dataclass

import numpy as np
from tqdm import tqdm

from utils import protocol
from utils.serial_link import BoardGone, BoardTimeout, DeviceErrorReply, LinkError

# A board that misses this many replies in a row is not coming back; stop instead of waiting
# out a timeout for every remaining image.
MAX_CONSECUTIVE_TIMEOUTS = 3
REPLY_BYTES = protocol.HEADER_BYTES + protocol.RESULT_PAYLOAD_BYTES + protocol.CRC_BYTES
FRAME_BYTES = protocol.INFER_FRAME_BYTES
MAX_LISTED = 100  # keep reports readable: list at most this many indices


@dataclass
class Outcome:
    """What happened to one image."""
    index: int                # the image's index in the data set (or position in the batch)
    label: int | None
    digit: int | None = None  # None: unanswered
    time: int | None = None
    time_unit: str | None = None
    round_trip_s: float | None = None
    probabilities: list | None = None
    error: str | None = None  # why it is unanswered

    @property
    def answered(self) -> bool:
        return self.digit is not None


def baud_limit(baud: int, frame_bytes: int = FRAME_BYTES) -> float:
    """Images per second the baud rate allows for the request frames alone (8N1)."""
    return baud / (frame_bytes * 10.0)


def percentile(values, q):
    return float(np.percentile(np.asarray(values, dtype=np.float64), q)) if len(values) else None


def load_host_model(path):
    """The host PyTorch int8 model from a TorchScript file; StageError (one line naming what
    the file is and what is expected) for anything else."""
    # torch's C++ side warns on stderr that quantized tensors are deprecated; not our news.
    # It reads this when torch loads, so torch is imported here, not at the top: a run
    # without a host model never pays the seconds torch takes to import.
    os.environ.setdefault("TORCH_CPP_LOG_LEVEL", "ERROR")
    import torch
    from utils.quantize import load_int8_model  # deferred: torch, seconds, only for a host model
    torch.set_num_threads(min(2, torch.get_num_threads()))
    return load_int8_model(path)


def host_predictions(images, host_model):
    """The host PyTorch int8 model's digits for uint8 images; host_model is a path or a model."""
    model = host_model if hasattr(host_model, "forward") else load_host_model(host_model)
    from utils.quantize import predict_int8  # torch: see load_host_model
    digits, _ = predict_int8(model, images)
    return digits


class Validation:
    """Collects outcomes; .summary() computes the figures at any moment."""

    def __init__(self, board=None, info=None, port=None, baud=None):
        self.board = board
        self.info = dict(info or {})
        self.port = port if port is not None else getattr(board, "port", None)
        self.baud = baud if baud is not None else getattr(board, "baud", None)
        self.outcomes = []
        self.device_errors = []
        self.not_sent = 0
        self.stopped = None
        self.interrupted = False
        self.started = time.perf_counter()
        self.finished = None
        self.host_digits = {}  # index -> host int8 digit

    def record(self, outcome: Outcome):
        self.outcomes.append(outcome)

    def add_host_digits(self, indices, digits):
        self.host_digits.update(zip((int(i) for i in indices), (int(d) for d in digits)))

    def summary(self) -> dict:
        answered = [o for o in self.outcomes if o.answered]
        unanswered = [o for o in self.outcomes if not o.answered]
        labelled = [o for o in answered if o.label is not None]
        correct = sum(o.digit == o.label for o in labelled)
        with_host = [o for o in answered if o.index in self.host_digits]
        agree = sum(o.digit == self.host_digits[o.index] for o in with_host)
        host_labelled = [o for o in with_host if o.label is not None]
        host_correct = sum(self.host_digits[o.index] == o.label for o in host_labelled)

        confusion = np.zeros((10, 10), np.int64)
        for o in labelled:
            confusion[o.label, o.digit] += 1

        units = sorted({o.time_unit for o in answered})
        unit = units[0] if len(units) == 1 else ("mixed" if units else None)
        times = [o.time for o in answered]
        round_trips = [o.round_trip_s * 1000.0 for o in answered]
        wall = (self.finished or time.perf_counter()) - self.started
        device_median = percentile(times, 50)

        reasons = {}
        for o in unanswered:
            kind = (o.error or "unknown").split(":")[0]
            reasons[kind] = reasons.get(kind, 0) + 1

        summary = {
            "images": len(self.outcomes),
            "answered": len(answered),
            "unanswered": len(unanswered),
            "unanswered_indices": [o.index for o in unanswered][:MAX_LISTED],
            "unanswered_reasons": reasons,
            "not_sent": self.not_sent,
            "accuracy": correct / len(labelled) if labelled else None,
            "correct": correct,
            "agreement_with_host": agree / len(with_host) if with_host else None,
            "host_accuracy": host_correct / len(host_labelled) if host_labelled else None,
            "host_compared": len(with_host),
            "disagreements_with_host": [o.index for o in with_host
                                        if o.digit != self.host_digits[o.index]][:MAX_LISTED],
            "confusion": confusion.tolist(),
            "device_time_unit": unit,
            "device_time_min": min(times) if times else None,
            "device_time_median": device_median,
            "device_time_p99": percentile(times, 99),
            "device_time_max": max(times) if times else None,
            "device_us_median": self._to_us(device_median, unit),
            "round_trip_ms": percentile(round_trips, 50),
            "round_trip_ms_p99": percentile(round_trips, 99),
            "images_per_second": len(answered) / wall if answered and wall > 0 else None,
            "wall_seconds": wall,
            "frame_bytes": FRAME_BYTES,
            "reply_bytes": REPLY_BYTES,
            "baud_limit_images_per_second": baud_limit(self.baud) if self.baud else None,
            "garbled_bytes": getattr(self.board, "garbled", 0),
            "skipped_messages": getattr(self.board, "skipped", 0),
            "device_errors": self.device_errors[:MAX_LISTED],
            "model": self.info.get("model"),
            "board": self.info.get("board"),
            "clock_hz": _int_or_none(self.info.get("clock_hz")),
            "port": self.port,
            "port_is_pty": _is_pty(self.port),
            "baud": self.baud,
            "stopped": self.stopped,
            "interrupted": self.interrupted,
        }
        return summary

    def _to_us(self, value, unit):
        if value is None:
            return None
        if unit == "us":
            return value
        clock = _int_or_none(self.info.get("clock_hz"))
        if unit == "cycles" and clock:
            return value * 1e6 / clock
        return None


def _is_pty(port) -> bool:
    """A pseudo-terminal (a stand-in's link resolves to /dev/pts/N) ignores the baud rate."""
    return bool(port) and os.path.realpath(str(port)).startswith("/dev/pts/")


def _int_or_none(value):
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def validate(board, images, labels=None, *, indices=None, host_model=None, host_digits=None,
             info=None, progress=True, on_result=None, port=None, baud=None) -> dict:
    """Send every image through `board`, return the summary dict (see the module docstring).

    images: uint8 [N,28,28]; labels: [N] or None; indices: their data-set indices (default
    0..N-1). host_model (a path or a loaded int8 model) or host_digits ([N]) give
    agreement_with_host; the host model runs after the board, on the answered images only.
    info: the board's INFO pairs if the caller already asked (else validate asks; a silent
    board then raises BoardTimeout before any image is sent). on_result(outcome) is called
    for every image. Ctrl-C or a vanished board end the run early: the summary says so.
    """
    images = np.asarray(images, dtype=np.uint8).reshape(-1, 28, 28)
    count = len(images)
    indices = np.arange(count) if indices is None else np.asarray(indices)
    labels = None if labels is None else np.asarray(labels)
    if info is None:
        info = board.info()
    run = Validation(board, info, port=port, baud=baud)
    if host_digits is not None:
        run.add_host_digits(indices, host_digits)

    bar = None
    if progress:
        bar = tqdm(total=count, unit="img", desc="validate", file=sys.stderr,
                   dynamic_ncols=True, leave=True)
    timeouts_in_a_row = 0
    last_timeout = None
    labelled = correct = 0  # for the progress bar's running accuracy
    try:
        for position in range(count):
            outcome = Outcome(index=int(indices[position]),
                              label=None if labels is None else int(labels[position]))
            started = time.perf_counter()
            try:
                result = board.infer(images[position])
            except DeviceErrorReply as exc:
                outcome.error = f"device_error: {exc.error}"
                run.device_errors.append({"index": outcome.index, "error": str(exc.error)})
                timeouts_in_a_row = 0
            except BoardTimeout as exc:
                outcome.error = f"timeout: {exc}"
                last_timeout = str(exc)
                timeouts_in_a_row += 1
            except BoardGone as exc:
                outcome.error = f"board_gone: {exc}"
                run.record(outcome)
                run.stopped = f"board gone after {_answered(run)} answered images: {exc}"
                break
            except LinkError as exc:  # any other link failure: the link is not usable
                outcome.error = f"link_error: {exc}"
                run.record(outcome)
                run.stopped = f"link failed after {_answered(run)} answered images: {exc}"
                break
            except KeyboardInterrupt:
                outcome.error = "interrupted"
                run.record(outcome)
                run.interrupted = True
                run.stopped = "interrupted (Ctrl-C)"
                break
            else:
                outcome.digit = result.digit
                outcome.time = result.time
                outcome.time_unit = result.time_unit
                outcome.round_trip_s = time.perf_counter() - started
                outcome.probabilities = result.probabilities
                timeouts_in_a_row = 0
            run.record(outcome)
            if on_result is not None:
                on_result(outcome)
            if bar is not None:
                bar.update(1)
                if outcome.answered and outcome.label is not None:
                    labelled += 1
                    correct += outcome.digit == outcome.label
                if labelled and (position % 50 == 0 or position == count - 1):
                    bar.set_postfix(acc=f"{correct / labelled:.4f}", refresh=False)
            if timeouts_in_a_row >= MAX_CONSECUTIVE_TIMEOUTS:
                run.stopped = (f"board stopped answering ({timeouts_in_a_row} timeouts in a row) "
                               f"after {_answered(run)} answered images: {last_timeout}")
                break
    except KeyboardInterrupt:
        # pressed between two images (e.g. inside on_result or the progress bar)
        run.interrupted = True
        run.stopped = "interrupted (Ctrl-C)"
    finally:
        run.finished = time.perf_counter()
        if bar is not None:
            bar.close()
    run.not_sent = count - len(run.outcomes)

    if host_model is not None and host_digits is None:
        answered = [o for o in run.outcomes if o.answered]
        if answered:
            position_of = {int(i): p for p, i in enumerate(indices)}
            chosen = [position_of[o.index] for o in answered]
            try:
                run.add_host_digits(indices[chosen], host_predictions(images[chosen], host_model))
            except KeyboardInterrupt:
                pass  # the device's figures are still worth printing
    summary = run.summary()
    summary["host_model"] = str(host_model) if host_model is not None and not hasattr(
        host_model, "forward") else None
    return summary


def _answered(run) -> int:
    return sum(o.answered for o in run.outcomes)


# ---------------------------------------------------------------- presentation

def confusion_text(confusion) -> str:
    """The confusion matrix as aligned text: rows are labels, columns the device's digits."""
    matrix = np.asarray(confusion)
    width = max(4, len(str(int(matrix.max()))) + 1) if matrix.size else 4
    head = "label\\digit" + "".join(f"{d:>{width}}" for d in range(10))
    lines = [head]
    for label in range(10):
        lines.append(f"{label:>11}" + "".join(f"{int(v):>{width}}" for v in matrix[label]))
    return "\n".join(lines)


def plot_confusion(confusion, path, title="device digits vs labels"):
    """Save the confusion matrix as a PNG heat map with the counts written in."""
    # deferred: matplotlib costs a second and only --plot needs it
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    matrix = np.asarray(confusion)
    fig, ax = plt.subplots(figsize=(6, 5.2), dpi=100)
    shown = np.log1p(matrix)
    ax.imshow(shown, cmap="Blues")
    for label in range(10):
        for digit in range(10):
            value = int(matrix[label, digit])
            if value:
                dark = shown[label, digit] > shown.max() * 0.6
                ax.text(digit, label, str(value), ha="center", va="center", fontsize=7,
                        color="white" if dark else "black")
    ax.set_xticks(range(10))
    ax.set_yticks(range(10))
    ax.set_xlabel("device's digit")
    ax.set_ylabel("label")
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def _fmt(value, spec=".4f", none="n/a"):
    return none if value is None else format(value, spec)


def _fmt_time(value, unit):
    if value is None:
        return "n/a"
    return f"{value:,.0f} {unit}" if unit in ("cycles", "instructions") else f"{value:.0f} {unit}"


def format_summary(summary: dict) -> str:
    """The summary as the text a person reads at the end of a run."""
    s = summary
    lines = []
    head = f"model {s.get('model') or '?'} on {s.get('board') or '?'} via {s.get('port')} @ {s.get('baud')} baud"
    lines.append(head)
    lost = f", {s['not_sent']} not sent" if s.get("not_sent") else ""
    lines.append(f"images sent {s['images']}: answered {s['answered']}, unanswered "
                 f"{s['unanswered']}{lost}")
    if s["unanswered"]:
        reasons = ", ".join(f"{k} {v}" for k, v in sorted(s["unanswered_reasons"].items()))
        lines.append(f"  unanswered ({reasons}): indices {s['unanswered_indices'][:20]}")
    if s["accuracy"] is not None:
        lines.append(f"accuracy on the device   {s['accuracy']:.4f} ({s['correct']}/"
                     f"{sum(map(sum, s['confusion']))})")
    if s["agreement_with_host"] is not None:
        host_acc = f", host int8 accuracy {_fmt(s['host_accuracy'])}" if s["host_accuracy"] is not None else ""
        lines.append(f"agreement with host int8 {s['agreement_with_host']:.4f} "
                     f"({s['host_compared'] - len(s['disagreements_with_host'])}/"
                     f"{s['host_compared']}{host_acc})")
        if s["disagreements_with_host"]:
            lines.append(f"  disagreements at indices {s['disagreements_with_host'][:20]}")
    unit = s["device_time_unit"]
    if s["answered"]:
        us = f" (= {s['device_us_median']:.0f} us)" if s["device_us_median"] is not None and unit != "us" else ""
        lines.append(f"device time              min {_fmt_time(s['device_time_min'], unit)}, median "
                     f"{_fmt_time(s['device_time_median'], unit)}{us}, p99 "
                     f"{_fmt_time(s['device_time_p99'], unit)}")
        limit = s["baud_limit_images_per_second"]
        pty = " (a pty ignores the baud rate)" if s.get("port_is_pty") else ""
        lines.append(f"round trip               median {s['round_trip_ms']:.2f} ms, p99 "
                     f"{s['round_trip_ms_p99']:.2f} ms; {s['images_per_second']:.1f} images/s vs "
                     f"{_fmt(limit, '.1f')} images/s the baud allows for {s['frame_bytes']}-byte "
                     f"frames{pty}")
    if s["garbled_bytes"] or s["device_errors"]:
        lines.append(f"link damage: {s['garbled_bytes']} garbled bytes skipped, "
                     f"{len(s['device_errors'])} device error replies (resynchronised)")
    if s["stopped"]:
        lines.append(f"stopped early: {s['stopped']}")
    if s["accuracy"] is not None and s["answered"] > 1:
        lines.append("confusion matrix (rows: label, columns: device's digit)")
        lines.append(confusion_text(s["confusion"]))
    return "\n".join(lines)
