"""What the compile stages do (0201: the generic backend, 0202: the Cortex-M backend), as a
function tests and the pipeline can call."""
import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from utils import paths
from utils.cli import DefaultsHelpFormatter, StageError, check_output_path
from utils.data import mnist_arrays
from utils.reports import write_report
from utils.train import subset_indices
from utils.aot import verify
from utils.aot.compiler import compile_model
from utils.aot.fp32 import torch_fp32_reference
from utils.aot.host_library import HostLibrary
from utils.aot.layers import Quantize
from utils.aot.model_file import ENGINES, INPUT_SHAPE, images_to_input, load_model, parse_shape
from utils.aot.golden import golden_int8
from utils.aot.pt2e import pt2e_reference
from utils.aot.torchscript import last_quantized_layer, torch_int8_reference

F746_FLASH_BYTES = 1024 * 1024
QUICK_IMAGES = 1000


def parse_stage_args(argv, description):
    """The command line 0201 and 0202 share."""
    parser = argparse.ArgumentParser(description=description, formatter_class=DefaultsHelpFormatter)
    parser.add_argument("--model", type=Path, default=paths.QAT_MODEL,
                        help="int8: a traced eager TorchScript or a PT2E .pt2 program; fp32: a .pt2 "
                             "program, a TorchScript, or a state_dict (with --model-class)")
    parser.add_argument("--input-shape", type=_shape_argument, default=None,
                        help="the model's input, batch 1, e.g. 1x3x32x32 (default: the shape the "
                             "TorchScript was traced with, else 1x1x28x28)")
    parser.add_argument("--model-class", default=None, metavar="MODULE:CLASS",
                        help="the network of a float state_dict (built with no arguments), e.g. "
                             "mynets:KwsNet (default: the project's MnistModel or QMnistModel)")
    parser.add_argument("--engine", choices=ENGINES, default="qnnpack",
                        help="the quantized engine the int8 model was converted for: PyTorch runs it "
                             "under that engine and the library follows its arithmetic")
    parser.add_argument("--kind", choices=["auto", "int8", "fp32"], default="auto",
                        help="what --model must be (auto: whatever it is)")
    parser.add_argument("--out", type=Path, default=paths.MLF_TAR, help="the Model Library Format tar to write")
    parser.add_argument("--images", type=int, default=10000,
                        help="inputs to verify on: MNIST test images for a 1x1x28x28 model, else "
                             "deterministic synthetic inputs that span the input range")
    parser.add_argument("--build-dir", type=Path, default=None,
                        help="where host builds are cached (default build/host-lib)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the image subset when --images < 10000")
    parser.add_argument("--quick", action="store_true",
                        help=f"tests: verify on {QUICK_IMAGES} images unless --images says otherwise")
    args = parser.parse_args(argv)
    try:
        check_output_path(args.out, "--out")
    except StageError as exc:
        parser.exit(1, f"error: {exc}\n")
    if args.quick and args.images == parser.get_default("images"):
        args.images = QUICK_IMAGES
    if not 1 <= args.images <= 10000:
        parser.error("--images must be between 1 and 10000")
    return args


def _shape_argument(text):
    try:
        return parse_shape(text)
    except StageError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def run_stage(stage, argv, description, backend):
    """main() of a compile stage: compile with `backend`, verify, report."""
    started = time.perf_counter()
    load_before = os.getloadavg()[0]
    args = parse_stage_args(argv, description)
    figures = compile_and_verify(args.model, args.kind, args.out, args.images, args.seed,
                                 args.build_dir, backend, quick=args.quick, started=started,
                                 input_shape=args.input_shape, engine=args.engine, model_class=args.model_class)
    figures["load_average_at_start"] = round(load_before, 2)
    figures["load_average_at_end"] = round(os.getloadavg()[0], 2)
    # the last run at the top level (the keys the issue names), and each kind's and each
    # flow's last run under its own section, so an fp32 run does not hide the int8 figures
    # nor a pt2e run the eager ones
    write_report(stage, figures)
    write_report(stage, figures, section=figures.get("flow") or "eager")
    report = write_report(stage, figures, section=figures["kind"])
    print(f"report: {report}")
    return 0


def _say(text):
    print(text, flush=True)


def test_images(count, seed):
    images, labels = mnist_arrays(False)
    index = subset_indices(len(images), count if count < len(images) else None, seed)
    return images[index], labels[index]


def verification_inputs(source, layers, count, seed):
    """(float32 inputs, MNIST labels or None, what they are): the MNIST test images for a
    model of MNIST's shape, else deterministic synthetic inputs over the input range (an int8
    model's QuantStub range; [0, 1] for fp32), with the range's ends among them."""
    if tuple(source.input_shape) == INPUT_SHAPE:
        images, labels = test_images(count, seed)
        return images_to_input(images), labels, "mnist"
    low, high = 0.0, 1.0
    quantize = next((layer for layer in layers or [] if isinstance(layer, Quantize)), None)
    if quantize is not None:
        low, high = (0 - quantize.zero_point) * quantize.scale, (255 - quantize.zero_point) * quantize.scale
    return synthetic_inputs(source.input_shape, count, seed, low, high), None, "synthetic"


def synthetic_inputs(shape, count, seed, low, high):
    """`count` float32 inputs of `shape` (batch 1): the range's two ends, then uniform noise
    over it, then smooth ramps (neighbouring values alike, as in images and spectrograms)."""
    rng = np.random.default_rng(seed)
    per = tuple(shape[1:])
    x = rng.uniform(low, high, size=(count,) + per).astype(np.float32)
    x[:1] = low
    x[1:2] = high
    ramps = np.linspace(low, high, int(np.prod(per)), dtype=np.float32).reshape(per)
    for i in range(2, count, 4):
        x[i] = np.roll(ramps, i) if i % 8 == 2 else ramps[..., ::-1] * np.float32(rng.uniform(0.5, 1.0))
    return np.clip(x, low, high).astype(np.float32)


def reference(source, compiled, x):
    """PyTorch's outputs (and uint8 logits for int8) on float32 inputs x."""
    if source.kind == "int8":
        if source.flow == "pt2e":
            return pt2e_reference(source.module, compiled.layers, x)
        return torch_int8_reference(source.module, compiled.layers, x)
    return torch_fp32_reference(source.reference or source.module, x), None


def _golden(layers, x):
    """The golden int8 model's (outputs, uint8 logits)."""
    return golden_int8(layers, x), golden_int8(layers, x, stop_after=last_quantized_layer(layers))


def compile_and_verify(model, kind, out, images, seed, build_dir, backend, quick=False, started=None,
                       input_shape=None, engine="qnnpack", model_class=None):
    """Compile `model` with `backend` to the MLF tar `out`, verify it, measure it; returns the
    figures. The tar reaches `out` only if verification passes (a failed one is kept beside
    it). A backend with a golden backend is also compared with that one's library on the same
    images: the outputs must be the same bits (int8: the uint8 logits too)."""
    started = started or time.perf_counter()
    out = Path(out)
    source = load_model(model, kind, input_shape, engine, model_class)
    _say(f"model {source.path} ({source.network}, input {list(source.input_shape)}, hash {source.model_hash})")

    candidate = out.with_name(out.stem + ".candidate.tar")
    t0 = time.perf_counter()
    compiled = compile_model(source, candidate, backend)
    meta = compiled.metadata
    compile_seconds = time.perf_counter() - t0
    _say(f"compiled {len(meta['calls'])} kernel calls in {compile_seconds:.1f} s: arena {meta['arena_bytes']} B, "
         f"constants {meta['constant_bytes']} B")

    t1 = time.perf_counter()
    lib = HostLibrary(candidate, build_dir=build_dir)
    test_x, test_y, inputs_are = verification_inputs(source, compiled.layers, images, seed)
    lib_out, lib_logits = lib.outputs(test_x)
    ref_out, ref_logits = reference(source, compiled, test_x)
    figures = verify.compare_outputs(lib_out, ref_out, lib_logits, ref_logits)
    if source.kind == "int8" and source.flow == "pt2e":
        # the Q/DQ program is a float reference: the library must equal the golden integer
        # model, and is compared with PyTorch's program
        golden_out, golden_logits = _golden(compiled.layers, test_x)
        figures["vs_golden_model"] = verify.compare_outputs(lib_out, golden_out, lib_logits,
                                                            golden_logits.reshape(lib_logits.shape))
        figures["max_lsb_diff"] = int(np.abs(lib_logits.astype(np.int32) - ref_logits.reshape(lib_logits.shape)).max())
    figures["inputs"] = inputs_are
    figures["input_shape"] = list(source.input_shape)
    if test_y is not None:
        figures["library_accuracy"] = float(np.mean(lib_out.argmax(1) == test_y))
    if backend.golden is not None:
        figures["vs_golden"] = _compare_with_golden(source, backend.golden, test_x, lib_out, lib_logits,
                                                    build_dir)
    verify_seconds = time.perf_counter() - t1

    arm = verify.measure_arm(candidate)
    host_warnings = [line for line in lib.warnings.splitlines() if "warning:" in line]
    bad_symbols = verify.disallowed(arm["arm_undefined_symbols"])
    figures.update({
        "kind": source.kind,
        "engine": source.engine,
        "flow": source.flow,
        "model": str(source.path),
        "model_hash": source.model_hash,
        "tar": str(out),
        "arena_bytes": meta["arena_bytes"],
        "constant_bytes": meta["constant_bytes"],
        "kernels": len(meta["kernels"]),
        "backend": backend.name,
        "library_cflags": list(meta.get("cflags", [])),
        "tvm_version": meta["tvm_version"],
        "compile_seconds": round(compile_seconds, 2),
        "verify_seconds": round(verify_seconds, 2),
        "total_seconds": round(time.perf_counter() - started, 2),
        "quick": bool(quick),
        "warnings": host_warnings + arm["arm_warnings"],
        **{k: v for k, v in arm.items() if k != "arm_warnings"},
    })
    _print_figures(source.kind, figures)

    problems = verify.failures(source.kind, figures, source.flow)
    golden = figures.get("vs_golden")
    if golden is not None and not golden["bit_exact"]:
        problems.append(f"outputs not the same bits as the {backend.golden.name} backend's library "
                        f"(identical on {golden['outputs_identical_fraction']:.4%} of images)")
    if bad_symbols:
        problems.append(f"the library needs {', '.join(bad_symbols)} (nm -u): not standalone")
    if problems:
        failed = out.with_name(out.stem + ".failed.tar")
        shutil.move(str(candidate), failed)
        raise StageError(f"VERIFICATION FAILED for {source.path}: {'; '.join(problems)} "
                         f"(library kept as {failed})")
    out.parent.mkdir(parents=True, exist_ok=True)
    candidate.replace(out)
    _say(f"wrote {out} ({out.stat().st_size} bytes)")
    return figures


def _compare_with_golden(source, golden_backend, test_x, lib_out, lib_logits, build_dir):
    """The golden backend's library of the same model on the same images, next to this one's."""
    with tempfile.TemporaryDirectory(prefix="golden-") as tmp:
        tar = compile_model(source, Path(tmp) / "golden.tar", golden_backend).tar
        base_out, base_logits = HostLibrary(tar, build_dir=build_dir).outputs(test_x)
    figures = verify.compare_outputs(lib_out, base_out, lib_logits, base_logits)
    figures["backend"] = golden_backend.name
    return figures


def _print_figures(kind, f):
    inputs = "MNIST test images" if f["inputs"] == "mnist" else "synthetic inputs"
    _say(f"verified on {f['images']} {inputs} (input {f['input_shape']}) against PyTorch:")
    if kind == "int8":
        _say(f"  uint8 logits identical      {f['uint8_exact_fraction']:.2%}")
    if "vs_golden_model" in f:
        _say(f"  largest logit difference    {f['max_lsb_diff']} LSB (PyTorch's Q/DQ program is a float reference)")
        _say(f"  same as the golden integer model: {f['vs_golden_model']['uint8_exact_fraction']:.2%} of inputs")
    _say(f"  argmax agreement            {f['argmax_agreement']:.2%}")
    _say(f"  max |log-prob difference|   {f['max_abs_diff']:.3g}")
    if "library_accuracy" in f:
        _say(f"  library accuracy            {f['library_accuracy']:.2%}")
    if "vs_golden" in f:
        golden = f["vs_golden"]
        _say(f"  same bits as the {golden['backend']} backend's library: "
             f"{golden['outputs_identical_fraction']:.2%} of images, uint8 logits "
             f"{golden.get('uint8_exact_fraction', golden['outputs_identical_fraction']):.2%} "
             f"(max |diff| {golden['max_abs_diff']:.3g})")
    _say(f"Cortex-M7 library objects ({' '.join(['-Os'] + f.get('library_cflags', []))}): text {f['arm_text_bytes']} B, data {f['arm_data_bytes']} B, "
         f"bss {f['arm_bss_bytes']} B (flash {f['arm_flash_bytes']} B = {f['arm_flash_bytes'] / 1024:.1f} KiB)")
    _say(f"  undefined symbols (nm -u): {' '.join(f['arm_undefined_symbols']) or 'none'}")
    if f["arm_flash_bytes"] > F746_FLASH_BYTES:
        _say(f"  note: more than the STM32F746's {F746_FLASH_BYTES // 1024} KiB of flash, host and emulator only")
    if f["warnings"]:
        _say("  COMPILER WARNINGS:\n    " + "\n    ".join(f["warnings"]))
    _say(f"seconds: compile {f['compile_seconds']}, verify {f['verify_seconds']}, total {f['total_seconds']}")
