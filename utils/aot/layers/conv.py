"""Quantized Conv2d / ConvReLU2d (fused conv-bn-relu included, as torch converts them)."""
from dataclasses import dataclass

import numpy as np
import torch
from tvm import relax

from utils.aot.layers.base import Layer, golden_requantize, is_quantized_module, module_rule, quantized_op
from utils.aot.layers.linear import weight_fields

QUANTIZED_CONV = ("Conv2d", "ConvReLU2d", "Conv1d", "ConvReLU1d")
CONV_OPS = {"quantized::conv2d": False, "quantized::conv2d_relu": True,
            "quantized::conv1d": False, "quantized::conv1d_relu": True}


@dataclass
class QConv2d(Layer):
    name: str
    weight: np.ndarray          # int8 [O, I/groups, kh, kw] (a Conv1d's: kh = 1)
    bias: np.ndarray            # int32 [O]
    in_zero_point: int
    multiplier: np.ndarray      # requantization factor M, float32: a scalar, or one per output channel
    out_scale: float
    out_zero_point: int
    relu: bool
    stride: tuple
    padding: tuple
    dilation: tuple
    groups: int
    conv1d: bool = False        # [N, C, L] in and out, computed as a 1 x L image
    bias_float: np.ndarray = None   # fbgemm, oneDNN: the bias in float32 (utils.aot.layers.base.requantization)
    pre_scale: np.ndarray = None    # oneDNN: the sum's scale, applied before the bias
    clip_high: int = 255            # a fused ReLU6's upper bound (PT2E), in output bytes

    def golden(self, x):
        if self.conv1d:
            x = x[:, :, None, :]
        acc = conv_int(x.astype(np.int64) - self.in_zero_point, self.weight.astype(np.int64),
                       self.stride, self.padding, self.dilation, self.groups)
        if self.bias is not None:
            acc = acc + self.bias.reshape(1, -1, 1, 1)
        out = golden_requantize(acc.astype(np.int32), self)
        return out[:, :, 0, :] if self.conv1d else out

    def to_relax(self, r, x):
        if self.conv1d:
            n, c, length = (int(d) for d in x.ty.shape)
            x = r.bb.emit(relax.op.reshape(x, [n, c, 1, length]))
        x = r.centered(x, self.in_zero_point)
        if self.weight.shape[1:] == (1, 1, 1):
            acc = self._single_tap(r, x)
        else:
            # never astype a weight constant: FoldConstant would store it widened
            acc = r.bb.emit(relax.op.nn.conv2d(
                x, r.const(self.weight, "int8"), strides=self.stride, padding=self.padding,
                dilation=self.dilation, groups=self.groups, out_dtype="int32"))
        if self.bias is not None:
            acc = r.bb.emit(relax.op.add(acc, r.const(self.bias.reshape(1, -1, 1, 1), "int32")))
        out = r.requantize(acc, self)
        if self.conv1d:
            n, o, _, length = (int(d) for d in out.ty.shape)
            out = r.bb.emit(relax.op.reshape(out, [n, o, length]))
        return out

    def _single_tap(self, r, x):
        """A 1x1 window over one channel (a 1x1 depthwise conv, or a 1x1 conv of a one-channel
        input): a broadcast product, not a conv2d (TVM's scheduling of a one-element reduction
        with the requantization inlined keeps its init in the uint8 output: wrong bits)."""
        bb = r.bb
        if any(self.padding):
            ph, pw = self.padding
            x = bb.emit(relax.op.nn.pad(x, [0, 0, 0, 0, ph, ph, pw, pw], pad_value=0.0))
        _, _, h, w = (int(d) for d in x.ty.shape)
        if tuple(self.stride) != (1, 1):
            x = bb.emit(relax.op.strided_slice(x, [2, 3], [0, 0], [h, w], list(self.stride)))
        weight = self.weight.reshape(1, -1, 1, 1).astype(np.int32)  # one int per output channel
        return bb.emit(relax.op.multiply(bb.emit(relax.op.astype(x, "int32")), r.const(weight, "int32")))


def conv_int(x, w, stride, padding, dilation, groups):
    """Integer NCHW convolution, accumulating in int64 (exact), via im2col."""
    n, c, h, wd = x.shape
    o, ci, kh, kw = w.shape
    x = np.pad(x, ((0, 0), (0, 0), (padding[0], padding[0]), (padding[1], padding[1])))
    oh = (x.shape[2] - dilation[0] * (kh - 1) - 1) // stride[0] + 1
    ow = (x.shape[3] - dilation[1] * (kw - 1) - 1) // stride[1] + 1
    out = np.zeros((n, o, oh, ow), np.int64)
    per_group = o // groups
    for g in range(groups):
        xs = x[:, g * ci:(g + 1) * ci]
        cols = np.empty((n, ci, kh, kw, oh, ow), np.int64)
        for i in range(kh):
            for j in range(kw):
                cols[:, :, i, j] = xs[:, :, i * dilation[0]: i * dilation[0] + stride[0] * oh: stride[0],
                                      j * dilation[1]: j * dilation[1] + stride[1] * ow: stride[1]]
        wg = w[g * per_group:(g + 1) * per_group].reshape(per_group, -1).astype(np.int64)
        out[:, g * per_group:(g + 1) * per_group] = np.einsum("ok,nkhw->nohw", wg,
                                                              cols.reshape(n, -1, oh, ow))
    return out


@module_rule(*QUANTIZED_CONV)
def parse_conv(parser, name, module):
    if not is_quantized_module(module):
        return None
    parser.need_quantized(name)
    op, out_scale, out_zp = quantized_op(module, name)
    if op not in CONV_OPS:
        parser.fail(f"op {op} in {name}")
    relu, conv1d = CONV_OPS[op], op.startswith("quantized::conv1d")
    packed = module._packed_params
    if packed.transpose():
        parser.fail(f"module {name} (transposed convolution)")
    weight, bias = (torch.ops.quantized.conv1d_unpack if conv1d else torch.ops.quantized.conv2d_unpack)(packed)
    if weight.dim() != (3 if conv1d else 4):
        parser.fail(f"module {name} ({weight.dim() - 2}-d convolution)")
    fields = weight_fields(parser, name, weight, bias, out_scale, conv_groups=int(packed.groups()))
    if conv1d:
        fields["weight"] = fields["weight"][:, :, None, :]
    layer = QConv2d(name=name, **fields, out_scale=out_scale, out_zero_point=out_zp, relu=relu,
                    stride=tuple(packed.stride()), padding=tuple(packed.padding()),
                    dilation=tuple(packed.dilation()), groups=int(packed.groups()), conv1d=conv1d)
    parser.qparams = (out_scale, out_zp)
    return layer
