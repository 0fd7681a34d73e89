"""The Cortex-M backend's int8 lowering: the parsed layers → Relax calls of hand-scheduled TIR kernels.

The generic backend hands TVM Relax ops (int16 conv2d on a centered copy of the input, then float
requantization, then max-pool) and schedules what TVM legalizes from them. Here each stage of
the network is one TIR kernel written for a Cortex-M:

    quantize      float input → uint8, written straight into the padded, channels-last
                  buffer the first convolution reads (the padding holds the zero point)
    conv          convolution + bias + ReLU (+ the following 2x2 max-pool) + requantization,
                  channels-last; the max is taken on the int32 sums, so the pooled-away
                  outputs are never requantized or stored. uint8 out, or the same values as
                  int16 where the next layer is a convolution too
    head          the fully connected layers at the end (also a convolution whose window
                  covers its whole input, e.g. LeNet-5's conv3) + the dequantization; each
                  layer's input widened once, then blocks of 4 channels
    log_softmax stays a generic Relax op, as in 0201 (same float code)

The loops over output tiles are TIR; each tile's dot products are one T.call_extern of a
micro-kernel in microkernels.h (the DSP path: __uxtb16/__sxtb16 + __smlad, the hot loops in
assembly; elsewhere plain C). Weights stay int8 in flash, so the library is no bigger; they are
laid out there in the order each micro-kernel reads them (conv_weight_const, dense_weight_const).

Why the results are the same bits as 0201's:
  - sum((q - zp) * w) = sum(q * w) - zp * sum(w): the input zero point goes into the bias at
    compile time (padding holds zp, so it still contributes 0); integer sums are exact;
  - requantization q = clip(rint(f32(acc) * M) + zp, lo, hi) gives 0201's values (M per
    tensor, or per output channel as float32; ReLU is the clip's lower bound, a fused ReLU6
    its upper one) and is non-decreasing in acc (M > 0), so max-pool on the sums and then
    requantizing one value equals requantizing four and taking their max.
"""
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tvm import relax
from tvm.script import tirx as T

from utils.cli import StageError
from utils.aot.torchscript import INPUT
from utils.aot.layers import (Dequantize, Flatten, FloatScalarOps, LogSoftmax, MaxPool2d, QConv2d, QLinear,
                              QRelu, Quantize)

MICROKERNELS_H = Path(__file__).with_name("microkernels.h")
MICROKERNEL_PREFIX = "utvm_"
OP_PATTERN_OPAQUE = 8  # relax's OpPatternKind kOpaque: FuseOps leaves these calls alone


def with_microkernels(kernels_c):
    """(kernels without TVM's extern declarations of the micro-kernels, the micro-kernels'
    source): TVM declares every call_extern target as an exported function with non-const
    pointers; they are static inline functions defined before the kernels instead, so gcc
    specializes each call for its constant shapes."""
    declaration = re.compile(r'#ifdef __cplusplus\nextern "C"\n#endif\nTVM_DLL [\w ]+\** ?'
                             + MICROKERNEL_PREFIX + r'\w+\([^;]*\);\n')
    stripped, count = declaration.subn("", kernels_c)
    called = set(re.findall(r"\b(" + MICROKERNEL_PREFIX + r"\w+)\(", stripped))
    if called and count == 0:
        raise StageError("TVM's C codegen declared the micro-kernels in an unexpected form")
    source = MICROKERNELS_H.read_text()
    return stripped, f"/* ---- micro-kernels (utils/aot/backends/cortex_m/microkernels.h) ---- */\n{source}\n"


# ----------------------------------------------------------------------------- the plan

@dataclass
class Activation:
    """A channels-last tensor [h][w][c] in the arena, maybe with a border of `pad` pixels
    around it that holds the zero point of the layer that reads it. uint8, or
    int16 (the same values, widened) where a convolution feeds another one: the consumer then
    reads ready-made pairs of int16, and the producer's stores cost the same."""
    h: int
    w: int
    c: int
    pad: tuple = (0, 0)
    dtype: str = "uint8"

    @property
    def padded_h(self):
        return self.h + 2 * self.pad[0]

    @property
    def padded_w(self):
        return self.w + 2 * self.pad[1]

    @property
    def elements(self):
        """What the kernels index; int16 tensors end with 2 spare elements, because the
        micro-kernel reads a window row with an odd length as whole pairs."""
        return self.padded_h * self.padded_w * self.c + (2 if self.dtype == "int16" else 0)

    @property
    def nbytes(self):
        return self.elements * (2 if self.dtype == "int16" else 1)


@dataclass
class ConvStage:
    conv: QConv2d
    pool: bool            # a 2x2 / stride-2 max-pool follows
    lo: int               # lowest uint8 output: the zero point when a ReLU is fused
    in_shape: tuple       # (h, w, c) of its channels-last input


@dataclass
class DenseStage:
    layer: object         # QLinear, or a QConv2d whose window covers its whole input
    lo: int
    in_shape: tuple       # (h, w, c): a flattened channels-last tensor, or (1, 1, n)


def _fail(what):
    raise StageError(f"0202 cannot optimize {what}; compile this model with 0201tvm_no_optim.py")


def _check_chain(layers):
    """These kernels run a plain chain of layers, each reading the one before."""
    previous = INPUT
    for layer in layers:
        if layer.inputs != (previous,):
            _fail(f"a graph with branches or joins ({type(layer).__name__} "
                  f"{getattr(layer, 'name', layer.output)} reads {', '.join(layer.inputs)})")
        if getattr(layer, "bias_float", None) is not None or getattr(layer, "pre_scale", None) is not None:
            _fail(f"{layer.name} (an x86/fbgemm engine's float requantization)")
        # max-pool runs on the sums before requantizing: that needs it non-decreasing
        if hasattr(layer, "multiplier") and not np.all(np.asarray(layer.multiplier) > 0):
            _fail(f"{layer.name} (a requantization multiplier that is not positive)")
        if getattr(layer, "conv1d", False):
            _fail(f"{layer.name} (a 1-d convolution)")
        previous = layer.output


def _is_pool2(layer):
    return (isinstance(layer, MaxPool2d) and layer.kernel == (2, 2) and layer.stride == (2, 2)
            and layer.padding == (0, 0) and layer.dilation == (1, 1))


def plan_stages(layers, input_shape):
    """Group the layers into kernels; returns (prologue float ops, Quantize, stages, tail layers)."""
    i = 0
    float_ops = []
    while i < len(layers) and isinstance(layers[i], FloatScalarOps):
        float_ops += layers[i].ops
        i += 1
    if i >= len(layers) or not isinstance(layers[i], Quantize):
        _fail("a model that does not start with a QuantStub")
    quantize = layers[i]
    i += 1
    if len(input_shape) != 4:
        _fail(f"a model whose input is not an image ({list(input_shape)})")
    _, channels, height, width = input_shape
    shape = (height, width, channels)   # channels-last view of what flows
    flattened = None                     # (h, w, c) the flatten came from
    stages = []
    while i < len(layers) and not isinstance(layers[i], Dequantize):
        layer = layers[i]
        i += 1
        if isinstance(layer, Flatten):
            if flattened is None and shape is not None:
                flattened = shape
            shape = None
            continue
        if isinstance(layer, QConv2d):
            if shape is None:
                _fail(f"{layer.name} after a flatten")
            _check_conv(layer, shape)
            oh, ow = _conv_out(layer, shape)
            lo = layer.out_zero_point if layer.relu else 0
            pool = False
            while i < len(layers):
                following = layers[i]
                if isinstance(following, QRelu):
                    lo = max(lo, following.zero_point)
                elif isinstance(following, MaxPool2d) and not pool:
                    if not _is_pool2(following):
                        _fail(f"the max-pool after {layer.name} (only 2x2, stride 2, no padding)")
                    pool = True
                else:
                    break
                i += 1
            whole_window = (layer.padding == (0, 0) and (oh, ow) == (1, 1))
            if whole_window and not pool:
                stages.append(DenseStage(layer, lo, shape))
                shape = (1, 1, layer.weight.shape[0])
                continue
            if pool and (oh % 2 or ow % 2):
                _fail(f"the max-pool after {layer.name} on an odd {oh}x{ow} output")
            stages.append(ConvStage(layer, pool, lo, shape))
            shape = (oh // 2, ow // 2, layer.weight.shape[0]) if pool else (oh, ow, layer.weight.shape[0])
            continue
        if isinstance(layer, QLinear):
            lo = layer.out_zero_point if layer.relu else 0
            while i < len(layers) and isinstance(layers[i], QRelu):
                lo = max(lo, layers[i].zero_point)
                i += 1
            stages.append(DenseStage(layer, lo, flattened or (1, 1, layer.weight.shape[1])))
            flattened = None
            shape = None
            continue
        _fail(type(layer).__name__ + (f" {layer.name}" if hasattr(layer, "name") else ""))
    dense_at = next((k for k, stage in enumerate(stages) if isinstance(stage, DenseStage)), None)
    if dense_at is None:
        _fail("a model that does not end with fully connected layers")
    if any(isinstance(stage, ConvStage) for stage in stages[dense_at:]):
        _fail("a convolution after a fully connected layer")
    return float_ops, quantize, stages, layers[i:]


def _check_conv(layer, shape):
    if layer.groups != 1 or layer.stride != (1, 1) or layer.dilation != (1, 1):
        _fail(f"{layer.name} (groups {layer.groups}, stride {layer.stride}, dilation {layer.dilation}; "
              f"only 1, 1, 1)")
    if layer.weight.shape[1] != shape[2]:
        _fail(f"{layer.name}: {layer.weight.shape[1]} input channels for a {shape[2]}-channel tensor")


def _conv_out(layer, shape):
    kh, kw = layer.weight.shape[2:]
    return shape[0] + 2 * layer.padding[0] - kh + 1, shape[1] + 2 * layer.padding[1] - kw + 1


def folded_bias(layer, weight_rows):
    """bias - zp_in * sum(w) per output channel: the zero point leaves the inner loop. Stored
    as int16 when every value fits (LeNet-5's do: 472 bytes less flash), else int32."""
    bias = layer.bias if layer.bias is not None else np.zeros(weight_rows.shape[0], np.int32)
    folded = bias.astype(np.int64) - layer.in_zero_point * weight_rows.astype(np.int64).sum(axis=1)
    if np.abs(folded).max(initial=0) >= 2 ** 31:
        raise StageError(f"{layer.name}: the folded bias overflows int32")
    dtype = np.int16 if np.all((folded >= -2 ** 15) & (folded < 2 ** 15)) else np.int32
    return folded.astype(dtype)


def conv_weight_rows(layer):
    """[O, kh*kw*C] int8: each channel's window row by row, channels last, as activations are."""
    w = layer.weight
    return np.ascontiguousarray(w.transpose(0, 2, 3, 1).reshape(w.shape[0], -1))


def dense_weight_rows(stage):
    layer = stage.layer
    if isinstance(layer, QConv2d):
        return conv_weight_rows(layer)
    w = layer.weight
    if stage.in_shape[:2] != (1, 1):
        # torch flattened [C, H, W]; the activations are [H, W, C]: permute the columns
        h, wd, c = stage.in_shape
        w = w.reshape(w.shape[0], c, h, wd).transpose(0, 2, 3, 1).reshape(w.shape[0], -1)
    return np.ascontiguousarray(w)


# ----------------------------------------------------------------------------- TIR kernels

def _requantize(T, acc, layer, lo, b=None, m_index=None):
    """0201's requantization, clip(rint(f32(acc) * M) + zp, lo, clip_high) as uint8, by the
    micro-kernel utvm_requantize (the same float operations on the host; on the DSP the
    rounding conversion saturates and the clip is integer, which gives the same value).
    Per-channel M: its float32 bits are b[m_index] (bias_const appends them to the biases)."""
    zp, hi = int(layer.out_zero_point), int(getattr(layer, "clip_high", 255))
    if per_channel(layer):
        return T.call_extern("uint8", "utvm_requantize_bits", acc, b[m_index], zp, int(lo), hi)
    return T.call_extern("uint8", "utvm_requantize", acc, T.float32(float(np.float32(layer.multiplier))), zp,
                         int(lo), hi)


def per_channel(layer):
    return np.ndim(layer.multiplier) > 0


def bias_const(layer, bias):
    """The folded biases, and with per-channel weights their multipliers after them, as the
    int32 bits of their float32 values (one constant, one kernel argument)."""
    if not per_channel(layer):
        return bias
    multipliers = np.asarray(layer.multiplier, np.float32).reshape(-1)
    return np.concatenate([bias.astype(np.int32), multipliers.view(np.int32)])


def opaque_scheduled(func):
    """A hand-scheduled kernel: TVM's schedule rules and FuseOps leave it as it is."""
    return func.with_attrs({"tirx.is_scheduled": True, "op_pattern": OP_PATTERN_OPAQUE})


def quantize_kernel(input_shape, float_ops, quantize, out: Activation, pad_value):
    _, c_in, h_in, w_in = input_shape
    ph, pw = out.pad
    pwidth = out.padded_w
    inv_scale, zero_point = float(quantize.inv_scale), float(quantize.zero_point)
    n_out = out.elements
    border = int(pad_value)

    def value(T, x):
        for op, v in float_ops:
            v = T.float32(float(np.float32(v)))
            x = {"sub": lambda a: a - v, "add": lambda a: a + v, "mul": lambda a: a * v,
                 "div": lambda a: a / v}[op](x)
        q = T.nearbyint(x * T.float32(inv_scale)) + T.float32(zero_point)
        return T.Cast("uint8", T.max(T.min(q, T.float32(255.0)), T.float32(0.0)))

    @T.prim_func(private=True)
    def quantize(x: T.Buffer((1, c_in, h_in, w_in), "float32"), y: T.Buffer((n_out,), "uint8")):
        T.func_attr({"tirx.noalias": True})
        for r in range(ph):
            for i in range(pwidth * c_in):
                y[r * pwidth * c_in + i] = T.uint8(border)
                y[(ph + h_in + r) * pwidth * c_in + i] = T.uint8(border)
        for h in range(h_in):
            for i in range(pw * c_in):
                y[((h + ph) * pwidth) * c_in + i] = T.uint8(border)
                y[((h + ph) * pwidth + pw + w_in) * c_in + i] = T.uint8(border)
            for w, c in T.grid(w_in, c_in):
                y[((h + ph) * pwidth + w + pw) * c_in + c] = value(T, x[0, c, h, w])

    return opaque_scheduled(quantize)


def pair_words(layer):
    """uint32 words of one output channel's weights as int16 pairs (the int16 input path)."""
    _, c, kh, kw = layer.weight.shape
    return kh * ((kw * c + 1) // 2)


def _rows_elements(stage, src):
    """int16 elements of the stack buffer the uint8 pooled path widens rows into."""
    _, c, kh, _ = stage.conv.weight.shape
    return (kh + 1) * src.padded_w * c + 2


def widens_rows(stage, src):
    """uint8 input and a pool: the rows a pooling row reads are widened to int16 on the stack,
    all weights into pairs once, and the int16 path runs on them (when both are small)."""
    o = stage.conv.weight.shape[0]
    return (stage.pool and src.dtype == "uint8" and _rows_elements(stage, src) * 2 <= 1000
            and o * pair_words(stage.conv) * 4 <= 1024)


def conv_scratch_words(stage, src):
    """uint32 words of the conv kernel's arena scratch (widened weights; 1 when unused)."""
    if src.dtype == "int16":
        return 2 * pair_words(stage.conv)
    if pairs_rows(stage, src):
        return stage.conv.weight.shape[0] * tap_pairs(stage.conv).shape[1]
    if widens_rows(stage, src):
        return stage.conv.weight.shape[0] * pair_words(stage.conv)
    return 1


def tap_pairs(conv):
    """The tap pairs of utvm_pool_pairs_p4c2 (one input channel): [O, T, 2] int8, kernel rows
    2i and 2i + 1 paired column by column, then an odd last row two taps at a time (0 past
    its end)."""
    w = conv.weight[:, 0].astype(np.int8)  # [O, kh, kw]
    o, kh, kw = w.shape
    pairs = [w[:, 2 * i:2 * i + 2, k] for i in range(kh // 2) for k in range(kw)]
    if kh % 2:
        last = np.concatenate([w[:, kh - 1], np.zeros((o, 1), np.int8)], axis=1)
        pairs += [last[:, k:k + 2] for k in range(0, kw, 2)]
    return np.stack(pairs, axis=1)


def pairs_rows(stage, src):
    """One uint8 input channel and a pool: the pooling row's input as pairs across rows
    (utvm_rowpairs_u8) on the stack, all weights widened once (arena scratch)."""
    o, c, kh, kw = stage.conv.weight.shape
    return (stage.pool and src.dtype == "uint8" and c == 1 and src.padded_w + kw < 256
            and (kh + kh % 2) * src.padded_w * 4 <= 1024 and o * tap_pairs(stage.conv).shape[1] * 4 <= 1024)


def sxtb16_order(pairs):
    """int8 pairs [N, 2] (N even) as the bytes utvm_widen_s8x4_pairs widens back into them:
    word m holds pairs 2m and 2m + 1 as (lo 2m, lo 2m+1, hi 2m, hi 2m+1)."""
    pairs = np.asarray(pairs, np.int8).reshape(-1, 2, 2)  # [m][pair in word][lo, hi]
    return np.ascontiguousarray(pairs.transpose(0, 2, 1)).reshape(-1)


def channel_pairs_interleaved(per_channel):
    """[O, P, 2] pairs → the order the pooled micro-kernels load them: channel pair by channel
    pair, then pair by pair, channel 2q's pair before channel 2q + 1's (one double-word load)."""
    o, p, _ = per_channel.shape
    return per_channel.reshape(o // 2, 2, p, 2).transpose(0, 2, 1, 3).reshape(-1, 2)


def row_pairs(conv):
    """[O, kh * ceil(kw * C / 2), 2] int8: each window row's taps two by two (0 past an odd
    row's end), the pairs utvm_pool_s16_p4c2 meets."""
    o, c, kh, kw = conv.weight.shape
    seg = kw * c
    rows = conv_weight_rows(conv).reshape(o, kh, seg)
    if seg % 2:
        rows = np.concatenate([rows, np.zeros((o, kh, 1), np.int8)], axis=2)
    return rows.reshape(o, -1, 2)


def pooled_pairs(stage, src):
    """The pooled paths whose weights are widened from interleaved pairs (utvm_pool_s16_p4c2)."""
    return stage.pool and (src.dtype == "int16" or widens_rows(stage, src))


def conv_weight_const(stage, src):
    """The conv kernel's int8 weights as they sit in flash for its path."""
    if pairs_rows(stage, src):
        return sxtb16_order(channel_pairs_interleaved(tap_pairs(stage.conv)))
    if pooled_pairs(stage, src):
        return sxtb16_order(channel_pairs_interleaved(row_pairs(stage.conv)))
    return conv_weight_rows(stage.conv).reshape(-1)


def conv_kernel(stage: ConvStage, src: Activation, out: Activation, pad_value, bias_dtype, n_bias):
    """Convolution + bias + clip (+ 2x2 max-pool) + requantization into `out` (uint8 or the
    same values as int16), channels-last. Four paths:
    - pooled, one uint8 input channel (pairs_rows): the rows of a pooling row as pairs across
      rows on the stack (utvm_rowpairs_u8), one utvm_pool_pairs_p4c2 call per pooling window
      and channel pair, on all weights widened once into `wide` (arena scratch, the kernel's
      second output);
    - pooled, int16 input or uint8 rows widened on the stack (widens_rows): one
      utvm_pool_s16_p4c2 call per pooling window and channel pair, on weights widened into
      int16 pairs in `wide`;
    - pooled, uint8 input too big for that: the window's two pixel rows are two
      utvm_dot_u8s8_p2c2 calls (2 pixels x 2 channels, widening in the inner loop);
    - no pool: one call per 2 pixels x 2 channels (utvm_dot_s16_p2c2 on int16 input)."""
    layer = stage.conv
    o, c, kh, kw = layer.weight.shape
    if o % 2:
        _fail(f"{layer.name} with an odd number ({o}) of output channels")
    oh, ow = _conv_out(layer, (src.h, src.w, c))
    if src.pad != tuple(layer.padding):
        raise StageError(f"{layer.name}: its input was laid out with padding {src.pad}, not {layer.padding}")
    x_row, x_pix = src.padded_w * c, c
    w_ch, seg = kh * kw * c, kw * c
    n_in, n_out = src.elements, out.elements
    wide16 = src.dtype == "int16"
    pairs = (seg + 1) // 2
    n_rows = _rows_elements(stage, src)
    n_wide = conv_scratch_words(stage, src)
    opw, (oph, opw_pad) = out.padded_w, out.pad
    fill = out.pad != (0, 0)
    lo = stage.lo
    border = int(pad_value)
    in_dtype, out_dtype, b_dtype = src.dtype, out.dtype, str(bias_dtype)
    n_pw = o * pairs * kh * 2  # bytes of the interleaved pairs (pooled_pairs)
    n_w_pool = n_pw if pooled_pairs(stage, src) else o * w_ch

    def rq(T, acc, b, channel):
        return T.Cast(out_dtype, _requantize(T, acc + T.Cast("int32", b[channel]), layer, lo, b, o + channel))

    def out_index(y, x, ch):
        return ((y + oph) * opw + x + opw_pad) * o + ch

    def dot(T, x, w, wide, acc, x_off, x_step, oc, acc_off):
        if wide16:
            return T.call_extern("int32", "utvm_dot_s16_p2c2", x.data, x_off, x_step, x_row, wide.data,
                                 kh, pairs, acc.data, acc_off)
        return T.call_extern("int32", "utvm_dot_u8s8_p2c2", x.data, x_off, x_step, x_row, w.data, oc * 2 * w_ch,
                             w_ch, kh, seg, acc.data, acc_off)

    def widen(T, w, wide, oc):
        return T.call_extern("int32", "utvm_widen_s8_s16_pairs", w.data, oc * 2 * w_ch, 2, w_ch, kh, seg, wide.data)

    @T.macro
    def fill_border(y):
        if fill:
            for i in range(n_out):
                y[i] = T.Cast(out_dtype, border)

    @T.macro
    def store_pooled(y, b, acc, py, px, oc):
        """acc[ch]: the largest sum of channel oc * 2 + ch in the pooling window."""
        for ch in T.unroll(2):
            y[out_index(py, px, oc * 2 + ch)] = rq(T, acc[ch], b, oc * 2 + ch)

    if pairs_rows(stage, src):
        ph_out, pw_out = oh // 2, ow // 2
        taps = tap_pairs(layer).shape[1]
        n_w = o * taps * 2
        width = src.padded_w
        n_buf = (kh + kh % 2) * width

        @T.prim_func(private=True)
        def conv(x: T.Buffer((n_in,), in_dtype), w: T.Buffer((n_w,), "int8"), b: T.Buffer((n_bias,), b_dtype),
                 y: T.Buffer((n_out,), out_dtype), wide: T.Buffer((n_wide,), "uint32")):
            T.func_attr({"tirx.noalias": True})
            acc = T.alloc_buffer((2,), "int32", scope="global")
            rows = T.alloc_buffer((n_buf,), "uint32", scope="global")
            fill_border(y)
            T.evaluate(T.call_extern("int32", "utvm_widen_s8x4_pairs", w.data, 0, n_w // 4, wide.data))
            for py in range(ph_out):
                T.evaluate(T.call_extern("int32", "utvm_rowpairs_u8", x.data, py * 2 * x_row, width, kh, rows.data))
                for px, oc in T.grid(pw_out, o // 2):
                    T.evaluate(T.call_extern("int32", "utvm_pool_pairs_p4c2", rows.data, px * 2, width, wide.data,
                                             oc * 2 * taps, kh, kw, acc.data))
                    store_pooled(y, b, acc, py, px, oc)
        return opaque_scheduled(conv)

    if widens_rows(stage, src):
        ph_out, pw_out = oh // 2, ow // 2

        @T.prim_func(private=True)
        def conv(x: T.Buffer((n_in,), in_dtype), w: T.Buffer((n_pw,), "int8"), b: T.Buffer((n_bias,), b_dtype),
                 y: T.Buffer((n_out,), out_dtype), wide: T.Buffer((n_wide,), "uint32")):
            T.func_attr({"tirx.noalias": True})
            acc = T.alloc_buffer((2,), "int32", scope="global")
            rows = T.alloc_buffer((n_rows,), "int16", scope="global")
            fill_border(y)
            rows[n_rows - 2] = T.int16(0)  # read past the last row, against zero weights
            rows[n_rows - 1] = T.int16(0)
            T.evaluate(T.call_extern("int32", "utvm_widen_s8x4_pairs", w.data, 0, n_pw // 4, wide.data))
            for py in range(ph_out):
                T.evaluate(T.call_extern("int32", "utvm_widen_u8_s16", x.data, py * 2 * x_row, n_rows - 2, rows.data))
                for px, oc in T.grid(pw_out, o // 2):
                    T.evaluate(T.call_extern("int32", "utvm_pool_s16_p4c2", rows.data, px * 2 * x_pix, x_pix,
                                             x_row, wide.data, oc * 2 * pairs * kh, kh, pairs, acc.data))
                    store_pooled(y, b, acc, py, px, oc)
        return opaque_scheduled(conv)

    if stage.pool:
        ph_out, pw_out = oh // 2, ow // 2

        @T.prim_func(private=True)
        def conv(x: T.Buffer((n_in,), in_dtype), w: T.Buffer((n_w_pool,), "int8"), b: T.Buffer((n_bias,), b_dtype),
                 y: T.Buffer((n_out,), out_dtype), wide: T.Buffer((n_wide,), "uint32")):
            T.func_attr({"tirx.noalias": True})
            acc = T.alloc_buffer((8,), "int32", scope="global")
            fill_border(y)
            # channel pairs outermost: with int16 input their weights are widened once
            for oc in range(o // 2):
                if wide16:
                    T.evaluate(T.call_extern("int32", "utvm_widen_s8x4_pairs", w.data, oc * 4 * pairs * kh,
                                             pairs * kh, wide.data))
                for py, px in T.grid(ph_out, pw_out):
                    if wide16:
                        # the whole pooling window in one call: 8 sums in registers, 2 maxima back
                        T.evaluate(T.call_extern("int32", "utvm_pool_s16_p4c2", x.data,
                                                 py * 2 * x_row + px * 2 * x_pix, x_pix, x_row, wide.data, 0,
                                                 kh, pairs, acc.data))
                        store_pooled(y, b, acc, py, px, oc)
                    else:
                        for i in T.unroll(8):
                            acc[i] = 0
                        for dy in range(2):
                            T.evaluate(dot(T, x, w, wide, acc, (py * 2 + dy) * x_row + px * 2 * x_pix, x_pix,
                                           oc, dy * 4))
                        for ch in T.unroll(2):
                            y[out_index(py, px, oc * 2 + ch)] = rq(T, T.max(T.max(acc[ch * 2], acc[ch * 2 + 1]),
                                                                           T.max(acc[4 + ch * 2],
                                                                                 acc[4 + ch * 2 + 1])),
                                                                   b, oc * 2 + ch)
        return opaque_scheduled(conv)

    half = (ow + 1) // 2
    last_pix = (ow - 1) * x_pix

    @T.prim_func(private=True)
    def conv(x: T.Buffer((n_in,), in_dtype), w: T.Buffer((o * w_ch,), "int8"), b: T.Buffer((n_bias,), b_dtype),
             y: T.Buffer((n_out,), out_dtype), wide: T.Buffer((n_wide,), "uint32")):
        T.func_attr({"tirx.noalias": True})
        acc = T.alloc_buffer((4,), "int32", scope="global")
        fill_border(y)
        for oc in range(o // 2):
            if wide16:
                T.evaluate(widen(T, w, wide, oc))
            for oy, ox2 in T.grid(oh, half):
                for i in T.unroll(4):
                    acc[i] = 0
                # an odd last column computes its pixel twice (x_pix 0) and keeps one
                T.evaluate(dot(T, x, w, wide, acc, oy * x_row + T.min(ox2 * 2 * x_pix, last_pix),
                               T.if_then_else(ox2 * 2 + 1 < ow, x_pix, 0), oc, 0))
                for ch, p in T.grid(2, 2):
                    if ox2 * 2 + p < ow:
                        y[out_index(oy, ox2 * 2 + p, oc * 2 + ch)] = rq(T, acc[ch * 2 + p], b, oc * 2 + ch)
    return opaque_scheduled(conv)


def dense_groups(n):
    return (n + 3) // 4


def dense_weight_const(stage):
    """A fully connected layer's int8 weights as utvm_dense_c4 reads them: rows padded with 0
    to whole groups of 4 inputs, then blocks of 4 channels (the last one maybe narrower),
    group by group, each channel's 4 bytes."""
    rows = dense_weight_rows(stage)
    o, n = rows.shape
    g = dense_groups(n)
    rows = np.concatenate([rows, np.zeros((o, 4 * g - n), np.int8)], axis=1).reshape(o, g, 4)
    blocks = [rows[q:q + 4].transpose(1, 0, 2).reshape(-1) for q in range(0, o, 4)]
    return np.concatenate(blocks)


def head_scratch_words(stages, n_in):
    """uint32 words of the head's arena scratch: the widest layer input, widened."""
    widths = [n_in] + [stage.layer.weight.shape[0] for stage in stages[:-1]]
    return 2 * max(dense_groups(n) for n in widths)


def head_multiplier_offsets(stages, n_biases):
    """Where each head layer's per-channel multipliers start in the head's bias constant (after
    all the biases, per-channel layers only); the last entry is the constant's length."""
    offsets = [n_biases]
    for stage in stages:
        offsets.append(offsets[-1] + (stage.layer.weight.shape[0] if per_channel(stage.layer) else 0))
    return offsets


def head_bias_const(stages, biases):
    """The head's biases, then the per-channel layers' multipliers (their float32 bits)."""
    extra = [np.asarray(stage.layer.multiplier, np.float32).reshape(-1).view(np.int32)
             for stage in stages if per_channel(stage.layer)]
    dtype = np.int32 if extra else np.result_type(*biases)
    return np.concatenate([bias.astype(dtype) for bias in biases] + extra)


def head_kernel(stages, n_in, dequantize, bias_dtype):
    """The fully connected layers at the end of the network, one after the other in one
    kernel (their small outputs live on the stack): each widens its input once into arena
    scratch (utvm_widen_u8_x4), then 4 output channels per micro-kernel call + bias + clip +
    requantization. With `dequantize` the last layer writes the float logits
    (float32(q) - zp) * scale, as 0201's Dequantize does."""
    # the IR builder's tirx, not the parser's T of the module: this kernel is built
    # imperatively, one layer after the other
    from tvm.script.ir_builder import IRBuilder
    from tvm.script.ir_builder import tirx as T
    widths = [n_in] + [stage.layer.weight.shape[0] for stage in stages]
    n_wide = head_scratch_words(stages, n_in)
    with IRBuilder() as builder:
        with T.prim_func():
            T.func_name("head")
            T.func_attr({"tirx.noalias": True})
            x = T.arg("x", T.buffer((n_in,), "uint8"))
            # every layer's weights in one constant and its biases in another: each kernel
            # argument costs flash in the kernel and in the glue
            w_sizes = [widths[k + 1] * 4 * dense_groups(widths[k]) for k in range(len(stages))]
            w_offsets, b_offsets = np.cumsum([0] + w_sizes), np.cumsum([0] + widths[1:])
            m_offsets = head_multiplier_offsets(stages, int(b_offsets[-1]))
            w = T.arg("w", T.buffer((int(w_offsets[-1]),), "int8"))
            b = T.arg("b", T.buffer((m_offsets[-1],), str(bias_dtype)))
            o_last = widths[-1]
            # the scratch before the logits: the host harness's debug tap copies the last
            # argument of the kernel that writes them
            wide = T.arg("wide", T.buffer((n_wide,), "uint32"))
            y = T.arg("y", T.buffer((1, o_last), "float32" if dequantize else "uint8"))
            acc = T.alloc_buffer((4,), "int32", scope="global")
            src = x
            for k, stage in enumerate(stages):
                layer, n, o = stage.layer, widths[k], widths[k + 1]
                w_off, b_off = int(w_offsets[k]), int(b_offsets[k])
                groups = dense_groups(n)
                last = k == len(stages) - 1
                dst = T.alloc_buffer((o,), "uint8", scope="global") if not last else None
                T.evaluate(T.call_extern("int32", "utvm_widen_u8_x4", src.data, n, wide.data))
                with T.serial(0, (o + 3) // 4) as q:
                    T.evaluate(T.call_extern("int32", "utvm_dense_c4", wide.data, w.data, w_off + q * 16 * groups, groups,
                                             T.min(o - q * 4, 4), acc.data))
                    # rolled: these loops run 54 times in LeNet-5, and flash is the tighter budget
                    with T.serial(0, 4) as a:
                        with T.If(q * 4 + a < o):
                            with T.Then():
                                value = _requantize(T, acc[a] + T.Cast("int32", b[b_off + q * 4 + a]), layer,
                                                    stage.lo, b, m_offsets[k] + q * 4 + a)
                                if last and dequantize is not None:
                                    value = ((T.Cast("float32", value) - T.float32(float(dequantize.zero_point)))
                                             * T.float32(float(np.float32(dequantize.scale))))
                                if last:
                                    T.buffer_store(y, value, [0, q * 4 + a])
                                else:
                                    T.buffer_store(dst, value, [q * 4 + a])
                src = dst
    return opaque_scheduled(builder.get())


# ----------------------------------------------------------------------------- Relax

def int8_to_relax_cortex_m(layers, input_shape):
    """An IRModule whose `main(input0: float32[input_shape])` computes the layers with the
    kernels above; what follows the dequantization is 0201's generic Relax."""

    _check_chain(layers)
    float_ops, quantize, stages, tail = plan_stages(layers, input_shape)

    def layout(index):
        """The Activation stage `index` reads (its padding and dtype are the reader's)."""
        stage = stages[index]
        pad, dtype = (0, 0), "uint8"
        if isinstance(stage, ConvStage):
            pad = tuple(stage.conv.padding)
            # int16 where a convolution feeds a convolution; an even channel count keeps
            # every window row on a 4-byte boundary (whole int16 pairs)
            if index > 0 and isinstance(stages[index - 1], ConvStage) and stage.in_shape[2] % 2 == 0:
                dtype = "int16"
        return Activation(*stage.in_shape, pad, dtype)

    def pad_value(index):
        stage = stages[index]
        return (stage.conv if isinstance(stage, ConvStage) else stage.layer).in_zero_point

    def const(value, dtype):
        return relax.const(np.asarray(value, dtype=dtype), dtype)

    bb = relax.BlockBuilder()
    x_in = relax.Var("input0", relax.TensorType(list(input_shape), "float32"))
    with bb.function("main", [x_in]):
        with bb.dataflow():
            first = layout(0)
            gv = bb.add_func(quantize_kernel(input_shape, float_ops, quantize, first, pad_value(0)), "quantize")
            x = bb.emit(relax.call_tir(gv, relax.Tuple([x_in]), relax.TensorType((first.elements,), "uint8")))
            convs = [stage for stage in stages if isinstance(stage, ConvStage)]
            head = stages[len(convs):]
            for index, stage in enumerate(convs):
                rows = conv_weight_rows(stage.conv)
                bias = folded_bias(stage.conv, rows)
                out = layout(index + 1)
                src = layout(index)
                weights = conv_weight_const(stage, src)
                bias = bias_const(stage.conv, bias)
                func = conv_kernel(stage, src, out, pad_value(index + 1), bias.dtype, len(bias))
                gv = bb.add_func(func, stage.conv.name.replace(".", "_"))
                n_wide = conv_scratch_words(stage, src)
                outputs = bb.emit(relax.call_tir(gv, relax.Tuple([x, const(weights, "int8"),
                                                                  const(bias, str(bias.dtype))]),
                                                 [relax.TensorType((out.elements,), out.dtype),
                                                  relax.TensorType((n_wide,), "uint32")]))
                x = bb.emit(relax.TupleGetItem(outputs, 0))  # the scratch dies here
            dequantize = tail[0] if tail and isinstance(tail[0], Dequantize) else None
            biases = head_bias_const(head, [folded_bias(stage.layer, dense_weight_rows(stage)) for stage in head])
            weights = np.concatenate([dense_weight_const(stage) for stage in head])
            args = [x, const(weights, "int8"), const(biases, str(biases.dtype))]
            n_head_in = layout(len(convs)).elements
            func = head_kernel(head, n_head_in, dequantize, biases.dtype)
            gv = bb.add_func(func, "_".join(stage.layer.name.replace(".", "_") for stage in head))
            outputs = bb.emit(relax.call_tir(gv, relax.Tuple(args), [
                relax.TensorType((head_scratch_words(head, n_head_in),), "uint32"),
                relax.TensorType((1, head[-1].layer.weight.shape[0]), "float32" if dequantize else "uint8")]))
            x = bb.emit(relax.TupleGetItem(outputs, 1))  # the scratch dies here
            for layer in tail[1:] if dequantize else tail:
                if isinstance(layer, LogSoftmax):
                    x = bb.emit(relax.op.nn.log_softmax(x, axis=layer.dim))
                else:
                    _fail(f"{type(layer).__name__} after the DeQuantStub")
            out = bb.emit_output(x)
        bb.emit_func_output(out)
    return bb.get()


