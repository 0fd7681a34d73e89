#!/usr/bin/env python3
"""A window to draw a digit with the mouse and send it to the board (GTK3 through PyGObject).

The drawing is converted like MNIST (bounding box to 20×20, centred by centre of mass in
28×28); the 28×28 image the board receives is shown beside the canvas, with the board's digit,
its 10 probabilities and the device time. "Random test image" sends an MNIST test image as is.
Works with the STM32F746G-DISCO and every stand-in (python -m utils.standin --target host).

Keys: Enter sends, Escape clears.
"""
import argparse
import os
import signal
import sys

from utils.cli import DefaultsHelpFormatter, StageError, positive_float, positive_int, run


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=DefaultsHelpFormatter)
    parser.add_argument("--port", help="serial port (default: the ST-LINK's virtual COM port "
                        "if plugged in, else a running stand-in, else /dev/ttyACM0)")
    parser.add_argument("--baud", type=positive_int, default=115200, help="baud rate")
    parser.add_argument("--timeout", type=positive_float, default=5.0,
                        help="seconds to wait for a reply")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random test images")
    parser.add_argument("--quick", action="store_true",
                        help="self-test: connect, send one random test image, print the answer "
                             "and quit (exit 1 if no answer)")
    parser.add_argument("--trace", action="store_true",
                        help="print the window's events (layout, connected, result, error) as "
                             "JSON lines on stdout, for tests and scripts")
    parser.add_argument("--screenshot", metavar="PNG",
                        help="save the window as a PNG after each answer")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    try:  # deferred: GTK is checked here so that its absence is one line, not an ImportError
        import gi
        gi.require_version("Gtk", "3.0")
        from gi.repository import GLib, Gtk
    except (ImportError, ValueError) as exc:
        raise StageError(f"GTK3 for Python is missing ({exc}); install PyGObject<3.51 and "
                         "gir1.2-gtk-3.0") from None
    ok, _ = Gtk.init_check(sys.argv[:1])
    if not ok:
        raise StageError(f"cannot open a display (DISPLAY={os.environ.get('DISPLAY', '')!r}); "
                         "run it in a desktop session, or under xvfb-run")
    from utils.ui import DigitWindow, json_trace  # deferred: it needs the GTK checked above

    printer = json_trace() if args.trace else None
    outcome = {"answered": None}

    def trace(event):
        if printer:
            printer(event)
        if event["event"] == "result":
            if args.screenshot:
                # after GTK has drawn the new digit and chart
                GLib.timeout_add(200, lambda: (window.snapshot(args.screenshot), False)[1])
            if args.quick:
                outcome["answered"] = event
                print(f"the board says {event['digit']} (test label {event['test_label']}), "
                      f"device time {event['time']} {event['time_unit']}, round trip "
                      f"{event['round_trip_ms']:.1f} ms", flush=True)
                GLib.timeout_add(300 if args.screenshot else 0, lambda: window.destroy())
        if args.quick and event["event"] == "connected":
            window._on_random()
            window._on_send()
        if args.quick and event["event"] == "error":
            outcome["answered"] = False
            print(f"error: {event['message']}", file=sys.stderr, flush=True)
            GLib.idle_add(window.destroy)

    window = DigitWindow(port=args.port, baud=args.baud, timeout=args.timeout, seed=args.seed,
                         trace=trace)
    window.show_all()
    GLib.unix_signal_add(GLib.PRIORITY_DEFAULT, signal.SIGINT, lambda: (window.destroy(), False)[1])
    GLib.unix_signal_add(GLib.PRIORITY_DEFAULT, signal.SIGTERM, lambda: (window.destroy(), False)[1])
    if args.quick:
        # a board that never answers must not keep the self-test open forever
        GLib.timeout_add_seconds(int(args.timeout * 3 + 10), lambda: (window.destroy(), False)[1])
    Gtk.main()
    if args.quick and not outcome["answered"]:
        raise StageError("the self-test got no answer from the board")


if __name__ == "__main__":
    run(main)
