"""The host stand-in: 0301mcu_mnist.c and the model library built with gcc and the host shim
(firmware/platform_host.c), a Linux process whose stdin/stdout is the master side of a pty.
A client opens the slave side exactly as it would open /dev/ttyACM0."""
from pathlib import Path

from utils.targets import (CORE_SOURCES, FIRMWARE_DIR, Launched, compile_and_link,
                           default_build_dir, launch_on_pty)

NAME = "host"
SIZE_TOOL = "size"
CC = "gcc"
OUR_FLAGS = ["-std=gnu11", "-O2", "-g", "-Wall", "-Wextra", "-Werror"]
# The generated library is not ours to fix: its warnings are not errors here.
LIB_FLAGS = ["-std=gnu11", "-O2", "-g", "-w"]
SOURCES = CORE_SOURCES + [FIRMWARE_DIR / "platform_host.c"]


def build(mlf_tar, out_dir=None) -> Path:
    out_dir = Path(out_dir) if out_dir else default_build_dir(NAME, mlf_tar)
    return compile_and_link(NAME, CC, SOURCES, OUR_FLAGS, LIB_FLAGS, mlf_tar, out_dir,
                            "mnist_host.elf")


def launch(elf, log_path) -> Launched:
    return launch_on_pty([elf], log_path)
