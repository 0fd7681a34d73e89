"""ReLU on a quantized tensor: max(q, zero point). The other activations on a quantized tensor
are lookup tables (utils.aot.layers.lut); ReLU keeps its max, which needs no table."""
from dataclasses import dataclass

import numpy as np
import torch
from tvm import relax

from utils.aot.layers.base import Layer, aten_rule, module_rule


@dataclass
class QRelu(Layer):
    zero_point: int
    inplace: bool = False       # aten::relu_: PyTorch's replay writes into its input, as the model does

    def golden(self, x):
        return np.maximum(x, np.uint8(self.zero_point))

    def to_relax(self, r, x):
        return r.bb.emit(relax.op.maximum(x, r.const(self.zero_point, "uint8")))

    def torch_replay(self, t):
        return torch.relu_(t) if self.inplace else torch.relu(t)


@module_rule("ReLU")
def parse_relu_module(parser, name, module):
    parser.need_quantized(name)
    return QRelu(parser.qparams[1])


@aten_rule("aten::relu", "aten::relu_")
def parse_relu_op(parser, node, args):
    parser.need_quantized(node.kind())
    return QRelu(parser.qparams[1], inplace=node.kind() == "aten::relu_")
