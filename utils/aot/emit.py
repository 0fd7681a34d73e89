"""The AOT glue: turn the memory-planned Relax `main` into plain C calls on one static arena.

TVM 0.27 has no AOT executor and no unpacked-API pass any more: `exec_mode="compiled"` still
needs the VM runtime. But after StaticPlanBlockMemory, `main` is a straight line of
  storage = alloc_storage(bytes)          → a fixed offset in one static arena
  t = alloc_tensor(storage, offset, ...)  → arena + storage offset + offset
  kernel(args..., out)                    → one packed call with stack-built DLTensors
  constants                               → `static const` arrays (int8 weights stay int8)
  out = builtin.alloc_tensor(...)         → the caller's output buffer
so walking it is all an AOT executor does. The result is `tvmgen_default_run`, the API of
microTVM's AOT executor that the firmware calls.
"""
from dataclasses import dataclass, field

import numpy as np
from tvm import relax
from tvm.ir.expr import Constant

from utils.cli import StageError

PREFIX = "tvmgen_default_"
ARENA_ALIGN = 16
# dtype → (dlpack's DLDataTypeCode, bits)
DL_TYPES = {"int8": ("kDLInt", 8), "int16": ("kDLInt", 16), "int32": ("kDLInt", 32), "int64": ("kDLInt", 64),
            "uint8": ("kDLUInt", 8), "uint16": ("kDLUInt", 16), "uint32": ("kDLUInt", 32),
            "float32": ("kDLFloat", 32)}
# The profiling hook: a call before and after each kernel call when the library is compiled
# with -DTVMGEN_DEFAULT_PROFILE (the benchmark's per-layer build, which defines the function);
# otherwise the macro is empty and the compiled code is that of a library without the hook.
PROFILE_DEFINE = "TVMGEN_DEFAULT_PROFILE"
PROFILE_MARK = "TVMGEN_DEFAULT_PROFILE_MARK"
PROFILE_FUNCTION = "tvmgen_default_profile_mark"
PROFILE_HOOK = f"""#ifdef {PROFILE_DEFINE}
/* profiling builds only: called with (call index, 0) before each kernel call, (index, 1) after */
void {PROFILE_FUNCTION}(int32_t call, int32_t after);
#define {PROFILE_MARK}(call, after) {PROFILE_FUNCTION}(call, after)
#else
#define {PROFILE_MARK}(call, after) ((void)0)
#endif"""
# A kernel (PrimFunc) may declare which of its inputs may share arena bytes with its first
# output: one int per input argument, in order, the least number of bytes the input's start
# may lie past the output's start (-1: never). The output then follows its input through the
# arena (an in-place depthwise, a pointwise that widens into its input's tail), which only the
# kernel's order of reads and writes can vouch for; the planner honours it when the input dies
# at that call.
OVERLAP_ATTR = "aot.overlap"
C_TYPES = {"int8": "int8_t", "int16": "int16_t", "int32": "int32_t", "int64": "int64_t",
           "uint8": "uint8_t", "uint16": "uint16_t", "uint32": "uint32_t", "float32": "float"}


@dataclass
class Tensor:
    """A tensor the glue passes to a kernel: where its bytes live, its shape and dtype."""
    name: str
    shape: tuple
    dtype: str
    place: str                 # "arena", "input", "output", "constant"
    storage: object = None     # the Storage it sits in (arena tensors)
    offset: int = 0            # byte offset inside the storage
    constant_index: int = -1

    @property
    def nbytes(self):
        return int(np.prod(self.shape)) * DL_TYPES[self.dtype][1] // 8


@dataclass
class Storage:
    name: str
    nbytes: int
    first_use: int = None
    last_use: int = None
    arena_offset: int = None


@dataclass
class KernelCall:
    kernel: str
    args: list
    overlap: tuple = ()        # the kernel's OVERLAP_ATTR: per input, the bytes its start may lie past the output's

    @property
    def shared_output(self):
        """The storage of the output the kernel's overlaps refer to (its first), or None."""
        if not self.overlap or len(self.args) <= len(self.overlap):
            return None
        return self.args[len(self.overlap)].storage


@dataclass
class Plan:
    """Everything the glue needs: the calls in order, the arena, the constants."""
    calls: list
    storages: list
    constants: list            # numpy arrays, in first-use order
    input: Tensor
    output: Tensor
    output_copy_from: Tensor = None   # when the result is not written in place by a kernel
    arena_bytes: int = 0
    kernels: list = field(default_factory=list)


def _dtype(expr):
    return str(expr.value) if hasattr(expr, "value") else str(expr)


def _shape(shape_expr):
    try:
        return tuple(int(d) for d in shape_expr.values)
    except TypeError:
        raise StageError(f"symbolic shape {shape_expr} in main; 0201 compiles static shapes only")


def _tensor_type(var):
    ty = var.ty
    return tuple(int(d) for d in ty.shape.values), str(ty.dtype)


def plan_main(mod, tensor_lifetimes=False):
    """Walk the lowered `main` into a Plan; anything but the patterns above is a StageError.
    `tensor_lifetimes` places each tensor by its own lifetime instead of keeping Relax's
    storage sharing, which may park a small tensor in a big block that then stays alive."""
    main = mod["main"]
    if len(main.params) != 1:
        raise StageError(f"the model takes {len(main.params)} inputs; the firmware API has one (input0)")
    in_shape, in_dtype = _tensor_type(main.params[0])
    input_tensor = Tensor("input0", in_shape, in_dtype, "input")
    values = {main.params[0]: input_tensor}
    storages, calls, constants = [], [], []

    def tensor_of(expr, kernel):
        if isinstance(expr, Constant) and hasattr(expr.value, "numpy"):
            data = expr.value.numpy()
            for i, known in enumerate(constants):
                if known is data or (known.dtype == data.dtype and known.shape == data.shape
                                     and np.array_equal(known, data)):
                    index = i
                    break
            else:
                constants.append(data)
                index = len(constants) - 1
            return Tensor(f"constant_{index}", tuple(data.shape), str(data.dtype), "constant",
                          constant_index=index)
        if expr in values:
            return values[expr]
        raise StageError(f"kernel {kernel} takes a {type(expr).__name__}; 0201 passes tensors only")

    for block in main.body.blocks:
        for binding in block.bindings:
            var, value = binding.var, binding.value
            if isinstance(value, relax.Var):
                values[var] = values[value]
                continue
            if isinstance(value, relax.Tuple):
                values[var] = [values.get(field) for field in value.fields]
                continue
            if isinstance(value, relax.TupleGetItem):
                values[var] = values[value.tuple_value][value.index]
                continue
            if not isinstance(value, relax.Call):
                raise StageError(f"unexpected {type(value).__name__} in main after memory planning")
            op = value.op
            if isinstance(op, relax.GlobalVar):
                index = len(calls)
                args = [tensor_of(a, op.name_hint) for a in value.args]
                for t in args:
                    if t.storage is not None:
                        t.storage.first_use = index if t.storage.first_use is None else t.storage.first_use
                        t.storage.last_use = index
                overlap = mod[op].attrs.get(OVERLAP_ATTR) if mod[op].attrs is not None else None
                calls.append(KernelCall(op.name_hint, args, tuple(int(d) for d in overlap or ())))
                continue
            name = getattr(op, "name", str(op))
            if name == "relax.memory.alloc_storage":
                nbytes = _shape(value.args[0])[0]
                storage = Storage(var.name, nbytes)
                storages.append(storage)
                values[var] = storage
            elif name == "relax.memory.alloc_tensor":
                storage = values[value.args[0]]
                shape, dtype = _shape(value.args[2]), _dtype(value.args[3])
                values[var] = Tensor(var.name, shape, dtype, "arena", storage, int(value.args[1].value))
            elif name == "relax.builtin.alloc_tensor":
                shape, dtype = _shape(value.args[0]), _dtype(value.args[1])
                values[var] = Tensor(var.name, shape, dtype, "output")
            elif name in ("relax.memory.kill_tensor", "relax.memory.kill_storage"):
                continue
            else:
                raise StageError(f"op {name} left in main after lowering; 0201 cannot run it without "
                                 f"the TVM runtime")

    result = main.body.body
    if isinstance(result, relax.Tuple):
        result = [values.get(field) for field in result.fields]
    else:
        result = values.get(result)
    if isinstance(result, list) and len(result) == 1:
        result = result[0]  # torch.export returns a 1-tuple
    if not isinstance(result, Tensor):
        raise StageError("main does not return one tensor; the firmware API has one output")
    output = Tensor("output", result.shape, result.dtype, "output")
    unplanned = [t for t in values.values() if isinstance(t, Tensor) and t.place == "output" and t is not result]
    if unplanned:
        raise StageError(f"tensors {', '.join(t.name for t in unplanned)} are allocated at run time; "
                         f"0201 needs every intermediate in the static arena")
    if tensor_lifetimes:
        storages = _storage_per_tensor(calls)
    plan = Plan(calls, storages, constants, input_tensor, output)
    if result.place == "output":
        for call in calls:
            call.args = [output if a is result else a for a in call.args]
    else:
        plan.output_copy_from = result
        if result.storage is not None:
            result.storage.last_use = len(calls)
    plan.arena_bytes = _place_storages(storages, _overlaps(calls) if tensor_lifetimes else {})
    plan.kernels = sorted({c.kernel for c in calls})
    return plan


def _storage_per_tensor(calls):
    """A storage of its own for every arena tensor, alive from its first to its last call."""
    storages = {}
    for index, call in enumerate(calls):
        for t in call.args:
            if t.place != "arena":
                continue
            if id(t) not in storages:
                storages[id(t)] = Storage(f"{t.storage.name}_{t.name}", t.nbytes, index, index)
                t.storage, t.offset = storages[id(t)], 0
            storages[id(t)].last_use = index
    return list(storages.values())


def _align(n):
    return (n + ARENA_ALIGN - 1) // ARENA_ALIGN * ARENA_ALIGN


def _overlaps(calls):
    """{(input storage, output storage): bytes}: the pairs a call lets share bytes (its
    OVERLAP_ATTR) where the input dies at that call and the output is born there."""
    pairs = {}
    for index, call in enumerate(calls):
        out = call.shared_output
        if out is None or out.first_use != index:
            continue
        for t, d in zip(call.args, call.overlap):
            s = t.storage
            if s is None or s is out or s.last_use != index:
                continue
            key = (id(s), id(out))
            # an input passed twice: the stricter of its two positions
            pairs[key] = -1 if d < 0 or pairs.get(key, 0) < 0 else max(d, pairs.get(key, 0))
    return {k: _align(d) for k, d in pairs.items() if d >= 0}


def _fits(storage, offset, placed, overlaps):
    for other in placed:
        if storage.last_use < other.first_use or other.last_use < storage.first_use:
            continue
        if offset + storage.nbytes <= other.arena_offset or other.arena_offset + other.nbytes <= offset:
            continue
        d = overlaps.get((id(storage), id(other)))   # storage is the input of other
        if d is not None and offset >= other.arena_offset + d:
            continue
        d = overlaps.get((id(other), id(storage)))   # storage is the output of other's reader
        if d is not None and other.arena_offset >= offset + d:
            continue
        return False
    return True


def _place(order, overlaps, follow):
    """Lowest offset for each storage in turn that keeps clear of every placed storage alive
    at the same time, or sits where an overlap lets it; the offsets tried are 0, the ends of
    the placed ones and the positions their overlaps name. follow (in order of birth): an
    output goes right below its input when it can, so that a chain of in-place layers keeps
    walking down the arena; "room": and a storage that cannot follow starts high enough for
    its own reader's output to go below it; "chain": for the whole chain of its readers'
    outputs."""
    readers = {}
    for (i, o), d in overlaps.items():
        readers.setdefault(i, []).append((o, d))
    floors = {}

    def floor_of(key):
        # room below a storage for its reader's output, and with "chain" for that one's too
        if key not in floors:
            floors[key] = max((d + (floor_of(o) if follow == "chain" else 0) for o, d in readers.get(key, ())),
                              default=0)
        return floors[key]

    placed = []
    for storage in order:
        plain, shared = {0}, set()
        for other in placed:
            plain.add(_align(other.arena_offset + other.nbytes))
            if (id(storage), id(other)) in overlaps:
                shared.add(other.arena_offset + overlaps[(id(storage), id(other))])
            if (id(other), id(storage)) in overlaps:
                shared.add(other.arena_offset - overlaps[(id(other), id(storage))])
        floor = 0
        if follow in ("room", "chain"):
            floor = floor_of(id(storage))
            plain.add(floor)
        valid = [c for c in shared if c >= 0 and _fits(storage, c, placed, overlaps)]
        if follow and valid:
            storage.arena_offset = max(valid)
        else:
            storage.arena_offset = min(valid + [c for c in plain if c >= floor and _fits(storage, c, placed, overlaps)])
        placed.append(storage)
    return _align(max((s.arena_offset + s.nbytes for s in placed), default=0))


def in_place_calls(plan):
    """The kernels whose output shares arena bytes with an input (OVERLAP_ATTR honoured)."""
    shared = []
    for call in plan.calls:
        out = call.shared_output
        if out is None:
            continue
        for t in call.args[:len(call.overlap)]:
            s = t.storage
            if s is not None and s is not out and s.arena_offset < out.arena_offset + out.nbytes \
                    and out.arena_offset < s.arena_offset + s.nbytes:
                shared.append(call.kernel)
                break
    return shared


def _first_fit(storages):
    """First-fit offsets, largest first; storages whose lifetimes overlap never share bytes."""
    placed = []
    for storage in sorted(storages, key=lambda s: -s.nbytes):
        offset = 0
        for other in sorted(placed, key=lambda s: s.arena_offset):
            overlap_in_time = not (storage.last_use < other.first_use or other.last_use < storage.first_use)
            if overlap_in_time and offset + storage.nbytes > other.arena_offset \
                    and other.arena_offset + other.nbytes > offset:
                offset = _align(other.arena_offset + other.nbytes)
        storage.arena_offset = offset
        placed.append(storage)
    return _align(max((s.arena_offset + s.nbytes for s in storages), default=0))


def _place_storages(storages, overlaps=None):
    """First-fit, largest first. With overlaps, also in order of birth and in reverse order
    of birth, letting the pairs in `overlaps` share bytes (a chain of in-place layers then
    walks down the arena from the first, or up from the last); the smallest arena is kept."""
    for storage in storages:
        if storage.first_use is None:
            storage.first_use = storage.last_use = -1
    size = _first_fit(storages)
    if not overlaps:
        return size
    best = (size, {id(s): s.arena_offset for s in storages})
    for later_first, follow in ((False, "room"), (False, "chain"), (False, "near"), (False, None), (True, None)):
        order = sorted(storages, key=lambda s: (-s.first_use if later_first else s.first_use, -s.nbytes))
        stacked = _place(order, overlaps, follow)
        if stacked < best[0]:
            best = (stacked, {id(s): s.arena_offset for s in storages})
    for storage in storages:
        storage.arena_offset = best[1][id(storage)]
    return best[0]


# ----------------------------------------------------------------------------- C text

def _c_values(array):
    flat = array.reshape(-1)
    if array.dtype == np.float32:
        if not np.all(np.isfinite(flat)):
            raise StageError("a float constant is not finite")
        # 9 significant digits round-trip every float32
        items = [f"{float(v):.8e}f" for v in flat]
    else:
        items = [str(int(v)) for v in flat]
    per_line = 16
    lines = [", ".join(items[i:i + per_line]) for i in range(0, len(items), per_line)]
    return "  " + ",\n  ".join(lines)


def _tensor_expr(t, plan):
    code, bits = DL_TYPES[t.dtype]
    if t.place == "arena":
        data = f"{PREFIX}arena + {t.storage.arena_offset + t.offset}"
    elif t.place == "input":
        data = "inputs->input0"
    elif t.place == "output":
        data = "outputs->output"
    else:
        data = f"(void*){PREFIX}{t.name}"
    return f"tensor({data}, {code}, {bits}, {len(t.shape)}, {PREFIX}shape_{_shape_id(t.shape, plan)})"


def _shape_id(shape, plan):
    shapes = plan._shapes
    if shape not in shapes:
        shapes.append(shape)
    return shapes.index(shape)


def glue_source(plan, banner, tap=None, helpers_out_of_line=False):
    """default_lib0.c: constants, arena, shapes and tvmgen_default_run.

    `helpers_out_of_line` (for libraries built at -O2): the two helpers stay functions of
    their own instead of being inlined into every call (less flash; they run once per call).

    `tap` (a Tensor of the plan) is copied to `tvmgen_default_debug_tap` when the file is
    compiled with -DTVMGEN_DEFAULT_DEBUG_TAP: the host harness uses it to read the uint8
    logits; firmware builds never define it.
    """
    plan._shapes = []
    body = []
    for i, call in enumerate(plan.calls):
        tensors = ",\n      ".join(_tensor_expr(t, plan) for t in call.args)
        body.append(f"  {{  /* {i}: {call.kernel}({', '.join(t.name for t in call.args)}) */\n"
                    f"    DLTensor args[{len(call.args)}] = {{\n      {tensors}}};\n"
                    f"    {PROFILE_MARK}({i}, 0);\n"
                    f"    int32_t rc = call_kernel(__tvm_ffi_{call.kernel}, args, {len(call.args)});\n"
                    f"    {PROFILE_MARK}({i}, 1);\n"
                    f"    if (rc != 0) return rc;\n  }}")
        if tap is not None and any(a is tap for a in call.args[-1:]):
            body.append(f"#ifdef TVMGEN_DEFAULT_DEBUG_TAP\n"
                        f"  memcpy({PREFIX}debug_tap, {PREFIX}arena + {tap.storage.arena_offset + tap.offset}, "
                        f"sizeof({PREFIX}debug_tap));\n#endif")
    if plan.output_copy_from is not None:
        src = plan.output_copy_from
        if src.place == "input":
            body.append(f"  memcpy(outputs->output, inputs->input0, {src.nbytes});")
        else:
            body.append(f"  memcpy(outputs->output, {PREFIX}arena + {src.storage.arena_offset + src.offset}, "
                        f"{src.nbytes});")

    out = [f"/* {line} */" for line in banner]
    out += ["#include <stddef.h>", "#include <stdint.h>", "#include <string.h>", "",
            '#include "tvm/ffi/c_api.h"', '#include "tvmgen_default.h"', ""]
    out.append(PROFILE_HOOK)
    out.append("typedef int32_t (*kernel_fn)(void* self, void* args, int32_t num_args, void* result);")
    for kernel in plan.kernels:
        out.append(f"int32_t __tvm_ffi_{kernel}(void* self, void* args, int32_t num_args, void* result);")
    out.append("")
    for i, array in enumerate(plan.constants):
        out.append(f"/* constant_{i}: {array.dtype} {list(array.shape)} */")
        out.append(f"static const {C_TYPES[str(array.dtype)]} {PREFIX}constant_{i}[{array.size}] = {{\n"
                   f"{_c_values(array)}\n}};")
    out.append("")
    out.append(f"/* One static arena for every intermediate tensor: {plan.arena_bytes} bytes. */")
    out.append(f"static _Alignas({ARENA_ALIGN}) uint8_t {PREFIX}arena[{max(plan.arena_bytes, 1)}];")
    if tap is not None:
        out.append(f"\n#ifdef TVMGEN_DEFAULT_DEBUG_TAP\n/* host harness only: a copy of the {tap.dtype} "
                   f"{list(tap.shape)} tensor the last kernel reads */\n"
                   f"static {C_TYPES[tap.dtype]} {PREFIX}debug_tap[{int(np.prod(tap.shape))}];\n"
                   f"const void* {PREFIX}debug_tap_ptr(void);\n"
                   f"const void* {PREFIX}debug_tap_ptr(void) {{ return {PREFIX}debug_tap; }}\n#endif")
    run = "\n".join(body)
    shapes = "\n".join(f"static const int64_t {PREFIX}shape_{i}[{max(len(s), 1)}] = "
                       f"{{{', '.join(str(d) for d in s) or '1'}}};" for i, s in enumerate(plan._shapes))
    out.append("")
    out.append(shapes)
    out.append('''
%(helper)sstatic DLTensor tensor(void* data, uint8_t code, uint8_t bits, int32_t ndim, const int64_t* shape) {
  DLTensor t;
  t.data = data;
  t.device.device_type = kDLCPU;
  t.device.device_id = 0;
  t.ndim = ndim;
  t.dtype.code = code;
  t.dtype.bits = bits;
  t.dtype.lanes = 1;
  t.shape = (int64_t*)shape;  /* the kernels only read it */
  t.strides = NULL;           /* compact row-major */
  t.byte_offset = 0;
  return t;
}

/* The kernels use TVM's packed calling convention: an array of TVMFFIAny holding DLTensor*. */
%(helper)sstatic int32_t call_kernel(kernel_fn kernel, DLTensor* tensors, int32_t count) {
  TVMFFIAny args[%(max_args)d];
  TVMFFIAny result;
  for (int32_t i = 0; i < count; ++i) {
    args[i].type_index = kTVMFFIDLTensorPtr;
    args[i].zero_padding = 0;
    args[i].v_ptr = &tensors[i];
  }
  result.type_index = kTVMFFINone;
  result.zero_padding = 0;
  result.v_int64 = 0;
  return kernel(NULL, args, count, &result);
}

int32_t tvmgen_default_run(struct tvmgen_default_inputs* inputs, struct tvmgen_default_outputs* outputs) {
  if (inputs == NULL || outputs == NULL || inputs->input0 == NULL || outputs->output == NULL) {
    return -1;
  }
%(run)s
  return 0;
}
''' % {"max_args": max((len(c.args) for c in plan.calls), default=1), "run": run,
       "helper": "__attribute__((noinline)) " if helpers_out_of_line else ""})
    return "\n".join(out)


def header_source(plan, model_hash, banner, meanings=("pixel / 255", "log-probabilities")):
    """tvmgen_default.h: the microTVM AOT API the firmware includes; `meanings`: what the
    input and the output hold."""
    lines = ["#ifndef TVMGEN_DEFAULT_H_", "#define TVMGEN_DEFAULT_H_", ""]
    lines += [f"/* {line} */" for line in banner]
    lines += ["", "#include <stdint.h>", "", "#ifdef __cplusplus", 'extern "C" {', "#endif", "",
              f"/* input0: {plan.input.dtype} {list(plan.input.shape)}, {meanings[0]} */",
              f"#define TVMGEN_DEFAULT_INPUT0_SIZE {plan.input.nbytes}",
              f"/* output: {plan.output.dtype} {list(plan.output.shape)}, {meanings[1]} */",
              f"#define TVMGEN_DEFAULT_OUTPUT_SIZE {plan.output.nbytes}",
              "/* the static arena inside the library (no allocation at run time) */",
              f"#define TVMGEN_DEFAULT_WORKSPACE_SIZE {plan.arena_bytes}",
              "/* utils.reports.model_hash of the source model file */",
              f'#define TVMGEN_DEFAULT_MODEL_HASH "{model_hash}"', "",
              "struct tvmgen_default_inputs {", "  void* input0;", "};", "",
              "struct tvmgen_default_outputs {", "  void* output;", "};", "",
              "/* Runs the model once; returns 0, non-zero on failure. Not reentrant (one arena). */",
              "int32_t tvmgen_default_run(struct tvmgen_default_inputs* inputs, "
              "struct tvmgen_default_outputs* outputs);", "",
              "#ifdef __cplusplus", "}", "#endif", "", "#endif  /* TVMGEN_DEFAULT_H_ */", ""]
    return "\n".join(lines)


KERNEL_PREAMBLE = """/* Kernels generated by TVM's C codegen, used as they come. Their packed-call prologue
   reads fields it never uses and takes parameters it ignores, hence the pragmas. */
#if defined(__GNUC__)
#pragma GCC diagnostic ignored "-Wunused-variable"
#pragma GCC diagnostic ignored "-Wunused-but-set-variable"
#pragma GCC diagnostic ignored "-Wunused-parameter"
#endif
"""


def kernel_source(source, banner, preamble=""):
    """default_lib1.c: TVM's kernels minus the module entry function the VM would call;
    `preamble` (the backend's: e.g. the micro-kernels the kernels call) goes before them."""
    marker = "// CodegenC: NOTE: Auto-generated entry function"
    if marker in source:
        source = source[:source.index(marker)].rstrip() + "\n"
    head = "\n".join(f"/* {line} */" for line in banner)
    return f"{head}\n{KERNEL_PREAMBLE}{preamble}{source}"
