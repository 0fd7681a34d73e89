"""What 0201tvm_no_optim.py and 0202tvm_optim.py do, as a function tests and the pipeline can call."""
import shutil
import time
from pathlib import Path

import numpy as np

from utils.cli import StageError

F746_FLASH_BYTES = 1024 * 1024
QUICK_IMAGES = 1000


def parse_stage_args(argv, description):
    """The command line 0201 and 0202 share."""
    import argparse
    from utils import paths
    parser = argparse.ArgumentParser(description=description,
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--model", type=Path, default=paths.QAT_MODEL,
                        help="int8 TorchScript, or fp32 state_dict/TorchScript of MnistModel or QMnistModel")
    parser.add_argument("--kind", choices=["auto", "int8", "fp32"], default="auto",
                        help="what --model must be (auto: whatever it is)")
    parser.add_argument("--out", type=Path, default=paths.MLF_TAR, help="the Model Library Format tar to write")
    parser.add_argument("--images", type=int, default=10000,
                        help="MNIST test images to verify on (all 10 000 by default)")
    parser.add_argument("--build-dir", type=Path, default=None,
                        help="where host builds are cached (default build/host-lib)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the image subset when --images < 10000")
    parser.add_argument("--quick", action="store_true",
                        help=f"tests: verify on {QUICK_IMAGES} images unless --images says otherwise")
    args = parser.parse_args(argv)
    if args.quick and args.images == parser.get_default("images"):
        args.images = QUICK_IMAGES
    if not 1 <= args.images <= 10000:
        parser.error("--images must be between 1 and 10000")
    return args


def run_stage(stage, argv, description, optim=False):
    """main() of 0201 (optim=False) and 0202 (optim=True): compile, verify, report."""
    import os
    from utils.reports import write_report
    started = time.perf_counter()
    load_before = os.getloadavg()[0]
    args = parse_stage_args(argv, description)
    figures = compile_and_verify(args.model, args.kind, args.out, args.images, args.seed,
                                 args.build_dir, quick=args.quick, started=started, optim=optim)
    figures["load_average_at_start"] = round(load_before, 2)
    figures["load_average_at_end"] = round(os.getloadavg()[0], 2)
    # the last run at the top level (the keys the issue names), and each kind's last run
    # under its own section, so an fp32 run does not hide the int8 figures
    write_report(stage, figures)
    report = write_report(stage, figures, section=figures["kind"])
    print(f"report: {report}")
    return 0


def _say(text):
    print(text, flush=True)


def test_images(count, seed):
    from utils.data import mnist_arrays
    from utils.train import subset_indices
    images, labels = mnist_arrays(False)
    index = subset_indices(len(images), count if count < len(images) else None, seed)
    return images[index], labels[index]


def reference(source, compiled, images):
    """PyTorch's log-probabilities (and uint8 logits for int8) on float32 pixel/255."""
    from utils.aot.model_file import images_to_input
    x = images_to_input(images)
    if source.kind == "int8":
        from utils.aot.int8 import torch_int8_reference
        return torch_int8_reference(source.module, compiled.layers, x)
    from utils.aot.fp32 import torch_fp32_reference
    return torch_fp32_reference(source.module, x), None


def compile_and_verify(model, kind, out, images, seed, build_dir=None, quick=False, started=None, optim=False):
    """Compile `model` to the MLF tar `out`, verify it, measure it; returns the figures.
    The tar reaches `out` only if verification passes (a failed one is kept beside it).
    With `optim` (0202) the library is also compared with 0201's on the same images: the
    outputs must be the same bits (log-probabilities; int8: the uint8 logits too)."""
    from utils.aot import verify
    from utils.aot.compiler import compile_model
    from utils.aot.host import HostLibrary
    from utils.aot.model_file import load_model

    started = started or time.perf_counter()
    out = Path(out)
    source = load_model(model, kind)
    _say(f"model {source.path} ({source.network}, hash {source.model_hash})")

    candidate = out.with_name(out.stem + ".candidate.tar")
    t0 = time.perf_counter()
    compiled = compile_model(source, candidate, optim=optim)
    meta = compiled.metadata
    compile_seconds = time.perf_counter() - t0
    _say(f"compiled {len(meta['calls'])} kernel calls in {compile_seconds:.1f} s: arena {meta['arena_bytes']} B, "
         f"constants {meta['constant_bytes']} B")

    t1 = time.perf_counter()
    lib = HostLibrary(candidate, build_dir=build_dir)
    test_x, test_y = test_images(images, seed)
    if source.kind == "int8":
        lib_out, lib_logits = lib.run_with_logits(test_x)
    else:
        lib_out, lib_logits = lib.run(test_x), None
    ref_out, ref_logits = reference(source, compiled, test_x)
    figures = verify.compare(source.kind, lib_out, ref_out, lib_logits, ref_logits)
    figures["library_accuracy"] = float(np.mean(lib_out.argmax(1) == test_y))
    if optim:
        figures.update(_compare_with_no_optim(source, test_x, lib_out, lib_logits, build_dir))
    verify_seconds = time.perf_counter() - t1

    arm = verify.measure_arm(candidate)
    host_warnings = [line for line in lib.warnings.splitlines() if "warning:" in line]
    bad_symbols = verify.disallowed(arm["arm_undefined_symbols"])
    figures.update({
        "kind": source.kind,
        "model": str(source.path),
        "model_hash": source.model_hash,
        "tar": str(out),
        "arena_bytes": meta["arena_bytes"],
        "constant_bytes": meta["constant_bytes"],
        "kernels": len(meta["kernels"]),
        "optim": bool(optim),
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

    problems = verify.failures(source.kind, figures)
    if optim and figures["bit_exact_with_no_optim"] < 1.0:
        problems.append(f"outputs bit-identical to 0201's library on {figures['bit_exact_with_no_optim']:.4%} "
                        f"of images < 100 %")
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


def _compare_with_no_optim(source, test_x, lib_out, lib_logits, build_dir):
    """0201's library of the same model on the same images, next to 0202's."""
    import tempfile
    from utils.aot.compiler import compile_model
    from utils.aot.host import HostLibrary
    with tempfile.TemporaryDirectory(prefix="no-optim-") as tmp:
        tar = compile_model(source, Path(tmp) / "no_optim.tar").tar
        lib = HostLibrary(tar, build_dir=build_dir)
        if source.kind == "int8":
            base_out, base_logits = lib.run_with_logits(test_x)
        else:
            base_out, base_logits = lib.run(test_x), None
    same_bits = np.all(lib_out.view(np.uint32) == base_out.view(np.uint32), axis=1)
    if base_logits is not None:
        same_bits &= np.all(lib_logits == base_logits, axis=1)
    return {"bit_exact_with_no_optim": float(np.mean(same_bits)),
            "max_abs_diff_with_no_optim": float(np.max(np.abs(lib_out.astype(np.float64) - base_out)))}


def _print_figures(kind, f):
    _say(f"verified on {f['images_checked']} MNIST test images against PyTorch:")
    if kind == "int8":
        _say(f"  uint8 logits identical      {f['int8_exact_fraction']:.2%}")
    _say(f"  argmax agreement            {f['argmax_agreement']:.2%}")
    _say(f"  max |log-prob difference|   {f['max_abs_diff']:.3g}")
    _say(f"  library accuracy            {f['library_accuracy']:.2%}")
    if "bit_exact_with_no_optim" in f:
        _say(f"  same bits as 0201's library {f['bit_exact_with_no_optim']:.2%} of images "
             f"(max |diff| {f['max_abs_diff_with_no_optim']:.3g})")
    _say(f"Cortex-M7 library objects ({' '.join(['-Os'] + f.get('library_cflags', []))}): text {f['arm_text_bytes']} B, data {f['arm_data_bytes']} B, "
         f"bss {f['arm_bss_bytes']} B (flash {f['arm_flash_bytes']} B = {f['arm_flash_bytes'] / 1024:.1f} KiB)")
    _say(f"  undefined symbols (nm -u): {' '.join(f['arm_undefined_symbols']) or 'none'}")
    if f["arm_flash_bytes"] > F746_FLASH_BYTES:
        _say(f"  note: more than the STM32F746's {F746_FLASH_BYTES // 1024} KiB of flash, host and emulator only")
    if f["warnings"]:
        _say("  COMPILER WARNINGS:\n    " + "\n    ".join(f["warnings"]))
    _say(f"seconds: compile {f['compile_seconds']}, verify {f['verify_seconds']}, total {f['total_seconds']}")
