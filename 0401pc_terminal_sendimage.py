#!/usr/bin/env python3
"""Send MNIST test images (or a PNG/JPEG of a digit) to the board over its serial port and
validate the model on the target: accuracy on the device, agreement with the host PyTorch int8
model, confusion matrix, device time, round-trip throughput against what the baud rate allows.

Works the same against the STM32F746G-DISCO and every stand-in (python -m utils.standin).
Several boards at once: --port repeated or a comma list; the images are shared out, each
answered once, with a line per board so a board that disagrees stands out.
Writes reports/0401pc_terminal_sendimage.json for runs over the test set (not for --file).

Examples:
    python3 0401pc_terminal_sendimage.py --index 0          # one test image
    python3 0401pc_terminal_sendimage.py --count 500 --plot  # a range, with a confusion PNG
    python3 0401pc_terminal_sendimage.py --all --json        # all 10 000, summary as JSON
    python3 0401pc_terminal_sendimage.py --file my_digit.png
    python3 0401pc_terminal_sendimage.py --all --port /dev/ttyACM0 --port /dev/ttyACM1
"""
import argparse
import json
import sys
from pathlib import Path

import numpy as np
from tqdm import tqdm

from utils import paths
from utils.cli import (DefaultsHelpFormatter, StageError, check_output_dir, check_output_path,
                       positive_float, positive_int, run)
from utils.data import mnist_arrays
from utils.preprocess import PreprocessError, load_image_file
from utils.reports import model_hash, write_report
from utils.serial_link import DEFAULT_PORT, FRAME_FORMS, Board, LinkError, auto_detect_port
from utils.validate import (format_summary, load_host_model, plot_confusion, time_comparison,
                            validate)

STAGE = "0401pc_terminal_sendimage"
# Runs longer than this print a line only for the images the device got wrong or never
# answered (the progress bar shows the rest); --each prints every image.
EACH_LINE_LIMIT = 20
QUICK_COUNT = 20


def parse_args(argv):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=DefaultsHelpFormatter)
    link = parser.add_argument_group("serial link")
    link.add_argument("--port", action="append", metavar="PORT[,PORT...]",
                      help="serial port; repeat it or give a comma list for several boards, "
                      "which share the images (default: the ST-LINK's virtual COM port if "
                      "plugged in, else a running stand-in, else /dev/ttyACM0)")
    link.add_argument("--baud", type=positive_int, default=115200,
                      help="baud rate of the host side; must be the firmware's (make BAUD=..., "
                           "which its info reports)")
    link.add_argument("--frames", choices=FRAME_FORMS, default="auto",
                      help="how images go out: auto (compact INFER_RLE frames when the board's "
                           "info says protocol 2, else 795-byte frames), compact, full, text")
    link.add_argument("--timeout", type=positive_float, default=5.0,
                      help="seconds to wait for each reply")
    what = parser.add_argument_group("what to send (default: test image --index)")
    what.add_argument("--index", type=int, default=0, help="one MNIST test image by index")
    what.add_argument("--file", help="a PNG/JPEG of a digit, converted like MNIST")
    what.add_argument("--count", type=int, help="send N test images starting at --start")
    what.add_argument("--start", type=int, default=0, help="first test image of --count")
    what.add_argument("--all", action="store_true", help="send all 10 000 test images")
    what.add_argument("--quick", action="store_true",
                      help=f"a short run for tests: --count {QUICK_COUNT}")
    out = parser.add_argument_group("output")
    out.add_argument("--host-model", type=Path, default=None,
                     help="host PyTorch int8 model for agreement_with_host (default: "
                          f"{paths.QAT_MODEL.relative_to(paths.ROOT)}, skipped with a note "
                          "when absent)")
    out.add_argument("--no-host", action="store_true",
                     help="skip the host model (no agreement_with_host)")
    out.add_argument("--plot", nargs="?", const="", metavar="PNG",
                     help="save the confusion matrix as a PNG (default: "
                          f"reports/{STAGE}_confusion.png)")
    out.add_argument("--json", action="store_true",
                     help="print the summary as JSON on stdout, nothing else")
    out.add_argument("--each", action="store_true",
                     help=f"print a line for every image (default: every image for runs of "
                          f"up to {EACH_LINE_LIMIT}, else only misses)")
    out.add_argument("--quiet", action="store_true",
                     help="no per-image lines, only the summary (errors still show)")
    out.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    if args.quick and args.count is None and not args.all:
        args.count = QUICK_COUNT
    if args.file and (args.count is not None or args.all):
        parser.error("--file sends one image; it does not combine with --count/--all")
    return args


def select_images(args):
    """(images uint8 [N,28,28], labels [N] or None, indices [N], description)."""
    if args.file:
        try:
            image = load_image_file(args.file)
        except PreprocessError as exc:
            raise StageError(str(exc)) from None
        return image[None], None, np.array([0]), args.file
    images, labels = mnist_arrays(train=False)
    total = len(images)
    if args.all:
        start, stop = 0, total
    elif args.count is not None:
        if args.count < 1:
            raise StageError(f"--count must be at least 1, got {args.count}")
        if not 0 <= args.start < total:
            raise StageError(f"--start must be in 0..{total - 1}, got {args.start}")
        start, stop = args.start, min(total, args.start + args.count)
    else:
        if not 0 <= args.index < total:
            raise StageError(f"--index must be in 0..{total - 1}, got {args.index}")
        start, stop = args.index, args.index + 1
    return (images[start:stop], labels[start:stop], np.arange(start, stop),
            f"MNIST test images {start}..{stop - 1}")


def resolve_ports(ports) -> list:
    """The --port values split at commas, in order, without repeats; the auto-detected one
    when none is given."""
    names = []
    for value in ports or []:
        for name in value.split(","):
            name = name.strip()
            if not name:
                raise StageError(f"--port {value!r} has an empty name")
            if name not in names:
                names.append(name)
    return names or [auto_detect_port() or DEFAULT_PORT]


def host_model_path(args):
    """The host model to compare with, or None (with a note why) when there is none.
    Only the default may be absent: a --host-model asked for by name must be there."""
    if args.no_host:
        return None, "host comparison skipped (--no-host)"
    if args.host_model is not None:
        if not args.host_model.is_file():
            raise StageError(f"--host-model {args.host_model} not found; make it with "
                             f"`python3 0103mnist_QAT.py`, or pass --no-host")
        return args.host_model, None
    path = paths.QAT_MODEL
    if not path.is_file():
        return None, (f"host model {path} not found, agreement_with_host not measured "
                      f"(make it with `python3 0103mnist_QAT.py`, or pass --host-model)")
    return path, None


def load_host(path):
    """The host int8 model, loaded before any image is sent: a wrong file fails in a second,
    not after the whole run."""
    try:
        return load_host_model(path)
    except StageError as exc:
        raise StageError(f"--host-model {exc}; or pass --no-host") from None


def check_outputs(args):
    """The confusion PNG and the report must be writable before the first image goes out;
    returns the PNG's path (None without --plot)."""
    plot_path = None
    if args.plot is not None:
        plot_path = Path(args.plot or paths.REPORTS_DIR / f"{STAGE}_confusion.png")
        check_output_path(plot_path, "--plot")
    if not args.file:
        check_output_dir(paths.REPORTS_DIR, "reports folder")
    return plot_path


def image_line(outcome, several_boards=False) -> str:
    label = "" if outcome.label is None else f" label {outcome.label}"
    where = f" [{outcome.port}]" if several_boards else ""
    if not outcome.answered:
        return f"image {outcome.index}:{label} UNANSWERED ({outcome.error}){where}"
    mark = "" if outcome.label is None else ("  ok" if outcome.digit == outcome.label else "  WRONG")
    us = f" ({outcome.time_us} us)" if outcome.time_us is not None else ""
    return (f"image {outcome.index}: digit {outcome.digit}{label}  time {outcome.time} "
            f"{outcome.time_unit}{us}  round trip {outcome.round_trip_s * 1000:.1f} ms{mark}{where}")


def result_dict(outcome, with_probabilities) -> dict:
    """One image's outcome for --json (the report keeps only the summary)."""
    entry = {"index": outcome.index, "label": outcome.label, "digit": outcome.digit,
             "time": outcome.time, "time_unit": outcome.time_unit, "time_us": outcome.time_us,
             "error": outcome.error, "port": outcome.port}
    if with_probabilities and outcome.answered:
        entry["probabilities"] = outcome.probabilities
    return entry


def main(argv=None):
    args = parse_args(argv)
    plot_path = check_outputs(args)
    images, labels, indices, description = select_images(args)
    host_model, host_note = host_model_path(args)
    host = load_host(host_model) if host_model is not None else None
    ports = resolve_ports(args.port)

    printing_each = args.each or len(images) <= EACH_LINE_LIMIT
    progress = not args.no_progress and len(images) > 1

    results = []

    def show(outcome):
        results.append(outcome)
        if args.json or args.quiet:
            return
        miss = not outcome.answered or (outcome.label is not None and outcome.digit != outcome.label)
        if printing_each or miss:
            line = image_line(outcome, len(ports) > 1)
            if progress:
                tqdm.write(line, file=sys.stdout)
            else:
                print(line, flush=True)
            if args.file and outcome.answered:
                probs = " ".join(f"{d}:{p:.3f}" for d, p in enumerate(outcome.probabilities))
                print(f"probabilities {probs}")

    boards = []
    try:
        for port in ports:
            boards.append(Board(port, baud=args.baud, timeout=args.timeout, frames=args.frames))
        infos = [board.info() for board in boards]
    except LinkError as exc:
        for board in boards:
            board.close()
        raise StageError(str(exc)) from None
    try:
        if not args.json:
            for board, info in zip(boards, infos):
                print(f"{description} → {board.port} @ {args.baud} baud ({board.form} frames); "
                      f"board {info.get('board', '?')} (firmware at {info.get('baud', '?')} baud), "
                      f"model {info.get('model', '?')}, device time in {info.get('time_unit', '?')}",
                      flush=True)
        summary = validate(boards if len(boards) > 1 else boards[0], images, labels,
                           indices=indices, host_model=host, info=infos[0], progress=progress,
                           on_result=show, port=",".join(ports), baud=args.baud)
    finally:
        for board in boards:
            board.close()
    summary["time_comparison"] = time_comparison(summary, paths.REPORTS_DIR)
    summary["source"] = description
    if host_model is not None:
        summary["host_model"] = str(host_model)
        summary["host_model_hash"] = model_hash(host_model)
        summary["model_matches_host"] = summary["host_model_hash"] == summary["model"]
    notes = [host_note] if host_note else []
    models = sorted({b["model"] for b in summary["boards"] if b["model"]})
    if len(models) > 1:
        notes.append(f"the boards run different models: {', '.join(models)}")
    baud_mismatch = [f"{b['port']} ({b['device_baud']})" for b in summary["boards"]
                     if b["device_baud"] and b["device_baud"] != args.baud]
    if baud_mismatch:
        notes.append(f"--baud {args.baud} but the firmware says another rate: "
                     f"{', '.join(baud_mismatch)}")
    if host_model is not None and not summary["model_matches_host"]:
        notes.append(f"the board runs model {summary['model']}, the host model is "
                     f"{summary['host_model_hash']}: agreement compares different models")

    if plot_path is not None and summary["accuracy"] is not None:
        plot_path.parent.mkdir(parents=True, exist_ok=True)
        plot_confusion(summary["confusion"], plot_path,
                       title=f"{summary['answered']} images on {summary['board']}, "
                             f"accuracy {summary['accuracy']:.4f}")
        summary["confusion_png"] = str(plot_path)

    if not args.file:
        summary["report"] = str(write_report(STAGE, summary))

    if args.json:
        summary["results"] = [result_dict(o, with_probabilities=len(results) <= EACH_LINE_LIMIT)
                              for o in results]
        print(json.dumps(summary, indent=2, sort_keys=True))
    else:
        print(format_summary(summary))
        for note in notes:
            print(f"note: {note}")
        if summary.get("confusion_png"):
            print(f"confusion matrix PNG: {summary['confusion_png']}")
        if summary.get("report"):
            print(f"report: {summary['report']}")
    sys.stdout.flush()

    if summary["interrupted"]:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    if summary["stopped"]:
        raise StageError(summary["stopped"])
    if args.file and summary["answered"] == 0:
        raise StageError("the image was not answered")
    return summary


if __name__ == "__main__":
    run(main)
