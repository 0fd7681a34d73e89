"""Which stand-ins run on this machine, and on which port: one small JSON file each in a
shared folder, written by the launcher (utils.standin) and read by the clients' port
auto-detection (utils.serial_link). Kept free of project imports so the serial link can
read it without pulling in the build machinery.

An entry holds target, port (the stable link), pty, launcher (pid), pids, model and elf;
it counts as running while every pid lives and the port exists.
"""
import json
import os
from pathlib import Path

FOLDER_ENV = "TINYML_STANDIN_DIR"


def folder() -> Path:
    """Where running stand-ins note their port (read at call time: tests set the variable)."""
    return Path(os.environ.get(FOLDER_ENV, "/tmp/tinyml-standins"))


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _entries() -> list:
    """(entry, file) of every readable note, newest first."""
    found = []
    for path in folder().glob("*.json"):
        try:
            entry = json.loads(path.read_text())
            mtime = path.stat().st_mtime
        except (OSError, ValueError):
            continue
        if isinstance(entry, dict):
            found.append((mtime, entry, path))
    return [(entry, path) for _, entry, path in sorted(found, key=lambda f: f[0], reverse=True)]


def alive(entry: dict) -> bool:
    return (all(_pid_alive(pid) for pid in [entry.get("launcher", -1)] + entry.get("pids", []))
            and os.path.exists(entry.get("port", "")))


def entries() -> list:
    """The entries of the stand-ins running now, newest first."""
    return [entry for entry, _ in _entries() if alive(entry)]


def ports() -> list:
    """Ports (link paths) of the stand-ins running now, newest first."""
    return [entry["port"] for entry in entries()]


def running_at(port: str):
    """The entry of the stand-in running at `port`, or None."""
    return next((entry for entry in entries() if entry.get("port") == str(port)), None)


def register(entry: dict) -> Path:
    """Note a stand-in that has just started; the file to remove when it stops."""
    directory = folder()
    directory.mkdir(parents=True, exist_ok=True)
    name = str(entry["port"]).strip("/").replace("/", "_")
    path = directory / f"{name}.json"
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(entry))
    os.replace(tmp, path)
    return path
