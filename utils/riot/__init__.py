"""The RIOT build of the firmware from Python: find RIOT, build for a board, measure the ELF.

RIOT is on no package registry: a developer clones it into ./RIOT (git-ignored) or points
RIOTBASE at a clone (README, "RIOT"). Builds go through the project's top-level Makefile,
exactly as `make BOARD=...` does, with the model tar and the output folder as arguments.

`python -m utils.riot` (utils/riot/__main__.py) builds the firmware for the STM32F746G-DISCO
and native64 with the real model (pkg/mnistCNN/mnistCNN.tar), runs 100 MNIST test images
through native64 behind a pty, and writes the figures to reports/firmware.json (sections
`stm32f746g-disco`, `native64`). That command lives apart from this library because it runs
native64 as a stand-in (utils.standin), whose target module builds through this one.
"""
import os
import re
import subprocess
from pathlib import Path

from utils import paths, stack_usage
from utils.targets import TargetError, elf_sizes, require_tar, run_build

RIOT_URL = "https://github.com/RIOT-OS/RIOT.git"
APPLICATION = "MNIST"
STM32 = "stm32f746g-disco"
NATIVE64 = "native64"
SIZE_TOOLS = {STM32: "arm-none-eabi-size", NATIVE64: "size"}
# STM32F746NG: 1 MiB of flash, 320 KiB of RAM (DTCM 64 + SRAM1 240 + SRAM2 16).
F746_FLASH_BYTES = 1024 * 1024
F746_RAM_BYTES = 320 * 1024
# The packages RIOT git-clones for an STM32 build besides the family's CMSIS device headers
# (stm32_packages); where a clone lands under the RIOT folder once it has been fetched.
STM32_COMMON_PACKAGES = {
    "https://github.com/ARM-software/CMSIS_5": "build/pkg/cmsis",
    "https://github.com/mpaland/printf": "build/pkg/mpaland-printf",
}
# RIOT fetches one cmsis-device package per STM32 family (f7 for the F746) from the URL in
# cpu/stm32/Makefile.cmsis, `$(CPU_FAM)` standing for the family; this when it names none.
CMSIS_DEVICE_URL = "https://github.com/STMicroelectronics/cmsis-device-$(CPU_FAM)"
STM32_FAMILY = "f7"
PREPARED = ".pkg-state.git-prepared"


class RiotMissing(TargetError):
    pass


def riot_base() -> Path:
    """RIOTBASE from the environment, else ./RIOT (read at call time: tests set it)."""
    return Path(os.environ.get("RIOTBASE") or paths.ROOT / "RIOT").resolve()


def riot_present(base=None) -> bool:
    return (Path(base or riot_base()) / "Makefile.include").is_file()


def require_riot(base=None) -> Path:
    base = Path(base or riot_base())
    if not riot_present(base):
        raise RiotMissing(f"RIOT not found in {base}: `git clone {RIOT_URL} RIOT` in the project "
                          f"folder, or set RIOTBASE to a RIOT clone")
    return base


def riot_commit(base=None) -> str:
    base = require_riot(base)
    try:
        return subprocess.run(["git", "-C", str(base), "rev-parse", "HEAD"], check=True,
                              capture_output=True, text=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git clone)"


def cmsis_device_url(family: str, base=None) -> str:
    """Where RIOT fetches the CMSIS device headers of an STM32 family (its Makefile.cmsis)."""
    template = CMSIS_DEVICE_URL
    try:
        text = (Path(base or riot_base()) / "cpu" / "stm32" / "Makefile.cmsis").read_text()
        match = re.search(r"^PKG_URL\s*\??=\s*(\S+)", text, re.MULTILINE)
        if match:
            template = match.group(1)
    except OSError:
        pass
    return template.replace("$(CPU_FAM)", family)


def stm32_packages(family: str = STM32_FAMILY, base=None) -> dict:
    """URL → where its clone lands, of every package RIOT git-clones for an STM32 build."""
    return {cmsis_device_url(family, base): f"build/stm32/cmsis/{family}", **STM32_COMMON_PACKAGES}


def fetch_hint(urls) -> str:
    """The one line said when RIOT cannot fetch packages (the Makefile says the same)."""
    return (f"RIOT cannot fetch {', '.join(urls)} (no network and no local mirror configured "
            f"with git's url.<mirror>.insteadOf; see README, RIOT offline)")


def stm32_packages_problem(base=None, timeout: float = 30.0, family: str = STM32_FAMILY):
    """None when RIOT can get the stm32 packages (already fetched, or git reaches them —
    directly or through url.<local>.insteadOf), else one line saying what is missing."""
    base = require_riot(base)
    missing = []
    for url, where in stm32_packages(family, base).items():
        if (base / where / PREPARED).is_file():
            continue
        try:
            reach = subprocess.run(["git", "ls-remote", "--exit-code", url, "HEAD"],
                                   capture_output=True, timeout=timeout,
                                   env={**os.environ, "GIT_TERMINAL_PROMPT": "0"})
            if reach.returncode == 0:
                continue
        except (OSError, subprocess.TimeoutExpired):
            pass
        missing.append(url)
    return fetch_hint(missing) if missing else None


def elf_path(board: str, out_dir) -> Path:
    return Path(out_dir) / board / f"{APPLICATION}.elf"


def build(board: str, mlf_tar=None, out_dir=None, jobs: int = 2, log=None, baud=None) -> Path:
    """`make BOARD=board` of the project's RIOT application; the ELF's path.

    mlf_tar replaces pkg/mnistCNN/mnistCNN.tar; out_dir replaces ./bin (BINDIRBASE); baud is
    `make BAUD=` (the console UART's rate; None: the Makefile's default). make is
    incremental, so calling this again costs a second or two."""
    base = require_riot()
    mlf_tar = require_tar(mlf_tar or paths.MLF_TAR).resolve()
    out_dir = Path(out_dir or paths.ROOT / "bin").resolve()
    log = Path(log or out_dir / f"{board}-build.log")
    if log.exists():
        log.unlink()
    command = ["make", "-C", str(paths.ROOT), f"-j{jobs}", f"BOARD={board}", f"RIOTBASE={base}",
               f"UTVM_TAR={mlf_tar}", f"BINDIRBASE={out_dir}",
               *([f"BAUD={int(baud)}"] if baud is not None else []), "all"]
    run_build(command, f"the RIOT firmware for {board}", log)
    elf = elf_path(board, out_dir)
    if not elf.is_file():
        raise TargetError(f"make succeeded but {elf} is missing; see {log}")
    return elf


def sizes(board: str, elf) -> dict:
    return elf_sizes(Path(elf), SIZE_TOOLS.get(board, "size"))


def f746_budget(figures: dict) -> dict:
    """How much of the F746's flash and RAM the image takes. Flash holds .text and the
    initial values of .data; RAM holds .data and .bss (stacks included). RIOT hands the RAM
    left over to the heap, which this firmware never uses."""
    flash = figures["text_bytes"] + figures["data_bytes"]
    ram = figures["data_bytes"] + figures["bss_bytes"]
    return {
        "flash_total_bytes": F746_FLASH_BYTES,
        "flash_used_bytes": flash,
        "flash_free_bytes": F746_FLASH_BYTES - flash,
        "flash_used_percent": round(100.0 * flash / F746_FLASH_BYTES, 1),
        "ram_total_bytes": F746_RAM_BYTES,
        "ram_used_bytes": ram,
        "ram_free_bytes": F746_RAM_BYTES - ram,
        "ram_used_percent": round(100.0 * ram / F746_RAM_BYTES, 1),
    }


# ------------------------------------------------------------------ the main thread's stack

# Indirect calls on the main thread's path, which the disassembly cannot follow:
#   emit*          firmware/protocol.c calls the request handler, on_request (0301mcu_mnist.c)
#   *ztimer*, platform_timestamp
#                  ztimer_now() calls the clock's backend: periph_timer on this board
#   auto_init      calls every function registered with AUTO_INIT(f) (XFA entry auto_init_xfa_f)
#   _vsnprintf & co  mpaland printf (RIOT's printf on this board) writes through an out
#                  callback; printf only runs on failure paths (asserts with DEVELHELP=1)
#   call_kernel    the model's AOT glue (utils/aot) calls each kernel through its TVM FFI
#                  wrapper, __tvm_ffi_<kernel>
PRINTF_OUT = ["_out_char", "_out_null", "_out_buffer", "_out_fct"]
ZTIMER_OPS = ["_ztimer_periph_timer_now", "_ztimer_periph_timer_set", "_ztimer_periph_timer_cancel"]
MAIN_THREAD_INDIRECT = {
    "emit*": ["on_request"],
    "*ztimer*": ZTIMER_OPS,
    "platform_timestamp": ZTIMER_OPS,
    "call_kernel*": ["__tvm_ffi_*"],
    "_vsnprintf*": PRINTF_OUT,
    "_out_rev*": PRINTF_OUT,
    "_ntoa*": PRINTF_OUT,
}
# What the thread's stack holds besides the call chain (Cortex-M7 with FPU, RIOT's
# cpu/cortexm_common/thread_arch.c): an interrupt pushes the extended exception frame onto
# the thread's stack (26 words + 1 alignment word = 108 B); a context switch then saves
# r4-r11 and lr (36 B) and, as the thread uses the FPU, s16-s31 (64 B); thread_create()
# places the thread_t control block at the top of the stack (36 B here; 64 B counted).
THREAD_OVERHEAD_BYTES = 108 + 36 + 64 + 64


def main_stack(elf) -> dict:
    """The main thread's stack: its size in the image and the worst case it may need."""
    text = subprocess.run([stack_usage.objdump_for(elf), "-d", "--no-show-raw-insn", str(elf)],
                          check=True, capture_output=True, text=True).stdout
    functions = stack_usage.parse_disassembly(text)
    indirect = dict(MAIN_THREAD_INDIRECT)
    indirect["auto_init"] = [name[len("auto_init_xfa_"):] for name in functions
                             if name.startswith("auto_init_xfa_") and name != "auto_init_xfa_end"]
    report = stack_usage.worst_case(functions, "main_trampoline", indirect)
    nm = subprocess.run([stack_usage.objdump_for(elf).replace("objdump", "nm"), "-S", str(elf)],
                        check=True, capture_output=True, text=True).stdout
    size = next(int(line.split()[1], 16) for line in nm.splitlines()
                if line.split()[-1] == "main_stack")
    return {
        "main_stack_bytes": size,
        "main_stack_calls_bytes": report.worst_bytes,
        "main_stack_worst_case_bytes": report.worst_bytes + THREAD_OVERHEAD_BYTES,
        "main_stack_deepest_chain": " > ".join(name for name, _ in report.path),
        "main_stack_bound_complete": report.complete,
        "main_stack_not_followed": report.indirect + report.recursive + report.dynamic
        + report.unknown,
    }
