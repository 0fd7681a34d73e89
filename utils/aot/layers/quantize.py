"""Quantize (QuantStub) and Dequantize (DeQuantStub): float32 ↔ uint8 at the model's edges."""
from dataclasses import dataclass

import numpy as np
import torch
from tvm import relax

from utils.cli import StageError
from utils.aot.layers.base import F32, QUINT8_SCALAR_TYPE, Layer, graph_constants, module_rule


@dataclass
class Quantize(Layer):
    scale: float
    zero_point: int
    inv: float = None           # a PT2E program's f32(1.0 / scale), the inverse taken in double

    @property
    def inv_scale(self):
        # torch's QuantStub quantizes with x * (1.0f / scale), all in float32
        return F32(self.inv) if self.inv is not None else F32(1.0) / F32(self.scale)

    def golden(self, x):
        q = np.rint(x.astype(F32) * self.inv_scale) + F32(self.zero_point)
        return np.clip(q, 0, 255).astype(np.uint8)

    def to_relax(self, r, x):
        x = r.bb.emit(relax.op.multiply(x, r.const(self.inv_scale, "float32")))
        x = r.bb.emit(relax.op.round(x))
        x = r.add_zero_point(x, self.zero_point)
        x = r.bb.emit(relax.op.clip(x, relax.prim_value(0.0), relax.prim_value(255.0)))
        return r.bb.emit(relax.op.astype(x, "uint8"))


@dataclass
class Dequantize(Layer):
    scale: float
    zero_point: int

    def golden(self, x):
        return (x.astype(F32) - F32(self.zero_point)) * F32(self.scale)

    def to_relax(self, r, x):
        x = r.bb.emit(relax.op.astype(x, "float32"))
        if self.zero_point != 0:
            x = r.bb.emit(relax.op.subtract(x, r.const(self.zero_point, "float32")))
        return r.bb.emit(relax.op.multiply(x, r.const(self.scale, "float32")))


@module_rule("Quantize")
def parse_quantize(parser, name, module):
    parser.need_float(name)
    args = graph_constants(module, "aten::quantize_per_tensor")
    if args is None:
        parser.fail(f"module {name} (Quantize, not traced)")
    scale, zero_point, dtype = args
    if dtype not in (torch.quint8, QUINT8_SCALAR_TYPE):
        raise StageError(f"{name} quantizes to {dtype}; 0201 needs quint8 activations")
    layer = Quantize(float(scale), int(zero_point))
    parser.qparams = (layer.scale, layer.zero_point)
    return layer


@module_rule("DeQuantize")
def parse_dequantize(parser, name, module):
    parser.need_quantized(name)
    layer = Dequantize(*parser.qparams)
    parser.qparams = None
    return layer
