"""What every stand-in target shares: make-like rebuilds against the model library (unpacked
once per tar by utils.aot.mlf), raw ptys, child processes that die with their launcher, and
the ready check.

A target module (linux_process.py, qemu_m7.py, native64.py; listed in registry.py) provides:
    NAME                     the target's name in reports and on the command line
    SIZE_TOOL                the `size` program for its ELF
    build(mlf_tar, out_dir=None) -> Path of the ELF (builds only what is missing or stale)
    launch(elf, log_path) -> Launched (the process behind a pty, ready to answer)
"""
import ctypes
import hashlib
import os
import re
import select
import signal
import subprocess
import time
import tty
from dataclasses import dataclass, field
from pathlib import Path

from utils import paths, protocol
from utils.aot import mlf
from utils.cli import StageError, one_line

FIRMWARE_DIR = paths.ROOT / "firmware"
MAIN_SOURCE = paths.ROOT / "0301mcu_mnist.c"
CORE_SOURCES = [MAIN_SOURCE, FIRMWARE_DIR / "protocol.c"]
CORE_HEADERS = [FIRMWARE_DIR / "protocol.h", FIRMWARE_DIR / "platform.h"]


class TargetError(StageError):
    """A build or launch problem, in one line that says what to do."""


# ------------------------------------------------------------------ the model library

def require_tar(mlf_tar) -> Path:
    mlf_tar = Path(mlf_tar)
    if not mlf_tar.is_file():
        raise TargetError(f"model library {mlf_tar} not found; make it with "
                          f"`python 0201tvm_no_optim.py` (stage 0201)")
    return mlf_tar


def default_build_dir(target: str, mlf_tar) -> Path:
    return paths.BUILD_DIR / target / mlf.tar_hash(mlf_tar)


# ------------------------------------------------------------------ building

def flags_key(flags) -> str:
    """Objects live in a folder named after their compiler flags: new flags, new objects."""
    return hashlib.sha256(" ".join(map(str, flags)).encode()).hexdigest()[:8]


def stale(output: Path, inputs) -> bool:
    """True when output is missing or older than any input (make's rule)."""
    if not output.is_file():
        return True
    built = output.stat().st_mtime
    return any(Path(p).stat().st_mtime > built for p in inputs)


def run_build(command: list, what: str, log: Path):
    """Run a compiler; on failure, one line naming the log with the compiler's messages."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "a") as out:
        out.write("$ " + " ".join(str(c) for c in command) + "\n")
        out.flush()
        try:
            result = subprocess.run([str(c) for c in command], stdout=out, stderr=subprocess.STDOUT)
        except FileNotFoundError:
            raise TargetError(f"{command[0]} not found; install the Debian packages in "
                              f"apt-packages.txt (bash setup.sh)") from None
    if result.returncode != 0:
        first = _first_error(log)
        raise TargetError(f"building {what} failed ({first}); full log: {log}")


def _first_error(log: Path) -> str:
    for line in log.read_text(errors="replace").splitlines():
        if "error" in line.lower() and not line.startswith("$ "):
            return line.strip()[:200]
    return "see the log"


def library_flags(library: mlf.Unpacked, lib_flags, lib_flags_last=()) -> list:
    """The model library's compiler flags: the target's, then what metadata.json asks for,
    then `lib_flags_last` (the benchmark's opt level, which must win over the library's)."""
    return list(lib_flags) + library.cflags + list(lib_flags_last)


def library_objects_dir(out_dir: Path, flags) -> Path:
    return Path(out_dir) / f"obj-{flags_key(flags)}"


def compile_and_link(name: str, cc: str, our_sources: list, our_flags: list, lib_flags: list,
                     mlf_tar, out_dir: Path, elf_name: str, link_flags=(), link_deps=(),
                     lib_flags_last=()) -> Path:
    """Build a stand-in's ELF from our firmware sources and the model library, recompiling
    only what is stale. Objects live under a folder named by their flags, so a change of
    flags rebuilds them."""
    library = mlf.unpack_once(require_tar(mlf_tar), out_dir)
    elf = out_dir / elf_name
    log = out_dir / "build.log"
    includes = [f"-I{FIRMWARE_DIR}"] + [f"-I{d}" for d in library.include_dirs]
    objects = []
    for source in our_sources + library.sources:
        ours = source in our_sources
        flags = our_flags if ours else library_flags(library, lib_flags, lib_flags_last)
        obj = library_objects_dir(out_dir, flags) / (("" if ours else "lib_") + source.stem + ".o")
        # our sources also depend on the headers beside them (bench/semihosting_exit.h)
        beside = sorted(Path(source).parent.glob("*.h")) if ours else []
        deps = [source] + (CORE_HEADERS if ours else []) + beside + library.files
        if stale(obj, deps):
            obj.parent.mkdir(parents=True, exist_ok=True)
            run_build([cc] + flags + includes + ["-c", source, "-o", obj],
                      f"{source.name} for {name}", log)
        objects.append(obj)
    if stale(elf, objects + list(link_deps)):
        run_build([cc] + list(link_flags) + ["-o", elf] + objects + ["-lm"],
                  f"the {name} firmware", log)
    return elf


def elf_sizes(elf: Path, size_tool: str = "size") -> dict:
    """text/data/bss bytes of an ELF as `size` (Berkeley format) counts them."""
    try:
        out = subprocess.run([size_tool, str(elf)], capture_output=True, text=True, check=True).stdout
    except (FileNotFoundError, subprocess.CalledProcessError) as exc:
        raise TargetError(f"cannot measure {elf} with {size_tool}: {one_line(exc)}") from None
    text, data, bss = (int(v) for v in out.splitlines()[1].split()[:3])
    return {"text_bytes": text, "data_bytes": data, "bss_bytes": bss}


# ------------------------------------------------------------------ processes and ptys

_libc = ctypes.CDLL(None, use_errno=True)
PR_SET_PDEATHSIG = 1


def die_with_parent():
    """preexec_fn: the kernel sends SIGTERM to the child when its launcher dies, even by
    SIGKILL, so a stand-in never outlives the process that started it."""
    _libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    # Ctrl-C in the launcher's terminal must reach only the launcher, which then stops us.
    os.setpgid(0, 0)


def open_raw_pty():
    """(master fd, slave fd, slave path) with the slave raw: no echo, no CR/LF rewriting."""
    master, slave = os.openpty()
    tty.setraw(slave)
    return master, slave, os.ttyname(slave)


def open_slave(path: str) -> int:
    fd = os.open(path, os.O_RDWR | os.O_NOCTTY)
    tty.setraw(fd)
    return fd


def stop_process(process: subprocess.Popen, grace: float = 3.0):
    """SIGTERM, then SIGKILL after `grace` seconds; always reaped."""
    if process.poll() is None:
        try:
            process.terminate()
            process.wait(grace)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        except ProcessLookupError:
            pass
    else:
        process.wait()


@dataclass
class Launched:
    """A running target: its processes (stopped in order) and the pty a client opens."""
    port: str
    processes: list
    fds: list = field(default_factory=list)  # kept open: a pty whose slave is never open
    info: dict = field(default_factory=dict)  # drops output (QEMU) or reads EIO (host)
    log: Path = None

    @property
    def pids(self) -> list:
        return [p.pid for p in self.processes]

    def alive(self) -> bool:
        return all(p.poll() is None for p in self.processes)

    def stop(self):
        for process in self.processes:
            stop_process(process)
        for fd in self.fds:
            try:
                os.close(fd)
            except OSError:
                pass
        self.fds = []


def wait_ready(fd: int, processes: list, log: Path, timeout: float = 20.0) -> dict:
    """Ask the firmware for INFO through the pty until it answers; its fields.

    The boot banner may be gone (QEMU drops output while no one has the pty open), so the
    check is a request, not the banner."""
    parser = protocol.ReplyParser()
    seq = 0xFFF0
    deadline = time.monotonic() + timeout
    next_ask = 0.0
    while time.monotonic() < deadline:
        for process in processes:
            if process.poll() is not None:
                raise TargetError(f"the stand-in exited with status {process.returncode} before "
                                  f"answering; its log: {log}{_log_tail(log)}")
        if time.monotonic() >= next_ask:
            # Ask again now and then: a request sent before the firmware ran may be lost.
            seq += 1
            os.write(fd, protocol.encode_info_request(seq))
            next_ask = time.monotonic() + 2.0
        ready, _, _ = select.select([fd], [], [], 0.1)
        if ready:
            try:
                data = os.read(fd, 4096)
            except OSError:
                data = b""
            for message in parser.feed(data):
                if isinstance(message, protocol.Info):
                    return message.fields
    raise TargetError(f"the stand-in did not answer INFO within {timeout:g} s; its log: {log}"
                      f"{_log_tail(log)}")


def _log_tail(log: Path) -> str:
    try:
        lines = [line for line in Path(log).read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return ""
    return f" (last line: {lines[-1][:160]})" if lines else ""


def launch_on_pty(command: list, log_path, preexec_fn=die_with_parent, cwd=None,
                  launched_class=None) -> "Launched":
    """Run a firmware process whose stdin/stdout is the master side of a raw pty; return once
    it answers INFO. A client opens the slave side as it would open /dev/ttyACM0."""
    master, slave, port = open_raw_pty()
    log = open(log_path, "w")
    try:
        process = subprocess.Popen([str(c) for c in command], stdin=master, stdout=master,
                                   stderr=log, close_fds=True, preexec_fn=preexec_fn, cwd=cwd)
    finally:
        log.close()
        # Only the firmware keeps the master: when it exits, the client's reads fail at once.
        os.close(master)
    launched = (launched_class or Launched)(port=port, processes=[process], fds=[slave],
                                            log=Path(log_path))
    try:
        launched.info = wait_ready(slave, [process], Path(log_path))
    except BaseException:
        launched.stop()
        raise
    return launched


def wait_for_line(path: Path, pattern: str, process: subprocess.Popen, timeout: float = 10.0):
    """The first match of `pattern` in a log file a child is writing."""
    regex = re.compile(pattern)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.is_file():
            match = regex.search(path.read_text(errors="replace"))
            if match:
                return match
        if process.poll() is not None:
            raise TargetError(f"{process.args[0]} exited with status {process.returncode}; "
                              f"its log: {path}{_log_tail(path)}")
        time.sleep(0.05)
    raise TargetError(f"{process.args[0]} did not print /{pattern}/ within {timeout:g} s; log: {path}")
