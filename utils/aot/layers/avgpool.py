"""Average pooling on a quantized tensor: AvgPool2d, AdaptiveAvgPool2d and `mean` over H×W.

Eager conversion leaves nn.AvgPool2d / nn.AdaptiveAvgPool2d float modules; on a quint8 tensor
they call aten::avg_pool2d / aten::adaptive_avg_pool2d, and x.mean(...) calls aten::mean.
The output keeps the input's scale and zero point. PyTorch runs one of several kernels,
picked by the engine, the arguments and the input's memory layout, and each rounds its own way.
The golden model (and the library) follow the one torch picks, bit for bit:

  kernel (torch 2.14, aten/src/ATen/native/quantized/cpu/...)       arithmetic
  qnnpack average pooling: avg_pool2d without ceil_mode,            ROUND_THEN_ADD,
    adaptive_avg_pool2d when input % output == 0 (not identity),      M = s / (s * kh*kw), one M
    and qnnpack global average pooling: mean over dims exactly [2, 3]
  the NHWC kernels (QuantizedOpKernels.cpp) for a channels-last      ROUND_THEN_ADD,
    input: avg_pool2d with ceil_mode (or another engine),             M = f32(1 / divisor) for
    adaptive_avg_pool2d otherwise                                     each output position
  avg_pool2d_out_frame, NCHW-contiguous input                        ADD_THEN_ROUND, M as above
                                                                      (via double: the same float)
  adaptive_avg_pool_single_out_frame, NCHW-contiguous input          RAW_TIMES, M = f32(f32(1/kh)/kw)
  qmean_inner_dim_kernel: mean over other dims of an NCHW input      RAW_OVER, q = rint(f32(sum) / n)
  mean otherwise (channels-last input): dequantize, ATen's float     FLOAT_MEAN
    sum, divide, quantize_per_tensor

  ROUND_THEN_ADD  q = clip(rint(f32(acc) * M) + zp, 0, 255), acc = sum over the window of (q_in - zp)
  ADD_THEN_ROUND  q = clip(rint(f32(acc) * M + zp), 0, 255)
  RAW_TIMES       q = rint(f32(sum q_in) * M)
  RAW_OVER        q = rint(f32(sum q_in) / f32(n))
  FLOAT_MEAN      q = clip(rint(f32(sum v) / f32(n) * f32(1/s)) + zp, 0, 255), v = (f32(q_in) - zp) * s,
                  the float sum in the order of ATen's cascade_sum (sum_tree below)

All in float32, rint = round half to even. A window sums the input pixels it covers; padding
adds nothing (qnnpack pads with the zero point, which the centering removes). Quirks kept:
qnnpack's avg_pool2d ignores count_include_pad and divisor_override (it always divides by
kh*kw), and the NHWC kernels scramble the channels of a 1×1 input pooled to a larger output
(that is refused). The multiplier is the same whether torch's NHWC kernels take their AVX path
(x * M) or their scalar one (x * (1 / (1 / M))): for M = f32(1 / d) the two agree (checked for
every divisor d a window can have, up to 10^5).
"""
import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from tvm import relax

from utils.cli import StageError
from utils.aot.layers.base import F32, Layer, aten_rule, graph_constants, module_rule, pair
from utils.aot.layers.pool import pooled_size

ROUND_THEN_ADD = "round_then_add"
ADD_THEN_ROUND = "add_then_round"
RAW_TIMES = "raw_times"
RAW_OVER = "raw_over"
FLOAT_MEAN = "float_mean"

# ATen's float vectors hold 8 lanes where its sum kernel runs (AVX2 dispatch, also on AVX512
# CPUs, and the default build); the lane count decides which channels sum in which order.
SUM_LANES = 8
CASCADE_STEP = 16  # multi_row_sum's chunk (level_step), 2**max(4, ceil(log2 n) // 4) ...
MAX_CASCADE = 1 << 19  # ... which is 16 up to this many elements
CASCADE_LEVELS = 4
GRAIN_SIZE = 32768  # at::internal::GRAIN_SIZE: a smaller reduction runs on one thread
ROUND_COLUMNS = 32  # parallel_dim_reduction's chunks start at multiples of 128 bytes of floats
CASCADE, ROW = "cascade", "row"


@dataclass
class QAvgPool(Layer):
    op: str                 # the aten op, for PyTorch's replay
    op_args: tuple          # its arguments after the input
    arithmetic: str         # one of the five above
    zero_point: int
    scale: float
    rows: tuple             # per output row, the input rows [start, end) its window sums
    cols: tuple             # the same for columns
    window: tuple           # ((k, stride, pad_before, pad_after) per axis) when the windows are a
                            # regular grid (a depthwise convolution computes them), else None
    multiplier: np.ndarray  # float32 M: a scalar or one per output position [OH, OW]
    out_shape: tuple        # the output's shape ([1, C, OH, OW], or [1, C] for mean without keepdim)
    sum_loops: tuple = ()   # FLOAT_MEAN: which channels ATen sums in which order (sum_loops)

    def golden(self, x):
        if self.arithmetic == FLOAT_MEAN:
            return self._golden_float_mean(x)
        centered = self.arithmetic in (ROUND_THEN_ADD, ADD_THEN_ROUND)
        rows, cols = _selection(self.rows, x.shape[2]), _selection(self.cols, x.shape[3])
        values = x.astype(np.int64) - (self.zero_point if centered else 0)
        acc = np.einsum("oh,nchw,pw->ncop", rows, values, cols).astype(F32)
        zp = F32(self.zero_point)
        if self.arithmetic == ROUND_THEN_ADD:
            q = np.rint(acc * self.multiplier) + zp
        elif self.arithmetic == ADD_THEN_ROUND:
            q = np.rint(acc * self.multiplier + zp)
        elif self.arithmetic == RAW_TIMES:
            q = np.rint(acc * self.multiplier)
        else:
            q = np.rint(acc / F32(x.shape[2] * x.shape[3]))
        return np.clip(q, 0, 255).astype(np.uint8).reshape(x.shape[:1] + self.out_shape[1:])

    def _golden_float_mean(self, x):
        batch, c, h, w = x.shape
        values = ((x.astype(F32) - F32(self.zero_point)) * F32(self.scale)).reshape(batch, c, h * w)
        total = sum_tree(NumpySums(), values, self.sum_loops)
        mean = total / F32(h * w)
        q = np.rint(mean * (F32(1) / F32(self.scale))) + F32(self.zero_point)
        return np.clip(q, 0, 255).astype(np.uint8).reshape(x.shape[:1] + self.out_shape[1:])

    def to_relax(self, r, x):
        bb = r.bb
        if self.arithmetic == FLOAT_MEAN:
            return self._relax_float_mean(r, x)
        centered = self.arithmetic in (ROUND_THEN_ADD, ADD_THEN_ROUND)
        acc = window_sums(r, r.centered(x, self.zero_point if centered else 0), self)
        f = bb.emit(relax.op.astype(acc, "float32"))
        if self.arithmetic == RAW_OVER:
            n = int(x.ty.shape[2]) * int(x.ty.shape[3])
            f = bb.emit(relax.op.divide(f, r.const(n, "float32")))
        else:
            f = bb.emit(relax.op.multiply(f, r.const(self._relax_multiplier(), "float32")))
        if self.arithmetic == ADD_THEN_ROUND:
            f = bb.emit(relax.op.add(f, r.const(self.zero_point, "float32")))
        f = bb.emit(relax.op.round(f))  # nearbyintf: half to even
        if self.arithmetic == ROUND_THEN_ADD:
            f = bb.emit(relax.op.add(f, r.const(self.zero_point, "float32")))
        return _to_uint8(r, f, self.out_shape)

    def _relax_multiplier(self):
        m = np.asarray(self.multiplier, F32)
        return m if m.ndim == 0 else m.reshape((1, 1) + m.shape)

    def _relax_float_mean(self, r, x):
        bb = r.bb
        _, c, h, w = (int(d) for d in x.ty.shape)
        # dequantize by table: exactly (f32(q) - zp) * s for each of the 256 codes, and no
        # multiply-add for a C compiler to fuse
        table = (np.arange(256, dtype=F32) - F32(self.zero_point)) * F32(self.scale)
        codes = bb.emit(relax.op.astype(x, "int32"))
        values = bb.emit(relax.op.take(r.const(table, "float32"), codes, axis=0, mode="clip"))
        values = bb.emit(relax.op.reshape(values, [c, h * w]))
        total = sum_tree(RelaxSums(r), values, self.sum_loops)
        f = bb.emit(relax.op.divide(total, r.const(h * w, "float32")))
        f = bb.emit(relax.op.multiply(f, r.const(F32(1) / F32(self.scale), "float32")))
        f = bb.emit(relax.op.round(f))
        f = bb.emit(relax.op.add(f, r.const(self.zero_point, "float32")))
        return _to_uint8(r, f, self.out_shape)

    def torch_replay(self, t):
        if self.op == "aten::avg_pool2d":
            return F.avg_pool2d(t, *self.op_args)
        if self.op == "aten::adaptive_avg_pool2d":
            return F.adaptive_avg_pool2d(t, self.op_args[0])
        return torch.mean(t, list(self.op_args[0]), bool(self.op_args[1]))


def _selection(windows, size):
    """The 0/1 matrix [outputs, size] whose row o marks the inputs window o sums."""
    matrix = np.zeros((len(windows), size), np.int64)
    for o, (start, end) in enumerate(windows):
        matrix[o, start:end] = 1
    return matrix


def _to_uint8(r, f, out_shape):
    f = r.bb.emit(relax.op.clip(f, relax.prim_value(0.0), relax.prim_value(255.0)))
    q = r.bb.emit(relax.op.astype(f, "uint8"))
    if tuple(int(d) for d in q.ty.shape) != tuple(out_shape):
        q = r.bb.emit(relax.op.reshape(q, list(out_shape)))
    return q


def window_sums(r, x, layer):
    """int32 [1, C, OH, OW]: the sum of x (int16) over each output's window."""
    bb = r.bb
    _, c, h, w = (int(d) for d in x.ty.shape)
    if layer.window is not None:
        # a depthwise convolution with all-ones kernels; its zero padding adds nothing
        (kh, sh, ph, eh), (kw, sw, pw, ew) = layer.window
        ones = r.const(np.ones((c, 1, kh, kw), np.int8), "int8")
        acc = bb.emit(relax.op.nn.conv2d(x, ones, strides=(sh, sw), padding=(ph, pw, eh, ew),
                                         groups=c, out_dtype="int32"))
    else:
        # irregular windows (adaptive pooling to a size that does not divide the input): the
        # sums are separable, rows · X · colsᵀ with 0/1 selection matrices
        cols_t = r.const(np.ascontiguousarray(_selection(layer.cols, w).T), "int8")
        acc = bb.emit(relax.op.matmul(x, cols_t, out_dtype="int32"))
        acc = bb.emit(relax.op.matmul(r.const(_selection(layer.rows, h), "int8"), acc, out_dtype="int32"))
    got = tuple(int(d) for d in acc.ty.shape)[2:]
    if got != (len(layer.rows), len(layer.cols)):
        raise StageError(f"average pooling to {len(layer.rows)}x{len(layer.cols)} lowered to {got[0]}x{got[1]}")
    return acc


# ----------------------------------------------------------------------------- float sum order

class NumpySums:
    """sum_tree's steps in numpy float32, each addition rounded in order."""

    @staticmethod
    def seqsum(x):
        if x.shape[-1] == 1:  # 0 + x is x (the values hold no -0.0)
            return x[..., 0]
        acc = np.zeros(x.shape[:-1], F32)
        for i in range(x.shape[-1]):
            acc = (acc + x[..., i]).astype(F32)
        return acc

    @staticmethod
    def add(a, b):
        return (a + b).astype(F32)

    @staticmethod
    def part(x, start, end):
        return x[..., start:end]

    @staticmethod
    def channels(x, start, end):
        return x[..., start:end, :]

    @staticmethod
    def reshape(x, shape):
        return x.reshape(shape)

    @staticmethod
    def swap(x):
        return np.swapaxes(x, -1, -2)

    @staticmethod
    def concat(xs):
        return np.concatenate(xs, axis=-1)


class RelaxSums:
    """sum_tree's steps as Relax ops; a sum over an axis is a serial loop from 0, in order."""

    def __init__(self, r):
        self.bb = r.bb

    def seqsum(self, x):
        shape = _shape(x)
        if shape[-1] == 1:
            return self.reshape(x, shape[:-1])
        return self.bb.emit(relax.op.sum(x, axis=[-1]))

    def add(self, a, b):
        return self.bb.emit(relax.op.add(a, b))

    def part(self, x, start, end):
        if (start, end) == (0, _shape(x)[-1]):
            return x
        return self.bb.emit(relax.op.strided_slice(x, axes=[len(x.ty.shape) - 1], begin=[start], end=[end]))

    def channels(self, x, start, end):
        return self.bb.emit(relax.op.strided_slice(x, axes=[len(x.ty.shape) - 2], begin=[start], end=[end]))

    def reshape(self, x, shape):
        return self.bb.emit(relax.op.reshape(x, list(shape)))

    def swap(self, x):
        axes = list(range(len(x.ty.shape)))
        axes[-1], axes[-2] = axes[-2], axes[-1]
        return self.bb.emit(relax.op.permute_dims(x, axes))

    def concat(self, xs):
        return xs[0] if len(xs) == 1 else self.bb.emit(relax.op.concat(xs, axis=-1))


def sum_loops(channels, n, threads):
    """Which of cascade_sum's loops (aten/src/ATen/native/cpu/SumKernel.cpp) sums each channel
    of a channels-last [1, C, H, W] tensor reduced over its n = H*W pixels (rows of stride C):
    [(first channel, end, CASCADE or ROW)]. vectorized_outer_sum takes 4 vectors of channels at
    a time through multi_row_sum (CASCADE), then single vectors and single channels through
    row_sum (ROW); scalar_outer_sum, for fewer channels than a vector, takes 4 at a time, then
    single ones. From GRAIN_SIZE elements on, parallel_dim_reduction splits the channels among
    `threads` OpenMP threads (chunks of ceil(C / threads), rounded down to 128 bytes), and each
    chunk picks its loops by its own width. (One channel never comes here: a [1, 1, H, W]
    tensor is NCHW-contiguous, and mean takes RAW_OVER.)"""
    if n > MAX_CASCADE:
        raise StageError(f"mean over {n} elements: 0201 follows ATen's summation order up to {MAX_CASCADE}")
    chunks = [(0, channels)]
    if channels * n >= GRAIN_SIZE and threads > 1:
        tasks = min(threads, channels)
        size = -(-channels // tasks)
        chunks = []
        for begin in range(0, channels, size):
            end = min(channels, begin + size)
            begin -= begin % ROUND_COLUMNS
            if end != channels:
                end -= end % ROUND_COLUMNS
            if begin < end:
                chunks.append((begin, end))
    loops = []
    for begin, end in chunks:
        group = 4 * SUM_LANES if end - begin >= SUM_LANES else 4
        cut = begin + (end - begin) // group * group
        for segment in ((begin, cut, CASCADE), (cut, end, ROW)):
            if segment[0] == segment[1]:
                continue
            if loops and loops[-1][2] == segment[2]:
                loops[-1] = (loops[-1][0], segment[1], segment[2])
            else:
                loops.append(segment)
    return tuple(loops)


def sum_tree(ops, values, loops):
    """Per channel, the float sum of values [..., C, n] (n = H*W, in (h, w) order) in the
    order ATen adds them: each channel range of `loops` (sum_loops) through its loop."""
    channels, n = _shape(values)[-2:]
    parts = []
    for begin, end, loop in loops:
        part = values if (begin, end) == (0, channels) else ops.channels(values, begin, end)
        parts.append((_cascade if loop == CASCADE else _row_sum)(ops, part, n))
    return ops.concat(parts)


def _cascade(ops, x, n):
    """multi_row_sum along the last axis of x [..., n]: running sums of 16 elements, whose
    sums are summed in 16s and so on over 4 levels, then the partial sums from the lowest
    level up."""
    lead = _lead_shape(x)
    blocks, tail = divmod(n, CASCADE_STEP)
    if blocks == 0:
        return ops.seqsum(x)
    pending = [ops.seqsum(ops.part(x, blocks * CASCADE_STEP, n))] if tail else []
    level = ops.seqsum(ops.reshape(ops.part(x, 0, blocks * CASCADE_STEP), lead + (blocks, CASCADE_STEP)))
    count = blocks
    for _ in range(CASCADE_LEVELS - 2):
        groups, rest = divmod(count, CASCADE_STEP)
        if rest:
            pending.append(ops.seqsum(ops.part(level, groups * CASCADE_STEP, count)))
        if groups == 0:
            level = None
            break
        level = ops.seqsum(ops.reshape(ops.part(level, 0, groups * CASCADE_STEP), lead + (groups, CASCADE_STEP)))
        count = groups
    if level is not None:
        pending.append(ops.seqsum(level))  # the top level is never folded further
    total = pending[0]
    for partial in pending[1:]:
        total = ops.add(total, partial)
    return total


def _row_sum(ops, x, n):
    """row_sum along the last axis of x [..., n]: 4 interleaved multi_row_sums, the leftover
    elements added to the first, then the other three added to it."""
    lead = _lead_shape(x)
    quads = n // 4
    if quads == 0:
        return ops.seqsum(x)
    interleaved = ops.swap(ops.reshape(ops.part(x, 0, 4 * quads), lead + (quads, 4)))
    partials = _cascade(ops, interleaved, quads)  # [..., 4]
    first = ops.part(partials, 0, 1)
    for i in range(4 * quads, n):
        first = ops.add(first, ops.part(x, i, i + 1))
    for k in range(1, 4):
        first = ops.add(first, ops.part(partials, k, k + 1))
    return ops.reshape(first, lead)


def _shape(x):
    return tuple(x.shape) if isinstance(x, np.ndarray) else tuple(int(d) for d in x.ty.shape)


def _lead_shape(x):
    return _shape(x)[:-1]


# ----------------------------------------------------------------------------- parse rules

def _channels_last(t):
    return t.is_contiguous(memory_format=torch.channels_last)


def _refuse_scrambled(what, example, out_hw):
    """torch's NHWC kernels write a 1×1 input's larger output in the wrong layout."""
    if example.shape[2:] == (1, 1) and example.shape[1] > 1 and tuple(out_hw) != (1, 1):
        raise StageError(f"{what} of a 1x1 input to a {out_hw[0]}x{out_hw[1]} output: PyTorch's quantized "
                         f"kernel scrambles its channels there; pool a larger input or drop the layer")


def _check_input(parser, what):
    parser.need_quantized(what)
    x = parser.examples[0]
    if x.dim() != 4 or x.shape[0] != 1:
        parser.fail(f"{what} on a {tuple(x.shape)} tensor (0201 pools [1, C, H, W])")
    return x


def avg_pool_layer(parser, what, kernel, stride, padding, ceil_mode, count_include_pad, divisor_override):
    x = _check_input(parser, what)
    scale, zp = parser.qparams
    (kh, kw), (sh, sw), (ph, pw) = pair(kernel), pair(stride or kernel), pair(padding)
    h, w = int(x.shape[2]), int(x.shape[3])
    oh, ow = pooled_size(h, kh, sh, ph, 1, ceil_mode), pooled_size(w, kw, sw, pw, 1, ceil_mode)
    # torch's windows: [o*s - p, o*s - p + k) clipped to input + padding (that is the divisor
    # with padding), then to the input (the pixels summed)
    spans_h = [(o * sh - ph, min(o * sh - ph + kh, h + ph)) for o in range(oh)]
    spans_w = [(o * sw - pw, min(o * sw - pw + kw, w + pw)) for o in range(ow)]
    rows = tuple((max(a, 0), min(b, h)) for a, b in spans_h)
    cols = tuple((max(a, 0), min(b, w)) for a, b in spans_w)
    window = ((kh, sh, ph, max(0, (oh - 1) * sh + kh - h - ph)), (kw, sw, pw, max(0, (ow - 1) * sw + kw - w - pw)))
    args = ((kh, kw), (sh, sw), (ph, pw), bool(ceil_mode), bool(count_include_pad), divisor_override)
    fields = dict(op="aten::avg_pool2d", op_args=args, zero_point=zp, scale=scale, rows=rows, cols=cols,
                  window=window, out_shape=(1, int(x.shape[1]), oh, ow))
    if parser.engine == "qnnpack" and not ceil_mode:
        # qnnpack divides by kh*kw, whatever count_include_pad and divisor_override say
        return QAvgPool(arithmetic=ROUND_THEN_ADD, multiplier=_qnnpack_multiplier(scale, kh * kw), **fields)
    if divisor_override:
        divisors = np.full((oh, ow), int(divisor_override))
    elif count_include_pad:
        divisors = np.outer([b - a for a, b in spans_h], [b - a for a, b in spans_w])
    else:
        divisors = np.outer([b - a for a, b in rows], [b - a for a, b in cols])
    multiplier = _uniform((F32(1) / divisors.astype(F32)).astype(F32))
    if _channels_last(x):
        _refuse_scrambled(what, x, (oh, ow))
        return QAvgPool(arithmetic=ROUND_THEN_ADD, multiplier=multiplier, **fields)
    return QAvgPool(arithmetic=ADD_THEN_ROUND, multiplier=multiplier, **fields)


def adaptive_avg_pool_layer(parser, what, output_size):
    x = _check_input(parser, what)
    scale, zp = parser.qparams
    h, w = int(x.shape[2]), int(x.shape[3])
    oh, ow = (d if d is not None else full for d, full in zip(pair(output_size), (h, w)))
    oh, ow = int(oh), int(ow)
    fields = dict(op="aten::adaptive_avg_pool2d", op_args=((oh, ow),), zero_point=zp, scale=scale,
                  out_shape=(1, int(x.shape[1]), oh, ow))
    if parser.engine == "qnnpack" and (h, w) != (oh, ow) and h % oh == 0 and w % ow == 0:
        kh, kw = h // oh, w // ow  # qnnpack average pooling, kernel = stride
        rows = tuple((o * kh, (o + 1) * kh) for o in range(oh))
        cols = tuple((o * kw, (o + 1) * kw) for o in range(ow))
        return QAvgPool(arithmetic=ROUND_THEN_ADD, multiplier=_qnnpack_multiplier(scale, kh * kw), rows=rows,
                        cols=cols, window=((kh, kh, 0, 0), (kw, kw, 0, 0)), **fields)
    # torch's adaptive windows: [floor(o*I/O), ceil((o+1)*I/O)), computed in float
    rows = tuple((math.floor(F32(o * h) / F32(oh)), math.ceil(F32((o + 1) * h) / F32(oh))) for o in range(oh))
    cols = tuple((math.floor(F32(o * w) / F32(ow)), math.ceil(F32((o + 1) * w) / F32(ow))) for o in range(ow))
    regular = (_regular(rows, h), _regular(cols, w))
    sizes_h = np.array([b - a for a, b in rows]).astype(F32)
    sizes_w = np.array([b - a for a, b in cols]).astype(F32)
    if _channels_last(x):
        _refuse_scrambled(what, x, (oh, ow))
        multiplier = F32(1) / np.outer(sizes_h, sizes_w).astype(np.int64).astype(F32)
    else:
        # 1.0 / kD, / kH, / kW, each in float
        multiplier = ((F32(1) / sizes_h)[:, None] / sizes_w[None, :]).astype(F32)
    return QAvgPool(arithmetic=ROUND_THEN_ADD if _channels_last(x) else RAW_TIMES, rows=rows, cols=cols,
                    window=regular if None not in regular else None,
                    multiplier=_uniform(multiplier.astype(F32)), **fields)


def mean_layer(parser, what, dims, keepdim):
    x = _check_input(parser, what)
    scale, zp = parser.qparams
    dims = [dims] if isinstance(dims, int) else list(dims or [])
    if sorted(d % 4 for d in dims) != [2, 3] or len(dims) != 2:
        parser.fail(f"{what} over dims {dims} (0201 averages over H and W: dims [2, 3])")
    _, c, h, w = (int(d) for d in x.shape)
    fields = dict(op="aten::mean", op_args=(tuple(dims), bool(keepdim)), zero_point=zp, scale=scale,
                  rows=((0, h),), cols=((0, w),), window=((h, 1, 0, 0), (w, 1, 0, 0)),
                  out_shape=(1, c, 1, 1) if keepdim else (1, c))
    if parser.engine == "qnnpack" and dims == [2, 3]:
        # qnnpack's global average pooling takes the dims exactly as (2, 3)
        return QAvgPool(arithmetic=ROUND_THEN_ADD, multiplier=_qnnpack_multiplier(scale, h * w), **fields)
    if x.is_contiguous():
        return QAvgPool(arithmetic=RAW_OVER, multiplier=F32(1), **fields)
    if _channels_last(x):
        # the float sum's order follows the threads PyTorch runs on (for large inputs)
        return QAvgPool(arithmetic=FLOAT_MEAN, multiplier=F32(1),
                        sum_loops=sum_loops(c, h * w, torch.get_num_threads()), **fields)
    parser.fail(f"{what} of a tensor in neither NCHW nor channels-last layout")


def _qnnpack_multiplier(scale, pooling_size):
    # pytorch_qnnp_create_average_pooling2d_nhwc_q8 / global average pooling:
    # input_scale / (output_scale * (float) pooling_size), in float
    return F32(F32(scale) / F32(F32(scale) * F32(pooling_size)))


def _uniform(multiplier):
    """One multiplier when every output position shares it."""
    return multiplier.flat[0] if np.all(multiplier == multiplier.flat[0]) else multiplier


def _regular(windows, size):
    """(k, stride, pad_before, pad_after) when the windows are [o*s - p, o*s - p + k) clipped
    to [0, size), else None."""
    k = max(b - a for a, b in windows)
    stride = windows[1][0] - windows[0][0] if len(windows) > 1 else 1
    if stride < 1:
        return None
    pad = k - windows[0][1]
    spans = [(o * stride - pad, o * stride - pad + k) for o in range(len(windows))]
    if [(max(a, 0), min(b, size)) for a, b in spans] != list(windows):
        return None
    return k, stride, pad, max(0, spans[-1][1] - size)


@module_rule("AvgPool2d")
def parse_avg_pool_module(parser, name, module):
    args = graph_constants(module, "aten::avg_pool2d")
    if args is None:
        parser.fail(f"module {name} (AvgPool2d, not traced)")
    return avg_pool_layer(parser, f"{name} (AvgPool2d)", *args[:6])


@aten_rule("aten::avg_pool2d")
def parse_avg_pool_op(parser, node, args):
    return avg_pool_layer(parser, node.kind(), *args[1:7])


@module_rule("AdaptiveAvgPool2d")
def parse_adaptive_avg_pool_module(parser, name, module):
    args = graph_constants(module, "aten::adaptive_avg_pool2d")
    if args is None:
        parser.fail(f"module {name} (AdaptiveAvgPool2d, not traced)")
    return adaptive_avg_pool_layer(parser, f"{name} (AdaptiveAvgPool2d)", args[0])


@aten_rule("aten::adaptive_avg_pool2d")
def parse_adaptive_avg_pool_op(parser, node, args):
    return adaptive_avg_pool_layer(parser, node.kind(), args[1])


@aten_rule("aten::mean")
def parse_mean(parser, node, args):
    if len(args) != 4:
        parser.fail(f"op {node.kind()} over all dims (0201 averages over H and W: x.mean([2, 3]))")
    if args[3] is not None:
        parser.fail(f"op {node.kind()} with a dtype")
    return mean_layer(parser, node.kind(), args[1], args[2])
