"""dlight schedule rules that 0202 tries before 0201's McuNoWorkspace rule (fp32 path).

One rule, McuRegisterTiles, for the kernels that do the work: a reduction (conv2d, matmul,
max-pool) with an optional elementwise epilogue (bias, ReLU). On a Cortex-M7 the FPU is
scalar, so what costs is everything around the multiply-accumulate: loads, address
arithmetic, loop counters and branches. The rule

- inlines the elementwise blocks (padding into the conv's loads, bias + ReLU into one
  epilogue), as McuNoWorkspace does;
- register-tiles the outputs: a small tile of outputs (2x2 neighbouring pixels of a conv,
  4 output features of a dense layer) is accumulated together, the tile loop innermost,
  under the reduction loops, so each input and weight loaded serves several outputs; the
  tile's accumulators are a small local array that gcc keeps in registers;
- unrolls the kernel window (ky, kx) and short reduction loops, so every load of the
  window is one instruction with a constant offset and no loop counter is left inside it;
- zeroes the accumulators before the reduction instead of testing `k == 0` in it.

Bit-identity with 0201's library: every output is still the same sequence of float
operations — its sum starts at 0.0f and adds the products in the original (c, ky, kx) or k
order; only the interleaving of different outputs' sums changes, and the epilogue
(bias, then ReLU) and the max-pool's comparisons are the same expressions. Nothing is
reassociated, nothing fused into an FMA (the library is built with -ffp-contract=off; gcc's
VMLA on the M7 is the unfused multiply-then-add).
"""
from tvm import s_tir, tirx
from tvm.s_tir import dlight

REDUCE_ITER = 2  # IterVar.CommReduce

# Innermost reduction loops are unrolled while the product of their extents stays within
# this: a 5x5 window, or a chunk of a dense layer's dot product.
UNROLL_REDUCTION = 25
# Accumulators of one register tile (the M7's FPU has 32 single-precision registers; the
# loads of a 5x5 window for a 2x2 tile need about 20 more).
TILE_OUTPUTS = 4
UNROLL_ANCHOR = 0


def optim_schedule_rules():
    """Rules tried in order on every PrimFunc TVM legalized (the fp32 path); a rule that
    returns None leaves the function to the next one."""
    return [mcu_register_tiles]


@dlight.ScheduleRule.from_callable("McuRegisterTiles")
def mcu_register_tiles(func, target, tunable):
    if not isinstance(func, tirx.PrimFunc):
        return None
    sch = s_tir.Schedule(func)
    blocks = dlight.normalize_prim_func(sch)
    if blocks is None:
        return None
    blocks = dlight.try_inline(sch, blocks)
    reductions = [b for b in blocks if b.is_reduction()]
    if len(reductions) != 1 or not _simple_loop_nest(sch, reductions[0].block_rv):
        return None  # elementwise-only kernels, log_softmax...: McuNoWorkspace
    reduction = reductions[0].block_rv
    if len(blocks) == 1:
        consumer = None
    elif len(blocks) == 2 and blocks[1].block_rv is not reduction and not blocks[1].is_reduction():
        consumer = blocks[1].block_rv
    else:
        return None
    try:
        if consumer is None:
            consumer = sch.cache_write(reduction, 0, "global")
        _tile(sch, reduction, consumer)
    except s_tir.ScheduleError:
        return None
    return sch


def _simple_loop_nest(sch, block_rv):
    """One loop per iteration variable, spatial loops first (normalize_prim_func's form)."""
    kinds = _loop_kinds(sch, block_rv)
    text = "".join(kinds)
    return None not in kinds and text == "S" * text.count("S") + "R" * text.count("R")


def _loop_kinds(sch, block_rv):
    """'S' or 'R' for each loop of the block: the kind of the one iteration variable its loop
    variable feeds (None when it feeds none or several kinds)."""
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


def _tile_factors(extents):
    """Tile of the reduction's spatial extents: 2x2 on the two innermost axes of a conv's
    output plane, else up to TILE_OUTPUTS along the innermost axis (dense features, the
    channels of a conv with a 1x1 output)."""
    tile = [1] * len(extents)
    if len(extents) >= 3 and extents[-1] % 2 == 0 and extents[-2] % 2 == 0:
        tile[-1] = tile[-2] = 2
    elif extents:
        tile[-1] = max(f for f in range(1, TILE_OUTPUTS + 1) if extents[-1] % f == 0)
    return tile


def _plan(spatial, reduce_extents):
    return _tile_factors(spatial), UNROLL_REDUCTION


def _tile(sch, reduction, consumer):
    red_loops = sch.get_loops(reduction)
    kinds = _loop_kinds(sch, reduction)
    spatial = [int(sch.get(l).extent) for l, k in zip(red_loops, kinds) if k == "S"]
    reduce_extents = [int(sch.get(l).extent) for l, k in zip(red_loops, kinds) if k == "R"]
    # The consumer (epilogue, or the cache_write copy) iterates over the reduction's output.
    out_loops = [l for l in sch.get_loops(consumer) if int(sch.get(l).extent) != 1]
    if [int(sch.get(l).extent) for l in out_loops] != spatial:
        raise s_tir.ScheduleError("the epilogue does not walk the reduction's output")
    tile, unroll_limit = _plan(spatial, reduce_extents)
    outer, inner = [], []
    for loop, factor in zip(out_loops, tile):
        if factor == 1:
            outer.append(loop)
        else:
            o, i = sch.split(loop, [None, factor])
            outer.append(o)
            inner.append(i)
    sch.reorder(*outer, *inner)
    anchor = outer[-1]
    sch.compute_at(reduction, anchor, preserve_unit_loops=False)
    for loop in inner:
        sch.unroll(loop)
    if UNROLL_ANCHOR and int(sch.get(anchor).extent) <= UNROLL_ANCHOR:
        sch.unroll(anchor)

    # Under the anchor: the tile's loops, then the reduction loops. Put the tile innermost.
    loops = sch.get_loops(reduction)
    kinds = _loop_kinds(sch, reduction)
    anchor_stmt = sch.get(anchor)
    depth = next(i for i, loop in enumerate(loops) if sch.get(loop).same_as(anchor_stmt)) + 1
    tile_loops = [l for l, k in zip(loops[depth:], kinds[depth:]) if k == "S"]
    reduce_loops = [l for l, k in zip(loops[depth:], kinds[depth:]) if k == "R"]
    reduce_loops = _split_for_unroll(sch, reduce_loops, reduce_extents)
    sch.reorder(*reduce_loops, *tile_loops)
    init = sch.decompose_reduction(reduction, reduce_loops[0])
    for loop in sch.get_loops(init)[depth:]:
        sch.unroll(loop)
    for loop in tile_loops:
        sch.unroll(loop)
    unrolled = 1
    for loop in reversed(reduce_loops):
        extent = int(sch.get(loop).extent)
        if unrolled * extent > unroll_limit:
            break
        unrolled *= extent
        sch.unroll(loop)


def _split_for_unroll(sch, reduce_loops, extents):
    """A single long reduction loop (a dense layer's k) is split so that its inner part can be
    unrolled: the additions keep their order, only the loop counter changes."""
    if len(reduce_loops) != 1 or extents[0] <= UNROLL_REDUCTION:
        return reduce_loops
    extent = extents[0]
    factor = max(f for f in range(1, 9) if extent % f == 0)
    if factor == 1:
        return reduce_loops
    return list(sch.split(reduce_loops[0], [None, factor]))
