"""Shape ops: flatten, view/reshape (sizes may come from x.size(...) arithmetic, evaluated at
parse time), squeeze/unsqueeze, and permute/transpose. No arithmetic; they work on uint8 and
float alike."""
from dataclasses import dataclass

import numpy as np
import torch
from tvm import relax

from utils.cli import StageError
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


@dataclass
class Reshape(Layer):
    """view, reshape, squeeze, unsqueeze: the output shape, resolved at parse time. Its first
    dimension is the batch (1 in the library; the golden model and PyTorch run N at once)."""
    shape: tuple

    def golden(self, x):
        return x.reshape((len(x),) + tuple(self.shape[1:]))

    def to_relax(self, r, x):
        return r.bb.emit(relax.op.reshape(x, list(self.shape)))

    def torch_replay(self, t):
        return t.reshape((len(t),) + tuple(self.shape[1:]))


@dataclass
class Permute(Layer):
    dims: tuple

    def golden(self, x):
        return np.ascontiguousarray(np.transpose(x, self.dims))

    def to_relax(self, r, x):
        return r.bb.emit(relax.op.permute_dims(x, list(self.dims)))

    def torch_replay(self, t):
        return t.permute(self.dims).contiguous()


@module_rule("Flatten")
def parse_flatten_module(parser, name, module):
    args = graph_constants(module, "aten::flatten")
    return Flatten(*(args or (1, -1)))


@aten_rule("aten::flatten")
def parse_flatten_op(parser, node, args):
    return Flatten(args[1], args[2])


def _resolved(shape, numel, what):
    shape = [int(d) for d in shape]
    if shape.count(-1) > 1 or any(d < -1 or d == 0 for d in shape):
        raise StageError(f"{what} to {shape}: give positive sizes and at most one -1")
    if -1 in shape:
        known = int(np.prod([d for d in shape if d != -1]))
        shape[shape.index(-1)] = numel // known
    if int(np.prod(shape)) != numel:
        raise StageError(f"{what} to {shape} does not fit {numel} elements")
    return tuple(shape)


@aten_rule("aten::view", "aten::reshape")
def parse_reshape(parser, node, args):
    example = parser.examples[0]
    if not isinstance(args[1], (list, tuple)) or any(not isinstance(d, int) for d in args[1]):
        parser.fail(f"{node.kind()} with sizes the compiler cannot evaluate ({args[1]})")
    return _batch_first(Reshape(_resolved(args[1], example.numel(), node.kind())), node.kind())


@aten_rule("aten::squeeze", "aten::unsqueeze")
def parse_squeeze(parser, node, args):
    example = parser.examples[0]
    op = getattr(torch, node.kind().split("::")[1])
    out = op(example, *[a for a in args[1:] if a is not None]) if len(args) > 1 else op(example)
    return _batch_first(Reshape(tuple(out.shape)), node.kind())


def _batch_first(layer, what):
    if not layer.shape or layer.shape[0] != 1:
        raise StageError(f"{what} to {list(layer.shape)} moves the batch dimension; keep it first (size 1), "
                         f"e.g. squeeze(dim) instead of squeeze()")
    return layer


@aten_rule("aten::permute")
def parse_permute(parser, node, args):
    ndim = parser.examples[0].dim()
    return _batch_stays(Permute(tuple(int(d) % ndim for d in args[1])), node.kind())


def swapped_dims(rank, a, b):
    """The permutation of a transpose of dimensions a and b (negative ones count from the end)."""
    dims = list(range(rank))
    a, b = int(a) % rank, int(b) % rank
    dims[a], dims[b] = dims[b], dims[a]
    return tuple(dims)


@aten_rule("aten::transpose")
def parse_transpose(parser, node, args):
    return _batch_stays(Permute(swapped_dims(parser.examples[0].dim(), args[1], args[2])), node.kind())


def _batch_stays(layer, what):
    if layer.dims[0] != 0:
        raise StageError(f"{what} {list(layer.dims)} moves the batch dimension; keep dimension 0 first")
    return layer


@dataclass
class Slice(Layer):
    """A range of one dimension (narrow, slice, and each piece of a chunk or split)."""
    axis: int
    begin: int
    end: int

    def golden(self, x):
        index = [slice(None)] * x.ndim
        index[self.axis] = slice(self.begin, self.end)
        return np.ascontiguousarray(x[tuple(index)])

    def to_relax(self, r, x):
        return r.bb.emit(relax.op.strided_slice(x, [self.axis], [self.begin], [self.end]))

    def torch_replay(self, t):
        return t.narrow(self.axis, self.begin, self.end - self.begin).contiguous()


def _slice_axis(parser, node, axis):
    rank = parser.examples[0].dim()
    axis = int(axis) % rank
    if axis == 0:
        raise StageError(f"{node.kind()} along the batch dimension; slice another one")
    return axis


@aten_rule("aten::slice")
def parse_slice(parser, node, args):
    size = parser.examples[0].shape
    rank = len(size)
    axis = int(args[1] if len(args) > 1 and args[1] is not None else 0) % rank
    start, end, step = (list(args[2:5]) + [None, None, 1])[:3]
    begin, end, step = slice(start, end, step).indices(int(size[axis]))
    if (begin, end, step) == (0, int(size[axis]), 1):
        return Reshape(tuple(size))  # x[:, ...]: the whole dimension, nothing moves
    axis = _slice_axis(parser, node, axis)
    if step != 1:
        parser.fail(f"{node.kind()} with step {step}")
    return Slice(axis, begin, end)


@aten_rule("aten::narrow")
def parse_narrow(parser, node, args):
    axis = _slice_axis(parser, node, args[1])
    begin = int(args[2]) % int(parser.examples[0].shape[axis])
    return Slice(axis, begin, begin + int(args[3]))


def split_pieces(parser, node, args):
    """The Slices of aten::chunk / split / split_with_sizes, in order."""
    kind = node.kind()
    axis = _slice_axis(parser, node, args[2] if len(args) > 2 and args[2] is not None else 0)
    size = int(parser.examples[0].shape[axis])
    if kind == "aten::chunk":
        step = -(-size // int(args[1]))
        sizes = [min(step, size - b) for b in range(0, size, step)]
    elif isinstance(args[1], (list, tuple)):
        sizes = [int(v) for v in args[1]]
    else:
        step = int(args[1])
        sizes = [min(step, size - b) for b in range(0, size, step)]
    if sum(sizes) != size:
        parser.fail(f"{kind} into {sizes} of a dimension of {size}")
    pieces, begin = [], 0
    for n in sizes:
        pieces.append(Slice(axis, begin, begin + n))
        begin += n
    return pieces
