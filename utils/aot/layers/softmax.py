"""log_softmax on the dequantized float logits (the firmware's output contract)."""
from dataclasses import dataclass

import numpy as np
import torch
from tvm import relax

from utils.aot.layers.base import Layer, aten_rule


@dataclass
class LogSoftmax(Layer):
    dim: int

    def golden(self, x):
        shifted = x - x.max(axis=self.dim, keepdims=True)
        return shifted - np.log(np.exp(shifted).sum(axis=self.dim, keepdims=True))

    def to_relax(self, r, x):
        return r.bb.emit(relax.op.nn.log_softmax(x, axis=self.dim))

    def torch_replay(self, t):
        return torch.log_softmax(t, self.dim)


@aten_rule("aten::log_softmax")
def parse_log_softmax(parser, node, args):
    parser.need_float(node.kind())
    return LogSoftmax(args[1])
