"""Quantized Linear / LinearReLU."""
from dataclasses import dataclass

import numpy as np
import torch
from tvm import relax

from utils.aot.layers.base import (Layer, golden_requantize, is_quantized_module, module_rule, quantized_op,
                                   requantization, weight_scales)

QUANTIZED_LINEAR = ("Linear", "LinearReLU")


@dataclass
class QLinear(Layer):
    name: str
    weight: np.ndarray          # int8 [O, I]
    bias: np.ndarray            # int32 [O]
    in_zero_point: int
    multiplier: np.ndarray      # float32: a scalar, or one per output channel
    out_scale: float
    out_zero_point: int
    relu: bool
    bias_float: np.ndarray = None   # fbgemm, oneDNN: the bias in float32 (utils.aot.layers.base.requantization)
    pre_scale: np.ndarray = None    # oneDNN: the sum's scale, applied before the bias
    clip_high: int = 255            # a fused ReLU6's upper bound (PT2E), in output bytes

    def golden(self, x):
        acc = (x.astype(np.int64) - self.in_zero_point) @ self.weight.astype(np.int64).T
        if self.bias is not None:
            acc = acc + self.bias
        return golden_requantize(acc.astype(np.int32), self)

    def to_relax(self, r, x):
        x = r.centered(x, self.in_zero_point)
        weight_t = np.ascontiguousarray(self.weight.T)
        if weight_t.shape[0] == 1:
            # one input: a product, not a matmul (TVM's scheduling of a one-element reduction
            # with the requantization inlined keeps its init in the uint8 output: wrong bits)
            acc = r.bb.emit(relax.op.multiply(r.bb.emit(relax.op.astype(x, "int32")), r.const(weight_t, "int32")))
        else:
            acc = r.bb.emit(relax.op.matmul(x, r.const(weight_t, "int8"), out_dtype="int32"))
        if self.bias is not None:
            acc = r.bb.emit(relax.op.add(acc, r.const(self.bias, "int32")))
        return r.requantize(acc, self)


def weight_fields(parser, name, weight, bias, out_scale, conv_groups=None):
    """The record fields conv and linear share: int8 weight, input zero point and the engine's
    requantization (utils.aot.layers.base.requantization)."""
    w_scale = weight_scales(weight, name)
    in_scale, in_zp = parser.qparams
    b = None if bias is None else bias.detach().float().numpy()
    return dict(weight=weight.int_repr().numpy().astype(np.int8), in_zero_point=in_zp,
                **requantization(parser.engine, w_scale, in_scale, out_scale, b, conv_groups))


@module_rule(*QUANTIZED_LINEAR)
def parse_linear(parser, name, module):
    if not is_quantized_module(module):
        return None
    parser.need_quantized(name)
    op, out_scale, out_zp = quantized_op(module, name)
    if op not in ("quantized::linear", "quantized::linear_relu"):
        parser.fail(f"op {op} in {name}")
    relu = op.endswith("_relu")
    weight, bias = torch.ops.quantized.linear_unpack(module._packed_params._packed_params)
    layer = QLinear(name=name, **weight_fields(parser, name, weight, bias, out_scale),
                    out_scale=out_scale, out_zero_point=out_zp, relu=relu)
    parser.qparams = (out_scale, out_zp)
    return layer
