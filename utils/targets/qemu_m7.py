"""The emulated Cortex-M7: 0301mcu_mnist.c and the model library cross-compiled for QEMU's
mps2-an500 (firmware/m7: startup, CMSDK UART0 and TIMER0, linker script), run by
qemu-system-arm with the UART on a pty and `-icount shift=0`, so the firmware's timer counts
instructions: the same figure on every run, whatever the host's load."""
import subprocess
from pathlib import Path

from utils.targets import (CORE_SOURCES, FIRMWARE_DIR, Launched, TargetError, compile_and_link,
                           default_build_dir, die_with_parent, open_slave, wait_for_line,
                           wait_ready)

NAME = "qemu-m7"
SIZE_TOOL = "arm-none-eabi-size"
CC = "arm-none-eabi-gcc"
QEMU = "qemu-system-arm"
M7_DIR = FIRMWARE_DIR / "m7"
LINKER_SCRIPT = M7_DIR / "mps2_an500.ld"
CPU_FLAGS = ["-mcpu=cortex-m7", "-mthumb", "-mfpu=fpv5-sp-d16", "-mfloat-abi=hard"]
# -ffp-contract=off: no fused multiply-adds, so the M7 rounds every float operation as the
# host does (x86-64 gcc has no FMA without -march), whatever C the compiler emits: by default
# GCC may fuse a*b+c into one VFMA with a different rounding. What remains is libm: newlib's
# expf/logf against glibc's (1 ulp now and then in the log-probabilities, never the digit).
COMMON = CPU_FLAGS + ["-std=gnu11", "-Os", "-g", "-ffp-contract=off", "-ffunction-sections",
                      "-fdata-sections"]
OUR_FLAGS = COMMON + ["-Wall", "-Wextra", "-Werror"]
LIB_FLAGS = COMMON + ["-w"]
SOURCES = CORE_SOURCES + [M7_DIR / "platform_m7.c", M7_DIR / "startup.c"]
LINK_FLAGS = CPU_FLAGS + ["-nostartfiles", "--specs=nano.specs", "-Wl,--gc-sections",
                          f"-T{LINKER_SCRIPT}"]


def qemu_command(elf, serial="pty", extra=()) -> list:
    """The emulated board running `elf`; UART0 on `serial`; `extra` options (the benchmark's
    plugin and semihosting) before -kernel."""
    return [QEMU, "-M", "mps2-an500", "-display", "none", "-monitor", "none",
            "-serial", serial, "-icount", "shift=0", *extra, "-kernel", str(elf)]


def build(mlf_tar, out_dir=None) -> Path:
    out_dir = Path(out_dir) if out_dir else default_build_dir(NAME, mlf_tar)
    link_flags = LINK_FLAGS + [f"-Wl,-Map={out_dir / 'mnist_m7.map'}"]
    return compile_and_link(NAME, CC, SOURCES, OUR_FLAGS, LIB_FLAGS, mlf_tar, out_dir,
                            "mnist_m7.elf", link_flags, link_deps=[LINKER_SCRIPT])


def launch(elf, log_path) -> Launched:
    log_path = Path(log_path)
    with open(log_path, "w") as log:
        try:
            process = subprocess.Popen(qemu_command(elf), stdin=subprocess.DEVNULL, stdout=log,
                                       stderr=subprocess.STDOUT, close_fds=True,
                                       preexec_fn=die_with_parent)
        except FileNotFoundError:
            raise TargetError(f"{QEMU} not found; install qemu-system-arm (bash setup.sh)") from None
    launched = Launched(port="", processes=[process], log=log_path)
    try:
        port = wait_for_line(log_path, r"char device redirected to (/dev/pts/\d+)", process).group(1)
        launched.port = port
        # Holding the slave open keeps QEMU's pty "connected": without it QEMU drops what the
        # firmware writes until a client opens the port, and polls for it only once a second.
        launched.fds.append(open_slave(port))
        launched.info = wait_ready(launched.fds[0], [process], log_path)
    except BaseException:
        launched.stop()
        raise
    return launched
