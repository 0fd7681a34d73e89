"""The model's output activation on the dequantized float values (after the DeQuantStub):
log_softmax, softmax, sigmoid or tanh; a model may also end with the DeQuantStub itself.

The golden numpy does the float32 operations the generated C does, in its order (TVM's
legalized softmax: the row max, a sum of exp(x - max) left to right, then each output). Only
exp, log and tanh can differ from libm's by an ulp, so the float outputs are compared with a
tight tolerance; the uint8 logits before them, bit for bit.

The compiler reads those uint8 logits from the float tensor the last kernel reads (the debug
tap, utils.aot.compiler). Softmax and log_softmax reduce, so FuseOps leaves them a kernel of
their own; an elementwise sigmoid or tanh would be fused into the dequantize kernel and leave
no such tensor, so it is a small TIR kernel that FuseOps does not fuse (opaque).
"""
from dataclasses import dataclass

import numpy as np
import torch
from tvm import relax, te, tirx

from utils.cli import StageError
from utils.aot.layers.base import F32, Layer, aten_rule, graph_constants, module_rule

FLOAT32_SCALAR_TYPE = 6  # c10::ScalarType::Float, how a traced graph spells torch.float32
OP_PATTERN_OPAQUE = 8    # relax's OpPatternKind kOpaque: FuseOps leaves the call alone


def _row_sum(x, axis):
    # left to right in float32, as the C loop adds (numpy's sum is pairwise)
    return np.take(np.cumsum(x, axis=axis, dtype=F32), [-1], axis=axis)


@dataclass
class LogSoftmax(Layer):
    dim: int

    def golden(self, x):
        x = np.asarray(x, F32)
        shifted = x - x.max(axis=self.dim, keepdims=True)
        return shifted - np.log(_row_sum(np.exp(shifted), self.dim))

    def to_relax(self, r, x):
        return r.bb.emit(relax.op.nn.log_softmax(x, axis=self.dim))

    def torch_replay(self, t):
        return torch.log_softmax(t, self.dim)


@dataclass
class Softmax(Layer):
    dim: int

    def golden(self, x):
        x = np.asarray(x, F32)
        e = np.exp(x - x.max(axis=self.dim, keepdims=True))
        return e / _row_sum(e, self.dim)

    def to_relax(self, r, x):
        return r.bb.emit(relax.op.nn.softmax(x, axis=self.dim))

    def torch_replay(self, t):
        return torch.softmax(t, self.dim)


@dataclass
class FloatActivation(Layer):
    op: str                     # "sigmoid" | "tanh"

    def golden(self, x):
        x = np.asarray(x, F32)
        if self.op == "sigmoid":
            return F32(1.0) / (F32(1.0) + np.exp(F32(0.0) - x))
        return np.tanh(x)

    def to_relax(self, r, x):
        shape = [int(d) for d in x.ty.shape]
        gv = r.bb.add_func(_elementwise_kernel(self.op, shape), self.op)
        return r.bb.emit(relax.call_tir(gv, relax.Tuple([x]), relax.TensorType(shape, "float32")))

    def torch_replay(self, t):
        return torch.sigmoid(t) if self.op == "sigmoid" else torch.tanh(t)


def _elementwise_kernel(op, shape):
    """y = sigmoid(x) = 1 / (1 + exp(0 - x)) or tanh(x), as an opaque, already scheduled kernel."""
    x = te.placeholder(shape, "float32", name="x")
    one, zero = tirx.const(1.0, "float32"), tirx.const(0.0, "float32")
    if op == "sigmoid":
        y = te.compute(shape, lambda *i: one / (one + te.exp(zero - x(*i))), name="y")
    else:
        y = te.compute(shape, lambda *i: te.tanh(x(*i)), name="y")
    func = te.create_prim_func([x, y])
    return func.with_attrs({"tirx.noalias": True, "tirx.is_scheduled": True, "op_pattern": OP_PATTERN_OPAQUE})


# ----------------------------------------------------------------------------- parse rules

def _dim(parser, what, dim, dtype=None):
    if dtype not in (None, FLOAT32_SCALAR_TYPE, torch.float32):
        raise StageError(f"{what} computes in {dtype}; 0201 computes the output in float32 (drop the dtype)")
    rank = parser.examples[0].dim()
    if not isinstance(dim, int) or not -rank <= dim < rank:
        raise StageError(f"{what} over dim {dim} of a {rank}-d tensor; give it a constant dim")
    if dim % rank == 0:
        raise StageError(f"{what} over the batch dimension; take it over the classes (dim=1 or -1)")
    return dim % rank


@aten_rule("aten::log_softmax")
def parse_log_softmax(parser, node, args):
    parser.need_float(node.kind())
    return LogSoftmax(_dim(parser, node.kind(), args[1], args[2] if len(args) > 2 else None))


@aten_rule("aten::softmax")
def parse_softmax(parser, node, args):
    parser.need_float(node.kind())
    return Softmax(_dim(parser, node.kind(), args[1], args[2] if len(args) > 2 else None))


@module_rule("LogSoftmax", "Softmax")
def parse_softmax_module(parser, name, module):
    kind = module.original_name
    what = f"{name} ({kind})"
    parser.need_float(what)
    args = graph_constants(module, "aten::log_softmax" if kind == "LogSoftmax" else "aten::softmax")
    if args is None:
        parser.fail(f"module {what}, not traced")
    dim = _dim(parser, what, *args[:2])
    return LogSoftmax(dim) if kind == "LogSoftmax" else Softmax(dim)


def parse_float_activation_module(parser, name, module):
    """A Sigmoid / Tanh module on the float output (its quantized form is a lookup table,
    utils.aot.layers.lut, which registers the module rule and hands the float case here)."""
    parser.need_float(name)
    return FloatActivation(module.original_name.lower())


def parse_float_activation_op(parser, node, args):
    """aten::sigmoid / aten::tanh on the float output (the quantized case: utils.aot.layers.lut)."""
    parser.need_float(node.kind())
    return FloatActivation(node.kind().split("::")[1])
