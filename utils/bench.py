"""The benchmark: each model library variant on the emulated Cortex-M7, measured.

For each variant (fp32 / int8, the generic backend (0201) / the Cortex-M backend (0202)) and
each gcc opt level:

    compile_model(source, tar, backend) → MLF tar → arm-none-eabi-gcc (bench/bench_m7.c + firmware/m7
    startup, UART and timer + the library + the test images as a C array) → ELF
    → qemu-system-arm -M mps2-an500 with the TCG plugin bench/insn_count_plugin.c, which
      counts the instructions between bench_marker_start() and bench_marker_stop(), exactly
    → UART lines: timer count, stack peak, output float bits (and the int8 tap)
    → compared with the same tar on the host (utils.aot.host_library.HostLibrary)

Instructions counted on an emulator stand in for cycles on the board: QEMU executes each
instruction in one step and models no pipeline, caches or flash wait states.
The int8 uint8 logits come from a second build with -DTVMGEN_DEFAULT_DEBUG_TAP; counts, flash
and stack come from the build without it, the library exactly as the firmware links it.
"""
import json
import os
import statistics
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import matplotlib
import numpy as np

matplotlib.use("Agg")  # before pyplot: the benchmark draws its chart without a display
import matplotlib.pyplot as plt  # noqa: E402

from utils import paths  # noqa: E402
from utils.cli import StageError, one_line
from utils.data import mnist_arrays
from utils.reports import read_report, report_path, write_report
from utils.targets import (TargetError, compile_and_link, die_with_parent, library_flags,
                           library_objects_dir, run_build, stale, stop_process)
from utils.targets import qemu_m7
from utils import bench_peers
from utils import cycle_estimate
from utils.aot import mlf
from utils.aot.emit import PROFILE_DEFINE, PROFILE_FUNCTION
from utils.aot.backends import BACKENDS
from utils.aot.compiler import compile_model, to_relax
from utils.aot.host_library import HostLibrary
from utils.aot.layers import QConv2d, QLinear
from utils.aot.torchscript import INPUT
from utils.aot.model_file import load_model
from utils.aot.verify import compare_outputs, object_sizes
from utils.zoo import catalog as zoo_catalog
from utils.zoo import make as zoo_make

STAGE = "bench"
BENCH_SRC = paths.ROOT / "bench"
PLUGIN_SOURCE = BENCH_SRC / "insn_count_plugin.c"
HARNESS_SOURCE = BENCH_SRC / "bench_m7.c"
DEFAULT_BUILD_DIR = paths.BUILD_DIR / "bench"

# variant name → (model kind, backend name)
VARIANTS = {
    "fp32_no_optim": ("fp32", "generic"),
    "fp32_optim": ("fp32", "cortex_m"),
    "int8_no_optim": ("int8", "generic"),
    "int8_optim": ("int8", "cortex_m"),
}
OPT_LEVELS = ("-Os", "-O2")
# the models' variants: each model with the generic backend (0201) and the Cortex-M one (0202)
MODEL_VARIANTS = ("int8_no_optim", "int8_optim")
STAGE_OF = {"int8_no_optim": "0201", "int8_optim": "0202", "fp32_no_optim": "0201", "fp32_optim": "0202"}
CYCLE_MODEL = ("estimated Cortex-M7 cycles: plugin block counts x llvm-mca-14 -mcpu=cortex-m7 "
               "steady-state cycles per block, branches and IT one issue slot each, LDM/STM/PUSH/POP "
               "ceil(registers/2) (utils/cycle_estimate.py); no flash wait states, ART accelerator, "
               "caches, TCM or branch mispredictions")
NM = "arm-none-eabi-nm"
QEMU_TIMEOUT = 120.0
TIMER_RESOLUTION = 40  # instructions per TIMER0 tick under -icount shift=0 (platform_m7.c)
EMPTY_PASS = 0xFFFFFFFF
GOAL_INSTRUCTIONS = 1_000_000  # int8 LeNet-5 on the emulated Cortex-M7


class Refused(StageError):
    """The backend does not compile this model (its one-line StageError)."""


def _say(text):
    print(text, flush=True)


# ------------------------------------------------------------------ the model's MACs

def count_macs(relax_mod) -> int:
    """Multiply-accumulates of the conv2d / matmul / linear calls in a Relax module's main."""
    total = 0
    for block in relax_mod["main"].body.blocks:
        for binding in block.bindings:
            value = binding.value
            name = getattr(getattr(value, "op", None), "name", "")
            if name not in ("relax.nn.conv2d", "relax.matmul", "relax.linear"):
                continue
            out = [int(d) for d in binding.var.ty.shape.values]
            lhs = [int(d) for d in value.args[0].ty.shape.values]
            rhs = [int(d) for d in value.args[1].ty.shape.values]
            if name == "relax.nn.conv2d":
                if value.attrs.kernel_layout != "OIHW":
                    raise StageError(f"MAC count: conv2d kernel layout {value.attrs.kernel_layout}, "
                                     f"expected OIHW")
                total += int(np.prod(out)) * rhs[1] * rhs[2] * rhs[3]
            else:
                total += int(np.prod(out)) * lhs[-1]
    return total


def model_macs(source) -> int:
    """MACs of one inference: int8 models from their conv and linear layer records (a pool
    lowered as a convolution is no MAC), fp32 from the generic backend's Relax module."""
    relax_mod, layers = to_relax(source, BACKENDS["generic"])
    if layers is None:
        return count_macs(relax_mod)
    values, total = {INPUT: np.zeros(source.input_shape, np.float32)}, 0
    for layer in layers:
        values[layer.output] = out = layer.golden(*[values[name] for name in layer.inputs])
        if isinstance(layer, QConv2d):
            total += int(out.size) * int(np.prod(layer.weight.shape[1:]))
        elif isinstance(layer, QLinear):
            total += int(out.size) * int(layer.weight.shape[1])
    return total


# ------------------------------------------------------------------ building

def build_plugin(build_dir: Path) -> Path:
    """The counter plugin, compiled with the host gcc (rebuilt when its source changes)."""
    plugin = Path(build_dir) / "libinsn_count.so"
    if stale(plugin, [PLUGIN_SOURCE]):
        run_build(["gcc", "-shared", "-fPIC", "-O2", "-Wall", "-Wextra", "-Werror", "-o", plugin,
                   PLUGIN_SOURCE], "the instruction-count plugin", Path(build_dir) / "build.log")
    return plugin


def bytes_to_inputs(images, low=0.0, span=1.0) -> np.ndarray:
    """float32 inputs from input bytes, low + span * (byte / 255), the float operations
    bench_m7.c does (MNIST: low 0, span 1 give pixel / 255)."""
    images = np.asarray(images, np.uint8)
    return (np.float32(low) + np.float32(span) * (images.astype(np.float32) / np.float32(255.0))).astype(np.float32)


def write_images_c(images: np.ndarray, path: Path, low=0.0, span=1.0):
    """bench_images.c: the inputs as bytes, `const uint8_t bench_images[N][input floats]`, and
    how they become floats (rewritten only when they change, so builds stay cached)."""
    images = np.asarray(images, np.uint8).reshape(len(images), -1)
    rows = ",\n".join("  {" + ",".join(map(str, image)) + "}" for image in images)
    text = ("/* Inputs for bench/bench_m7.c, written by utils/bench.py */\n"
            "#include <stdint.h>\n"
            f"const uint32_t bench_image_count = {len(images)};\n"
            f"const float bench_input_low = {float(np.float32(low)):.9e}f;\n"
            f"const float bench_input_span = {float(np.float32(span)):.9e}f;\n"
            f"const uint8_t bench_images[{len(images)}][{images.shape[1]}] = {{\n{rows}\n}};\n")
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.is_file() or path.read_text() != text:
        path.write_text(text)
    return path


@dataclass
class Build:
    elf: Path
    library_objects: list
    library_flags: list


def build_elf(tar: Path, out_dir: Path, opt: str, images_c: Path, tap: bool, profile: bool = False) -> Build:
    """The bench ELF for QEMU mps2-an500: harness and platform with qemu_m7's flags (-Os), the
    library with qemu_m7's flags and then `opt`; with `tap` both see -DTVMGEN_DEFAULT_DEBUG_TAP,
    with `profile` -DTVMGEN_DEFAULT_PROFILE (the per-kernel marks)."""
    defines = ([f"-D{mlf.DEBUG_TAP_DEFINE}"] if tap else []) + ([f"-D{PROFILE_DEFINE}"] if profile else [])
    our_flags = qemu_m7.OUR_FLAGS + defines
    lib_flags = qemu_m7.LIB_FLAGS + defines
    sources = [HARNESS_SOURCE, qemu_m7.M7_DIR / "platform_m7.c", qemu_m7.M7_DIR / "startup.c", images_c]
    link_flags = qemu_m7.LINK_FLAGS + [f"-Wl,-Map={out_dir / 'bench_m7.map'}"]
    # `opt` goes last, after the flags metadata.json asks for (the Cortex-M backend's int8 asks for -O2): the bench
    # measures each level itself.
    elf = compile_and_link("bench", qemu_m7.CC, sources, our_flags, lib_flags, tar, out_dir,
                           "bench_m7.elf", link_flags, link_deps=[qemu_m7.LINKER_SCRIPT],
                           lib_flags_last=[opt])
    library = mlf.unpack_once(tar, out_dir)
    flags = library_flags(library, lib_flags, [opt])
    objects = sorted(library_objects_dir(out_dir, flags).glob("lib_*.o"))
    if len(objects) != len(library.sources):
        raise TargetError(f"found {len(objects)} library objects for {len(library.sources)} sources in {out_dir}")
    return Build(elf, objects, flags)


def elf_symbols(elf: Path) -> dict:
    try:
        out = subprocess.run([NM, str(elf)], capture_output=True, text=True, check=True).stdout
    except (FileNotFoundError, subprocess.CalledProcessError) as exc:
        raise TargetError(f"cannot read the symbols of {elf} with {NM}: {exc}") from None
    symbols = {}
    for line in out.splitlines():
        fields = line.split()
        if len(fields) == 3:
            symbols[fields[2]] = int(fields[0], 16) & ~1
    return symbols


def marker_addresses(elf: Path) -> tuple:
    symbols = elf_symbols(elf)
    try:
        start, stop = symbols["bench_marker_start"], symbols["bench_marker_stop"]
    except KeyError:
        raise TargetError(f"{elf} has no bench_marker_start/bench_marker_stop") from None
    if start == stop:
        raise TargetError(f"{elf}: the two markers share one address (merged by the compiler)")
    return start, stop


# ------------------------------------------------------------------ running on QEMU

@dataclass
class Pass:
    index: int
    rc: int
    timer: int                 # instructions by TIMER0 (-icount shift=0), ±40
    stack: int                 # bytes of stack used below the caller's SP
    output: np.ndarray = None  # float32 [outputs]
    tap: np.ndarray = None     # float32 [outputs] (tap builds)
    count: int = None          # instructions between the markers (plugin)
    segments: list = None      # profiling builds: instructions between consecutive marks
    blocks: dict = None        # bb=on: {(start, end, insns): executions}


def layer_marker_address(elf: Path) -> int:
    symbols = elf_symbols(elf)
    if PROFILE_FUNCTION not in symbols:
        raise TargetError(f"{elf} has no {PROFILE_FUNCTION} (not a profiling build)")
    return symbols[PROFILE_FUNCTION]


def qemu_command(elf: Path, plugin: Path, start: int, stop: int, uart: Path, plugin_log: Path,
                 layer: int = None, bb: bool = False) -> list:
    options = f"{plugin},start={start:#x},stop={stop:#x}"
    options += (f",layer={layer:#x}" if layer is not None else "")
    options += (",bb=segments" if bb == "segments" else ",bb=on" if bb else "")
    return qemu_m7.qemu_command(elf, serial=f"file:{uart}", extra=[
        "-semihosting-config", "enable=on,target=native",
        "-plugin", options, "-d", "plugin", "-D", str(plugin_log)])


def run_on_qemu(elf: Path, plugin: Path, outputs: int = 10, timeout: float = QEMU_TIMEOUT,
                layers: bool = False, bb: bool = False) -> list:
    """Run the bench ELF once; its passes (empty pass first), each with the plugin's count
    (and with `layers` its segments between the profiling marks, with `bb` its block counts).
    QEMU ends itself (semihosting exit); if not within `timeout`, it is stopped by its PID."""
    uart_text, plugin_text = run_qemu_plugin(elf, plugin, timeout, layers, bb)
    passes = parse_uart(uart_text, outputs)
    counts = parse_plugin_log(plugin_text)
    if len(counts) != len(passes):
        raise TargetError(f"the plugin counted {len(counts)} passes, the harness ran {len(passes)}; "
                          f"logs: {elf.parent / 'plugin.log'}, {elf.parent / 'uart.txt'}")
    segments = parse_segments(plugin_text)
    blocks = cycle_estimate.parse_bb_lines(plugin_text) if bb else {}
    if bb == "segments":  # the first image's blocks, per segment
        passes[1].blocks = blocks
        bb = False
    for i, (p, count) in enumerate(zip(passes, counts)):
        p.count = count
        if layers:
            p.segments = segments.get(i, [])
        if bb:
            p.blocks = blocks.get(i, {})
    return passes


def run_qemu_plugin(elf: Path, plugin: Path, timeout: float = QEMU_TIMEOUT, layers: bool = False,
                    bb: bool = False) -> tuple:
    """Run an ELF with the counting plugin until its UART says END; (UART text, plugin log)."""
    out_dir = elf.parent
    uart, plugin_log, qemu_log = out_dir / "uart.txt", out_dir / "plugin.log", out_dir / "qemu.log"
    for path in (uart, plugin_log):
        path.unlink(missing_ok=True)
    start, stop = marker_addresses(elf)
    layer = layer_marker_address(elf) if layers else None
    command = qemu_command(elf, plugin, start, stop, uart, plugin_log, layer, bb)
    with open(qemu_log, "w") as log:
        log.write("$ " + " ".join(command) + "\n")
        log.flush()
        try:
            process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log,
                                       stderr=subprocess.STDOUT, close_fds=True,
                                       preexec_fn=die_with_parent)
        except FileNotFoundError:
            raise TargetError(f"{qemu_m7.QEMU} not found; install qemu-system-arm (bash setup.sh)") from None
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        pass
    finally:
        stop_process(process)
    text = uart.read_text(errors="replace") if uart.is_file() else ""
    if "END" not in text.split():
        tail = qemu_log.read_text(errors="replace").strip().splitlines()[-1:]
        raise TargetError(f"the bench on QEMU did not finish (status {process.returncode}, "
                          f"{len(text.splitlines())} UART lines); logs: {uart}, {qemu_log}"
                          f"{' (' + tail[0][:160] + ')' if tail else ''}")
    return text, plugin_log.read_text(errors="replace") if plugin_log.is_file() else ""


def parse_segments(text: str) -> dict:
    """pass → [instructions of each segment between profiling marks], from `segment` lines."""
    out = {}
    for line in text.splitlines():
        fields = line.split()
        if len(fields) == 4 and fields[0] == "segment":
            index, mark, count = (int(f) for f in fields[1:])
            segments = out.setdefault(index, [])
            if mark != len(segments):
                raise TargetError(f"plugin segments out of order: {line}")
            segments.append(count)
    return out


def _floats(words) -> np.ndarray:
    return np.array([int(w, 16) for w in words], dtype=np.uint32).view(np.float32)


def parse_uart(text: str, outputs: int = 10) -> list:
    passes = []
    for line in text.splitlines():
        fields = line.split()
        if not fields or fields[0] != "PASS":
            continue
        index, rc, timer, stack = (int(f, 16) for f in fields[1:5])
        values = fields[5:]
        p = Pass(index, rc if rc < 2**31 else rc - 2**32, timer, stack)
        if index != EMPTY_PASS:
            if len(values) not in (outputs, 2 * outputs):
                raise TargetError(f"garbled bench line on the UART: {line[:120]}")
            p.output = _floats(values[:outputs])
            if len(values) == 2 * outputs:
                p.tap = _floats(values[outputs:])
        passes.append(p)
    if not passes or passes[0].index != EMPTY_PASS:
        raise TargetError("the bench printed no empty pass first")
    return passes


def parse_plugin_log(text: str) -> list:
    counts = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) == 3 and fields[0] == "insn_count":
            if int(fields[1]) != len(counts):
                raise TargetError(f"plugin passes out of order: {line}")
            counts.append(int(fields[2]))
    return counts


# ------------------------------------------------------------------ one variant

def measure_level(tar, metadata, kind, opt, images_c, build_dir, plugin, host_out, host_logits, n_images):
    """Build and run one opt level of one variant; its figures."""
    level_dir = build_dir / opt.lstrip("-")
    build = build_elf(tar, level_dir / "fw", opt, images_c, tap=False)
    outputs = int(np.prod(metadata["outputs"][0]["shape"]))
    passes = run_on_qemu(build.elf, plugin, outputs, bb=True)
    empty, runs = passes[0], passes[1:]
    images, repeat = runs[:n_images], runs[n_images:]
    if len(images) != n_images or len(repeat) != 1 or any(p.rc != 0 for p in runs):
        raise StageError(f"the bench ran {len(images)} of {n_images} images, return codes "
                         f"{sorted({p.rc for p in runs})}; UART log {build.elf.parent / 'uart.txt'}")
    counts = [p.count - empty.count for p in images]
    timers = [p.timer - empty.timer for p in images]
    device_out = np.stack([p.output for p in images])
    device_logits = None
    tap_out_same = None
    if kind == "int8" and "debug_tap" not in metadata:
        # the model ends with its DeQuantStub: the output itself holds the logits
        device_logits = mlf.uint8_logits_from_tap(device_out, metadata)
    elif kind == "int8":
        tap_build = build_elf(tar, level_dir / "tap", opt, images_c, tap=True)
        tap_passes = run_on_qemu(tap_build.elf, plugin, outputs)[1:n_images + 1]
        device_logits = mlf.uint8_logits_from_tap(np.stack([p.tap for p in tap_passes]), metadata)
        tap_out_same = bool(np.array_equal(np.stack([p.output for p in tap_passes]).view(np.uint32),
                                           device_out.view(np.uint32)))
    sizes = object_sizes(build.library_objects)
    stack = max(p.stack for p in images)
    cycles = estimate_cycles(build.elf, empty, images, counts)
    figures = {
        "opt_level": opt,
        "library_cflags": [str(f) for f in build.library_flags],
        "instructions_per_inference": int(round(statistics.median(counts))),
        "instructions_min": int(min(counts)),
        "instructions_max": int(max(counts)),
        "instructions_per_image": counts,
        "marker_overhead_instructions": int(empty.count),
        "repeat_identical": bool(repeat[0].count == images[0].count),
        "timer_instructions_per_image": timers,
        "timer_minus_plugin_max_abs": int(max(abs(t - c) for t, c in zip(timers, counts))),
        "flash_bytes": sizes["arm_flash_bytes"],
        "text_bytes": sizes["arm_text_bytes"],
        "data_bytes": sizes["arm_data_bytes"],
        "bss_bytes": sizes["arm_bss_bytes"],
        "stack_peak_bytes": int(stack),
        "ram_bytes": int(metadata["arena_bytes"] + stack),
        **cycles,
        **compare_outputs(device_out, host_out, device_logits, host_logits),
    }
    if tap_out_same is not None:
        figures["tap_build_outputs_identical"] = tap_out_same
    return figures, device_out, device_logits


def estimate_cycles(elf, empty, images, counts) -> dict:
    """The Cortex-M7 cycle estimate of each image's pass (utils.cycle_estimate), the empty
    pass's blocks subtracted; the block counts must add up to the plugin's exact count."""
    keys = set(empty.blocks)
    for p in images:
        keys |= set(p.blocks)
    costs, unreadable = cycle_estimate.block_costs(elf, keys)
    per_image, matches = [], True
    for p, count in zip(images, counts):
        estimate = cycle_estimate.weigh(p.blocks, empty.blocks, costs)
        per_image.append(estimate.cycles)
        matches &= estimate.instructions == count
    median = float(statistics.median(per_image))
    return {
        "estimated_cycles": int(round(median)),
        "estimated_ms_216mhz": round(cycle_estimate.milliseconds(median), 4),
        "estimated_cycles_per_image": [int(round(c)) for c in per_image],
        "estimated_instructions_per_cycle": round(statistics.median(counts) / median, 3) if median else None,
        "estimate_blocks": len(keys),
        "estimate_block_counts_match_plugin": bool(matches),
        "estimate_unreadable_instructions": unreadable,
    }


def profile_layers(tar, metadata, opt, images_c, build_dir, plugin, default_count) -> dict:
    """The per-layer breakdown from the profiling build (-DTVMGEN_DEFAULT_PROFILE) on the first
    input: instructions of each kernel call (its packed-call wrapper and the marks included) and
    of the glue between them; they add up to the profiling build's count exactly."""
    build = build_elf(tar, build_dir / opt.lstrip("-") / "profile", opt, images_c, tap=False, profile=True)
    outputs = int(np.prod(metadata["outputs"][0]["shape"]))
    passes = run_on_qemu(build.elf, plugin, outputs, layers=True, bb="segments")
    empty, first = passes[0], passes[1]
    calls = metadata["calls"]
    segments = first.segments
    if len(segments) != 2 * len(calls) + 1 or first.rc != 0:
        raise StageError(f"the profiling build marked {len(segments) - 1} kernel entries and exits for "
                         f"{len(calls)} calls (rc {first.rc}); log {build.elf.parent / 'plugin.log'}")
    total = first.count - empty.count
    kernels = segments[1::2]
    glue = sum(segments[0::2]) - empty.count
    by_segment = first.blocks
    costs, _ = cycle_estimate.block_costs(build.elf, set().union(*by_segment.values()))
    cycles = [cycle_estimate.weigh(by_segment.get(k, {}), None, costs).cycles for k in range(len(segments))]
    layers = [{"index": i, "kernel": name, "instructions": int(n), "share": round(n / total, 4),
               "estimated_cycles": int(round(c))}
              for i, (name, n, c) in enumerate(zip(calls, kernels, cycles[1::2]))]
    return {
        "layers": layers,
        "glue_instructions": int(glue),
        "glue_estimated_cycles": int(round(sum(cycles[0::2]))),
        "profile_estimated_cycles": int(round(sum(cycles))),
        "profile_instructions_per_inference": int(total),
        "profile_marks_cost_instructions": int(total - default_count),
        "profile_segments_add_up": bool(sum(segments) == first.count),
        "profile_opt_level": opt,
    }


def _host_outputs(tar, images, build_dir):
    return HostLibrary(tar, build_dir=build_dir / "host-lib").outputs(images)


def measure_variant(name, model_path, images, labels, opt_levels, build_dir, plugin, macs_cache,
                    low=0.0, span=1.0, profile_layers_too=False) -> dict:
    """Compile, run and compare one variant on input bytes `images` (floats low + span * byte
    / 255); raises on any failure (the caller makes it a row)."""
    kind, backend_name = VARIANTS[name]
    backend = BACKENDS[backend_name]
    variant_dir = build_dir / name
    inputs = bytes_to_inputs(images, low, span)
    variant_dir.mkdir(parents=True, exist_ok=True)
    source = load_model(model_path, kind)
    t0 = time.perf_counter()
    try:
        compiled = compile_model(source, variant_dir / "mnistCNN.tar", backend)
    except StageError as exc:  # the backend refuses the model, in one line
        raise Refused(one_line(exc)) from None
    compile_seconds = time.perf_counter() - t0
    metadata = compiled.metadata
    if metadata.get("backend") != backend.name:
        raise StageError(f"the {backend.name} backend made a library whose metadata says backend "
                         f"{metadata.get('backend')}")
    _say(f"  compiled in {compile_seconds:.1f} s: arena {metadata['arena_bytes']} B, "
         f"{len(metadata['calls'])} kernel calls")
    if source.path not in macs_cache:
        macs_cache[source.path] = model_macs(source)
    macs = macs_cache[source.path]

    host_out, host_logits = _host_outputs(compiled.tar, inputs, build_dir)
    reference = None
    if backend.golden is not None:
        # the golden backend's library of the same model, on the host
        golden = compile_model(source, variant_dir / "golden_reference.tar", backend.golden)
        reference = _host_outputs(golden.tar, inputs, build_dir)
    images_c = write_images_c(images, variant_dir / "bench_images.c", low, span)

    levels, vs_golden = {}, {}
    for opt in opt_levels:
        _say(f"  {opt}: building and running {len(images)} images (+ an empty pass and a repeat) "
             f"on QEMU mps2-an500")
        figures, device_out, device_logits = measure_level(
            compiled.tar, metadata, kind, opt, images_c, variant_dir, plugin, host_out, host_logits,
            len(images))
        figures["accuracy"] = None if labels is None else float(np.mean(device_out.argmax(1) == labels))
        if reference is not None:
            vs_golden[opt] = compare_outputs(device_out, reference[0], device_logits, reference[1])
            figures["vs_golden"] = vs_golden[opt]
        levels[opt] = figures
        _say(f"  {opt}: {figures['instructions_per_inference']:,} instructions per inference "
             f"(min {figures['instructions_min']:,}, max {figures['instructions_max']:,}), "
             f"~{figures['estimated_cycles']:,} M7 cycles ({figures['estimated_ms_216mhz']:.2f} ms at 216 MHz), "
             f"flash {figures['flash_bytes']:,} B, stack {figures['stack_peak_bytes']} B, "
             f"bit-exact {figures['bit_exact']}")
    best = min(levels, key=lambda opt: levels[opt]["instructions_per_inference"])
    chosen = levels[best]
    profile = None
    if profile_layers_too:
        _say(f"  {best}: the profiling build, per kernel call")
        profile = profile_layers(compiled.tar, metadata, best, images_c, variant_dir, plugin,
                                 chosen["instructions_per_image"][0])
    row = {
        "status": "ok",
        "kind": kind,
        "backend": backend.name,
        "model": str(source.path),
        "model_hash": source.model_hash,
        "network": source.network,
        "opt_level": best,
        "opt_level_rule": "the measured opt level with fewer instructions per inference",
        "library_asks_for": list(metadata.get("cflags", [])),
        "instructions_per_inference": chosen["instructions_per_inference"],
        "instructions_min": chosen["instructions_min"],
        "instructions_max": chosen["instructions_max"],
        "macs": macs,
        "instructions_per_mac": round(chosen["instructions_per_inference"] / macs, 3),
        "flash_bytes": chosen["flash_bytes"],
        "arena_bytes": int(metadata["arena_bytes"]),
        "stack_peak_bytes": chosen["stack_peak_bytes"],
        "ram_bytes": chosen["ram_bytes"],
        "estimated_cycles": chosen["estimated_cycles"],
        "estimated_ms_216mhz": chosen["estimated_ms_216mhz"],
        "estimated_instructions_per_cycle": chosen["estimated_instructions_per_cycle"],
        # every measured opt level, not only the chosen one, must match the host build
        "bit_exact": all(level["bit_exact"] for level in levels.values()),
        "outputs_bitwise_identical": all(level["outputs_identical_fraction"] == 1.0 for level in levels.values()),
        "max_ulp": max(level["max_ulp"] for level in levels.values()),
        "max_abs_diff": max(level["max_abs_diff"] for level in levels.values()),
        "images": int(len(images)),
        "accuracy": chosen["accuracy"],
        "compile_seconds": round(compile_seconds, 2),
        "counts_repeatable": all(level["repeat_identical"] for level in levels.values()),
        "timer_minus_plugin_max_abs": max(level["timer_minus_plugin_max_abs"] for level in levels.values()),
        "by_opt_level": levels,
    }
    if profile is not None:
        row["per_layer"] = profile
    if vs_golden:
        # int8: uint8 logits identical to the golden backend's library; fp32: outputs bitwise identical
        row["matches_golden"] = all(v["bit_exact"] for v in vs_golden.values())
        row["vs_golden"] = vs_golden[best]
    return row


# ------------------------------------------------------------------ the whole bench

def run_bench(variants, n_images, opt_levels, int8_model, fp32_model, build_dir, reports_dir,
              quick=False) -> dict:
    started = time.perf_counter()
    build_dir = Path(build_dir)
    build_dir.mkdir(parents=True, exist_ok=True)
    images, labels = (a[:n_images] for a in mnist_arrays(False))
    plugin = build_plugin(build_dir)
    qemu_version = _qemu_version()
    _say(f"bench: {len(variants)} variant(s) x {len(opt_levels)} opt level(s), {n_images} MNIST test "
         f"images, {qemu_version}, plugin {plugin}")
    rows, macs_cache = {}, {}
    for i, name in enumerate(variants, 1):
        kind, _ = VARIANTS[name]
        model = int8_model if kind == "int8" else fp32_model
        _say(f"[{i}/{len(variants)}] {name} ({model})")
        t0 = time.perf_counter()
        try:
            rows[name] = measure_variant(name, model, images, labels, opt_levels, build_dir, plugin,
                                         macs_cache)
        except Exception as exc:  # one variant that cannot be built must not hide the others
            rows[name] = _error_row(exc, model, name)
            _say(f"  ERROR {name}: {rows[name]['error']}")
        rows[name]["seconds"] = round(time.perf_counter() - t0, 1)
        rows[name]["finished"] = time.strftime("%Y-%m-%d %H:%M:%S")
    figures = {
        "quick": bool(quick),
        "images": int(n_images),
        "opt_levels": list(opt_levels),
        "qemu": qemu_version,
        "machine": "QEMU mps2-an500 (Cortex-M7), TCG plugin bench/insn_count_plugin.c",
        "unit": "instructions executed on the emulator: they stand in for cycles on the board",
        "seconds": round(time.perf_counter() - started, 1),
        "finished": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    write_report(STAGE, figures, reports_dir=reports_dir)
    write_report(STAGE, rows, section="variants", reports_dir=reports_dir)
    report = read_report(STAGE, reports_dir)
    md = report_path(STAGE, reports_dir).with_suffix(".md")
    md.write_text(markdown(report))
    png = report_path(STAGE, reports_dir).with_suffix(".png")
    chart(report, png)
    _say("")
    _say(md.read_text())
    _say(f"wrote {report_path(STAGE, reports_dir)}, {md}, {png} ({figures['seconds']} s)")
    return report


def model_key(name: str) -> str:
    """The report's name of a model given by its short name (lenet5, dscnn, resnet8, mbv1, ad)
    or its zoo name: the short one when it has one."""
    short = {zoo: short for short, zoo in bench_peers.MODELS.items()}
    return name if name in bench_peers.MODELS else short.get(name, name)


def run_models_bench(names, n_images, opt_levels, build_dir, reports_dir, weights_dir, lenet5_model,
                     quick=False, validate=True) -> dict:
    """Models (short or zoo names) on the emulator, each with the generic (0201) and the
    Cortex-M (0202) backend: reports/bench.json `models`, each with its variants, its
    per-layer breakdown, its cycle estimate and the published peer row. MNIST-shaped ones run
    MNIST test images, the others the zoo's synthetic inputs (bytes / 255). A backend that
    refuses a model is an error row; so is one that crashes (`refused` false)."""
    build_dir = Path(build_dir)
    build_dir.mkdir(parents=True, exist_ok=True)
    plugin = build_plugin(build_dir)
    models, macs_cache = {}, {}
    for name in names:
        key = model_key(name)
        entry = zoo_catalog.BY_NAME[bench_peers.MODELS.get(key, key)]
        path = Path(lenet5_model) if entry.name == "lenet5" else zoo_weights_path(entry, weights_dir)
        if entry.inputs == "mnist":
            images, labels = (a[:n_images] for a in mnist_arrays(False))
            about = "MNIST test images"
        else:
            images = zoo_make.synthetic_inputs(entry.input_shape, n_images, zoo_make.VERIFY_SEED)
            labels, about = None, "synthetic (the zoo's, value / 255)"
        peer = bench_peers.peer_row(key) if key in bench_peers.PEERS else None
        rows = {}
        for variant in MODEL_VARIANTS:
            _say(f"[{key}] {variant} ({STAGE_OF[variant]}, {path})")
            t0 = time.perf_counter()
            try:
                if not path.is_file():
                    raise StageError(f"{path} not found; make it with `python3 -m utils.zoo"
                                     f"{' --quick' if quick else ''}`")
                rows[variant] = measure_variant(variant, path, images, labels, opt_levels,
                                                build_dir / entry.name, plugin, macs_cache,
                                                profile_layers_too=True)
                rows[variant]["stage"] = STAGE_OF[variant]
                rows[variant]["bit_exact_with_host"] = rows[variant]["bit_exact"]
                rows[variant]["bit_exact_with_0201"] = rows[variant].get("matches_golden", True)
                if peer is not None:
                    rows[variant]["vs_peer"] = bench_peers.ratios(rows[variant], peer)
                    if variant == "int8_optim":
                        rows[variant]["meets_goal"] = (rows[variant]["instructions_per_inference"]
                                                       <= peer["goal_0202_instructions"])
                _print_layers(rows[variant])
            except Exception as exc:  # a backend that refuses the model is a row, not the end
                rows[variant] = _error_row(exc, path, variant)
                rows[variant]["stage"] = STAGE_OF[variant]
                rows[variant]["refused"] = isinstance(exc, Refused)
                _say(f"  ERROR {variant}: {rows[variant]['error']}")
            rows[variant]["seconds"] = round(time.perf_counter() - t0, 1)
        models[key] = {"variants": rows, "peer": peer, "zoo_name": entry.name, "inputs": about,
                       "images": int(len(images)), "input_shape": list(entry.input_shape)}
    figures = {"models_quick": bool(quick), "models_opt_levels": list(opt_levels),
               "models_finished": time.strftime("%Y-%m-%d %H:%M:%S"),
               "cycle_model": CYCLE_MODEL}
    _drop_stale_models(reports_dir)
    write_report(STAGE, figures, reports_dir=reports_dir)
    write_report(STAGE, models, section="models", reports_dir=reports_dir)
    if validate:
        _say("cycle estimate: the check loops (bench/cycle_loops.c)")
        check = validate_cycle_estimate(build_dir, plugin)
        for row in check["loops"]:
            _say(f"  {row['loop']}: estimated {row['estimated_cycles_per_iteration']:.2f}, expected "
                 f"{row['expected_cycles_per_iteration']} cycles per iteration ({row['relative_error']:+.1%})")
        write_report(STAGE, check, section="cycle_estimate_validation", reports_dir=reports_dir)
    report = read_report(STAGE, reports_dir)
    base = report_path(STAGE, reports_dir)
    md = base.with_name("bench_models.md")
    md.write_text(models_markdown(report))
    png = base.with_name("bench_models.png")
    models_chart(report, png)
    _say("")
    _say(md.read_text())
    _say(f"wrote {base}, {md}, {png}")
    return report




def _drop_stale_models(reports_dir):
    """Rows an earlier version of the benchmark wrote under `models` (by zoo name, without the
    peer, estimate and breakdown) go; rows of other models measured by this one stay."""
    path = report_path(STAGE, reports_dir)
    report = read_report(STAGE, reports_dir)
    models = report.get("models", {})
    stale_rows = [name for name, model in models.items() if "zoo_name" not in model]
    if stale_rows:
        for name in stale_rows:
            del models[name]
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")
        os.replace(tmp, path)


def _print_layers(row, top=5):
    per_layer = row.get("per_layer")
    if not per_layer:
        return
    layers = sorted(per_layer["layers"], key=lambda layer: -layer["instructions"])
    total = per_layer["profile_instructions_per_inference"]
    _say(f"  per layer (profiling build, {total:,} instructions; glue {per_layer['glue_instructions']:,}):")
    for layer in layers[:top]:
        _say(f"    #{layer['index']:<3} {_short(layer['kernel'], 48):<48} {layer['instructions']:>12,}  "
             f"{layer['share']:6.1%}  ~{layer['estimated_cycles']:,} cycles")


def zoo_weights_path(entry, weights_dir) -> Path:
    """Where `python3 -m utils.zoo` keeps a zoo model's int8 TorchScript (a built-in's stage
    file when the stage made one)."""
    if entry.stage_file is not None and Path(entry.stage_file).is_file():
        return Path(entry.stage_file)
    return Path(weights_dir) / f"{entry.name}_scripted_int8.pth"


def _error_row(exc, model, variant) -> dict:
    """The row of a variant that could not be measured: the reason in one line."""
    kind, backend = VARIANTS[variant]
    return {"status": "error", "error": f"{type(exc).__name__}: {one_line(exc)}", "model": str(model),
            "kind": kind, "backend": backend}


def _qemu_version() -> str:
    try:
        out = subprocess.run([qemu_m7.QEMU, "--version"], capture_output=True, text=True, check=True).stdout
    except (FileNotFoundError, subprocess.CalledProcessError):
        raise TargetError(f"{qemu_m7.QEMU} not found; install qemu-system-arm (bash setup.sh)") from None
    return out.splitlines()[0].strip()


# ------------------------------------------------------------------ the cycle estimate's check

LOOPS_SOURCE = BENCH_SRC / "cycle_loops.c"


def validate_cycle_estimate(build_dir: Path, plugin: Path) -> dict:
    """The cycle estimate on bench/cycle_loops.c's loops, whose M7 cycles follow from published
    measurements (utils.cycle_estimate.VALIDATION_LOOPS): estimated and expected cycles per
    iteration of each, run on QEMU with the block-counting plugin."""
    out_dir = Path(build_dir) / "cycle-loops"
    out_dir.mkdir(parents=True, exist_ok=True)
    elf = out_dir / "cycle_loops.elf"
    sources = [LOOPS_SOURCE, qemu_m7.M7_DIR / "platform_m7.c", qemu_m7.M7_DIR / "startup.c"]
    if stale(elf, sources + [qemu_m7.LINKER_SCRIPT]):
        run_build([qemu_m7.CC, *qemu_m7.OUR_FLAGS, f"-I{paths.ROOT / 'firmware'}", *qemu_m7.LINK_FLAGS,
                   "-o", elf, *sources], "the cycle-estimate loops", out_dir / "build.log")
    uart, plugin_text = run_qemu_plugin(elf, plugin, bb=True)
    blocks = cycle_estimate.parse_bb_lines(plugin_text)
    counts = parse_plugin_log(plugin_text)
    loops = cycle_estimate.VALIDATION_LOOPS
    if len(counts) != len(loops) + 1:
        raise TargetError(f"the loops ran {len(counts) - 1} of {len(loops)} passes; log {out_dir / 'plugin.log'}")
    keys = set().union(*(blocks.get(i, {}) for i in range(len(counts))))
    costs, unreadable = cycle_estimate.block_costs(elf, keys)
    rows = []
    for i, loop in enumerate(loops, 1):
        estimate = cycle_estimate.weigh(blocks.get(i, {}), blocks.get(0, {}), costs)
        per_iteration = estimate.cycles / cycle_estimate.VALIDATION_ITERATIONS
        rows.append({"loop": loop.name, "rule": loop.rule, "expected_cycles_per_iteration": loop.cycles,
                     "estimated_cycles_per_iteration": round(per_iteration, 3),
                     "relative_error": round(per_iteration / loop.cycles - 1, 4),
                     "instructions_match_plugin": estimate.instructions == counts[i] - counts[0]})
    worst = max(abs(r["relative_error"]) for r in rows)
    return {"source": cycle_estimate.VALIDATION_SOURCE, "loops": rows, "max_abs_relative_error": worst,
            "tolerance": cycle_estimate.VALIDATION_TOLERANCE,
            "within_tolerance": worst <= cycle_estimate.VALIDATION_TOLERANCE,
            "unreadable_instructions": unreadable}


# ------------------------------------------------------------------ table and chart

def _ordered(report) -> list:
    variants = report.get("variants", {})
    return [(name, variants[name]) for name in VARIANTS if name in variants]


def _percent(value) -> str:
    return "?" if value is None else f"{value:.1%}"


def markdown(report) -> str:
    lines = ["| variant | gcc | instructions / inference (median; min–max) | instr. / MAC | "
             "est. M7 cycles (ms @216 MHz) | "
             "flash (text+data) B | arena B | stack peak B | RAM B | bit-exact with host | "
             "same as the golden backend | accuracy | images |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, row in _ordered(report):
        if row.get("status") != "ok":
            error = str(row.get("error", "?")).replace("|", "\\|")
            lines.append(f"| {name} | | error: {error} | | | | | | | | | | |")
            continue
        if row["kind"] == "int8":
            exact = ("yes: uint8 logits identical" if row["bit_exact"] else "**NO**: uint8 logits differ")
        else:
            exact = "yes: log-probs bitwise identical" if row["bit_exact"] else "**NO**"
        if row["outputs_bitwise_identical"]:
            if row["kind"] == "int8":
                exact += ", log-probs bitwise identical"
        else:
            exact += f"; log-probs max {row['max_ulp']} ulp (max abs diff {row['max_abs_diff']:.2g})"
        golden = row.get("vs_golden")
        if golden is None:
            same = "—"
        elif row["matches_golden"]:
            same = "yes: uint8 logits identical" if row["kind"] == "int8" else "yes: bitwise"
        else:
            same = (f"**NO**: max abs diff {golden['max_abs_diff']:.3g}, "
                    f"argmax agreement {golden['argmax_agreement']:.0%}")
        lines.append(f"| {name} | {row['opt_level']} | {row['instructions_per_inference']:,} "
                     f"({row['instructions_min']:,}–{row['instructions_max']:,}) | "
                     f"{row['instructions_per_mac']:.2f} | {row['estimated_cycles']:,} "
                     f"({row['estimated_ms_216mhz']:.2f}) | {row['flash_bytes']:,} | {row['arena_bytes']:,} | "
                     f"{row['stack_peak_bytes']:,} | {row['ram_bytes']:,} | {exact} | {same} | "
                     f"{_percent(row.get('accuracy'))} | {row['images']} |")
    macs = next((row["macs"] for _, row in _ordered(report) if row.get("status") == "ok"), None)
    notes = [
        "",
        "Instructions executed on QEMU's emulated Cortex-M7 (mps2-an500), counted exactly by a TCG "
        "plugin between two marker calls around `tvmgen_default_run` (the markers' own instructions, "
        "measured by an empty pass, subtracted); they stand in for cycles on the board (the emulator "
        "models no pipeline, caches or flash wait states). The cycle column is an estimate: " + CYCLE_MODEL + ".",
        f"gcc: the opt level of the library ({', '.join(report.get('opt_levels', []))} measured) "
        f"with fewer instructions; both are in bench.json. Flash: the library's objects "
        f"(arm-none-eabi-gcc, Cortex-M7), without libm. RAM: the static arena + the stack peak of "
        f"one inference. {report.get('images', '?')} MNIST test images"
        f"{f'; {macs:,} MACs per inference' if macs else ''}."
        f"{' QUICK RUN.' if report.get('quick') else ''}",
    ]
    return "\n".join(lines + notes) + "\n"


def chart(report, path: Path):
    rows = _ordered(report)
    names = [name for name, _ in rows]
    ok = [row.get("status") == "ok" for _, row in rows]
    x = np.arange(len(names))
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    instr = [row["instructions_per_inference"] / 1e6 if good else 0 for (_, row), good in zip(rows, ok)]
    bars = ax1.bar(x, instr, color=["#4c72b0" if "int8" in n else "#dd8452" for n in names])
    for bar, (_, row), good in zip(bars, rows, ok):
        label = f"{row['instructions_per_inference'] / 1e6:.2f} M\n{row['opt_level']}" if good else "not built"
        if good and row.get("matches_golden") is False:
            label += "\nOUTPUTS ≠ golden backend"
        ax1.annotate(label, (bar.get_x() + bar.get_width() / 2, bar.get_height()), ha="center",
                     va="bottom", fontsize=8)
    ax1.axhline(GOAL_INSTRUCTIONS / 1e6, color="grey", linestyle="--", linewidth=1)
    ax1.annotate(f"goal (int8): {GOAL_INSTRUCTIONS / 1e6:.1f} M", (len(names) - 0.55, GOAL_INSTRUCTIONS / 1e6),
                 ha="right", va="bottom", fontsize=8, color="grey",
                 bbox={"facecolor": "white", "edgecolor": "none", "pad": 1})
    ax1.set_xticks(x, names, rotation=15)
    ax1.set_ylabel("million instructions per inference")
    ax1.set_title("Instructions per inference (QEMU Cortex-M7;\nthey stand in for cycles on the board)",
                  fontsize=10)
    ax1.margins(y=0.2)
    width = 0.38
    flash = [row["flash_bytes"] / 1024 if good else 0 for (_, row), good in zip(rows, ok)]
    ram = [row["ram_bytes"] / 1024 if good else 0 for (_, row), good in zip(rows, ok)]
    b1 = ax2.bar(x - width / 2, flash, width, label="flash: library text+data", color="#55a868")
    b2 = ax2.bar(x + width / 2, ram, width, label="RAM: arena + stack peak", color="#8172b3")
    for bars_, values in ((b1, flash), (b2, ram)):
        for bar, value, good in zip(bars_, values, ok):
            ax2.annotate(f"{value:.1f}" if good else "n/a", (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                         ha="center", va="bottom", fontsize=8)
    ax2.set_xticks(x, names, rotation=15)
    ax2.set_ylabel("KiB")
    ax2.set_title("Library flash and RAM", fontsize=10)
    ax2.legend(fontsize=8)
    ax2.margins(y=0.15)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _models(report):
    """The report's models, the issue's five first in its order, the others by name."""
    order = list(bench_peers.MODELS)
    models = report.get("models", {})
    return sorted(models.items(), key=lambda item: (order.index(item[0]) if item[0] in order else len(order),
                                                    item[0]))


def _short(name, width=36):
    return name if len(name) <= width else name[:width - 1] + "…"


def models_markdown(report) -> str:
    """The models x variants table with the published peer figures."""
    lines = ["| model | variant | gcc | instructions / inference | MACs | instr. / MAC | est. M7 cycles | "
             "est. ms @216 MHz | arena B | stack peak B | flash B | bit-exact: host / 0201 | "
             "TFLM+CMSIS-NN ÷ ours | arena ÷ TFLM's | flash ÷ TFLM's | goal |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, model in _models(report):
        peer = model.get("peer") or {}
        for variant, row in model["variants"].items():
            label = f"{variant} ({row.get('stage', '')})"
            if row.get("status") != "ok":
                kind = "refused" if row.get("refused") else "error"
                error = str(row.get("error", "?")).replace("|", "\\|")
                lines.append(f"| {name} | {label} | | {kind}: {error} |" + " |" * 12)
                continue
            vs = row.get("vs_peer", {})
            exact = (f"{'yes' if row['bit_exact_with_host'] else '**NO**'} / "
                     f"{'yes' if row['bit_exact_with_0201'] else '**NO**'}")
            flash_vs = f"{vs['flash_vs_tflm']:.2f}" if "flash_vs_tflm" in vs else "—"
            goal = ""
            if "meets_goal" in row:
                goal = f"{'met' if row['meets_goal'] else 'not met'} (≤ {peer['goal_0202_instructions'] / 1e6:.2f} M)"
            lines.append(
                f"| {name} | {label} | {row['opt_level']} | {row['instructions_per_inference']:,} | "
                f"{row['macs']:,} | {row['instructions_per_mac']:.2f} | {row['estimated_cycles']:,} | "
                f"{row['estimated_ms_216mhz']:.2f} | {row['arena_bytes']:,} | {row['stack_peak_bytes']:,} | "
                f"{row['flash_bytes']:,} | {exact} | "
                f"{vs['tflm_cmsis_nn_over_ours']:.2f}× | {vs['arena_vs_tflm']:.2f} | {flash_vs} | {goal} |"
                if vs else
                f"| {name} | {label} | {row['opt_level']} | {row['instructions_per_inference']:,} | "
                f"{row['macs']:,} | {row['instructions_per_mac']:.2f} | {row['estimated_cycles']:,} | "
                f"{row['estimated_ms_216mhz']:.2f} | {row['arena_bytes']:,} | {row['stack_peak_bytes']:,} | "
                f"{row['flash_bytes']:,} | {exact} | | | | |")
    lines += ["", "Published peers (utils/bench_peers.py, with sources):", "",
              "| model | TFLM+CMSIS-NN instructions | per MAC | TFLM arena B | TFLM flash B (.tflite + code) | "
              "TFLM reference kernels | ExecuTorch instructions | best published ms (STM32F746) |",
              "|---|---|---|---|---|---|---|---|"]
    for name, model in _models(report):
        peer = model.get("peer")
        if not peer:
            continue
        et = f"{peer['executorch_instructions']:,}" if "executorch_instructions" in peer else "—"
        fb = (f"{peer['tflm_flash_bytes']:,} ({peer['tflm_flatbuffer_bytes']:,} + {peer['tflm_code_bytes']:,})"
              if "tflm_flash_bytes" in peer else "—")
        lines.append(f"| {name} | {peer['tflm_cmsis_nn_instructions']:,} | {peer['tflm_cmsis_nn_instructions_per_mac']} | "
                     f"{peer['tflm_arena_bytes']:,} | {fb} | {peer['tflm_reference_instructions']:,} | {et} | "
                     f"{peer['published_ms']} ({peer['published_ms_by']}) |")
    lines += ["", "Where the time goes (profiling build, first input; a kernel call's figure includes its "
              "packed-call wrapper):", "",
              "| model | variant | top kernel calls (instructions, share; estimated cycles) | glue |",
              "|---|---|---|---|"]
    for name, model in _models(report):
        for variant, row in model["variants"].items():
            per_layer = row.get("per_layer") if row.get("status") == "ok" else None
            if not per_layer:
                continue
            top = sorted(per_layer["layers"], key=lambda layer: -layer["instructions"])[:3]
            text = "; ".join(f"#{t['index']} {_short(t['kernel'].removeprefix('tvmgen_default_'))} "
                             f"{t['instructions']:,} ({t['share']:.0%}; ~{t['estimated_cycles']:,} cycles)"
                             for t in top)
            lines.append(f"| {name} | {variant} | {text} | {per_layer['glue_instructions']:,} |")
    check = report.get("cycle_estimate_validation")
    if check:
        lines += ["", f"Cycle estimate on check loops (expected cycles from {check['source']}):", "",
                  "| loop | expected cycles / iteration | estimated | error |", "|---|---|---|---|"]
        for row in check["loops"]:
            lines.append(f"| {row['loop']} | {row['expected_cycles_per_iteration']} | "
                         f"{row['estimated_cycles_per_iteration']:.2f} | {row['relative_error']:+.1%} |")
    lines += ["", "Instructions: exact, QEMU mps2-an500 (Cortex-M7) with a TCG plugin. " + CYCLE_MODEL + "."
              + (" QUICK RUN." if report.get("models_quick") else "")]
    return "\n".join(lines) + "\n"


def models_chart(report, path: Path):
    """Instructions per inference against TFLM + CMSIS-NN, and estimated ms at 216 MHz against
    the best published STM32F746 results, per model (log scales)."""
    models = _models(report)
    names = [name for name, _ in models]
    x = np.arange(len(names))
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 4.8))

    def value(model, variant, key, scale):
        row = model["variants"].get(variant, {})
        return row[key] / scale if row.get("status") == "ok" else np.nan

    series = [("0201 (generic)", lambda m: value(m, "int8_no_optim", "instructions_per_inference", 1e6), "#8da0cb"),
              ("0202 (Cortex-M)", lambda m: value(m, "int8_optim", "instructions_per_inference", 1e6), "#4c72b0"),
              ("TFLM + CMSIS-NN", lambda m: (m.get("peer") or {}).get("tflm_cmsis_nn_instructions", np.nan) / 1e6, "#dd8452"),
              ("ExecuTorch 1.5", lambda m: (m.get("peer") or {}).get("executorch_instructions", np.nan) / 1e6, "#c44e52")]
    width = 0.8 / len(series)
    for k, (label, get, color) in enumerate(series):
        values = [get(m) for _, m in models]
        bars = ax1.bar(x + (k - (len(series) - 1) / 2) * width, values, width, label=label, color=color)
        for bar, v in zip(bars, values):
            if np.isfinite(v):
                ax1.annotate(f"{v:.3g}", (bar.get_x() + bar.get_width() / 2, v), ha="center", va="bottom", fontsize=6)
            elif label.startswith("020"):
                ax1.annotate("refused", (bar.get_x() + bar.get_width() / 2, 0.05), ha="center", va="bottom",
                             fontsize=6, rotation=90)
    ax1.set_yscale("log")
    ax1.set_xticks(x, names)
    ax1.set_ylabel("million instructions per inference (log)")
    ax1.set_title("Instructions per inference, QEMU Cortex-M7", fontsize=10)
    ax1.legend(fontsize=7)
    series2 = [("0201 estimate", lambda m: value(m, "int8_no_optim", "estimated_ms_216mhz", 1), "#8da0cb"),
               ("0202 estimate", lambda m: value(m, "int8_optim", "estimated_ms_216mhz", 1), "#4c72b0"),
               ("best published (MLPerf Tiny v1.1 / RIOT-ML)", lambda m: (m.get("peer") or {}).get("published_ms", np.nan), "#55a868")]
    width = 0.8 / len(series2)
    for k, (label, get, color) in enumerate(series2):
        values = [get(m) for _, m in models]
        bars = ax2.bar(x + (k - (len(series2) - 1) / 2) * width, values, width, label=label, color=color)
        for bar, v in zip(bars, values):
            if np.isfinite(v):
                ax2.annotate(f"{v:.3g}", (bar.get_x() + bar.get_width() / 2, v), ha="center", va="bottom", fontsize=6)
    ax2.set_yscale("log")
    ax2.set_xticks(x, names)
    ax2.set_ylabel("ms per inference at 216 MHz (log)")
    ax2.set_title("Estimated M7 time (zero-wait memory; llvm-mca) vs published STM32F746", fontsize=10)
    ax2.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
