"""The figures of reports/firmware.json for one firmware build: what its ELF takes and, given
N > 0, how N MNIST test images fare through it behind a pty, against the host library.

`python -m utils.standin --check N` and `python -m utils.riot` both gather their figures here,
so every section of the report has the same keys for the same things.
"""
import sys
from pathlib import Path

from tqdm import tqdm

from utils import paths
from utils.aot import mlf
from utils.aot.host_library import HostLibrary
from utils.data import mnist_arrays
from utils.reports import write_report
from utils.serial_link import Board, LinkError
from utils.targets import elf_sizes
from utils.validate import validate

REPORT = "firmware"


def shown(path) -> str:
    """A path as the report shows it: relative to the project when inside it."""
    path = Path(path)
    return str(path.relative_to(paths.ROOT)) if path.is_relative_to(paths.ROOT) else str(path)


def elf_figures(elf, mlf_tar, size_tool: str) -> dict:
    """Which ELF, built from which model library, and its text/data/bss bytes."""
    return {"elf": shown(elf), "mlf_tar_sha256": mlf.tar_hash(mlf_tar),
            **elf_sizes(Path(elf), size_tool)}


def measure(standin, images: int = 100, progress: bool = True) -> dict:
    """Build the stand-in (a utils.standin.StandIn, not started yet), record its ELF's sizes,
    and with images > 0 start it and send it the first `images` MNIST test images, with one
    progress bar on stderr when `progress`. Figures over fewer images than asked would not be
    the figures asked for: any unanswered image is a LinkError."""
    if images > 0:
        standin.check_paths()  # before the build, which may take minutes
    elf = standin.build()
    figures = elf_figures(elf, standin.mlf_tar, standin.module.SIZE_TOOL)
    if images <= 0:
        return figures
    test_images, test_labels = mnist_arrays(train=False)
    test_images, test_labels = test_images[:images], test_labels[:images]
    host_digits = HostLibrary(standin.mlf_tar).predict(test_images)
    with tqdm(total=len(test_images), desc=standin.target, unit="image", file=sys.stderr,
              disable=not progress) as bar, standin, Board(standin.port, timeout=30) as board:
        summary = validate(board, test_images, test_labels, host_digits=host_digits,
                           progress=False, on_result=lambda _outcome: bar.update(1))
    missing = summary["unanswered"] + summary["not_sent"]
    if missing:
        raise LinkError(f"{standin.target}: {missing} of {len(test_images)} images unanswered "
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


def record(section: str, figures: dict) -> Path:
    """Write the figures into reports/firmware.json under `section` and print each one."""
    path = write_report(REPORT, figures, section=section)
    for key, value in figures.items():
        print(f"{section}.{key}: {value}")
    return path
