"""The Cortex-M backend's schedules for what goes through TVM's legalized TIR (the fp32 path).

On a Cortex-M7 the FPU is scalar: what costs is everything around each multiply-accumulate
(loads, address arithmetic, loop counters, branches, intermediates going through memory).
Three Relax rewrites run before legalization (cortex_m_relax_passes) and one dlight rule
schedules the kernels (cortex_m_schedule_rules), tried before the generic backend's
McuNoWorkspace rule.

Relax
- SplitConvPadding: a float conv2d with zero padding becomes nn.pad (a small kernel that
  writes the padded input once into the arena) + an unpadded conv2d, so no bounds test is
  left in the conv's loops. The conv still multiplies the padding's zeros.
- PoolBeforeBiasRelu: max_pool2d(relu(conv + b)) → relu(max_pool2d(conv) + b) for a
  per-channel bias (exact, see there): bias and ReLU once per pooled output, not per conv output.
- conv2d + max_pool2d fused into one kernel (FuseOpsByPattern): the conv's outputs never go
  through the arena (arena 23 520 → 9 408 B for the fp32 LeNet-5).

TIR (McuRegisterTiles), on a kernel with one multiply-accumulate reduction (conv2d, matmul)
followed by an elementwise epilogue (bias, ReLU) or by the fused max-pool:
- elementwise blocks are inlined (padding reads, bias + ReLU into one epilogue);
- register tile: a row of up to 14 neighbouring conv outputs, or up to 8 features of a dense
  layer (or of a conv with a 1x1 output), accumulated together with the tile loop innermost
  under the reduction loops, so each weight loaded serves the whole tile and each input
  several outputs; the tile's sums are a small local array gcc keeps in registers;
- a fused pool consumes the conv one row at a time: its loops (py, px, dy, dx) become
  (py, pxo, dy, pxi, dx); under dy the conv computes the row 2*py + dy of its outputs and
  the pool takes their maxima at once;
- the kernel window's kx is unrolled (the whole 5x5 window of a 1x1-output conv; chunks of
  up to 8 of a dense layer's k), so loads have constant offsets and no counter is left there;
- sums are zeroed before the reduction (no `k == 0` test inside it);
- purely elementwise kernels get their innermost loop unrolled when it is short.

Bit-identity with 0201's library: every output is the same sequence of float operations.
A sum starts at 0.0f and adds its products in the original (c, ky, kx) or k order; bias
then ReLU are the same expressions; a pool output starts at -FLT_MAX and takes its maxima
in the original (dy, dx) order. Only the interleaving of different outputs changes.
Nothing is reassociated, nothing becomes an FMA (the library is built with
-ffp-contract=off; at -Os gcc's VMLA on the M7 is the unfused multiply-then-add). The one
algebraic step, pool before bias + ReLU, is exact for finite activations.
tests/test_0202_fp32_optim.py checks the bits against 0201's library.
"""
import tvm
import tvm_ffi
from tvm import relax, s_tir, tirx
from tvm.relax.dpl import is_op, rewrite_call, wildcard
from tvm.relax.expr_functor import PyExprMutator, mutator
from tvm.s_tir import dlight

from utils.aot.backends.generic import inlined_blocks

REDUCE_ITER = 2  # IterVar.CommReduce
# A conv's register tile: at most this many outputs of one row (28 → 14, 10 → 10, 24 → 12).
CONV_ROW_TILE = 14
# A dense layer's (or 1x1-output conv's) register tile: at most this many output features.
DENSE_TILE = 8
# Reduction loops are unrolled, innermost first, while the product of their extents stays
# within this; a longer single loop (a dense layer's k) is split and its inner part unrolled.
UNROLL_DENSE = 25
DENSE_K_CHUNK = 8
ELEMENTWISE_UNROLL = 16


# ============================================================================ Relax

def cortex_m_relax_passes():
    """Relax passes run before LegalizeOps."""
    return [split_conv_padding, pool_before_bias_relu, _fuse_conv_pool()]


@mutator
class _SplitConvPadding(PyExprMutator):
    def visit_call_(self, call):  # noqa: N802 (TVM's visitor name)
        call = super().visit_call_(call)
        if not isinstance(call.op, tvm.ir.Op) or call.op.name != "relax.nn.conv2d":
            return call
        attrs = call.attrs
        padding = [int(p) for p in attrs.padding]
        if not any(padding) or attrs.data_layout != "NCHW" or not _is_float32(call.args[0]):
            return call
        top, left, bottom, right = padding
        padded = self.builder_.emit(relax.op.nn.pad(call.args[0], [0, 0, 0, 0, top, bottom, left, right],
                                                    "constant", 0.0))
        return relax.op.nn.conv2d(padded, call.args[1], attrs.strides, [0, 0, 0, 0], attrs.dilation,
                                  attrs.groups, attrs.data_layout, attrs.kernel_layout, attrs.out_layout,
                                  attrs.out_dtype)


@tvm.transform.module_pass(opt_level=0, name="SplitConvPadding")
def split_conv_padding(mod, _ctx):
    """Zero-padded float conv2d → nn.pad + conv2d without padding."""
    for gv, func in mod.functions_items():
        if isinstance(func, relax.Function):
            mod[gv] = _SplitConvPadding().visit_expr(func)
    return mod


def _is_float32(expr):
    return str(getattr(expr.ty, "dtype", "")) == "float32"


def _window_is_stride(pool_attrs):
    """A max-pool whose windows tile its input: window = stride, no padding, no dilation."""
    return (pool_attrs.layout == "NCHW" and not any(int(p) for p in pool_attrs.padding)
            and [int(s) for s in pool_attrs.strides] == [int(k) for k in pool_attrs.pool_size]
            and all(int(d) == 1 for d in pool_attrs.dilation) and not pool_attrs.ceil_mode)


def _per_channel(expr, channels):
    """A bias of shape (1, C, 1, 1): the same value over every pixel of a channel."""
    shape = getattr(expr.ty, "shape", None)
    try:
        dims = [int(d) for d in shape.values]
    except (AttributeError, TypeError):
        return False
    return dims == [1, channels, 1, 1]


def _conv_bias_relu_pool_pattern():
    conv = is_op("relax.nn.conv2d")(wildcard(), wildcard())
    bias = wildcard()
    pool = is_op("relax.nn.max_pool2d")(is_op("relax.nn.relu")(is_op("relax.add")(conv, bias)))
    return conv, bias, pool


@tvm.transform.module_pass(opt_level=0, name="PoolBeforeBiasRelu")
def pool_before_bias_relu(mod, _ctx):
    """max_pool2d(relu(conv + b)) → relu(max_pool2d(conv) + b), for a per-channel bias b.

    Exact in float32: x ↦ fl(x + b) and ReLU are non-decreasing, so the largest of a window's
    fl(v + b) is fl(max v + b), and the largest ReLU is the ReLU of the largest. A conv sum
    starts at +0 and is never -0 (round-to-nearest gives +0 for exact cancellations), so no
    ±0 tie can pick different bits; activations are finite (no NaN). The pool then reads
    the raw sums and the bias and ReLU run once per pooled output instead of per conv output.
    """
    conv, bias, pool = _conv_bias_relu_pool_pattern()

    def rewrite(matched, found):
        attrs = matched.attrs
        channels = int(found[conv].ty.shape.values[1])
        if not (_is_float32(found[conv]) and _window_is_stride(attrs) and _per_channel(found[bias], channels)):
            return matched
        pooled = relax.op.nn.max_pool2d(found[conv], attrs.pool_size, attrs.strides, attrs.padding,
                                        attrs.dilation, attrs.ceil_mode, attrs.count_include_pad,
                                        attrs.layout, attrs.out_layout)
        return relax.op.nn.relu(relax.op.add(pooled, found[bias]))

    for gv, func in mod.functions_items():
        if isinstance(func, relax.Function):
            mod[gv] = rewrite_call(pool, rewrite, func)
    return mod


def _fuse_conv_pool():
    """conv2d → max_pool2d as one kernel (after PoolBeforeBiasRelu): the conv's outputs never
    reach the arena. Bias + ReLU stay a small elementwise kernel on the pooled output (fused
    into the conv kernel, its per-output state would stay live across the conv's loops and
    gcc would spill the conv's sums)."""
    conv = is_op("relax.nn.conv2d")(wildcard(), wildcard())
    pool = is_op("relax.nn.max_pool2d")(conv)

    def check(context):
        found = context.annotated_expr
        return _is_float32(found["conv"]) and _window_is_stride(found["pool"].attrs)

    return relax.transform.FuseOpsByPattern(
        [relax.transform.FusionPattern("mcu_conv2d_maxpool", pool, {"conv": conv, "pool": pool}, check)],
        bind_constants=False)


# ============================================================================ TIR

def cortex_m_schedule_rules():
    """Rules tried in order on every PrimFunc TVM legalized (the fp32 path); a rule that
    returns None leaves the function to the next one."""
    return [mcu_register_tiles]


@dlight.ScheduleRule.from_callable("McuRegisterTiles")
def mcu_register_tiles(func, target, tunable):
    start = inlined_blocks(func)
    if start is None:
        return None
    sch, blocks = start
    if not all(_simple_loop_nest(sch, b.block_rv) for b in blocks):
        return None
    if any(_written_dtype(sch, b.block_rv) != "float32" for b in blocks):
        return None  # the int8 path has its own kernels (utils.aot.backends.cortex_m.int8)
    kinds = ["R" if b.is_reduction() else "S" for b in blocks]
    try:
        if kinds == ["R", "R"] and _reads_products(sch, blocks[0].block_rv):
            _conv_pool(sch, blocks[0].block_rv, blocks[1].block_rv)
            return s_tir.Schedule(_max_as_select(sch.mod["main"]))
        elif kinds == ["R", "S"] and _reads_products(sch, blocks[0].block_rv):
            _tile(sch, blocks[0].block_rv, blocks[1].block_rv)
        elif kinds == ["S"]:
            _unroll_elementwise(sch, blocks[0].block_rv)
        elif kinds == ["R"] and _reads_products(sch, blocks[0].block_rv):  # a matmul without bias
            _tile(sch, blocks[0].block_rv, sch.cache_write(blocks[0].block_rv, 0, "global"))
        else:
            # log_softmax, pools not fed by a conv (their unrolled max updates would meet the
            # codegen hazard of _max_as_select): McuNoWorkspace
            return None
    except (s_tir.ScheduleError, _NotThisKernel):
        return None
    return sch


class _NotThisKernel(Exception):
    pass


def _simple_loop_nest(sch, block_rv):
    """One loop per iteration variable, spatial loops first (normalize_prim_func's form)."""
    text = "".join(k or "?" for k in _loop_kinds(sch, block_rv))
    return text == "S" * text.count("S") + "R" * text.count("R")


def _loop_kinds(sch, block_rv):
    """'S' or 'R' for each loop of the block: the kind of the iteration variables its loop
    variable feeds (None when none, or both kinds)."""
    block = sch.get(block_rv)
    loops = sch.get_loops(block_rv)
    realize = sch.get(loops[-1]).body if loops else None
    if not isinstance(realize, s_tir.SBlockRealize):
        return [None] * len(loops)
    kinds = []
    for loop in loops:
        var = sch.get(loop).loop_var
        fed = {int(iv.iter_type) for iv, value in zip(block.iter_vars, realize.iter_values)
               if any(v.same_as(var) for v in tirx.analysis.undefined_vars(value))}
        kinds.append({0: "S", REDUCE_ITER: "R"}.get(fed.pop()) if len(fed) == 1 else None)
    return kinds


def _written_dtype(sch, block_rv):
    return str(sch.get(block_rv).writes[0].source.dtype)


def _reads_products(sch, block_rv):
    """A multiply-accumulate (conv, matmul) reads two tensors besides its own accumulator."""
    block = sch.get(block_rv)
    written = block.writes[0].source
    return len({r.source for r in block.reads if not r.source.same_as(written)}) >= 2


def _extents(sch, loops):
    return [int(sch.get(loop).extent) for loop in loops]


def _split_loops(sch, block_rv):
    loops = sch.get_loops(block_rv)
    kinds = _loop_kinds(sch, block_rv)
    return ([l for l, k in zip(loops, kinds) if k == "S"], [l for l, k in zip(loops, kinds) if k == "R"])


def _largest_divisor(n, at_most):
    return max(f for f in range(1, at_most + 1) if n % f == 0)


def _tile_plan(sch, reduction):
    """(tile factor per spatial axis, how many reduction loops to unroll innermost-first)."""
    spatial, reduce = (_extents(sch, loops) for loops in _split_loops(sch, reduction))
    tile = [1] * len(spatial)
    if len(spatial) >= 3:  # conv: (channel, y, x); a row tile, the window's kx unrolled
        tile[-1] = _largest_divisor(spatial[-1], CONV_ROW_TILE)
        return tile, 1
    if spatial:  # dense, or a conv whose output is 1x1 (normalize_prim_func drops unit axes)
        tile[-1] = _largest_divisor(spatial[-1], DENSE_TILE)
    unroll = 0
    while unroll < len(reduce) and _product(reduce[len(reduce) - unroll - 1:]) <= UNROLL_DENSE:
        unroll += 1
    return tile, unroll


def _product(values):
    out = 1
    for v in values:
        out *= v
    return out


def _depth_of(sch, block_rv, loop):
    stmt = sch.get(loop)
    return next(i for i, l in enumerate(sch.get_loops(block_rv)) if sch.get(l).same_as(stmt)) + 1


def _tile(sch, reduction, consumer):
    """Reduction + elementwise consumer (its epilogue, or a cache_write copy to the output)."""
    spatial_loops, _ = _split_loops(sch, reduction)
    spatial = _extents(sch, spatial_loops)
    # The consumer walks the reduction's output (a cache_write copy keeps unit axes: skip them).
    out_loops = [l for l in sch.get_loops(consumer) if int(sch.get(l).extent) != 1]
    if _extents(sch, out_loops) != spatial:
        raise _NotThisKernel()
    tile, unroll = _tile_plan(sch, reduction)
    outer, inner = [], []
    for loop, factor in zip(out_loops, tile):
        if factor == 1:
            outer.append(loop)
        else:
            o, i = sch.split(loop, [None, factor])
            outer.append(o)
            inner.append(i)
    if not outer:
        raise _NotThisKernel()
    sch.reorder(*outer, *inner)
    anchor = outer[-1]
    sch.compute_at(reduction, anchor, preserve_unit_loops=False)
    for loop in inner:
        sch.unroll(loop)
    _tile_innermost(sch, reduction, _depth_of(sch, reduction, anchor), unroll)


def _tile_innermost(sch, reduction, depth, unroll):
    """Below `depth`, the reduction's loops are (tile loops, reduction loops): put the tile
    innermost, zero its sums before the reduction, unroll the tile and the window's inner
    reduction loops."""
    loops = sch.get_loops(reduction)[depth:]
    kinds = _loop_kinds(sch, reduction)[depth:]
    tile_loops = [l for l, k in zip(loops, kinds) if k == "S"]
    reduce_loops = [l for l, k in zip(loops, kinds) if k == "R"]
    if not reduce_loops:
        raise _NotThisKernel()
    if unroll == 0 and len(reduce_loops) == 1:  # a dense layer's long k: unroll chunks of it
        chunk = _largest_divisor(int(sch.get(reduce_loops[0]).extent), DENSE_K_CHUNK)
        if chunk > 1:
            reduce_loops = list(sch.split(reduce_loops[0], [None, chunk]))
            unroll = 1
    sch.reorder(*reduce_loops, *tile_loops)
    init = sch.decompose_reduction(reduction, reduce_loops[0])
    for loop in sch.get_loops(init)[depth:]:
        sch.unroll(loop)
    for loop in tile_loops + reduce_loops[len(reduce_loops) - unroll:]:
        sch.unroll(loop)


def _conv_pool(sch, conv, pool):
    """conv → max-pool whose window = stride (the pool writes the kernel's output).

    The pool's loops (c, py, px, dy, dx) become (c, py, pxo, dy, pxi, dx): for each output
    row py and window row dy, the conv computes one row of its outputs (2*py + dy; pxi x dx of
    them: a row tile) into local sums, and the pool takes their maxima right away. Each pool
    output still starts at -FLT_MAX and sees its window in (dy, dx) order."""
    pool_spatial, pool_reduce = _split_loops(sch, pool)
    conv_spatial, _ = _split_loops(sch, conv)
    if len(pool_spatial) < 3 or len(pool_reduce) != 2 or len(conv_spatial) != len(pool_spatial):
        raise _NotThisKernel()
    window = _extents(sch, pool_reduce)
    conv_x, pool_x = _extents(sch, conv_spatial)[-1], _extents(sch, pool_spatial)[-1]
    if conv_x != pool_x * window[1]:
        raise _NotThisKernel()
    per_row = _largest_divisor(pool_x, max(1, CONV_ROW_TILE // window[1]))
    px_outer, px_inner = sch.split(pool_spatial[-1], [None, per_row])
    dy, dx = pool_reduce
    sch.reorder(*pool_spatial[:-1], px_outer, dy, px_inner, dx)
    pool_init = sch.decompose_reduction(pool, dy)
    for loop in sch.get_loops(pool_init)[len(pool_spatial):] + [px_inner, dx]:
        sch.unroll(loop)
    sch.compute_at(conv, dy, preserve_unit_loops=False)
    _tile_innermost(sch, conv, _depth_of(sch, conv, dy), 1)


def _unroll_elementwise(sch, block_rv):
    loops = sch.get_loops(block_rv)
    if not loops or int(sch.get(loops[-1]).extent) > ELEMENTWISE_UNROLL:
        raise _NotThisKernel()
    sch.unroll(loops[-1])


def _max_as_select(func):
    """T.max(a, b) → Select(a > b, a, b): the same C expression, `a > b ? a : b`, printed
    without CodeGenC's temporaries. TVM 0.27's C codegen binds each max operand to a `float
    v_ = <expr>;` it reuses for the same expression text later in the scope, even across a
    store to that address: of two consecutive `pool[i] = max(pool[i], c)` the second would
    read the stale first load (it happens when no loop ends between them in the scope, e.g.
    a fully unrolled conv). A select is printed inline and reads pool[i] anew."""
    def swap(node, _mutator):
        return tirx.Select(tirx.GT(node.a, node.b), node.a, node.b)

    return tvm_ffi.structural_mutate(func, (tirx.Max, swap))
