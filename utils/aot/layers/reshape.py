"""Flatten: a reshape, no arithmetic."""
from dataclasses import dataclass

import numpy as np
import torch
from tvm import relax

from utils.aot.layers.base import Layer, aten_rule, graph_constants, module_rule


@dataclass
class Flatten(Layer):
    start_dim: int
    end_dim: int

    def golden(self, x):
        end = self.end_dim % x.ndim
        return x.reshape(x.shape[:self.start_dim] + (-1,) + x.shape[end + 1:])

    def to_relax(self, r, x):
        shape = [int(d) for d in x.ty.shape]
        end = self.end_dim % len(shape)
        flat = int(np.prod(shape[self.start_dim:end + 1]))
        return r.bb.emit(relax.op.reshape(x, shape[:self.start_dim] + [flat] + shape[end + 1:]))

    def torch_replay(self, t):
        return torch.flatten(t, self.start_dim, self.end_dim)


@module_rule("Flatten")
def parse_flatten_module(parser, name, module):
    args = graph_constants(module, "aten::flatten")
    return Flatten(*(args or (1, -1)))


@aten_rule("aten::flatten")
def parse_flatten_op(parser, node, args):
    return Flatten(args[1], args[2])
