"""Stand-in boards behind a pty: build what is missing, start one, print its port, stop it.

    python -m utils.standin --target qemu-m7        # the emulated Cortex-M7 (default)
    python -m utils.standin --target host           # gcc build, a Linux process
    python -m utils.standin --target host --check 100   # figures into reports/firmware.json

The port is a stable link (default /tmp/tinyml-<target>) to the pty; open it like
/dev/ttyACM0 (pyserial, `python -m serial.tools.miniterm`, picocom, screen). Everything
started is stopped by its own PID on exit, Ctrl-C or SIGTERM, and dies with the launcher
even if the launcher is killed.
A new target is a module in utils/targets/ and one line in utils/targets/registry.py.
"""
import argparse
import atexit
import os
import signal
import sys
import time
import weakref
from pathlib import Path

from utils import firmware_check, paths, running_standins
from utils.cli import StageError, check_output_dir, run
from utils.serial_link import LinkError
from utils.targets import TargetError, default_build_dir, require_tar
from utils.targets.registry import DEFAULT_TARGET, TARGETS, target_module


def default_link(target: str) -> Path:
    return Path(f"/tmp/tinyml-{target}")


_running = weakref.WeakSet()


@atexit.register
def _stop_all():
    for standin in list(_running):
        standin.stop()


class StandIn:
    """One stand-in board. `with StandIn("host") as s: Board(s.port)...`"""

    def __init__(self, target: str = DEFAULT_TARGET, mlf_tar=None, link=None, build_dir=None):
        self.module = target_module(target)
        self.target = target
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

    def check_paths(self):
        """Fail in one line, before anything is built or started, where the link or the
        note of the running stand-in cannot be written."""
        check_output_dir(self.link.parent, "--link")
        check_output_dir(running_standins.folder(), running_standins.FOLDER_ENV)
        self._claim_link()

    def start(self) -> str:
        """Build if needed, launch, and return the port (the link path)."""
        if self._launched is not None:
            return self.port
        self.check_paths()
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
            entry = running_standins.running_at(self.link)
            if entry is not None:
                raise TargetError(f"a {entry.get('target')} stand-in already runs at {self.link} "
                                  f"(launcher pid {entry.get('launcher')}); stop it or pass "
                                  f"another --link")
            if not self.link.is_symlink():
                raise TargetError(f"{self.link} exists and is no stand-in link; pass another --link")

    def _make_link(self, pty: str):
        # check_paths allowed a missing folder only where its parent exists: one level
        self.link.parent.mkdir(exist_ok=True)
        tmp = self.link.with_name(self.link.name + f".{os.getpid()}.tmp")
        try:
            tmp.unlink()
        except FileNotFoundError:
            pass
        os.symlink(pty, tmp)
        os.replace(tmp, self.link)

    def _register(self):
        self._registry_file = running_standins.register(
            {"target": self.target, "port": str(self.link), "pty": self.pty,
             "launcher": os.getpid(), "pids": self.pids, "model": self.info.get("model"),
             "elf": str(self.elf)})


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
    standin = StandIn(args.target, args.tar, link=args.link, build_dir=args.build_dir)
    if args.check is not None:
        try:
            figures = firmware_check.measure(standin, args.check)
        except LinkError as exc:
            raise StageError(str(exc)) from None
        print(f"written to {firmware_check.record(args.target, figures)}")
        return figures

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
