"""The host stand-in: 0301mcu_mnist.c and the model library built with gcc and the host shim
(firmware/platform_host.c), a Linux process whose stdin/stdout is the master side of a pty.
A client opens the slave side exactly as it would open /dev/ttyACM0."""
import os
import subprocess
from pathlib import Path

from utils.targets import (CORE_HEADERS, CORE_SOURCES, FIRMWARE_DIR, Launched, default_build_dir,
                           die_with_parent, flags_key, open_raw_pty, run_build, stale, unpack_mlf, wait_ready)

NAME = "host"
SIZE_TOOL = "size"
CC = "gcc"
OUR_FLAGS = ["-std=gnu11", "-O2", "-g", "-Wall", "-Wextra", "-Werror"]
# The generated library is not ours to fix: its warnings are not errors here.
LIB_FLAGS = ["-std=gnu11", "-O2", "-g", "-w"]
SOURCES = CORE_SOURCES + [FIRMWARE_DIR / "platform_host.c"]


def build(mlf_tar, out_dir=None) -> Path:
    out_dir = Path(out_dir) if out_dir else default_build_dir(NAME, mlf_tar)
    mlf = unpack_mlf(mlf_tar, out_dir)
    elf = out_dir / "mnist_host.elf"
    log = out_dir / "build.log"
    includes = [f"-I{FIRMWARE_DIR}"] + [f"-I{d}" for d in mlf.include_dirs]
    objects = []
    for source in SOURCES + mlf.sources:
        ours = source in SOURCES
        flags = OUR_FLAGS if ours else LIB_FLAGS
        obj = out_dir / f"obj-{flags_key(flags)}" / (("" if ours else "lib_") + source.stem + ".o")
        deps = [source] + (CORE_HEADERS if ours else []) + mlf.files
        if stale(obj, deps):
            obj.parent.mkdir(parents=True, exist_ok=True)
            run_build([CC] + flags + includes
                      + ["-c", source, "-o", obj], f"{source.name} for {NAME}", log)
        objects.append(obj)
    if stale(elf, objects):
        run_build([CC, "-o", elf] + objects + ["-lm"], f"the {NAME} firmware", log)
    return elf


def launch(elf, log_path) -> Launched:
    master, slave, port = open_raw_pty()
    log = open(log_path, "w")
    try:
        process = subprocess.Popen([str(elf)], stdin=master, stdout=master, stderr=log,
                                   close_fds=True, preexec_fn=die_with_parent)
    finally:
        log.close()
        # Only the firmware keeps the master: when it exits, the client's reads fail at once.
        os.close(master)
    launched = Launched(port=port, processes=[process], fds=[slave], log=Path(log_path))
    try:
        launched.info = wait_ready(slave, [process], Path(log_path))
    except BaseException:
        launched.stop()
        raise
    return launched
