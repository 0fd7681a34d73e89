"""The Cortex-M backend's per-layer lowering: any graph of int8 layers (branches, joins,
depthwise, pointwise and strided convolutions, dense layers), one kernel per layer.

The chain planner (int8.py) fuses a plain chain of convolutions, pools and dense layers into
a few kernels; what it refuses comes here. Tensors flow channels-last (NHWC) between the
kernels of kernels_nhwc.h, the layout they read fastest (a pixel's channels are one word
apart, as CMSIS-NN and TFLite Micro keep them):

    QConv2d   (and Conv1d, as a 1-row image)
              1x1 stride 1       → utvm_pointwise_u8s8 (register-tiled matrix product)
              depthwise          → utvm_depthwise_u8s8 (multiplier 1, any kernel and stride)
              other, groups 1    → utvm_conv_u8s8 (two windows gathered, then a matrix product)
    QLinear                      → utvm_dense_u8s8
    QAvgPool to one pixel        → utvm_avgpool_u8
    Quantize of an image         → utvm_quantize_f32_u8 (float NCHW in, uint8 NHWC out)
    QAdd after a conv            fused into the conv's store (utvm_conv_add_*, utvm_pointwise_add_*)
    QLookup after a conv         (Hardswish, ReLU6, ...) fused into its store (utvm_*_lut_*)
    QAdd, QLookup, QRelu         elementwise: the generic lowering, on whichever layout comes in
    anything else                the generic backend's lowering on NCHW tensors, with a
                                 transpose where the layout changes

Every kernel ends in the same float32 requantization as the generic backend's (per tensor or
per channel, clip to [lo, hi]), so the library's bits equal 0201's.
"""
from dataclasses import dataclass

import numpy as np
from tvm import relax
from tvm.script.ir_builder import IRBuilder
from tvm.script.ir_builder import tirx as T

from utils.cli import StageError
from utils.aot.backends.cortex_m.int8 import folded_bias, opaque_scheduled
from utils.aot.backends.generic import RelaxEmitter
from utils.aot.emit import OVERLAP_ATTR
from utils.aot.layers import Flatten, QAdd, QAvgPool, QConv2d, QLinear, QLookup, QRelu, Quantize
from utils.aot.layers.avgpool import ROUND_THEN_ADD
from utils.aot.torchscript import INPUT

NCHW, NHWC, FLAT_NHWC, PLAIN = "nchw", "nhwc", "flat_nhwc", "plain"
ELEMENTWISE = (QAdd, QLookup, QRelu)
# a convolution with at least this many output pixels keeps its weights widened to int16 in
# flash (each weight is then read once per pixel without being widened again)
WIDE_WEIGHTS_MIN_PIXELS = 16


@dataclass
class Value:
    var: object                 # the Relax tensor
    layout: str                 # NCHW | NHWC | FLAT_NHWC (a flatten of an NHWC tensor) | PLAIN
    source: object = None       # FLAT_NHWC: the NHWC tensor it flattens
    rows: bool = True           # NHWC: False when the model's tensor is [N, C, L] (Conv1d's), kept as [N, 1, L, C]

    @property
    def shape(self):
        return tuple(int(d) for d in self.var.ty.shape)


def _kernel_func(name, kernel, args, outputs, overlap=None):
    """A TIR function that calls `kernel` once: args/outputs are (name, shape, dtype); the
    extern call's arguments are the buffers' data in that order, then `constants`.
    overlap: {arg name: bytes}, the inputs that may share arena bytes with the first output
    (emit.OVERLAP_ATTR)."""
    def build(constants):
        attrs = {"tirx.noalias": True}
        if overlap:
            attrs[OVERLAP_ATTR] = [int(overlap.get(n, -1)) for n, _, _ in args]
        with IRBuilder() as builder:
            with T.prim_func():
                T.func_name(name)
                T.func_attr(attrs)
                buffers = [T.arg(n, T.buffer(shape, dtype)) for n, shape, dtype in list(args) + list(outputs)]
                T.evaluate(T.call_extern("int32", kernel, *[b.data for b in buffers], *constants))
        return opaque_scheduled(builder.get())
    return build


def in_place_bytes(in_shape, out_shape, window, stride, padding, block, gathered):
    """The least bytes an input [H, W, C] may start past its output [OH, OW, O] (both channels
    last, pixels in raster order) for a kernel that computes `block` output pixels at a time
    and writes them before it moves on: every byte it writes lies below every input byte it
    reads later. gathered: the block's windows are copied out before its first write (the
    convolutions); otherwise its reads and writes interleave (the depthwise one)."""
    (h, w, c), (oh, ow, o) = in_shape, out_shape
    (kh, kw), (sh, sw), (ph, pw) = window, stride, padding
    oy, ox = np.divmod(np.arange(oh * ow), ow)
    # the first input pixel of each window that lies inside the image, and the least of it
    # over this and every later window
    first = np.maximum(oy * sh - ph, 0) * w + np.maximum(ox * sw - pw, 0)
    first = np.minimum.accumulate(first[::-1])[::-1]
    starts = np.arange(0, oh * ow, block)
    written = o * np.minimum(starts + block, oh * ow)
    later = starts + block if gathered else starts
    keep = later < oh * ow
    return int(max(0, (written[keep] - c * first[later[keep]]).max(initial=0)))


def _requant_args(layer):
    """(multiplier constant, m_stride, out_zp, lo, hi) of a conv or linear layer."""
    multiplier = np.asarray(layer.multiplier, np.float32).reshape(-1)
    lo = layer.out_zero_point if layer.relu else 0
    return multiplier, (1 if multiplier.size > 1 else 0), int(layer.out_zero_point), int(lo), int(layer.clip_high)


def _elementwise(layer):
    """Whether the layer's lowering is the same on any memory order. Not a lookup that
    relabels (qnnpack's clamp on a channels-last tensor hands its result on in that order)."""
    return isinstance(layer, ELEMENTWISE) and getattr(layer, "relabel", None) is None


def _one_window_pool(layer):
    """qnnpack's average pool (round, then add the zero point; one multiplier) to one pixel."""
    return (layer.arithmetic == ROUND_THEN_ADD and np.ndim(layer.multiplier) == 0
            and len(layer.rows) == 1 and len(layer.cols) == 1)


def kernel_refusal(layer):
    """Why a conv or linear layer has no kernel here (None: it has one)."""
    if getattr(layer, "bias_float", None) is not None or getattr(layer, "pre_scale", None) is not None:
        return "an x86/fbgemm engine's float requantization"
    if isinstance(layer, QConv2d):
        if tuple(layer.dilation) != (1, 1):
            return "a dilated convolution"
        o, i_per_group = layer.weight.shape[:2]
        if layer.groups != 1 and not (i_per_group == 1 and o == layer.groups):
            return "a grouped convolution that is not depthwise with multiplier 1"
    return None


def _folded_bias(layer, rows):
    """The chain planner's folded bias (bias - zp_in * sum(w)), always int32: these kernels read it so."""
    return folded_bias(layer, rows).astype(np.int32)


def conv_weight_rows(weight, tap_order=True):
    """[O, k4] int8: each channel's window, taps row by row, channels last, each row padded
    with zeros to a multiple of 4 taps; with tap_order each group of 4 bytes is stored
    (k0, k2, k1, k3), the order in which utvm_conv_u8s8 widens them."""
    o, c, kh, kw = weight.shape
    row4 = (kw * c + 3) // 4 * 4
    rows = np.zeros((o, kh, row4), np.int8)
    rows[:, :, :kw * c] = weight.transpose(0, 2, 3, 1).reshape(o, kh, kw * c)
    k4 = kh * row4
    rows = rows.reshape(o, k4 // 4, 4)
    return np.ascontiguousarray((rows[:, :, [0, 2, 1, 3]] if tap_order else rows).reshape(o, k4))


def _add_params(add, conv_first):
    """utvm_nhwc_add's parameters for a QAdd fused into the store of its operand conv_first
    (the add's first operand) or not: {m_conv, m_res, zpp, shift, zp_out, lo}."""
    m_conv, m_res = (add.a_multiplier, add.b_multiplier) if conv_first else (add.b_multiplier, add.a_multiplier)
    return [m_conv, m_res, add.zero_point_product, add.shift, add.out_zero_point,
            add.out_zero_point if add.relu else 0]


def _conv_operands(layer, pixels):
    """(k4, weight rows, their dtype, folded bias) of a regular convolution for the
    utvm_conv_* kernels. Weights reused over many pixels are stored widened to int16 (in
    int32 words): no extends in the inner loop, for twice their flash."""
    o, c, kh, kw = layer.weight.shape
    k4 = kh * ((kw * c + 3) // 4 * 4)
    bias = _folded_bias(layer, layer.weight.transpose(0, 2, 3, 1).reshape(o, -1))
    if pixels >= WIDE_WEIGHTS_MIN_PIXELS:
        return k4, channel_groups(conv_weight_rows(layer.weight, tap_order=False), 2).astype(np.int16).view(
            np.int32), "int32", bias
    return k4, channel_groups(conv_weight_rows(layer.weight), 2), "int8", bias


def channel_groups(rows, group):
    """[O, K] int8 rows (K a multiple of 4) → [ceil(O / group)][K / 4][group][4], flat: each
    step of 4 taps holds the group's channels one after the other (missing last ones: zeros)."""
    o, k = rows.shape
    padded = np.zeros(((o + group - 1) // group * group, k), np.int8)
    padded[:o] = rows
    return np.ascontiguousarray(padded.reshape(-1, group, k // 4, 4).transpose(0, 2, 1, 3).reshape(-1))


def depthwise_weights(weight):
    """[kh][kw][C4] int16, each group of 4 channels stored (c0, c2, c1, c3)."""
    c, _, kh, kw = weight.shape
    c4 = (c + 3) // 4 * 4
    taps = np.zeros((kh, kw, c4), np.int16)
    taps[:, :, :c] = weight[:, 0].transpose(1, 2, 0)
    return np.ascontiguousarray(taps.reshape(kh, kw, c4 // 4, 4)[:, :, :, [0, 2, 1, 3]].reshape(-1))


def _pair_arrangements():
    """The ways to split a group of 4 channels into two pairs (c0, c1), as positions in the
    group: the group's own order first, then its pairs swapped, then the other pairings."""
    arrangements = []
    for first, second in (((0, 1), (2, 3)), ((0, 2), (1, 3)), ((0, 3), (1, 2))):
        for a in (first, first[::-1]):
            for b in (second, second[::-1]):
                arrangements.append((a, b))
    return tuple(arrangements)


PAIR_ARRANGEMENTS = _pair_arrangements()


def _rides_high(weight, c0, c1):
    """Whether channel c1 fits in the high bytes of c0's int16 pairs: w_c1 - (w_c0 < 0) is an
    int8 wherever it is stored (not where w_c1 is -128 and w_c0 negative)."""
    return not np.any((weight[c1] == -128) & (weight[c0] < 0))


def paired_dense_weights(weight):
    """utvm_dense_u8s8's paired layout of [O, n] int8 weights: (w, order, slots, chunk), w the int8
    bytes [O4 / 4][n4 / 4][2 pairs][2 words][4], order the output channel of each computed one
    (O4 of them; past O the zero channels), slots each group's code for the kernel (computed
    channel j of group g to output 4g + ((slots[g] >> 2j) & 3)), chunk the inputs per chunk of
    its sums (_paired_chunk). Each group of 4 channels takes the first of PAIR_ARRANGEMENTS
    whose high channels fit; None when some group has none."""
    o, n = weight.shape
    o4, n4 = (o + 3) // 4 * 4, (n + 3) // 4 * 4
    padded = np.zeros((o4, n4), np.int16)
    padded[:o, :n] = weight
    order, slots = [], []
    for g in range(0, o4, 4):
        for (a0, a1), (b0, b1) in PAIR_ARRANGEMENTS:
            if _rides_high(padded, g + a0, g + a1) and _rides_high(padded, g + b0, g + b1):
                order += [g + a0, g + a1, g + b0, g + b1]
                slots.append(a0 | a1 << 2 | b0 << 4 | b1 << 6)
                break
        else:
            return None
    order = np.asarray(order)
    low = padded[order[0::2]]                       # [O4 / 2, n4]: each pair's c0
    high = padded[order[1::2]] - (low < 0)          # with low as a little-endian int16: 256 * w_c1 + w_c0
    assert high.min() >= -128 and high.max() <= 127
    # [pair][step of 4 inputs][inputs 0, 2, 1, 3][low, high]: the words of inputs (0, 2), (1, 3)
    pairs = np.stack([low, high], axis=-1).reshape(o4 // 2, n4 // 4, 4, 2)[:, :, [0, 2, 1, 3]]
    words = pairs.reshape(o4 // 4, 2, n4 // 4, 8).transpose(0, 2, 1, 3)
    return (np.ascontiguousarray(words.reshape(-1)).astype(np.int8), order, np.asarray(slots, np.uint8),
            _paired_chunk(padded[order[1::2]]))


def _paired_chunk(high):
    """Inputs per chunk of the paired kernel's sums, given the pairs' high channels [O4 / 2, n4]:
    the whole row where each one's sum over inputs in [0, 255] keeps 256 * S_c1 in an int32,
    else 256, which any int8 weights do."""
    most = 255 * max(np.where(high > 0, high, 0).sum(axis=1).max(), np.where(high < 0, -high, 0).sum(axis=1).max())
    return high.shape[1] if most < 2 ** 23 else 256


def dense_params(bias, multiplier, order, slots):
    """utvm_dense_u8s8's int32 constant: the O4 biases in the computed order (`order`, zeros
    for the padding channels), the multiplier's float32 bits (one, or O4 in the computed order),
    then the slots, 4 bytes to a word from the lowest."""
    o, o4 = len(bias), len(order)
    biases = np.zeros(o4, np.int64)
    biases[:o] = bias
    multiplier = np.asarray(multiplier, np.float32).reshape(-1)
    if multiplier.size > 1:
        multipliers = np.ones(o4, np.float32)
        multipliers[:o] = multiplier
        multiplier = multipliers[order]
    codes = np.zeros((len(slots) + 3) // 4 * 4, np.int64)
    codes[:len(slots)] = slots
    words = (codes.reshape(-1, 4) << np.array([0, 8, 16, 24])).sum(axis=1).astype(np.uint32).view(np.int32)
    return np.concatenate([biases[order].astype(np.int32), multiplier.view(np.int32), words])


class GraphLowering:
    def __init__(self, bb):
        self.bb = bb
        self.r = RelaxEmitter(bb)
        self.names = set()

    def const(self, value, dtype):
        return relax.const(np.ascontiguousarray(np.asarray(value, dtype=dtype)), dtype)

    def name(self, layer):
        base = getattr(layer, "name", None) or type(layer).__name__
        base = "".join(ch if ch.isalnum() else "_" for ch in base)
        name, k = base, 1
        while name in self.names:
            k += 1
            name = f"{base}_{k}"
        self.names.add(name)
        return name

    # -------------------------------------------------------------- layouts

    def nchw(self, value):
        if value.layout == NHWC:
            chw = self.bb.emit(relax.op.permute_dims(value.var, [0, 3, 1, 2]))
            if not value.rows:
                n, _, length, c = value.shape
                return Value(self.bb.emit(relax.op.reshape(chw, [n, c, length])), PLAIN)
            return Value(chw, NCHW)
        if value.layout == FLAT_NHWC:
            chw = self.nchw(value.source)
            return Value(self.bb.emit(relax.op.reshape(chw.var, list(value.shape))), PLAIN)
        return value

    def nhwc(self, value, rows=True):
        """value channels-last; rows=False: the model's tensor is [N, C, L] (a Conv1d's)."""
        if value.layout == NHWC:
            return value
        value = self.nchw(value)
        if not rows and len(value.shape) == 3:
            n, c, length = value.shape
            chw = self.bb.emit(relax.op.reshape(value.var, [n, c, 1, length]))
            return Value(self.bb.emit(relax.op.permute_dims(chw, [0, 2, 3, 1])), NHWC, rows=False)
        if len(value.shape) != 4:
            raise StageError(f"a {len(value.shape)}-d tensor where an image is expected")
        return Value(self.bb.emit(relax.op.permute_dims(value.var, [0, 2, 3, 1])), NHWC)

    # -------------------------------------------------------------- layers

    def lower(self, layer, inputs, epilogue=None):
        """epilogue: what the layer's store does besides (FusedEpilogues), for a conv."""
        if isinstance(layer, QConv2d) and kernel_refusal(layer) is None and (inputs[0].layout != PLAIN
                                                                               or layer.conv1d):
            rows = not layer.conv1d
            residual = lookup = None
            if isinstance(epilogue, tuple):
                add, other, conv_first = epilogue
                residual = (add, self.nhwc(other, rows), conv_first)
            elif epilogue is not None:
                lookup = epilogue
            out = self.conv(layer, self.nhwc(inputs[0], rows), residual, lookup)
            out.rows = rows
            return out
        if isinstance(layer, QAvgPool) and inputs[0].layout == NHWC and _one_window_pool(layer):
            return self.avgpool(layer, inputs[0])
        if isinstance(layer, QLinear) and kernel_refusal(layer) is None:
            return self.dense(layer, inputs[0])
        if isinstance(layer, Quantize) and len(inputs[0].shape) == 4:
            return self.quantize(layer, inputs[0])
        if isinstance(layer, Flatten) and inputs[0].layout == NHWC and layer.start_dim == 1 \
                and layer.end_dim % (4 if inputs[0].rows else 3) == (3 if inputs[0].rows else 2):
            n = int(np.prod(inputs[0].shape[1:]))
            return Value(self.bb.emit(relax.op.reshape(inputs[0].var, [1, n])), FLAT_NHWC, inputs[0])
        if _elementwise(layer) and len({(v.layout, v.rows) for v in inputs}) == 1 \
                and inputs[0].layout in (NCHW, NHWC):
            return Value(layer.to_relax(self.r, *[v.var for v in inputs]), inputs[0].layout, rows=inputs[0].rows)
        plain = [self.nchw(v) for v in inputs]
        out = layer.to_relax(self.r, *[v.var for v in plain])
        out = Value(out, NCHW if len(out.ty.shape) == 4 else PLAIN)
        if isinstance(epilogue, tuple):   # a conv without its kernel here: the add on its own
            add, other, conv_first = epilogue
            return self.lower(add, [out, other] if conv_first else [other, out])
        if epilogue is not None:
            return self.lower(epilogue, [out])
        return out

    def conv(self, layer, x, residual=None, lookup=None):
        """Fused into the convolution's store: residual = (QAdd, the other operand NHWC,
        whether the conv is the add's first operand), or lookup = a QLookup of its output."""
        _, h, w, c = x.shape
        o, _, kh, kw = layer.weight.shape
        (sh, sw), (ph, pw) = layer.stride, layer.padding
        oh, ow = (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1
        multiplier, m_stride, zp, lo, hi = _requant_args(layer)
        name = self.name(layer)
        out_shape = (1, oh, ow, o)
        if layer.groups != 1:
            bias = (layer.bias if layer.bias is not None else np.zeros(o)).astype(np.int32)
            bias_in = _folded_bias(layer, layer.weight.reshape(o, -1))
            weights = depthwise_weights(layer.weight)
            inputs = [("x", x.shape, "uint8"), ("w", weights.shape, "int16"), ("b", (o,), "int32"),
                      ("b_in", (o,), "int32"), ("m", multiplier.shape, "float32")]
            args = [x.var, self.const(weights, "int16"), self.const(bias, "int32"), self.const(bias_in, "int32"),
                    self.const(multiplier, "float32")]
            if lookup is not None:
                inputs.append(("table", (256,), "uint8"))
                args.append(self.const(lookup.table, "uint8"))
            shift = in_place_bytes((h, w, c), (oh, ow, o), (kh, kw), (sh, sw), (ph, pw), 1, gathered=False)
            build = _kernel_func(name, "utvm_depthwise_lut_u8s8" if lookup is not None else "utvm_depthwise_u8s8",
                                 inputs, [("y", out_shape, "uint8")], {"x": shift})
            func = build([h, w, c, oh, ow, kh, kw, sh, sw, ph, pw, int(layer.in_zero_point), m_stride, zp, lo, hi])
            return Value(self.emit_call(func, name, args, [out_shape], ["uint8"]), NHWC)
        k4, rows, w_dtype, bias = _conv_operands(layer, oh * ow)
        wide = w_dtype == "int32"
        types = ("add_" if residual else "lut_" if lookup is not None else "") + ("u8s16" if wide else "u8s8")
        inputs = [("x", x.shape, "uint8"), ("w", rows.shape, w_dtype), ("b", (o,), "int32"),
                  ("m", multiplier.shape, "float32")]
        args = [x.var, self.const(rows, w_dtype), self.const(bias, "int32"), self.const(multiplier, "float32")]
        if residual:
            add, other, conv_first = residual
            if other.shape != out_shape:
                raise StageError(f"{layer.name}: a residual of shape {list(other.shape)} for {list(out_shape)}")
            params = _add_params(add, conv_first)
            inputs += [("res", out_shape, "uint8"), ("add", (len(params),), "int32")]
            args += [other.var, self.const(params, "int32")]
        elif lookup is not None:
            inputs.append(("table", (256,), "uint8"))
            args.append(self.const(lookup.table, "uint8"))
        outputs = [("y", out_shape, "uint8"), ("col", (8 * k4 // 4,), "int16")]
        # two pixels gathered, then stored; a residual is read after its pixels' store
        overlap = {"x": in_place_bytes((h, w, c), (oh, ow, o), (kh, kw), (sh, sw), (ph, pw), 2, gathered=True),
                   "res": o * min(2, oh * ow)}
        if (kh, kw, sh, sw, ph, pw) == (1, 1, 1, 1, 0, 0):
            func = _kernel_func(name, f"utvm_pointwise_{types}", inputs, outputs, overlap)(
                [h * w, c, o, m_stride, zp, lo, hi])
        else:
            func = _kernel_func(name, f"utvm_conv_{types}", inputs, outputs, overlap)(
                [h, w, c, oh, ow, o, kh, kw, sh, sw, ph, pw, int(layer.in_zero_point), m_stride, zp, lo, hi])
        return Value(self.emit_call(func, name, args, [out_shape, (8 * k4 // 4,)], ["uint8", "int16"]), NHWC)

    def conv_pair(self, a, b, add, x, b_first):
        """add(b(a(x)), x) in one kernel, row by row (utvm_conv_pair_add_*): a's output only
        ever holds b's window rows (block_pairs)."""
        x = self.nhwc(x)
        _, h, w, c = x.shape
        mid = a.weight.shape[0]
        (ka_h, ka_w), (pa_h, pa_w) = a.weight.shape[2:], a.padding
        (kb_h, kb_w), (pb_h, pb_w) = b.weight.shape[2:], b.padding
        k4a, rows_a, w_dtype, bias_a = _conv_operands(a, h * w)
        k4b, rows_b, w_dtype_b, bias_b = _conv_operands(b, h * w)
        assert w_dtype == w_dtype_b  # the same pixels: the same policy
        mult_a, m_stride_a, zp_a, lo_a, hi_a = _requant_args(a)
        mult_b, m_stride_b, zp_b, lo_b, hi_b = _requant_args(b)
        params = _add_params(add, b_first)
        name = self.name(b)
        out_shape, ring_shape, col_shape = (1, h, w, c), (kb_h * w * mid,), (8 * max(k4a, k4b) // 4,)
        inputs = [("x", x.shape, "uint8"), ("w_a", rows_a.shape, w_dtype), ("b_a", (mid,), "int32"),
                  ("m_a", mult_a.shape, "float32"), ("w_b", rows_b.shape, w_dtype), ("b_b", (c,), "int32"),
                  ("m_b", mult_b.shape, "float32"), ("add", (len(params),), "int32")]
        args = [x.var, self.const(rows_a, w_dtype), self.const(bias_a, "int32"), self.const(mult_a, "float32"),
                self.const(rows_b, w_dtype), self.const(bias_b, "int32"), self.const(mult_b, "float32"),
                self.const(params, "int32")]
        outputs = [("z", out_shape, "uint8"), ("ring", ring_shape, "uint8"), ("col", col_shape, "int16")]
        kernel = "utvm_conv_pair_add_" + ("u8s16" if w_dtype == "int32" else "u8s8")
        # z is stored two pixels behind the residual it reads (utvm_nhwc_conv_pair_add)
        func = _kernel_func(name, kernel, inputs, outputs, {"x": 2 * c})(
            [h, w, c, mid, ka_h, ka_w, pa_h, pa_w, kb_h, kb_w, pb_h, pb_w, int(a.in_zero_point), m_stride_a, zp_a,
             lo_a, hi_a, m_stride_b, zp_b, lo_b, hi_b])
        return Value(self.emit_call(func, name, args, [out_shape, ring_shape, col_shape],
                                    ["uint8", "uint8", "int16"]), NHWC)

    def quantize(self, layer, x):
        """float NCHW → uint8 NHWC in one pass."""
        x = self.nchw(x)
        n, c, h, w = x.shape
        name = self.name(layer)
        out_shape = (n, h, w, c)
        func = _kernel_func(name, "utvm_quantize_f32_u8", [("x", x.shape, "float32")],
                            [("y", out_shape, "uint8")])([c, h, w, float(layer.inv_scale), int(layer.zero_point)])
        return Value(self.emit_call(func, name, [x.var], [out_shape], ["uint8"]), NHWC)

    def avgpool(self, layer, x):
        _, h, w, c = x.shape
        (r0, r1), (c0, c1) = layer.rows[0], layer.cols[0]
        name = self.name(layer)
        out_shape = tuple(layer.out_shape)   # one output pixel: channels last is the same memory
        multiplier = np.asarray(layer.multiplier, np.float32).reshape(1)
        build = _kernel_func(name, "utvm_avgpool_u8", [("x", x.shape, "uint8"), ("m", (1,), "float32")],
                             [("y", out_shape, "uint8")])
        func = build([w, c, r0, r1, c0, c1, int(layer.zero_point)])
        out = self.emit_call(func, name, [x.var, self.const(multiplier, "float32")], [out_shape], ["uint8"])
        return Value(out, NCHW if len(out_shape) == 4 else PLAIN)

    def dense(self, layer, x):
        o, n = layer.weight.shape
        weight = layer.weight
        if x.layout == FLAT_NHWC:
            # torch flattened [C, H, W]; the tensor is [H, W, C]: permute the columns
            _, h, w, c = x.source.shape
            weight = weight.reshape(o, c, h, w).transpose(0, 2, 3, 1).reshape(o, n)
        elif len(x.shape) != 2 or x.shape[0] != 1:
            x = self.nchw(x)
            if len(x.shape) != 2:
                raise StageError(f"{layer.name}: a dense layer on a {len(x.shape)}-d tensor")
        n4 = (n + 3) // 4 * 4
        multiplier, m_stride, zp, lo, hi = _requant_args(layer)
        paired = paired_dense_weights(weight)
        if paired is None:
            # some group of 4 channels has no two pairs that fit: one channel per multiply
            padded = np.zeros((o, n4), np.int8)
            padded[:, :n] = weight
            rows, order, mode, slots, chunk = channel_groups(padded, 4), np.arange((o + 3) // 4 * 4), 0, [], n4
        else:
            rows, order, slots, chunk = paired
            mode = 2 if np.any(order != np.arange(len(order))) else 1
        params = dense_params(_folded_bias(layer, weight), multiplier, order, slots if mode == 2 else [])
        name = self.name(layer)
        build = _kernel_func(name, "utvm_dense_u8s8",
                             [("x", (1, n), "uint8"), ("w", rows.shape, "int8"), ("b", params.shape, "int32")],
                             [("y", (1, o), "uint8"), ("col", (n4,), "int16")])
        func = build([n, o, mode, chunk, m_stride, zp, lo, hi])
        args = [x.var, self.const(rows, "int8"), self.const(params, "int32")]
        return Value(self.emit_call(func, name, args, [(1, o), (n4,)], ["uint8", "int16"]), PLAIN)

    def emit_call(self, func, name, args, shapes, dtypes):
        gv = self.bb.add_func(func, name)
        types = [relax.TensorType(list(s), d) for s, d in zip(shapes, dtypes)]
        if len(types) == 1:
            return self.bb.emit(relax.call_tir(gv, relax.Tuple(args), types[0]))
        outputs = self.bb.emit(relax.call_tir(gv, relax.Tuple(args), types))
        return self.bb.emit(relax.TupleGetItem(outputs, 0))  # the scratch dies here


@dataclass
class FusedEpilogues:
    into: dict      # id(conv) → (QAdd, name of the add's other operand, conv is the first operand),
                    # or the QLookup of its output
    skip: set       # ids of the adds and lookups fused into a convolution


def _producers_and_uses(layers):
    """{tensor name: (index, the layer that writes it)}, {tensor name: how many layer inputs read it}."""
    producer = {layer.output: (index, layer) for index, layer in enumerate(layers)}
    uses = {}
    for layer in layers:
        for name in layer.inputs:
            uses[name] = uses.get(name, 0) + 1
    return producer, uses


def fused_epilogues(layers):
    """The residual adds and the activations (lookups) that go into the store of the
    convolution feeding them: the conv's output feeds that layer only, has a kernel here, and
    an add's other operand exists before the conv runs (adds: regular convolutions only)."""
    producer, uses = _producers_and_uses(layers)
    fused = FusedEpilogues({}, set())
    for layer in layers:
        if isinstance(layer, QLookup) and _elementwise(layer):
            index, conv = producer.get(layer.inputs[0], (None, None))
            if (isinstance(conv, QConv2d) and kernel_refusal(conv) is None and uses.get(layer.inputs[0]) == 1
                    and id(conv) not in fused.into):
                fused.into[id(conv)] = layer
                fused.skip.add(id(layer))
            continue
        if not isinstance(layer, QAdd) or len(layer.inputs) != 2:
            continue
        for k, name in enumerate(layer.inputs):
            other = layer.inputs[1 - k]
            index, conv = producer.get(name, (None, None))
            if (not isinstance(conv, QConv2d) or kernel_refusal(conv) is not None or conv.groups != 1
                    or uses.get(name) != 1 or id(conv) in fused.into or other == name):
                continue
            if other != INPUT and producer.get(other, (len(layers),))[0] > index:
                continue
            fused.into[id(conv)] = (layer, other, k == 0)
            fused.skip.add(id(layer))
            break
    return fused


def _same_size(conv):
    """A stride-1 convolution whose odd window is padded to keep the image's size."""
    kh, kw = conv.weight.shape[2:]
    return (tuple(conv.stride) == (1, 1) and kh % 2 == 1 and kw % 2 == 1
            and tuple(conv.padding) == ((kh - 1) // 2, (kw - 1) // 2))


def block_pairs(layers, fused):
    """{id(b): a}: the ResNet blocks add(b(a(x)), x) that run row by row as one kernel
    (utvm_conv_pair_add): a and b regular same-size convolutions with kernels here, a's output
    read by b only, b's store fused with the add of x, x read by a and the add only, and b's
    window no shorter than a's (so that z can overwrite x as it goes)."""
    producer, uses = _producers_and_uses(layers)
    pairs = {}
    for b in layers:
        epilogue = fused.into.get(id(b))
        if not isinstance(b, QConv2d) or not isinstance(epilogue, tuple):
            continue
        _, a = producer.get(b.inputs[0], (None, None))
        add, other, _ = epilogue
        if (isinstance(a, QConv2d) and id(a) not in fused.into and uses.get(b.inputs[0]) == 1
                and a.inputs[0] == other and uses.get(other) == 2 and a.groups == 1 and b.groups == 1
                and kernel_refusal(a) is None and not a.conv1d and not b.conv1d and _same_size(a)
                and _same_size(b) and a.weight.shape[1] == b.weight.shape[0]
                and b.padding[0] >= a.padding[0] and int(b.in_zero_point) == int(a.out_zero_point)):
            pairs[id(b)] = a
    return pairs


def int8_to_relax_graph(layers, input_shape):
    """An IRModule whose `main(input0: float32[input_shape])` computes the layers, one
    kernel per layer, channels-last between the Cortex-M kernels."""
    bb = relax.BlockBuilder()
    lowering = GraphLowering(bb)
    x_in = relax.Var("input0", relax.TensorType(list(input_shape), "float32"))
    values = {INPUT: Value(x_in, NCHW if len(input_shape) == 4 else PLAIN)}
    with bb.function("main", [x_in]):
        with bb.dataflow():
            fused = fused_epilogues(layers)
            pairs = block_pairs(layers, fused)
            firsts = {id(a) for a in pairs.values()}
            for layer in layers:
                if id(layer) in fused.skip or id(layer) in firsts:
                    continue  # fused into the convolution that feeds it / into its block
                epilogue = fused.into.get(id(layer))
                if id(layer) in pairs:
                    add, other, conv_first = epilogue
                    values[add.output] = lowering.conv_pair(pairs[id(layer)], layer, add, values[other], conv_first)
                    continue
                if isinstance(epilogue, tuple):
                    add, other, conv_first = epilogue
                    values[add.output] = lowering.lower(layer, [values[name] for name in layer.inputs],
                                                        (add, values[other], conv_first))
                    continue
                if epilogue is not None:
                    values[epilogue.output] = lowering.lower(layer, [values[name] for name in layer.inputs],
                                                             epilogue)
                    continue
                values[layer.output] = lowering.lower(layer, [values[name] for name in layer.inputs])
            last = lowering.nchw(values[layers[-1].output])
            out = bb.emit_output(last.var)
        bb.emit_func_output(out)
    return bb.get()
