"""The generic backend (0201): every layer as TVM's own Relax ops, TVM's legalized TIR with
one schedule rule that removes all workspace. It runs on any C target and is the golden
library every other backend's output is checked against, bit for bit.

The MCU schedule is what makes the library fit: left alone, each fused kernel keeps its
intermediates (padded input, int32 accumulator, each epilogue step) as full-size buffers that
TIR lowering turns into TVMBackendAllocWorkspace calls (more RAM than the whole model needs,
and a runtime we do not ship). The rule inlines every elementwise step (padding, casts,
requantization) and moves what remains under the innermost common spatial loop of the last
block, so each intermediate shrinks to a scalar on the stack.
"""
import numpy as np
from tvm import relax, s_tir, tirx
from tvm.s_tir import dlight

from utils.aot.fp32 import fp32_to_relax
from utils.aot.layers.base import channel_shaped
from utils.aot.torchscript import INPUT

# Intermediates up to this many elements stay whole: TIR lowering puts them on the stack.
# (log_softmax's row max and row sum are one element each; nesting them under the output
# loop would recompute them for every output.)
SMALL_INTERMEDIATE = 16
REDUCE_ITER = 2  # IterVar.CommReduce


class GenericBackend:
    """What a backend decides; the compiler (utils.aot.compiler) asks it and nothing else."""
    name = "generic"
    # the backend whose library this one's must equal bit for bit (None: this is the golden one)
    golden = None
    # emit.plan_main: place each arena tensor by its own lifetime instead of Relax's storage sharing
    tensor_lifetimes = False
    # emit.glue_source: keep the glue's two helpers out of line (smaller at -O2)
    glue_helpers_out_of_line = False

    def int8_to_relax(self, layers, input_shape):
        return int8_to_relax(layers, input_shape)

    def fp32_to_relax(self, module, input_shape):
        return fp32_to_relax(module, input_shape)

    def relax_passes(self):
        """Relax passes run before legalization."""
        return []

    def schedule_rules(self):
        """dlight rules, tried in order on each fused TIR kernel."""
        return [mcu_no_workspace]

    def finish_kernels(self, kernels_c, kind):
        """(TVM's kernel C as the library ships it, C that goes before it)."""
        return kernels_c, ""

    def cflags(self, kind):
        """Flags every build of the library appends to its own (metadata.json `cflags`)."""
        return []


# ----------------------------------------------------------------------------- int8 → Relax

class RelaxEmitter:
    """The block builder and the steps several layer units' `to_relax` share."""

    def __init__(self, bb):
        self.bb = bb

    @staticmethod
    def const(value, dtype):
        return relax.const(np.asarray(value, dtype=dtype), dtype)

    def requantize(self, acc, layer):
        bb = self.bb
        ndim = len(acc.ty.shape)
        x = bb.emit(relax.op.astype(acc, "float32"))
        if layer.pre_scale is not None:
            x = bb.emit(relax.op.multiply(x, self.const(channel_shaped(layer.pre_scale, ndim), "float32")))
        if layer.bias_float is not None:
            x = bb.emit(relax.op.add(x, self.const(channel_shaped(layer.bias_float, ndim), "float32")))
        multiplier = channel_shaped(layer.multiplier, ndim)
        x = bb.emit(relax.op.multiply(x, self.const(multiplier, "float32")))
        x = bb.emit(relax.op.round(x))  # round lowers to nearbyintf: half to even, like qnnpack
        x = self.add_zero_point(x, layer.out_zero_point)
        low = layer.out_zero_point if layer.relu else 0
        x = bb.emit(relax.op.clip(x, relax.prim_value(float(low)), relax.prim_value(float(layer.clip_high))))
        return bb.emit(relax.op.astype(x, "uint8"))

    def centered(self, x, zero_point):
        # int16 so that (q - zp) is exact and zero padding afterwards pads with the zero point
        x = self.bb.emit(relax.op.astype(x, "int16"))
        if zero_point == 0:
            return x
        return self.bb.emit(relax.op.subtract(x, self.const(zero_point, "int16")))

    def add_zero_point(self, x, zero_point):
        if zero_point == 0:
            return x
        return self.bb.emit(relax.op.add(x, self.const(zero_point, "float32")))


def int8_to_relax(layers, input_shape):
    """An IRModule whose `main(input0: float32[input_shape])` computes the layers."""
    bb = relax.BlockBuilder()
    emitter = RelaxEmitter(bb)
    x_in = relax.Var("input0", relax.TensorType(list(input_shape), "float32"))
    values = {INPUT: x_in}
    with bb.function("main", [x_in]):
        with bb.dataflow():
            for layer in layers:
                values[layer.output] = layer.to_relax(emitter, *[values[name] for name in layer.inputs])
            out = bb.emit_output(values[layers[-1].output])
        bb.emit_func_output(out)
    return bb.get()


# ----------------------------------------------------------------------------- the MCU schedule

def _leading_spatial(info):
    kinds = info.dom_kind()
    return len(kinds) - len(kinds.lstrip("S"))


def _written_elements(sch, block_rv):
    elements = 1
    for dim in sch.get(block_rv).writes[0].source.shape:
        elements *= int(dim)
    return elements


def inlined_blocks(func):
    """(schedule, blocks left after inlining the elementwise ones) of a PrimFunc, or None:
    where every MCU schedule rule starts."""
    if not isinstance(func, tirx.PrimFunc):
        return None
    sch = s_tir.Schedule(func)
    blocks = dlight.normalize_prim_func(sch)
    if blocks is None:
        return None
    return sch, dlight.try_inline(sch, blocks)


@dlight.ScheduleRule.from_callable("McuNoWorkspace")
def mcu_no_workspace(func, target, tunable):
    """Inline the elementwise blocks; nest the rest under the last block's spatial loops."""
    start = inlined_blocks(func)
    if start is None:
        return None
    sch, blocks = start
    large = [b for b in blocks[:-1] if _written_elements(sch, b.block_rv) > SMALL_INTERMEDIATE]
    if large:
        depth = min(_leading_spatial(b) for b in large + blocks[-1:])
        if depth == 0:
            return None
        loop = sch.get_loops(blocks[-1].block_rv)[depth - 1]
        for block in reversed(large):
            sch.compute_at(block.block_rv, loop, preserve_unit_loops=True)
    for block in blocks:
        _hoist_reduction_init(sch, block.block_rv)
    return sch


def _hoist_reduction_init(sch, block_rv):
    """Zero the accumulator before the reduction loops instead of testing `k == 0` inside
    them: faster, and gcc can see the accumulator is initialized (-Wmaybe-uninitialized)."""
    reduce_iters = [iv for iv in sch.get(block_rv).iter_vars if int(iv.iter_type) == REDUCE_ITER]
    if not reduce_iters:
        return
    loops = sch.get_loops(block_rv)
    sch.decompose_reduction(block_rv, loops[len(loops) - len(reduce_iters)])


GENERIC = GenericBackend()
