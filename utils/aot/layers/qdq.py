"""Joins and averages with the arithmetic of a quantize/dequantize (PT2E) program: the
inputs are dequantized in float32, combined, and quantized again, as the program's own float
ops do between its DQ and Q nodes. The records take uint8 values; a PT2E int8 tensor is the
same numbers shifted by 128 (utils.aot.pt2e).

    dequantize  f = (f32(q) - zp) * f32(s)
    quantize    q = clip(rint(f * f32(1 / s_out)) + zp_out, lo, 255)  (1 / s_out in double, as torch)
    add         f = dequantize(a) + dequantize(b)             (bit-exact with the program)
    cat         each input dequantized and quantized again    (bit-exact with the program)
    average     f = f32(sum(q - zp)) * f32(s / count)         (the program sums floats instead;
                                                               the report says how often it differs)
"""
from dataclasses import dataclass

import numpy as np
from tvm import relax

from utils.aot.layers.base import F32, Layer


def _dequantize(q, scale, zero_point):
    return (np.asarray(q).astype(F32) - F32(zero_point)) * F32(scale)


def _quantize(f, inv_scale, zero_point, low):
    q = np.rint(np.asarray(f, F32) * F32(inv_scale)) + F32(zero_point)
    return np.clip(q, low, 255).astype(np.uint8)


def _relax_dequantize(r, x, scale, zero_point):
    f = r.bb.emit(relax.op.astype(x, "float32"))
    if zero_point:
        f = r.bb.emit(relax.op.subtract(f, r.const(zero_point, "float32")))
    return r.bb.emit(relax.op.multiply(f, r.const(F32(scale), "float32")))


def _relax_quantize(r, f, inv_scale, zero_point, low):
    f = r.bb.emit(relax.op.multiply(f, r.const(F32(inv_scale), "float32")))
    f = r.bb.emit(relax.op.round(f))
    if zero_point:
        f = r.bb.emit(relax.op.add(f, r.const(zero_point, "float32")))
    f = r.bb.emit(relax.op.clip(f, relax.prim_value(float(low)), relax.prim_value(255.0)))
    return r.bb.emit(relax.op.astype(f, "uint8"))


@dataclass
class FloatAdd(Layer):
    in_qparams: tuple           # ((scale, zero point) of a, of b)
    out_inv_scale: float        # f32(1.0 / s_out), the way the program's quantize computes it
    out_zero_point: int
    low: int                    # the output zero point with a fused ReLU, else 0

    def golden(self, a, b):
        (sa, za), (sb, zb) = self.in_qparams
        f = (_dequantize(a, sa, za) + _dequantize(b, sb, zb)).astype(F32)
        return _quantize(f, self.out_inv_scale, self.out_zero_point, self.low)

    def to_relax(self, r, a, b):
        (sa, za), (sb, zb) = self.in_qparams
        f = r.bb.emit(relax.op.add(_relax_dequantize(r, a, sa, za), _relax_dequantize(r, b, sb, zb)))
        return _relax_quantize(r, f, self.out_inv_scale, self.out_zero_point, self.low)


@dataclass
class FloatCat(Layer):
    in_qparams: tuple           # (scale, zero point) per input
    axis: int
    out_inv_scale: float
    out_zero_point: int

    def golden(self, *xs):
        parts = [_quantize(_dequantize(x, s, z), self.out_inv_scale, self.out_zero_point, 0)
                 for x, (s, z) in zip(xs, self.in_qparams)]
        return np.concatenate(parts, axis=self.axis)

    def to_relax(self, r, *xs):
        parts = [_relax_quantize(r, _relax_dequantize(r, x, s, z), self.out_inv_scale, self.out_zero_point, 0)
                 for x, (s, z) in zip(xs, self.in_qparams)]
        return r.bb.emit(relax.op.concat(parts, axis=self.axis))


@dataclass
class IntegerAverage(Layer):
    """Average pooling over windows (or the whole H x W): integer sums of (q - zp), one float
    multiplier s_in / (count * s_out) per output, then the zero point."""
    kernel: tuple               # (kh, kw); the whole input for a global average
    stride: tuple
    padding: tuple
    in_zero_point: int
    multiplier: float           # f32(s_in / (kh * kw * s_out)); padding counts as zeros
    out_zero_point: int
    keep_dims: bool = True      # False: [N, C] out (a mean without keepdim)

    def _windows(self, x):
        (kh, kw), (sh, sw), (ph, pw) = self.kernel, self.stride, self.padding
        x = np.pad(x.astype(np.int64) - self.in_zero_point, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
        oh = (x.shape[2] - kh) // sh + 1
        ow = (x.shape[3] - kw) // sw + 1
        total = np.zeros(x.shape[:2] + (oh, ow), np.int64)
        for i in range(kh):
            for j in range(kw):
                total += x[:, :, i:i + sh * oh:sh, j:j + sw * ow:sw]
        return total

    def golden(self, x):
        q = np.rint(self._windows(x).astype(F32) * F32(self.multiplier)) + F32(self.out_zero_point)
        q = np.clip(q, 0, 255).astype(np.uint8)
        return q if self.keep_dims else q.reshape(q.shape[:2])

    def to_relax(self, r, x):
        n, c, h, w = (int(d) for d in x.ty.shape)
        centered = r.centered(x, self.in_zero_point)
        if tuple(self.kernel) == (h, w) and not any(self.padding):
            wide = r.bb.emit(relax.op.astype(centered, "int32"))
            total = r.bb.emit(relax.op.sum(wide, axis=[2, 3], keepdims=True))
        else:
            # window sums as a depthwise convolution with ones (padding adds zeros, as counted)
            ones = r.const(np.ones((c, 1) + tuple(self.kernel), np.int8), "int8")
            total = r.bb.emit(relax.op.nn.conv2d(centered, ones, strides=self.stride, padding=self.padding,
                                                 groups=c, out_dtype="int32"))
        f = r.bb.emit(relax.op.astype(total, "float32"))
        f = r.bb.emit(relax.op.multiply(f, r.const(F32(self.multiplier), "float32")))
        f = r.bb.emit(relax.op.round(f))
        if self.out_zero_point:
            f = r.bb.emit(relax.op.add(f, r.const(self.out_zero_point, "float32")))
        f = r.bb.emit(relax.op.clip(f, relax.prim_value(0.0), relax.prim_value(255.0)))
        q = r.bb.emit(relax.op.astype(f, "uint8"))
        return q if self.keep_dims else r.bb.emit(relax.op.reshape(q, [n, c]))
