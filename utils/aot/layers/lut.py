"""Unary elementwise ops on a quantized tensor as a 256-entry lookup table: out = table[q].

A uint8 input has 256 values, so any elementwise op on it is a table. The table is PyTorch's
own answer, built at parse time by running the op (the converted submodule, or the aten /
quantized op with the trace's constants) on a quantized tensor holding every uint8 value with
the input's scale and zero point; the output's scale and zero point are the result's. So
whatever arithmetic the engine uses (qnnpack's or fbgemm's sigmoid, torch's hardswish, ...),
the golden `table[q]` is its bits. It lowers to a gather from a 256-byte constant, as TFLite
Micro's and CMSIS-NN's LUT activations do; a table that is only a clamp of q (ReLU6, hardtanh
and clamp with the input's own quantization) lowers to a min and a max instead.

Before the table is trusted, PyTorch runs the op once more on random bytes laid out in memory
as the model's tensor is, and every output must be the table's. Two things PyTorch does that
are not one function of the input byte are handled there:

  - qnnpack's clamp (quantized relu6, hardtanh, clamp under the qnnpack engine) on a
    channels-last input (every qnnpack convolution's output) writes its result in the input's
    memory order into a tensor it labels contiguous: the values come back with their NHWC order
    read as NCHW. PyTorch's int8 model computes that, so the library does too (`relabel`, a
    transpose after the lookup), and says so in a warning: the model is likely wrong in PyTorch.
  - torch's vectorized quantized kernels (leaky_relu, elu, hardswish under fbgemm, ...)
    dequantize as q * s + (-zp * s) in their AVX2 / AVX-512 vector body and as (q - zp) * s in
    the scalar loop over the last elements of each thread's chunk (numel mod 64). Where the
    exact value lands halfway between two output steps the two round to different neighbours,
    so PyTorch's answer for those input bytes (`ties`) depends on the element's position, the
    batch size and the thread count (with ATEN_CPU_CAPABILITY=default every element gets the
    scalar answer). The table holds the vector body's answer, which PyTorch gives every element
    but those tails.
"""
import warnings
from dataclasses import dataclass

import numpy as np
import torch
from tvm import relax

from utils.cli import StageError
from utils.aot.layers.base import Layer, aten_rule, module_rule
from utils.aot.layers.quantize import Dequantize
from utils.aot.layers.softmax import parse_float_activation_module, parse_float_activation_op

# converted submodules (torch.ao.nn.quantized, or float modules eager mode leaves on a quantized
# tensor) that are one unary elementwise op; ReLU is QRelu (utils.aot.layers.activation)
LUT_MODULES = ("Hardswish", "ReLU6", "LeakyReLU", "ELU", "Hardsigmoid", "Hardtanh", "GELU", "Threshold",
               "Sigmoid", "Tanh")
# aten / quantized ops on a quantized tensor that are one unary elementwise op; the rest of their
# inputs are constants (slopes, bounds, the scalar of QFunctional.add_scalar / mul_scalar)
LUT_OPS = ("aten::relu6", "aten::relu6_", "aten::hardtanh", "aten::hardtanh_", "aten::clamp", "aten::clamp_",
           "aten::hardsigmoid", "aten::hardsigmoid_", "aten::sigmoid", "aten::tanh",
           "aten::leaky_relu", "aten::leaky_relu_", "aten::gelu", "aten::threshold", "aten::threshold_",
           "quantized::add_scalar", "quantized::mul_scalar", "quantized::add_scalar_relu",
           "quantized::mul_scalar_relu")
# copies of the 256 values in the probe that builds the table: 4096 elements are whole blocks of
# torch's vector loop (64) and one thread's chunk (torch splits an op from 32768 elements)
COPIES = 16
PROBE_SEED = 20260


@dataclass
class QLookup(Layer):
    op: str                     # what PyTorch runs: the module type (e.g. "Hardswish") or the op kind
    table: np.ndarray           # uint8 [256]: the output byte for each input byte
    out_scale: float
    out_zero_point: int
    args: tuple = ()            # an op's constant arguments after the tensor, for PyTorch's replay
    kwargs: tuple = ()          # its keyword-only ones, as (name, value) pairs
    clip: tuple = None          # (lo, hi) when table[q] == clip(q, lo, hi): lowered as max and min
    relabel: tuple = None       # qnnpack's clamp: the result in this memory order, read as contiguous
    ties: tuple = ()            # input bytes whose output depends on the position in PyTorch (see above)

    def golden(self, x):
        return relabelled(self.table[x], self.relabel)

    def to_relax(self, r, x):
        if self.clip is not None:
            lo, hi = self.clip
            y = x
            if lo > 0:
                y = r.bb.emit(relax.op.maximum(y, r.const(lo, "uint8")))
            if hi < 255:
                y = r.bb.emit(relax.op.minimum(y, r.const(hi, "uint8")))
        else:
            # "clip": bytes are always in range and gcc drops the clamp of a uint8; the default
            # ("fast") has TVM warn about out-of-bounds indices on every compile
            y = r.bb.emit(relax.op.take(r.const(self.table, "uint8"), x, axis=0, mode="clip"))
        if self.relabel is not None:
            shape = [int(d) for d in x.ty.shape]
            y = r.bb.emit(relax.op.permute_dims(y, list(self.relabel)))
            y = r.bb.emit(relax.op.reshape(y, shape))
        return y

    def torch_replay(self, t):
        return op_callable(self.op)(t, *self.args, **dict(self.kwargs))


def relabelled(y, order):
    """Values in the memory order `order` (dims outermost first), read back as a contiguous
    tensor of the same shape: what qnnpack's clamp hands on for a channels-last input."""
    if order is None:
        return y
    return np.ascontiguousarray(np.transpose(y, order)).reshape(y.shape)


def op_callable(kind):
    """PyTorch's function for an op kind ("aten::clamp" → torch.ops.aten.clamp)."""
    namespace, name = kind.split("::")
    return getattr(getattr(torch.ops, namespace), name)


# ----------------------------------------------------------------------------- the table

def _quantized(raw, scale, zero_point):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch deprecates making quantized tensors by hand
        return torch._make_per_tensor_quantized_tensor(torch.from_numpy(np.ascontiguousarray(raw)), scale,
                                                       zero_point)


def _run(run, raw, scale, zero_point, what):
    """PyTorch's output bytes and (scale, zero point) for the input bytes `raw`."""
    with torch.no_grad():
        return _bytes(run(_quantized(raw, scale, zero_point)), what)


def _bytes(result, what):
    if not isinstance(result, torch.Tensor) or result.dtype != torch.quint8 \
            or result.qscheme() != torch.per_tensor_affine:
        raise StageError(f"{what} does not give a per-tensor quint8 tensor on a quint8 input; 0201 lowers "
                         f"quint8 activations only")
    return result.int_repr().numpy(), (float(result.q_scale()), int(result.q_zero_point()))


def memory_order(example):
    """The example's dims from outermost to innermost in memory, batch first."""
    return (0,) + tuple(sorted(range(1, example.dim()), key=lambda d: (-example.stride(d), d)))


def _laid_out_like(raw, example, scale, zero_point):
    """A quantized tensor of bytes `raw` (logical order) with the example's strides."""
    order = memory_order(example)
    stored = _quantized(np.transpose(raw, order), scale, zero_point)
    tensor = stored.permute(tuple(np.argsort(order)))
    same = all(a == b for a, b, n in zip(tensor.stride(), example.stride(), example.shape) if n > 1)
    return tensor if same else None


def build_lookup(parser, what, run, op, args=(), kwargs=()):
    """The QLookup of `run` (PyTorch's op on a quantized tensor) on the parser's current input."""
    if parser.qparams is None and any(isinstance(layer, Dequantize) for layer in parser.layers):
        raise StageError(f"{what} on the float output after the DeQuantStub; 0201 ends a model there with "
                         f"log_softmax, softmax, sigmoid or tanh (put {what} before the DeQuantStub)")
    parser.need_quantized(what)
    scale, zero_point = parser.qparams
    example = parser.examples[0]
    if example.dtype != torch.quint8:
        raise StageError(f"{what} receives a {example.dtype} tensor; 0201 lowers quint8 activations only")
    lead = (1,) * (example.dim() - 1)   # the probes have the example's rank
    every = np.tile(np.arange(256, dtype=np.uint8), COPIES).reshape(lead + (-1,))
    probe, out_q = _run(run, every, scale, zero_point, what)
    copies = probe.reshape(COPIES, 256)
    if not (copies == copies[0]).all():
        raise StageError(f"{what}: PyTorch gives one input byte different outputs across a tensor; 0201 "
                         f"cannot lower it as an elementwise op")
    table = copies[0].astype(np.uint8)
    # the scalar loop's answer: one element, no vector body
    scalar = np.array([_run(run, np.full(lead + (1,), v, np.uint8), scale, zero_point, what)[0].item()
                       for v in range(256)], np.uint8)
    ties = tuple(int(v) for v in np.nonzero(table != scalar)[0])
    relabel = _check_layout(what, run, example, scale, zero_point, table, scalar, out_q)
    lo, hi = int(table[0]), int(table[255])
    clip = (lo, hi) if np.array_equal(table, np.clip(np.arange(256), lo, hi)) else None
    return QLookup(op=op, table=table, out_scale=out_q[0], out_zero_point=out_q[1], args=tuple(args),
                   kwargs=tuple(kwargs), clip=clip, relabel=relabel, ties=ties)


def _check_layout(what, run, example, scale, zero_point, table, scalar, out_q):
    """PyTorch on random bytes laid out as the model's tensor: every output must be the
    table's (the scalar loop's at the tie bytes), as is or relabelled (qnnpack's clamp).
    Returns the relabelling's memory order, or None."""
    raw = np.random.default_rng(PROBE_SEED).integers(0, 256, size=tuple(example.shape), dtype=np.uint8)
    tensor = _laid_out_like(raw, example, scale, zero_point)
    if tensor is None:
        raise StageError(f"{what} reads a tensor with a memory layout 0201 does not reproduce (strides "
                         f"{list(example.stride())}); make it contiguous first")
    with torch.no_grad():
        got, got_q = _bytes(run(tensor), what)
    if got_q != out_q:
        raise StageError(f"{what}: PyTorch's output quantization {got_q} depends on the input's shape "
                         f"(a 256-value probe gave {out_q}); 0201 cannot lower it as an elementwise op")
    order = memory_order(example)
    candidates = [None] + ([order] if order != tuple(range(example.dim())) else [])
    for relabel in candidates:
        want, tail = relabelled(table[raw], relabel), relabelled(scalar[raw], relabel)
        if np.all((got == want) | (got == tail)):
            if relabel is not None:
                warnings.warn(f"{what}: PyTorch (qnnpack's clamp on a channels-last tensor) hands on its "
                              f"result with the channels scrambled; the library reproduces that, but the "
                              f"int8 model is likely wrong in PyTorch itself (use ReLU, or the x86 engine)",
                              stacklevel=2)
            return relabel
    raise StageError(f"{what}: PyTorch's output is not a function of each input byte alone; 0201 cannot "
                     f"lower it as an elementwise op")


# ----------------------------------------------------------------------------- parse rules

@module_rule(*LUT_MODULES)
def parse_lookup_module(parser, name, module):
    kind = module.original_name
    if parser.qparams is None and kind in ("Sigmoid", "Tanh"):
        return parse_float_activation_module(parser, name, module)
    return build_lookup(parser, f"{name} ({kind})", module, kind)


@aten_rule(*LUT_OPS)
def parse_lookup_op(parser, node, args):
    kind = node.kind()
    if parser.qparams is None and kind in ("aten::sigmoid", "aten::tanh"):
        # the float model output after the DeQuantStub (utils.aot.layers.softmax)
        return parse_float_activation_op(parser, node, args)
    if len(parser.examples) != 1:
        parser.fail(f"op {kind} with a tensor argument")
    positional, keywords = [], []
    for argument, value in zip(torch._C.parse_schema(node.schema()).arguments[1:], args[1:]):
        if argument.kwarg_only:
            keywords.append((argument.name, _scalar(value)))
        else:
            positional.append(_scalar(value))
    op = op_callable(kind)
    return build_lookup(parser, kind, lambda t: op(t, *positional, **dict(keywords)), kind, positional,
                        keywords)


def _scalar(value):
    # the tracer may keep a Python number as a 0-d tensor constant
    if isinstance(value, torch.Tensor) and value.dim() == 0:
        return value.item()
    return value
