"""Stand-in boards behind a pty: build what is missing, start one, print its port, stop it.

    python -m utils.standin --target qemu-m7        # the emulated Cortex-M7 (default)
    python -m utils.standin --target host           # gcc build, a Linux process
    python -m utils.standin --target host --check 100   # figures into reports/firmware.json

The port is a stable link (default /tmp/tinyml-<target>) to the pty; open it like
/dev/ttyACM0 (pyserial, `python -m serial.tools.miniterm`, picocom, screen). Everything started is stopped by its own PID on
exit, Ctrl-C or SIGTERM, and dies with the launcher even if the launcher is killed.
A new target is a module in utils/targets/ and one line in TARGETS.
"""
import argparse
import atexit
import importlib
import json
import os
import signal
import sys
import time
import weakref
from pathlib import Path

from utils import paths
from utils.cli import StageError, run
from utils.targets import TargetError, default_build_dir, elf_sizes, require_tar, tar_hash

TARGETS = {
    "host": importlib.import_module("utils.targets.host"),
    "qemu-m7": importlib.import_module("utils.targets.qemu_m7"),
    "native64": importlib.import_module("utils.targets.native64"),
}
DEFAULT_TARGET = "qemu-m7"
REGISTRY_ENV = "TINYML_STANDIN_DIR"


def registry_dir() -> Path:
    """Where running stand-ins note their port, for clients' auto-detection."""
    return Path(os.environ.get(REGISTRY_ENV, "/tmp/tinyml-standins"))


def default_link(target: str) -> Path:
    return Path(f"/tmp/tinyml-{target}")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _registry_entries() -> list:
    entries = []
    for path in registry_dir().glob("*.json"):
        try:
            entry = json.loads(path.read_text())
            entry["_file"] = path
            entry["_mtime"] = path.stat().st_mtime
        except (OSError, ValueError):
            continue
        entries.append(entry)
    return sorted(entries, key=lambda e: e["_mtime"], reverse=True)


def _entry_alive(entry: dict) -> bool:
    return (all(_pid_alive(pid) for pid in [entry.get("launcher", -1)] + entry.get("pids", []))
            and os.path.exists(entry.get("port", "")))


def running_standin_ports() -> list:
    """Ports (link paths) of the stand-ins running now on this machine, newest first."""
    return [entry["port"] for entry in _registry_entries() if _entry_alive(entry)]


def running_standins() -> list:
    """Registry entries (target, port, pty, pids, model) of the running stand-ins."""
    return [{k: v for k, v in e.items() if not k.startswith("_")}
            for e in _registry_entries() if _entry_alive(e)]


_running = weakref.WeakSet()


@atexit.register
def _stop_all():
    for standin in list(_running):
        standin.stop()


class StandIn:
    """One stand-in board. `with StandIn("host") as s: Board(s.port)...`"""

    def __init__(self, target: str = DEFAULT_TARGET, mlf_tar=None, link=None, build_dir=None):
        if target not in TARGETS:
            raise TargetError(f"unknown target {target!r}; choose one of {', '.join(TARGETS)}")
        self.target = target
        self.module = TARGETS[target]
        self.mlf_tar = Path(mlf_tar) if mlf_tar else paths.MLF_TAR
        self.link = Path(link) if link else default_link(target)
        self.build_dir = Path(build_dir) if build_dir else None
        self.elf = None
        self.info = {}
        self._launched = None
        self._registry_file = None

    # ------------------------------------------------------------ lifecycle
    def build(self) -> Path:
        require_tar(self.mlf_tar)
        self.build_dir = self.build_dir or default_build_dir(self.target, self.mlf_tar)
        self.elf = self.module.build(self.mlf_tar, self.build_dir)
        return self.elf

    def start(self) -> str:
        """Build if needed, launch, and return the port (the link path)."""
        if self._launched is not None:
            return self.port
        self._claim_link()
        self.build()
        self._launched = self.module.launch(self.elf, self.build_dir / f"{self.target}.log")
        _running.add(self)
        self.info = self._launched.info
        try:
            self._make_link(self._launched.port)
            self._register()
        except BaseException:
            self.stop()
            raise
        return self.port

    def stop(self):
        launched, self._launched = self._launched, None
        if launched is not None:
            launched.stop()
            pty = launched.port
            try:
                if self.link.is_symlink() and os.readlink(self.link) == pty:
                    self.link.unlink()
            except OSError:
                pass
        if self._registry_file is not None:
            try:
                self._registry_file.unlink()
            except OSError:
                pass
            self._registry_file = None
        _running.discard(self)

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc):
        self.stop()

    # ------------------------------------------------------------ state
    @property
    def port(self) -> str:
        return str(self.link)

    @property
    def pty(self) -> str:
        return self._launched.port if self._launched else None

    @property
    def pids(self) -> list:
        return self._launched.pids if self._launched else []

    def alive(self) -> bool:
        return self._launched is not None and self._launched.alive()

    def _claim_link(self):
        if self.link.is_symlink() or self.link.exists():
            for entry in _registry_entries():
                if entry.get("port") == str(self.link) and _entry_alive(entry):
                    raise TargetError(f"a {entry.get('target')} stand-in already runs at {self.link} "
                                      f"(launcher pid {entry.get('launcher')}); stop it or pass "
                                      f"another --link")
            if not self.link.is_symlink():
                raise TargetError(f"{self.link} exists and is no stand-in link; pass another --link")

    def _make_link(self, pty: str):
        self.link.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.link.with_name(self.link.name + f".{os.getpid()}.tmp")
        try:
            tmp.unlink()
        except FileNotFoundError:
            pass
        os.symlink(pty, tmp)
        os.replace(tmp, self.link)

    def _register(self):
        directory = registry_dir()
        directory.mkdir(parents=True, exist_ok=True)
        name = str(self.link).strip("/").replace("/", "_")
        self._registry_file = directory / f"{name}.json"
        entry = {"target": self.target, "port": str(self.link), "pty": self.pty,
                 "launcher": os.getpid(), "pids": self.pids, "model": self.info.get("model"),
                 "elf": str(self.elf)}
        tmp = self._registry_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(entry))
        os.replace(tmp, self._registry_file)


# ------------------------------------------------------------------ figures

def measure(target: str, mlf_tar=None, images: int = 100, link=None, build_dir=None,
            progress=None) -> dict:
    """Build the target, record its ELF sizes, and (images > 0) send test images through its
    pty: the figures of reports/firmware.json for that target."""
    from utils import serial_link
    from utils.data import mnist_arrays
    from utils.validate import validate

    mlf_tar = Path(mlf_tar) if mlf_tar else paths.MLF_TAR
    standin = StandIn(target, mlf_tar, link=link, build_dir=build_dir)
    elf = standin.build()
    figures = {"elf": str(elf.relative_to(paths.ROOT)) if elf.is_relative_to(paths.ROOT) else str(elf),
               "mlf_tar_sha256": tar_hash(mlf_tar),
               **elf_sizes(elf, standin.module.SIZE_TOOL)}
    if images <= 0:
        return figures
    from utils.aot.host import HostLibrary
    test_images, test_labels = mnist_arrays(train=False)
    test_images, test_labels = test_images[:images], test_labels[:images]
    host_digits = HostLibrary(mlf_tar).predict(test_images)
    answered = 0

    def count(_outcome):
        nonlocal answered
        answered += 1
        if progress:
            progress(answered, len(test_images))

    with standin, serial_link.Board(standin.port, timeout=30) as board:
        summary = validate(board, test_images, test_labels, host_digits=host_digits,
                           progress=False, on_result=count)
    missing = summary["unanswered"] + summary["not_sent"]
    if missing:
        # figures over fewer images than asked would not be the figures asked for
        raise serial_link.LinkError(f"{target}: {missing} of {len(test_images)} images unanswered "
                                    f"({summary['stopped'] or summary['unanswered_reasons']})")
    unit, median = summary["device_time_unit"], summary["device_time_median"]
    figures.update({
        "model": summary["model"],
        "garbled_bytes": summary["garbled_bytes"],
        "images": summary["answered"],
        "predictions_match_host": summary["agreement_with_host"],
        "accuracy": summary["accuracy"],
        "images_per_second": round(summary["images_per_second"], 1),
        "time_unit": unit,
        "device_time_median": median,
    })
    if unit == "instructions":
        figures["instructions_per_inference"] = int(median)
        figures["instructions_min"] = summary["device_time_min"]
        figures["instructions_max"] = summary["device_time_max"]
    elif unit == "us":
        figures["device_us_median"] = median
    return figures


# ------------------------------------------------------------------ CLI

def main(argv=None):
    parser = argparse.ArgumentParser(
        description="Build and start a stand-in board behind a pty; print its port; stop it "
                    "cleanly on Ctrl-C. With --check, measure it instead and write "
                    "reports/firmware.json.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--target", choices=sorted(TARGETS), default=DEFAULT_TARGET)
    parser.add_argument("--tar", default=str(paths.MLF_TAR), help="Model Library Format tar")
    parser.add_argument("--link", default=None,
                        help="stable path of the port (default /tmp/tinyml-<target>)")
    parser.add_argument("--build-dir", default=None,
                        help="where to build (default build/<target>/<tar hash>)")
    parser.add_argument("--build-only", action="store_true", help="build, print the ELF, exit")
    parser.add_argument("--check", type=int, metavar="N", default=None,
                        help="send N MNIST test images (0: sizes only), record the figures, exit")
    args = parser.parse_args(argv)

    # SIGTERM ends the program like Ctrl-C: through the finally below, stopping the stand-in.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    # A shell starts background jobs (`... &`) with SIGINT ignored; `kill -INT` must still stop us.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    if args.check is not None:
        from utils.reports import write_report
        from utils.serial_link import LinkError
        from tqdm import tqdm
        with tqdm(total=args.check, desc=f"{args.target}", unit="image", disable=not args.check) as bar:
            try:
                figures = measure(args.target, args.tar, args.check, link=args.link,
                                  build_dir=args.build_dir, progress=lambda i, n: bar.update(1))
            except LinkError as exc:
                raise StageError(str(exc)) from None
        path = write_report("firmware", figures, section=args.target)
        for key, value in figures.items():
            print(f"{args.target}.{key}: {value}")
        print(f"written to {path}")
        return figures

    standin = StandIn(args.target, args.tar, link=args.link, build_dir=args.build_dir)
    if args.build_only:
        print(standin.build())
        return None
    try:
        port = standin.start()
        info = " ".join(f"{k}={v}" for k, v in standin.info.items())
        print(f"{args.target} stand-in running: {info}", file=sys.stderr)
        print(f"  elf {standin.elf}, pty {standin.pty}, pids {standin.pids}", file=sys.stderr)
        print(f"  talk to it: python -m serial.tools.miniterm {port} 115200 (type `info`, Enter)"
              f"   or   python 0401pc_terminal_sendimage.py --port {port}", file=sys.stderr)
        print("  Ctrl-C stops it", file=sys.stderr)
        print(port, flush=True)
        while standin.alive():
            time.sleep(0.5)
        raise StageError(f"the {args.target} stand-in exited on its own; see {standin._launched.log}")
    finally:
        standin.stop()


if __name__ == "__main__":
    run(main)
