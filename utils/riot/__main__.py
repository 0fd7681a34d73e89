"""`python -m utils.riot`: the RIOT firmware's figures into reports/firmware.json.

For the STM32F746G-DISCO: sizes, the share of the chip's flash and RAM, the main thread's
stack bound. For native64: sizes and MNIST test images through it behind a pty, measured
like every stand-in (utils.firmware_check). Both sections name the RIOT commit.
"""
import argparse

from utils import firmware_check, paths, riot
from utils.cli import StageError, run
from utils.serial_link import LinkError
from utils.standin import StandIn
from utils.targets import TargetError

STACK_FIGURES = ("main_stack_bytes", "main_stack_worst_case_bytes", "main_stack_calls_bytes",
                 "main_stack_deepest_chain", "main_stack_bound_complete")


def stm32_figures(mlf_tar=None, out_dir=None) -> dict:
    """Build for the STM32F746G-DISCO; sizes, the share of the chip, the stack bound."""
    problem = riot.stm32_packages_problem()
    if problem:
        raise TargetError(problem)
    mlf_tar = mlf_tar or paths.MLF_TAR
    elf = riot.build(riot.STM32, mlf_tar, out_dir)
    figures = firmware_check.elf_figures(elf, mlf_tar, riot.SIZE_TOOLS[riot.STM32])
    figures["riot_commit"] = riot.riot_commit()
    figures.update(riot.f746_budget(figures))
    stack = riot.main_stack(elf)
    figures.update({key: stack[key] for key in STACK_FIGURES})
    return figures


def native64_figures(mlf_tar=None, images: int = 100) -> dict:
    """The native64 stand-in measured like every stand-in, plus the RIOT commit."""
    figures = firmware_check.measure(StandIn(riot.NATIVE64, mlf_tar), images)
    figures["riot_commit"] = riot.riot_commit()
    return figures


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python3 -m utils.riot",
        description="Build the RIOT firmware for the STM32F746G-DISCO and native64, run MNIST "
                    "test images through native64 behind a pty, write reports/firmware.json.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--tar", default=str(paths.MLF_TAR), help="Model Library Format tar")
    parser.add_argument("--images", type=int, default=100,
                        help="MNIST test images sent to native64 (0: sizes only)")
    parser.add_argument("--boards", nargs="+", default=[riot.STM32, riot.NATIVE64],
                        choices=[riot.STM32, riot.NATIVE64])
    args = parser.parse_args(argv)
    results = {}
    path = None
    try:
        for board in args.boards:
            if board == riot.STM32:
                figures = stm32_figures(args.tar)
            else:
                figures = native64_figures(args.tar, args.images)
            path = firmware_check.record(board, figures)
            results[board] = figures
    except LinkError as exc:
        raise StageError(str(exc)) from None
    print(f"written to {path}")
    return results


if __name__ == "__main__":
    run(main)
