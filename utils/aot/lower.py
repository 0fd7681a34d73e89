"""Relax → fused, scheduled TIR kernels + a memory-planned `main`, ready for C.

The pipeline is the one that proved itself on TVM 0.27 (the VM's own pipeline stops short of
code generation here; we take `main` after StaticPlanBlockMemory and write the AOT glue
ourselves, see emit.py):

    backend's Relax passes → DecomposeOpsForInference → LegalizeOps → AnnotateTIROpPattern
    → FoldConstant → FuseOps → FuseTIR → backend's schedule rules → DeadCodeElimination
    → ToNonDataflow → RemovePurityChecking → CallTIRRewrite → StaticPlanBlockMemory
    → AttachGlobalSymbol (see _attach_global_symbols)

The backend (utils.aot.backends) decides the Relax passes and the TIR schedule rules.
"""
import math
import re

import numpy as np
import tvm
import tvm_ffi
from tvm import relax, tirx
from tvm.s_tir import dlight

from utils.cli import StageError

TARGET = "c"


def lower(mod, backend):
    """Lower a Relax module to (scheduled IRModule of PrimFuncs + planned Relax main).
    PrimFuncs that come already scheduled (attr tir.is_scheduled) are left as they are."""
    target = tvm.target.Target(TARGET)
    passes = tvm.transform.Sequential([
        *backend.relax_passes(),
        relax.transform.DecomposeOpsForInference(),
        relax.transform.LegalizeOps(),
        relax.transform.AnnotateTIROpPattern(),
        relax.transform.FoldConstant(),
        relax.transform.FuseOps(),
        relax.transform.FuseTIR(),
        dlight.ApplyDefaultSchedule(*backend.schedule_rules()),
        relax.transform.DeadCodeElimination(),
        relax.transform.ToNonDataflow(),
        relax.transform.RemovePurityChecking(),
        relax.transform.CallTIRRewrite(),
        relax.transform.StaticPlanBlockMemory(),
    ])
    with target, tvm.transform.PassContext(opt_level=3):
        lowered = passes(mod)
        lowered = _attach_global_symbols(lowered)
    return lowered


def _calls_extern(func):
    found = []

    def visit(node):
        if isinstance(node, tvm.ir.Call) and getattr(node.op, "name", "") in ("tirx.call_extern",
                                                                            "tir.call_extern"):
            found.append(node)

    tvm_ffi.structural_walk(func.body, (tvm.ir.Call, visit))
    return bool(found)


def _attach_global_symbols(mod):
    """AttachGlobalSymbol, around a TVM 0.27 bug: with a system_lib_prefix it rewrites every
    PrimFunc body and fails on call_extern calls that take or return pointers (the Cortex-M backend's
    micro-kernels). Those bodies sit the pass out and come back under the renamed functions."""
    set_aside = {}
    for gv, func in mod.functions_items():
        if isinstance(func, tirx.PrimFunc) and _calls_extern(func):
            set_aside[gv.name_hint] = func.body
            mod[gv] = func.with_body(tirx.Evaluate(tirx.IntImm("int32", 0)))
    mod = relax.transform.AttachGlobalSymbol()(mod)
    if not set_aside:
        return mod
    prefix = str(mod.attrs["system_lib_prefix"]) if mod.attrs and "system_lib_prefix" in mod.attrs else ""
    for gv, func in mod.functions_items():
        original = gv.name_hint[len(prefix):] if gv.name_hint.startswith(prefix) else gv.name_hint
        if isinstance(func, tirx.PrimFunc) and original in set_aside:
            mod[gv] = func.with_body(set_aside.pop(original))
    if set_aside:
        raise StageError(f"kernels {', '.join(set_aside)} lost their bodies in AttachGlobalSymbol")
    return mod


def prim_funcs(mod):
    """The TIR kernels of a lowered module, as their own IRModule."""
    funcs = {gv.name_hint: f for gv, f in mod.functions_items() if isinstance(f, tirx.PrimFunc)}
    if not funcs:
        raise StageError("lowering produced no kernels")
    return tvm.IRModule(funcs)


def build_c(kernels):
    """C source of the kernels, without runtime asserts (the glue passes exact shapes)."""
    kernels, exact_literals = _mark_float_immediates(kernels)
    with tvm.transform.PassContext(config={"tirx.disable_assert": True}):
        built = tvm.tirx.build(kernels, target=TARGET)
    source = _restore_float_immediates(built.inspect_source(), exact_literals)
    if "TVMBackendAllocWorkspace" in source:
        needing = [name for name in _kernel_names(kernels)
                   if "TVMBackendAllocWorkspace" in _function_body(source, name)]
        raise StageError(f"kernels {', '.join(needing) or '?'} still need a workspace after the MCU "
                         f"schedule; 0201 ships no allocator")
    return source


# TVM's C codegen prints float immediates with 7 significant digits ("1.099392e-03f"), which
# is not enough for float32: requantization factors come out one ulp off and 254.99998f (an
# input scale's inverse) prints as 255. So before codegen every float32 immediate is swapped
# for a placeholder whose 7-digit text is unique, and afterwards that text is replaced by the
# true value with 9 significant digits (enough to round-trip any float32). Placeholders keep
# the sign and the order of the values they stand for, so anything TVM might decide by
# comparing constants comes out the same; a placeholder TVM folded into a new number would be
# an unknown literal, which is refused.
_FLOAT_LITERAL = re.compile(r"(?<![\w.])(\d\.\d{6}e[+-]\d{2,3})f")
_NEGATIVE_BASE = 7.0e33  # magnitudes far from any weight, scale or bound a model uses
_POSITIVE_BASE = 8.0e33


def _mark_float_immediates(kernels):
    values = set()

    def collect(imm):
        dtype = str(imm.ty)
        if dtype != "float32":
            raise StageError(f"{dtype} immediate {imm.value} in a kernel; 0201 emits float32 only")
        if math.isfinite(imm.value):
            values.add(float(np.float32(imm.value)))

    tvm_ffi.structural_walk(kernels, (tirx.FloatImm, collect))
    negative = sorted((v for v in values if math.copysign(1.0, v) < 0), reverse=True)  # -0.0 first
    positive = sorted(v for v in values if math.copysign(1.0, v) > 0)
    placeholders = {v: -float(np.float32(_NEGATIVE_BASE * (1 + (i + 1) * 1e-6))) for i, v in enumerate(negative)}
    placeholders.update({v: float(np.float32(_POSITIVE_BASE * (1 + (i + 1) * 1e-6)))
                         for i, v in enumerate(positive)})

    def swap(imm, _mutator):
        if not math.isfinite(imm.value):
            return imm
        return tirx.FloatImm("float32", placeholders[float(np.float32(imm.value))])

    marked = tvm_ffi.structural_mutate(kernels, (tirx.FloatImm, swap))
    # the codegen prints the sign in front of the digits, so the text maps to |value|
    exact = {f"{abs(p):.6e}": f"{abs(v):.8e}" for v, p in placeholders.items()}
    return marked, exact


def _restore_float_immediates(source, exact):
    unknown = []

    def replace(match):
        text = match.group(1)
        if text not in exact:
            unknown.append(text)
            return match.group(0)
        return f"{exact[text]}f"

    source = _FLOAT_LITERAL.sub(replace, source)
    if unknown:
        raise StageError(f"float literals {', '.join(sorted(set(unknown)))} in the generated C are not "
                         f"model constants (folded by TVM?); refusing to emit an inexact library")
    return source


def _kernel_names(kernels):
    return [gv.name_hint for gv in kernels.get_global_vars()]


def _function_body(source, name):
    start = source.find(f"__tvm_ffi_{name}(")
    end = source.find("\n}\n", start)
    return source[start:end] if start >= 0 else ""
