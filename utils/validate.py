"""Validate the model on the target: send test images through a utils.serial_link.Board and
summarise what came back, like a vendor's "validate on target".

`validate(board, images, labels)` is what 0401 and the pipeline call. It never loses an image:
every image it sends is either answered or counted (and listed) as unanswered, and it returns
the summary so far when the board vanishes or the user presses Ctrl-C.

`board` may be a list of boards: each takes the next image from one shared queue, so a faster
board does more. An image whose board vanishes (or stops answering) goes back to the queue
for the boards still running; only when none is left is it unanswered. Every image is
recorded once: answered by one board, or unanswered.

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
  frame_bytes, reply_bytes  request and reply frame sizes of the form used (compact: the mean
                     INFER_RLE frame and RESULT_SHORT), frame_form (compact, full, text)
  wire_bytes_per_image  bytes written and read on the links during the run, per image sent
  baud_limit_images_per_second = baud / (wire_bytes_per_image × 10 bits)
                     (8N1: 10 bits a byte; a pty ignores the baud rate, a real UART does not)
  boards             one entry per board: port, board, images, answered, accuracy,
                     agreement_with_host, device_time_median + unit, device_us_median,
                     images_per_second, wire_bytes_per_image, frame_form, stopped
  time_comparison    the device's median next to the emulator's instruction count
                     (reports/firmware.json) and the benchmark's estimate (reports/bench.json)
                     for the same model, where those reports have it
  garbled_bytes, skipped_messages, device_errors   damage seen on the link, resynchronised
  model, board, port, baud, stopped (None, or why the run ended early), interrupted
"""
import collections
import json
import os
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

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
    port: str | None = None   # the board that answered it (or last had it)
    time_us: int | None = None

    @property
    def answered(self) -> bool:
        return self.digit is not None


def baud_limit(baud: int, frame_bytes: float = FRAME_BYTES) -> float:
    """Images per second the baud rate allows for `frame_bytes` per image (8N1)."""
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
    """Collects outcomes (from any number of boards, thread-safe); .summary() computes the
    figures at any moment."""

    def __init__(self, board=None, info=None, port=None, baud=None, boards=None):
        self.boards = list(boards) if boards is not None else ([board] if board is not None else [])
        self.board = self.boards[0] if self.boards else None
        self.info = dict(info or {})
        self.port = port if port is not None else getattr(self.board, "port", None)
        self.baud = baud if baud is not None else getattr(self.board, "baud", None)
        self.outcomes = []
        self.device_errors = []
        self.not_sent = 0
        self.stopped = None
        self.board_stopped = {}   # port -> why that board stopped early
        self.board_info = {}      # port -> its INFO pairs
        self.interrupted = False
        self.started = time.perf_counter()
        self.finished = None
        self.host_digits = {}  # index -> host int8 digit
        self._recorded = set()  # positions already recorded: none twice
        self._bytes_start = {id(b): _wire_bytes(b) for b in self.boards}
        self.lock = threading.RLock()

    def record(self, outcome: Outcome, position=None):
        with self.lock:
            if position is not None:
                if position in self._recorded:
                    raise AssertionError(f"image at position {position} recorded twice")
                self._recorded.add(position)
            self.outcomes.append(outcome)

    def add_host_digits(self, indices, digits):
        self.host_digits.update(zip((int(i) for i in indices), (int(d) for d in digits)))

    def wire_bytes(self, board=None) -> int:
        boards = self.boards if board is None else [board]
        return sum(_wire_bytes(b) - self._bytes_start.get(id(b), 0) for b in boards)

    def _figures(self, outcomes, wall) -> dict:
        answered = [o for o in outcomes if o.answered]
        labelled = [o for o in answered if o.label is not None]
        correct = sum(o.digit == o.label for o in labelled)
        with_host = [o for o in answered if o.index in self.host_digits]
        agree = sum(o.digit == self.host_digits[o.index] for o in with_host)
        units = sorted({o.time_unit for o in answered})
        unit = units[0] if len(units) == 1 else ("mixed" if units else None)
        times = [o.time for o in answered]
        us = [o.time_us for o in answered if o.time_us is not None]
        return {"answered": answered, "labelled": labelled, "correct": correct,
                "with_host": with_host, "agree": agree, "unit": unit, "times": times,
                "device_us": us,
                "images_per_second": len(answered) / wall if answered and wall > 0 else None}

    def board_summary(self, board, wall) -> dict:
        port = getattr(board, "port", None)
        outcomes = [o for o in self.outcomes if o.port == port]
        f = self._figures(outcomes, wall)
        info = self.board_info.get(port, {})
        median = percentile(f["times"], 50)
        measured_us = percentile(f["device_us"], 50)
        return {
            "port": port,
            "board": info.get("board"),
            "model": info.get("model"),
            "images": len(outcomes),
            "answered": len(f["answered"]),
            "accuracy": f["correct"] / len(f["labelled"]) if f["labelled"] else None,
            "agreement_with_host": f["agree"] / len(f["with_host"]) if f["with_host"] else None,
            "disagreements_with_host": [o.index for o in f["with_host"]
                                        if o.digit != self.host_digits[o.index]][:MAX_LISTED],
            "device_time_unit": f["unit"],
            "device_time_median": median,
            "device_us_median": measured_us if measured_us is not None
            else _to_us(median, f["unit"], info.get("clock_hz")),
            "images_per_second": f["images_per_second"],
            "wire_bytes_per_image": self.wire_bytes(board) / len(outcomes) if outcomes else None,
            "frame_form": getattr(board, "form", None),
            "device_baud": _int_or_none(info.get("baud")),
            "stopped": self.board_stopped.get(port),
        }

    def summary(self) -> dict:
        with self.lock:
            outcomes = list(self.outcomes)
        wall = (self.finished or time.perf_counter()) - self.started
        f = self._figures(outcomes, wall)
        answered, labelled, with_host = f["answered"], f["labelled"], f["with_host"]
        unanswered = [o for o in outcomes if not o.answered]
        host_labelled = [o for o in with_host if o.label is not None]
        host_correct = sum(self.host_digits[o.index] == o.label for o in host_labelled)

        confusion = np.zeros((10, 10), np.int64)
        for o in labelled:
            confusion[o.label, o.digit] += 1

        unit, times = f["unit"], f["times"]
        round_trips = [o.round_trip_s * 1000.0 for o in answered]
        device_median = percentile(times, 50)
        measured_us = percentile(f["device_us"], 50)

        reasons = {}
        for o in unanswered:
            kind = (o.error or "unknown").split(":")[0]
            reasons[kind] = reasons.get(kind, 0) + 1
        wire = self.wire_bytes() / len(outcomes) if outcomes else None
        form = _frame_form(self.boards)
        frame_bytes, reply_bytes = FRAME_BYTES, REPLY_BYTES
        if form == "compact" and wire:
            reply_bytes = protocol.RESULT_SHORT_FRAME_BYTES
            frame_bytes = wire - reply_bytes

        summary = {
            "images": len(outcomes),
            "answered": len(answered),
            "unanswered": len(unanswered),
            "unanswered_indices": [o.index for o in unanswered][:MAX_LISTED],
            "unanswered_reasons": reasons,
            "not_sent": self.not_sent,
            "accuracy": f["correct"] / len(labelled) if labelled else None,
            "correct": f["correct"],
            "agreement_with_host": f["agree"] / len(with_host) if with_host else None,
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
            "device_us_median": measured_us if measured_us is not None
            else _to_us(device_median, unit, self.info.get("clock_hz")),
            "round_trip_ms": percentile(round_trips, 50),
            "round_trip_ms_p99": percentile(round_trips, 99),
            "images_per_second": f["images_per_second"],
            "wall_seconds": wall,
            "frame_form": form,
            "frame_bytes": frame_bytes,
            "reply_bytes": reply_bytes,
            "wire_bytes_per_image": wire,
            "baud_limit_images_per_second": baud_limit(self.baud, wire or frame_bytes)
            if self.baud else None,
            "garbled_bytes": sum(getattr(b, "garbled", 0) for b in self.boards),
            "skipped_messages": sum(getattr(b, "skipped", 0) for b in self.boards),
            "device_errors": self.device_errors[:MAX_LISTED],
            "model": self.info.get("model"),
            "board": self.info.get("board"),
            "clock_hz": _int_or_none(self.info.get("clock_hz")),
            "device_baud": _int_or_none(self.info.get("baud")),
            "port": self.port,
            "ports": [getattr(b, "port", None) for b in self.boards],
            "port_is_pty": bool(self.boards) and all(_is_pty(getattr(b, "port", None))
                                                     for b in self.boards),
            "baud": self.baud,
            "boards": [self.board_summary(b, wall) for b in self.boards],
            "stopped": self.stopped,
            "interrupted": self.interrupted,
        }
        return summary


def _wire_bytes(board) -> int:
    return getattr(board, "bytes_out", 0) + getattr(board, "bytes_in", 0)


def _frame_form(boards) -> str | None:
    forms = sorted({getattr(b, "form", "full") for b in boards})
    return forms[0] if len(forms) == 1 else ("mixed" if forms else None)


def _to_us(value, unit, clock_hz):
    if value is None:
        return None
    if unit == "us":
        return value
    clock = _int_or_none(clock_hz)
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


def time_comparison(summary: dict, reports_dir) -> dict:
    """The device's median time next to what the emulator counted (reports/firmware.json) and
    what the benchmark counted and estimated in M7 cycles (reports/bench.json) for the same
    model, found by its hash. Without the same model in the benchmark, its LeNet-5 row stands
    in, marked by bench_same_model false and its own hash."""
    reports_dir = Path(reports_dir)
    model = summary.get("model")
    out = {"device_time_unit": summary.get("device_time_unit"),
           "device_time_median": summary.get("device_time_median"),
           "device_us_median": summary.get("device_us_median"),
           "emulator_instructions": None, "bench_instructions": None,
           "bench_estimated_cycles": None, "bench_model_hash": None, "bench_same_model": None}

    def read(name):
        try:
            data = json.loads((reports_dir / f"{name}.json").read_text())
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}
    firmware = read("firmware").get("qemu-m7", {})
    if model and isinstance(firmware, dict) and firmware.get("model") == model:
        out["emulator_instructions"] = firmware.get("instructions_per_inference")
    variants = read("bench").get("variants", {})
    rows = [v for v in (variants.values() if isinstance(variants, dict) else ())
            if isinstance(v, dict) and v.get("instructions_per_inference")]
    same = [v for v in rows if model and v.get("model_hash") == model]
    lenet = [v for v in rows if "QMnistModel" in str(v.get("network", ""))]
    # each variant is another library of the model (0201's, 0202's): all of them, by name
    out["bench"] = [{"variant": name, "instructions": v.get("instructions_per_inference"),
                     "estimated_cycles": v.get("estimated_cycles"), "model_hash": v.get("model_hash"),
                     "same_model": bool(same)}
                    for name, v in variants.items() if v in (same or lenet)] if rows else []
    chosen = (same or lenet or [None])[0]
    if chosen is not None:
        out.update(bench_instructions=chosen.get("instructions_per_inference"),
                   bench_estimated_cycles=chosen.get("estimated_cycles"),
                   bench_model_hash=chosen.get("model_hash"), bench_same_model=bool(same))
    return out


class _Queue:
    """The images not yet answered, shared by the boards' loops. An image taken stays
    `held` by its board until recorded; a board that stops gives its held images back, to
    the boards still running, or (when none is) they are recorded unanswered."""

    def __init__(self, count, boards):
        self.waiting = collections.deque(range(count))
        self.cond = threading.Condition()
        self.running = set(id(b) for b in boards)
        self.held = collections.Counter()
        self.stop = threading.Event()

    def take(self, board):
        with self.cond:
            while not self.stop.is_set():
                if self.waiting:
                    self.held[id(board)] += 1
                    return self.waiting.popleft()
                others = sum(n for b, n in self.held.items() if b != id(board))
                if others == 0:
                    return None
                self.cond.wait(0.1)
            return None

    def done(self, board, count=1):
        with self.cond:
            self.held[id(board)] -= count
            self.cond.notify_all()

    def give_back(self, board, positions) -> bool:
        """Back to the queue if another board still runs; False: record them unanswered."""
        with self.cond:
            self.running.discard(id(board))
            if not self.running or self.stop.is_set():
                return False
            self.waiting.extendleft(reversed(positions))
            self.held[id(board)] -= len(positions)
            self.cond.notify_all()
            return True

    def finish(self, board):
        with self.cond:
            self.running.discard(id(board))
            self.cond.notify_all()


def _board_loop(board, queue, run, images, indices, labels, on_outcome):
    """One board's part of a run: take images until none is left or the board is gone."""
    port = getattr(board, "port", None)
    streak = []            # (position, outcome) timed out in a row: given back if it dies
    last_timeout = None

    def settle_streak():
        for position, outcome in streak:
            on_outcome(position, outcome)
        queue.done(board, len(streak))
        streak.clear()

    def stop_board(reason, position, outcome):
        run.board_stopped[port] = f"{reason[0]}: {reason[1]}"
        held = [p for p, _ in streak] + ([position] if position is not None else [])
        if not queue.give_back(board, held):
            for p, o in streak + ([(position, outcome)] if position is not None else []):
                on_outcome(p, o)
            queue.done(board, len(held))
            return False
        streak.clear()
        return True

    while True:
        if streak and not queue.waiting:
            settle_streak()  # a board still answering: its timeouts are final
        position = queue.take(board)
        if position is None:
            settle_streak()
            queue.finish(board)
            return None
        outcome = Outcome(index=int(indices[position]), port=port,
                          label=None if labels is None else int(labels[position]))
        started = time.perf_counter()
        try:
            result = board.infer(images[position])
        except DeviceErrorReply as exc:
            outcome.error = f"device_error: {exc.error}"
            with run.lock:
                run.device_errors.append({"index": outcome.index, "error": str(exc.error),
                                          "port": port})
        except BoardTimeout as exc:
            outcome.error = f"timeout: {exc}"
            last_timeout = str(exc)
            streak.append((position, outcome))
            if len(streak) >= MAX_CONSECUTIVE_TIMEOUTS:
                reason = (f"board stopped answering ({len(streak)} timeouts in a row)",
                          last_timeout)
                stop_board(reason, None, None)
                return reason
            continue
        except BoardGone as exc:
            outcome.error = f"board_gone: {exc}"
            reason = ("board gone", str(exc))
            stop_board(reason, position, outcome)
            return reason
        except LinkError as exc:  # any other link failure: the link is not usable
            outcome.error = f"link_error: {exc}"
            reason = ("link failed", str(exc))
            stop_board(reason, position, outcome)
            return reason
        except KeyboardInterrupt:
            outcome.error = "interrupted"
            queue.stop.set()
            settle_streak()
            on_outcome(position, outcome)
            queue.done(board)
            raise
        else:
            outcome.digit = result.digit
            outcome.time = result.time
            outcome.time_unit = result.time_unit
            outcome.time_us = result.time_us
            outcome.round_trip_s = time.perf_counter() - started
            outcome.probabilities = result.probabilities
        settle_streak()
        on_outcome(position, outcome)
        queue.done(board)


def validate(board, images, labels=None, *, indices=None, host_model=None, host_digits=None,
             info=None, progress=True, on_result=None, port=None, baud=None) -> dict:
    """Send every image through `board` (one Board or a list of them), return the summary
    dict (see the module docstring).

    images: uint8 [N,28,28]; labels: [N] or None; indices: their data-set indices (default
    0..N-1). host_model (a path or a loaded int8 model) or host_digits ([N]) give
    agreement_with_host; the host model runs after the boards, on the answered images only.
    info: the (first) board's INFO pairs if the caller already asked (else validate asks
    every board; a silent board then raises BoardTimeout before any image is sent).
    on_result(outcome) is called for every image. Ctrl-C or vanished boards end the run
    early: the summary says so.
    """
    boards = list(board) if isinstance(board, (list, tuple)) else [board]
    images = np.asarray(images, dtype=np.uint8).reshape(-1, 28, 28)
    count = len(images)
    indices = np.arange(count) if indices is None else np.asarray(indices)
    labels = None if labels is None else np.asarray(labels)
    infos = []
    for i, b in enumerate(boards):
        given = info if i == 0 and info is not None else getattr(b, "device_info", None)
        infos.append(dict(given) if given else b.info())
    run = Validation(info=infos[0], port=port, baud=baud, boards=boards)
    run.board_info = {getattr(b, "port", None): i for b, i in zip(boards, infos)}
    if host_digits is not None:
        run.add_host_digits(indices, host_digits)

    bar = None
    if progress:
        bar = tqdm(total=count, unit="img", desc="validate", file=sys.stderr,
                   dynamic_ncols=True, leave=True)
    tally = {"labelled": 0, "correct": 0, "shown": 0}  # for the progress bar's running accuracy

    def on_outcome(position, outcome):
        with run.lock:
            run.record(outcome, position)
            if on_result is not None:
                on_result(outcome)
            if bar is not None:
                bar.update(1)
                tally["shown"] += 1
                if outcome.answered and outcome.label is not None:
                    tally["labelled"] += 1
                    tally["correct"] += outcome.digit == outcome.label
                if tally["labelled"] and (tally["shown"] % 50 == 1 or tally["shown"] == count):
                    bar.set_postfix(acc=f"{tally['correct'] / tally['labelled']:.4f}",
                                    refresh=False)

    queue = _Queue(count, boards)
    reasons = {}
    try:
        if len(boards) == 1:
            # the caller's thread: Ctrl-C reaches the loop in the middle of a request
            reasons[boards[0].port if hasattr(boards[0], "port") else 0] = _board_loop(
                boards[0], queue, run, images, indices, labels, on_outcome)
        else:
            def work(b):
                try:
                    reasons[getattr(b, "port", id(b))] = _board_loop(
                        b, queue, run, images, indices, labels, on_outcome)
                except KeyboardInterrupt:
                    pass
            threads = [threading.Thread(target=work, args=(b,), daemon=True) for b in boards]
            for t in threads:
                t.start()
            try:
                while any(t.is_alive() for t in threads):
                    for t in threads:
                        t.join(0.1)
            except KeyboardInterrupt:
                queue.stop.set()  # each board ends the request it is in, then stops
                run.interrupted = True
                for t in threads:
                    t.join()
    except KeyboardInterrupt:
        queue.stop.set()
        run.interrupted = True
    finally:
        run.finished = time.perf_counter()
        if bar is not None:
            bar.close()
    if run.interrupted:
        run.stopped = "interrupted (Ctrl-C)"
    answered_count = _answered(run)
    if not run.interrupted:
        gone = [r for r in reasons.values() if r]
        # the run ended early when images were left that no running board could take
        if gone and (len(run.outcomes) < count or len(gone) == len(boards)):
            if len(boards) == 1:
                kind, detail = gone[0]
                run.stopped = f"{kind} after {answered_count} answered images: {detail}"
            else:
                each = "; ".join(f"{p}: {r[0]}: {r[1]}" for p, r in reasons.items() if r)
                run.stopped = (f"{len(gone)} of {len(boards)} boards stopped, "
                               f"{answered_count} images answered: {each}")
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
        comparison = s.get("time_comparison") or {}
        beside = []
        if comparison.get("emulator_instructions"):
            beside.append(f"emulator {comparison['emulator_instructions']:,} instructions "
                          f"(reports/firmware.json)")
        for row in comparison.get("bench") or []:
            cycles = row.get("estimated_cycles")
            estimate = f", est. {cycles:,.0f} M7 cycles" if cycles else ""
            other = "" if row.get("same_model") else f", its own LeNet-5 {row.get('model_hash')}"
            beside.append(f"benchmark {row['variant']} {row['instructions']:,} instructions"
                          f"{estimate}{other} (reports/bench.json)")
        if beside:
            lines.append(f"  same model elsewhere: {'; '.join(beside)}")
        limit = s["baud_limit_images_per_second"]
        pty = " (a pty ignores the baud rate)" if s.get("port_is_pty") else ""
        wire = s.get("wire_bytes_per_image")
        form = s.get("frame_form") or "full"
        lines.append(f"round trip               median {s['round_trip_ms']:.2f} ms, p99 "
                     f"{s['round_trip_ms_p99']:.2f} ms; {s['images_per_second']:.1f} images/s vs "
                     f"{_fmt(limit, '.1f')} images/s the baud allows for "
                     f"{_fmt(wire, '.0f')} bytes per image on the wire ({form} frames){pty}")
    boards = s.get("boards") or []
    if len(boards) > 1:
        lines.append(f"per board ({len(boards)})")
        for b in boards:
            agree = b["agreement_with_host"]
            odd = ""
            others = [o["agreement_with_host"] for o in boards if o is not b
                      and o["agreement_with_host"] is not None]
            if agree is not None and others and agree < min(others):
                odd = "  <- disagrees more than the others"
            stop = f"  STOPPED: {b['stopped']}" if b["stopped"] else ""
            lines.append(f"  {b['port']}: {b['board'] or '?'} {b['images']} images, answered "
                         f"{b['answered']}, accuracy {_fmt(b['accuracy'])}, agreement "
                         f"{_fmt(agree)}, device time median "
                         f"{_fmt_time(b['device_time_median'], b['device_time_unit'])}, "
                         f"{_fmt(b['images_per_second'], '.1f')} images/s{odd}{stop}")
    if s["garbled_bytes"] or s["device_errors"]:
        lines.append(f"link damage: {s['garbled_bytes']} garbled bytes skipped, "
                     f"{len(s['device_errors'])} device error replies (resynchronised)")
    if s["stopped"]:
        lines.append(f"stopped early: {s['stopped']}")
    if s["accuracy"] is not None and s["answered"] > 1:
        lines.append("confusion matrix (rows: label, columns: device's digit)")
        lines.append(confusion_text(s["confusion"]))
    return "\n".join(lines)
