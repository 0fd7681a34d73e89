"""The GTK3 window of 0402: draw a digit, send it to the board, see what the board says.

Layout: a port bar (chooser, refresh, connect/reconnect, connection state), then the 280×280
canvas, the 28×28 image the board receives, the predicted digit in large type, the device time
and a bar chart of the 10 probabilities, then Clear / Random test image / Send and a status
line where every error is shown (never a traceback).

All serial I/O runs in LinkWorker's thread, so a slow or silent board never freezes the window;
the worker posts its results back to the GTK main loop with GLib.idle_add.
"""
import json
import math
import queue
import sys
import threading
import time
import traceback

import numpy as np

import gi

gi.require_version("Gtk", "3.0")
gi.require_version("Gdk", "3.0")
from gi.repository import Gdk, GLib, Gtk  # noqa: E402
import cairo  # noqa: E402

from utils import protocol  # noqa: E402
from utils.data import mnist_arrays  # noqa: E402
from utils.preprocess import PreprocessError, to_mnist  # noqa: E402
from utils.serial_link import (DEFAULT_BAUD, DEFAULT_PORT, Board, BoardGone,  # noqa: E402
                               BoardTimeout, DeviceErrorReply, LinkError, auto_detect_port,
                               list_port_names)

CANVAS = 280
STROKE = 18.0          # pixels at 280×280: about 1.8 MNIST pixels after scaling to 20×20
PREVIEW_SCALE = 5      # the 28×28 preview is drawn at 140×140
CHART_W, CHART_H = 300, 170
GREEN, RED, GREY = "#2e7d32", "#c62828", "#757575"


class LinkWorker:
    """Owns the Board. Jobs go in through a queue; events come out through `post`, which is
    called in the worker thread (the window wraps it in GLib.idle_add)."""

    def __init__(self, post, baud=DEFAULT_BAUD, timeout=5.0):
        self.post = post
        self.baud = baud
        self.timeout = timeout
        self.board = None
        self.port = None
        self.jobs = queue.Queue()
        self.thread = threading.Thread(target=self._run, name="serial-link", daemon=True)
        self.thread.start()

    # called from the GTK thread
    def connect(self, port):
        self.jobs.put(("connect", port))

    def infer(self, pixels, tag=None):
        self.jobs.put(("infer", bytes(protocol.pixel_bytes(pixels)), tag))

    def stop(self, wait=2.0):
        self.jobs.put(("stop",))
        self.thread.join(wait)

    # the worker thread
    def _run(self):
        while True:
            job = self.jobs.get()
            try:
                if job[0] == "stop":
                    self._close()
                    return
                if job[0] == "connect":
                    self._connect(job[1])
                elif job[0] == "infer":
                    self._infer(job[1], job[2])
            except Exception as exc:  # a bug must not kill the worker silently
                self.post("error", f"internal error: {type(exc).__name__}: {exc}")
                traceback.print_exc(file=sys.stderr)

    def _close(self):
        if self.board is not None:
            self.board.close()
            self.board = None

    def _connect(self, port):
        self._close()
        self.port = port
        self.post("connecting", port)
        try:
            # one drawing at a time, its probabilities shown: the exact float32 scores of the
            # 795-byte frame's reply, not RESULT_SHORT's 1/16 steps
            board = Board(port, baud=self.baud, timeout=self.timeout, frames="full")
        except LinkError as exc:
            self.post("disconnected", str(exc))
            return
        try:
            info = board.info()
        except LinkError as exc:
            board.close()
            self.post("disconnected", str(exc))
            return
        self.board = board
        self.post("connected", port, info)

    def _infer(self, pixels, tag):
        if self.board is None:
            self._connect(self.port)
            if self.board is None:
                self.post("failed", tag)
                return
        started = time.perf_counter()
        try:
            result = self.board.infer(pixels)
        except BoardGone as exc:
            self._close()
            self.post("disconnected", f"{exc} — press Reconnect when the board is back")
            self.post("failed", tag)
            return
        except DeviceErrorReply as exc:
            self.post("error", f"the board refused the image: {exc.error}")
            self.post("failed", tag)
            return
        except BoardTimeout as exc:
            self.post("error", str(exc))
            self.post("failed", tag)
            return
        except LinkError as exc:
            self._close()
            self.post("disconnected", str(exc))
            self.post("failed", tag)
            return
        self.post("result", tag, result, time.perf_counter() - started, pixels)


def _rgb(hex_color):
    return tuple(int(hex_color[i:i + 2], 16) / 255.0 for i in (1, 3, 5))


def format_device_time(value, unit) -> str:
    if unit == "us":
        return f"{value / 1000:.2f} ms" if value >= 10000 else f"{value} µs"
    return f"{value:,} {unit}"


class DigitWindow(Gtk.Window):
    """The whole UI; `trace` (a callable taking a dict) reports events for tests and scripts."""

    def __init__(self, port=None, baud=DEFAULT_BAUD, timeout=5.0, seed=0, trace=None,
                 test_images=None):
        super().__init__(title="MNIST on the board")
        self.set_resizable(False)
        self.set_border_width(10)
        self.trace = trace or (lambda event: None)
        self.rng = np.random.default_rng(seed)
        self._test_images = test_images
        self.surface = cairo.ImageSurface(cairo.FORMAT_RGB24, CANVAS, CANVAS)
        self.last_point = None
        self.exact = None       # (pixels, index, label) when the canvas shows a test image
        self.preview = None     # the 28×28 the board receives (or would)
        self.probabilities = None
        self.digit = None
        self.busy = False
        self.connected = False
        self.sent_label = None
        self._layout_reported = False
        self._clear_surface()

        self.worker = LinkWorker(self._post_from_worker, baud=baud, timeout=timeout)
        self._build(port)
        self.connect("destroy", self._on_destroy)
        self.connect("key-press-event", self._on_key)
        initial = port or auto_detect_port() or DEFAULT_PORT
        self.port_entry.set_text(initial)
        self.worker.connect(initial)

    # ------------------------------------------------------------ layout
    def _build(self, port):
        outer = Gtk.Box(orientation=Gtk.Orientation.VERTICAL, spacing=8)
        self.add(outer)

        bar = Gtk.Box(spacing=6)
        outer.pack_start(bar, False, False, 0)
        bar.pack_start(Gtk.Label(label="Port"), False, False, 0)
        self.port_combo = Gtk.ComboBoxText.new_with_entry()
        self.port_entry = self.port_combo.get_child()
        self.port_entry.set_width_chars(22)
        self.port_entry.connect("activate", lambda *_: self._on_connect())
        bar.pack_start(self.port_combo, False, False, 0)
        refresh = Gtk.Button(label="⟳")
        refresh.set_tooltip_text("list the serial ports again")
        refresh.connect("clicked", lambda *_: self._refresh_ports())
        bar.pack_start(refresh, False, False, 0)
        self.connect_button = Gtk.Button(label="Connect")
        self.connect_button.connect("clicked", lambda *_: self._on_connect())
        bar.pack_start(self.connect_button, False, False, 0)
        self.state_label = Gtk.Label(xalign=0)
        self.state_label.set_ellipsize(3)  # Pango.EllipsizeMode.END
        self.state_label.set_max_width_chars(60)
        bar.pack_start(self.state_label, True, True, 4)
        self._refresh_ports()

        middle = Gtk.Box(spacing=12)
        outer.pack_start(middle, False, False, 0)

        canvas_frame = Gtk.Frame()
        canvas_frame.set_shadow_type(Gtk.ShadowType.IN)
        self.canvas = Gtk.DrawingArea()
        self.canvas.set_size_request(CANVAS, CANVAS)
        self.canvas.add_events(Gdk.EventMask.BUTTON_PRESS_MASK | Gdk.EventMask.BUTTON_RELEASE_MASK
                               | Gdk.EventMask.POINTER_MOTION_MASK)
        self.canvas.connect("draw", self._draw_canvas)
        self.canvas.connect("button-press-event", self._on_press)
        self.canvas.connect("motion-notify-event", self._on_motion)
        self.canvas.connect("button-release-event", self._on_release)
        canvas_frame.add(self.canvas)
        left = Gtk.Box(orientation=Gtk.Orientation.VERTICAL, spacing=4)
        left.pack_start(canvas_frame, False, False, 0)
        self.source_label = Gtk.Label(label="draw a digit with the mouse", xalign=0)
        self.source_label.get_style_context().add_class("dim-label")
        left.pack_start(self.source_label, False, False, 0)
        middle.pack_start(left, False, False, 0)

        column = Gtk.Box(orientation=Gtk.Orientation.VERTICAL, spacing=4)
        middle.pack_start(column, False, False, 0)
        column.pack_start(Gtk.Label(label="the board receives (28×28)", xalign=0), False, False, 0)
        self.preview_area = Gtk.DrawingArea()
        self.preview_area.set_size_request(28 * PREVIEW_SCALE, 28 * PREVIEW_SCALE)
        self.preview_area.set_halign(Gtk.Align.CENTER)
        self.preview_area.connect("draw", self._draw_preview)
        column.pack_start(self.preview_area, False, False, 0)
        self.digit_label = Gtk.Label()
        self.digit_label.set_markup(self._digit_markup(None))
        self.digit_label.set_size_request(140, 110)
        column.pack_start(self.digit_label, False, False, 0)

        right = Gtk.Box(orientation=Gtk.Orientation.VERTICAL, spacing=4)
        middle.pack_start(right, False, False, 0)
        right.pack_start(Gtk.Label(label="probabilities", xalign=0), False, False, 0)
        self.chart = Gtk.DrawingArea()
        self.chart.set_size_request(CHART_W, CHART_H)
        self.chart.connect("draw", self._draw_chart)
        right.pack_start(self.chart, False, False, 0)
        self.time_label = Gtk.Label(label="", xalign=0)
        right.pack_start(self.time_label, False, False, 4)

        buttons = Gtk.Box(spacing=6)
        outer.pack_start(buttons, False, False, 0)
        self.clear_button = Gtk.Button(label="Clear")
        self.clear_button.connect("clicked", lambda *_: self._on_clear())
        buttons.pack_start(self.clear_button, False, False, 0)
        self.random_button = Gtk.Button(label="Random test image")
        self.random_button.connect("clicked", lambda *_: self._on_random())
        buttons.pack_start(self.random_button, False, False, 0)
        self.send_button = Gtk.Button(label="Send")
        self.send_button.get_style_context().add_class("suggested-action")
        self.send_button.connect("clicked", lambda *_: self._on_send())
        buttons.pack_start(self.send_button, False, False, 0)
        self.status_label = Gtk.Label(xalign=0)
        self.status_label.set_line_wrap(True)
        self.status_label.set_max_width_chars(70)
        buttons.pack_start(self.status_label, True, True, 8)
        self._set_state("not connected", GREY)

    # ------------------------------------------------------------ state shown to the user
    def _set_state(self, text, color):
        self.state_label.set_markup(f'<span foreground="{color}">●</span> {GLib.markup_escape_text(text)}')
        self.state_label.set_tooltip_text(text)

    def _set_status(self, text, error=False):
        escaped = GLib.markup_escape_text(text)
        self.status_label.set_markup(f'<span foreground="{RED}">{escaped}</span>' if error else escaped)
        if error:
            self.trace({"event": "error", "message": text})

    @staticmethod
    def _digit_markup(digit, color="#000000"):
        text = "–" if digit is None else str(digit)
        return f'<span font="72" weight="bold" foreground="{color}">{text}</span>'

    def _refresh_ports(self):
        current = self.port_entry.get_text() if hasattr(self, "port_entry") else ""
        self.port_combo.remove_all()
        for name in list_port_names():
            self.port_combo.append_text(name)
        if current:
            self.port_entry.set_text(current)

    # ------------------------------------------------------------ worker events
    def _post_from_worker(self, kind, *payload):
        GLib.idle_add(self._on_worker_event, kind, payload)

    def _on_worker_event(self, kind, payload):
        try:
            getattr(self, f"_worker_{kind}")(*payload)
        except Exception as exc:
            self._set_status(f"internal error: {type(exc).__name__}: {exc}", error=True)
            traceback.print_exc(file=sys.stderr)
        return False

    def _worker_connecting(self, port):
        self.connected = False
        self._set_state(f"connecting to {port}…", GREY)

    def _worker_connected(self, port, info):
        self.connected = True
        self.connect_button.set_label("Reconnect")
        model = info.get("model", "?")
        self._set_state(f"{port} · board {info.get('board', '?')} · model {model}", GREEN)
        self._set_status("")
        self.trace({"event": "connected", "port": port, "info": info})

    def _worker_disconnected(self, message):
        self.connected = False
        self.connect_button.set_label("Reconnect")
        self._set_state("not connected", RED)
        self._set_status(message, error=True)

    def _worker_error(self, message):
        self._set_status(message, error=True)

    def _worker_failed(self, tag):
        self._set_busy(False)

    def _worker_result(self, tag, result, round_trip, pixels):
        self._set_busy(False)
        self.digit = result.digit
        self.probabilities = result.probabilities
        label = self.sent_label
        color = "#000000" if label is None else (GREEN if label == result.digit else RED)
        self.digit_label.set_markup(self._digit_markup(result.digit, color))
        self.time_label.set_text(f"device time {format_device_time(result.time, result.time_unit)}"
                                 f"\nround trip {round_trip * 1000:.1f} ms")
        verdict = "" if label is None else (" — right" if label == result.digit else
                                            f" — wrong, the label is {label}")
        self._set_status(f"the board says {result.digit}{verdict}")
        self.chart.queue_draw()
        self.trace({"event": "result", "digit": result.digit,
                    "label_text": self.digit_label.get_text(), "time": result.time,
                    "time_unit": result.time_unit, "probabilities": result.probabilities,
                    "round_trip_ms": round_trip * 1000, "pixels": pixels.hex(),
                    "test_label": label})

    # ------------------------------------------------------------ actions
    def _set_busy(self, busy):
        self.busy = busy
        self.send_button.set_sensitive(not busy)
        self.send_button.set_label("Sending…" if busy else "Send")

    def _on_connect(self):
        port = self.port_entry.get_text().strip()
        if not port:
            self._set_status("choose a serial port first", error=True)
            return
        self.worker.connect(port)

    def _on_clear(self):
        self._clear_surface()
        self.exact = None
        self.preview = None
        self.probabilities = None
        self.digit_label.set_markup(self._digit_markup(None))
        self.time_label.set_text("")
        self.source_label.set_text("draw a digit with the mouse")
        self._set_status("")
        for area in (self.canvas, self.preview_area, self.chart):
            area.queue_draw()

    def _test_set(self):
        if self._test_images is None:
            self._test_images = mnist_arrays(train=False)
        return self._test_images

    def _on_random(self):
        try:
            images, labels = self._test_set()
        except Exception as exc:  # DatasetMissing, unreadable files: say so in the window
            self._set_status(str(exc).splitlines()[0], error=True)
            return
        index = int(self.rng.integers(len(images)))
        self.show_test_image(images[index], index, int(labels[index]))

    def show_test_image(self, pixels, index=None, label=None):
        """Put an exact 28×28 image on the canvas (scaled up) and in the preview."""
        pixels = np.asarray(pixels, np.uint8).reshape(28, 28)
        self._clear_surface()
        small = _gray_surface(pixels)
        ctx = cairo.Context(self.surface)
        ctx.scale(CANVAS / 28, CANVAS / 28)
        ctx.set_source_surface(small, 0, 0)
        ctx.get_source().set_filter(cairo.FILTER_BILINEAR)
        ctx.paint()
        self.exact = (pixels, index, label)
        self.preview = pixels
        self.source_label.set_text(f"test image #{index}, label {label}" if index is not None
                                   else "test image")
        self.canvas.queue_draw()
        self.preview_area.queue_draw()
        self.trace({"event": "test_image", "index": index, "label": label})

    def _on_send(self):
        if self.busy:
            return
        if self.exact is not None:
            pixels, _, label = self.exact
        else:
            try:
                pixels = to_mnist(self.canvas_pixels())
            except PreprocessError as exc:
                self._set_status("draw a digit first" if "blank" in str(exc) else str(exc),
                                 error=True)
                return
            label = None
            self.preview = pixels
            self.preview_area.queue_draw()
        self.sent_label = label
        self._set_busy(True)
        self._set_status("sending…")
        self.worker.infer(pixels)

    def _on_key(self, _widget, event):
        if event.keyval in (Gdk.KEY_Return, Gdk.KEY_KP_Enter) and not self.port_entry.has_focus():
            self._on_send()
            return True
        if event.keyval in (Gdk.KEY_Escape, Gdk.KEY_Delete):
            self._on_clear()
            return True
        return False

    def _on_destroy(self, *_):
        self.worker.stop()
        Gtk.main_quit()

    # ------------------------------------------------------------ the canvas
    def _clear_surface(self):
        ctx = cairo.Context(self.surface)
        ctx.set_source_rgb(0, 0, 0)
        ctx.paint()

    def canvas_pixels(self) -> np.ndarray:
        """The canvas as a 280×280 uint8 grey image (white ink on black)."""
        self.surface.flush()
        stride = self.surface.get_stride()
        data = np.frombuffer(self.surface.get_data(), np.uint8).reshape(CANVAS, stride)
        # FORMAT_RGB24 is 32-bit native-endian xRGB; the ink is grey, so any colour byte will do
        return data[:, :CANVAS * 4].reshape(CANVAS, CANVAS, 4)[:, :, 1].copy()

    def _stroke_to(self, x, y):
        ctx = cairo.Context(self.surface)
        ctx.set_source_rgb(1, 1, 1)
        ctx.set_line_width(STROKE)
        ctx.set_line_cap(cairo.LINE_CAP_ROUND)
        ctx.set_line_join(cairo.LINE_JOIN_ROUND)
        x0, y0 = self.last_point
        # a line from the previous motion event: GTK merges motion events, so points alone
        # would leave gaps when the mouse moves fast
        ctx.move_to(x0, y0)
        ctx.line_to(x, y)
        ctx.stroke()
        pad = int(STROKE) + 2
        self.canvas.queue_draw_area(int(min(x0, x)) - pad, int(min(y0, y)) - pad,
                                    int(abs(x - x0)) + 2 * pad, int(abs(y - y0)) + 2 * pad)
        self.last_point = (x, y)

    def _on_press(self, _widget, event):
        if event.button != 1:
            return False
        if self.exact is not None:
            # drawing over a test image turns it into a drawing, preprocessed like one
            self.exact = None
            self.source_label.set_text("drawing")
        self.last_point = (event.x, event.y)
        self._stroke_to(event.x, event.y)  # a click alone leaves a dot
        return True

    def _on_motion(self, _widget, event):
        if self.last_point is None or not event.state & Gdk.ModifierType.BUTTON1_MASK:
            return False
        self._stroke_to(event.x, event.y)
        return True

    def _on_release(self, _widget, event):
        if event.button != 1 or self.last_point is None:
            return False
        self._stroke_to(event.x, event.y)
        self.last_point = None
        self.source_label.set_text("drawing")
        try:
            self.preview = to_mnist(self.canvas_pixels())
        except PreprocessError:
            self.preview = None
        self.preview_area.queue_draw()
        self.trace({"event": "stroke"})
        return True

    def _draw_canvas(self, _widget, ctx):
        ctx.set_source_surface(self.surface, 0, 0)
        ctx.paint()
        if not self._layout_reported:
            self._layout_reported = True
            GLib.idle_add(self._report_layout)
        return False

    def _draw_preview(self, _widget, ctx):
        ctx.set_source_rgb(0.15, 0.15, 0.15)
        ctx.paint()
        if self.preview is not None:
            ctx.scale(PREVIEW_SCALE, PREVIEW_SCALE)
            ctx.set_source_surface(_gray_surface(self.preview), 0, 0)
            ctx.get_source().set_filter(cairo.FILTER_NEAREST)
            ctx.paint()
        return False

    def _draw_chart(self, _widget, ctx):
        ctx.set_source_rgb(1, 1, 1)
        ctx.paint()
        probs = self.probabilities or [0.0] * 10
        winner = int(np.argmax(probs)) if self.probabilities else None
        left, bottom, top = 8, CHART_H - 22, 18
        slot = (CHART_W - 2 * left) / 10
        ctx.select_font_face("Sans", cairo.FONT_SLANT_NORMAL, cairo.FONT_WEIGHT_NORMAL)
        ctx.set_font_size(12)
        ctx.set_source_rgb(0.8, 0.8, 0.8)
        ctx.set_line_width(1)
        ctx.move_to(left, bottom + 0.5)
        ctx.line_to(CHART_W - left, bottom + 0.5)
        ctx.stroke()
        for digit, p in enumerate(probs):
            p = 0.0 if not math.isfinite(p) else min(max(p, 0.0), 1.0)
            x = left + digit * slot
            height = p * (bottom - top)
            ctx.set_source_rgb(*_rgb(GREEN if digit == winner else "#90a4ae"))
            ctx.rectangle(x + slot * 0.15, bottom - height, slot * 0.7, height)
            ctx.fill()
            ctx.set_source_rgb(0.1, 0.1, 0.1)
            ctx.move_to(x + slot * 0.35, CHART_H - 6)
            ctx.show_text(str(digit))
            if p >= 0.005:
                text = f"{p * 100:.0f}%"
                extents = ctx.text_extents(text)
                ctx.set_font_size(10)
                ctx.move_to(x + (slot - extents.width) / 2, bottom - height - 4)
                ctx.show_text(text)
                ctx.set_font_size(12)
        return False

    # ------------------------------------------------------------ for tests and scripts
    def widget_box(self, widget):
        """A widget's top-left corner and size in root-window coordinates (for xdotool)."""
        origin = self.get_window().get_origin()
        x0, y0 = origin[-2], origin[-1]
        x, y = widget.translate_coordinates(self, 0, 0)
        alloc = widget.get_allocation()
        return {"x": x0 + x, "y": y0 + y, "width": alloc.width, "height": alloc.height}

    def _report_layout(self):
        self.trace({"event": "layout",
                    **{name: self.widget_box(widget) for name, widget in (
                        ("canvas", self.canvas), ("send", self.send_button),
                        ("port", self.port_entry), ("connect", self.connect_button),
                        ("clear", self.clear_button), ("random", self.random_button),
                        ("digit", self.digit_label))}})
        return False

    def snapshot(self, path):
        """Save the window's pixels as a PNG (for the README's screenshot)."""
        window = self.get_window()
        pixbuf = Gdk.pixbuf_get_from_window(window, 0, 0, window.get_width(), window.get_height())
        pixbuf.savev(str(path), "png", [], [])
        return path


def _gray_surface(pixels) -> cairo.ImageSurface:
    """A cairo surface showing a uint8 grey image."""
    pixels = np.asarray(pixels, np.uint8)
    height, width = pixels.shape
    surface = cairo.ImageSurface(cairo.FORMAT_RGB24, width, height)
    stride = surface.get_stride()
    data = np.frombuffer(surface.get_data(), np.uint8).reshape(height, stride)
    rgbx = np.repeat(pixels[:, :, None], 4, axis=2)
    data[:, :width * 4] = rgbx.reshape(height, width * 4)
    surface.mark_dirty()
    return surface


def json_trace(stream=None):
    """A trace callable printing one JSON object per line (for tests driving the real UI)."""
    stream = stream or sys.stdout

    def trace(event):
        stream.write(json.dumps(event) + "\n")
        stream.flush()
    return trace
