"""RIOT's native64 board: the RIOT application of the top-level Makefile (`make BOARD=native64`)
runs as a Linux process, and its stdin/stdout is the master side of a pty. A client opens the
slave side exactly as it would open /dev/ttyACM0 on the STM32F746G-DISCO.

Needs a RIOT clone (RIOTBASE, default ./RIOT); without one, build() says how to get it.
The firmware leaves out RIOT's `stdin` module on native boards and reads fd 0 itself
(firmware/platform_riot.c); when the pty hangs up, main() returns and the process exits.
"""
import os
import signal
import subprocess
from pathlib import Path

from utils import riot
from utils.targets import (PR_SET_PDEATHSIG, Launched, _libc, default_build_dir, launch_on_pty)

NAME = riot.NATIVE64
SIZE_TOOL = riot.SIZE_TOOLS[riot.NATIVE64]


# RIOT native blocks SIGTERM (it keeps signals for its emulated interrupts) and shuts down
# cleanly on SIGINT, its Ctrl-C; so SIGINT is how it is stopped, and how it dies with its
# launcher.
STOP_SIGNAL = signal.SIGINT


def _die_with_parent():
    _libc.prctl(PR_SET_PDEATHSIG, STOP_SIGNAL, 0, 0, 0)
    os.setpgid(0, 0)


class RiotNativeLaunched(Launched):
    def stop(self):
        for process in self.processes:
            if process.poll() is None:
                process.send_signal(STOP_SIGNAL)
                try:
                    process.wait(3)
                except subprocess.TimeoutExpired:
                    pass
        super().stop()


def build(mlf_tar, out_dir=None) -> Path:
    out_dir = Path(out_dir) if out_dir else default_build_dir(NAME, mlf_tar)
    return riot.build(NAME, mlf_tar, out_dir, log=out_dir / "build.log")


def launch(elf, log_path) -> Launched:
    return launch_on_pty([elf], log_path, preexec_fn=_die_with_parent, cwd=Path(elf).parent,
                         launched_class=RiotNativeLaunched)
