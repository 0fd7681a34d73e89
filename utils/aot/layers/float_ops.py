"""Float elementwise steps with scalar constants before the QuantStub, e.g. MnistModel's
Normalize ((x - mean) / std), computed in float32 as torch does."""
from dataclasses import dataclass

import numpy as np
from tvm import relax

from utils.aot.layers.base import F32, Layer, constant_value, fallback_rule

SCALAR_OPS = {"aten::sub": "sub", "aten::add": "add", "aten::mul": "mul", "aten::div": "div"}
NUMPY_OPS = {"sub": np.subtract, "add": np.add, "mul": np.multiply, "div": np.divide}
RELAX_OPS = {"sub": relax.op.subtract, "add": relax.op.add, "mul": relax.op.multiply, "div": relax.op.divide}


@dataclass
class FloatScalarOps(Layer):
    ops: list                   # [("sub" | "add" | "mul" | "div", value), ...]

    def golden(self, x):
        x = x.astype(F32)
        for op, value in self.ops:
            x = NUMPY_OPS[op](x, F32(value)).astype(F32)
        return x

    def to_relax(self, r, x):
        for op, value in self.ops:
            x = r.bb.emit(RELAX_OPS[op](x, r.const(value, "float32")))
        return x


def float_scalar_ops(module):
    """The ops of a submodule made only of tensor-scalar arithmetic, else None."""
    graph = module.graph
    current = list(graph.inputs())[1].debugName() if len(list(graph.inputs())) == 2 else None
    ops = []
    for node in graph.nodes():
        kind = node.kind()
        if kind == "prim::Constant":
            continue
        args = list(node.inputs())
        if kind not in SCALAR_OPS or args[0].debugName() != current:
            return None
        if args[1].node().kind() != "prim::Constant":
            return None
        value = args[1].toIValue()
        if hasattr(value, "dim"):  # the tracer keeps a Python scalar as a 0-d tensor
            if value.dim() != 0 or value.is_complex():
                return None
            value = value.item()
        if not isinstance(value, (int, float)):
            return None
        if kind in ("aten::sub", "aten::add") and constant_value(args[2]) != 1:
            return None  # alpha != 1
        if kind == "aten::div" and len(args) > 2 and constant_value(args[2]) is not None:
            return None  # rounding_mode
        ops.append((SCALAR_OPS[kind], float(value)))
        current = node.output().debugName()
    if not ops or graph.return_node().input().debugName() != current:
        return None
    return ops


@fallback_rule
def parse_float_prologue(parser, name, module):
    """Only before anything else, while the tensor is still float."""
    if parser.qparams is not None or parser.layers:
        return None
    ops = float_scalar_ops(module)
    return FloatScalarOps(ops) if ops else None
