"""Compile each zoo model with each backend, run the library on the host, compare it with
PyTorch, measure it for the Cortex-M7; one row per model for reports/zoo.json.

A refusal (StageError: the one line the compiler owes the user) is a result, not a failure:
the row says accepted: false and the line. Anything else raised is a compiler bug and is
recorded the same way with "crashed": true, so one model cannot stop the zoo.
"""
import inspect
import time
from pathlib import Path

import numpy as np

from utils.cli import StageError, one_line
from utils.data import mnist_arrays
from utils.train import subset_indices
from utils.aot import verify
from utils.aot.compiler import compile_model
from utils.aot.host_library import HostLibrary
from utils.aot.model_file import load_model
from utils.aot.torchscript import torch_int8_reference
from utils.zoo.make import (CALIBRATION_SEED, SYNTHETIC_ABOUT, VERIFY_SEED, as_float, quiet,
                            synthetic_inputs)


def verification_inputs(entry, count, seed=VERIFY_SEED):
    """(float32 inputs [N, *shape[1:]], labels or None, what they are in words): MNIST test
    images (the fixed subset 0201 uses) or the synthetic inputs."""
    if entry.inputs == "mnist":
        images, labels = mnist_arrays(False)
        index = subset_indices(len(images), count if count < len(images) else None, seed)
        about = f"MNIST test images as pixel / 255 ({'all' if count >= len(images) else f'subset seed {seed}'})"
        return as_float(images[index], entry.input_shape), labels[index], about
    about = (f"synthetic, value / 255 of uint8 inputs: {SYNTHETIC_ABOUT}, seed {seed} (PTQ calibrated "
             f"on another draw, seed {CALIBRATION_SEED})")
    return as_float(synthetic_inputs(entry.input_shape, count, seed), entry.input_shape), None, about


def _shape_kwargs(function, input_shape):
    """Pass the model's input shape to a compiler function that takes one."""
    return {"input_shape": tuple(input_shape)} if "input_shape" in inspect.signature(function).parameters else {}


def check_backend(entry, model_path, backend, x, labels, tar: Path, build_dir=None, golden=None) -> dict:
    """Compile with one backend and verify on x; the figures (accepted or not). `golden`:
    the generic library's (outputs, logits) on the same x, which this one must equal."""
    step = "load"  # which step is running, so an error says where it came from
    started = time.perf_counter()
    row = {"accepted": False}
    try:
        with quiet():
            source = load_model(model_path, "int8", **_shape_kwargs(load_model, entry.input_shape))
            step = "compile"
            compiled = compile_model(source, tar, backend, **_shape_kwargs(compile_model, entry.input_shape))
        row.update(accepted=True, tar=str(compiled.tar), compile_seconds=round(compiled.seconds, 1),
                   arena_bytes=int(compiled.metadata["arena_bytes"]),
                   constant_bytes=int(compiled.metadata["constant_bytes"]),
                   library_input_shape=compiled.metadata["inputs"][0]["shape"],
                   library_output_shape=compiled.metadata["outputs"][0]["shape"])
        step = "host library"
        verify_started = time.perf_counter()
        lib_out, lib_logits = HostLibrary(compiled.tar, build_dir=build_dir).outputs(x)
        step = "PyTorch reference"
        with quiet():
            ref_out, ref_logits = torch_int8_reference(source.module, compiled.layers, x)
        figures = verify.compare_outputs(lib_out, ref_out, lib_logits, ref_logits)
        row.update({key: figures[key] for key in ("images", "uint8_exact_fraction", "argmax_agreement",
                                                  "bit_exact", "max_abs_diff", "outputs_identical_fraction")
                    if key in figures})
        if labels is not None:
            row["library_accuracy"] = float(np.mean(lib_out.argmax(1) == labels))
        if golden is not None:
            same = verify.compare_outputs(lib_out, golden[0], lib_logits, golden[1])
            row["same_bits_as_generic"] = bool(same["outputs_identical_fraction"] == 1.0
                                               and same.get("bit_exact", True))
        row["verify_seconds"] = round(time.perf_counter() - verify_started, 1)
        step = "Cortex-M7 size"
        arm = verify.measure_arm(compiled.tar)
        row["flash_bytes"] = int(arm["arm_flash_bytes"])
        row["undefined_symbols"] = verify.disallowed(arm["arm_undefined_symbols"])
        row["outputs"] = (lib_out, lib_logits)
    except StageError as exc:
        row.update(error=f"{step}: {one_line(exc)}", failed_at=step)
    except Exception as exc:  # a compiler bug: recorded, and the zoo goes on
        row.update(error=f"{step}: {type(exc).__name__}: {one_line(exc)}", failed_at=step,
                   crashed=True)
    row["seconds"] = round(time.perf_counter() - started, 1)
    return row


# the keys of a model's row that come from its generic (0201) library
TOP_KEYS = ("accepted", "error", "uint8_exact_fraction", "argmax_agreement", "arena_bytes", "flash_bytes")


def check_model(entry, model_path, backends, x, labels, out_dir: Path, build_dir=None) -> dict:
    """The zoo row of one model: the generic backend's figures at the top level (the keys
    reports/zoo.json promises), every backend's under "backends"."""
    per_backend = {}
    golden = None
    for backend in backends:
        tar = Path(out_dir) / backend.name / f"{entry.name}.tar"
        tar.parent.mkdir(parents=True, exist_ok=True)
        row = check_backend(entry, model_path, backend, x, labels, tar, build_dir,
                            golden if backend.name != "generic" else None)
        outputs = row.pop("outputs", None)
        if backend.name == "generic":
            golden = outputs
        per_backend[backend.name] = row
        _say_row(entry.name, backend.name, row)
    first = per_backend.get("generic") or next(iter(per_backend.values()))
    top = {key: first.get(key) for key in TOP_KEYS if key in first or key != "error"}
    return {**top, "backends": per_backend}


def _say_row(name, backend, row):
    if "error" in row:
        what = "CRASHED" if row.get("crashed") else "refused" if not row["accepted"] else "FAILED"
        print(f"{name:18s} {backend:9s} {what}: {row['error']}", flush=True)
        return
    print(f"{name:18s} {backend:9s} uint8 identical {row['uint8_exact_fraction']:.2%}, argmax "
          f"{row['argmax_agreement']:.2%} on {row['images']} inputs; arena {row['arena_bytes']} B, "
          f"flash {row['flash_bytes']} B; {row['seconds']} s", flush=True)


def _thin(number) -> str:
    return f"{number:,}".replace(",", " ")


def markdown_table(models: dict) -> str:
    """The README's zoo table from reports/zoo.json's models."""
    def cell(row, backend):
        result = row.get("backends", {}).get(backend)
        if result is None:
            return "not run"
        if result.get("crashed"):
            return f"crashed at {result['failed_at']}"
        if not result["accepted"]:
            return "refused"
        if "error" in result:
            return f"failed at {result['failed_at']}"
        fraction = result["uint8_exact_fraction"]
        exact = "bit-exact" if fraction == 1.0 else f"{fraction:.2%} identical"
        return f"{exact}; arena {_thin(result['arena_bytes'])} B, flash {_thin(result['flash_bytes'])} B"

    lines = ["| model | MACs | checked on | int8 accuracy | 0201 (generic) | 0202 (cortex_m) |",
             "|---|---:|---|---:|---|---|"]
    for name, row in models.items():
        accuracy = f"{row['int8_accuracy']:.2f} %" if "int8_accuracy" in row else "–"
        lines.append(f"| {name} | {_thin(row['macs'])} | {row['images']} {row['inputs']} inputs | {accuracy} | "
                     f"{cell(row, 'generic')} | {cell(row, 'cortex_m')} |")
    return "\n".join(lines)
