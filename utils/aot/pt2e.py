"""Read a PT2E-quantized torch.export program (quantize/dequantize nodes around float ops, as
torchao's convert_pt2e writes it) into the same layer records as the eager path, so both share
the lowering, the arena planning, the kernels and the tests.

A Q/DQ program is a float reference: between a DQ and the next Q the op runs in float. The
library runs integers instead, with these semantics (the golden model, utils.aot.golden, is
the truth the library matches bit for bit; PyTorch's program is compared, not matched):

    quantize     q = clip(rint(x * f32(1 / s)) + zp, qmin, qmax)       as the program does
    conv, linear acc = sum((q - zp) * w) + rint(b * f32(1 / f32(s_in * s_w))) in int32;
                 q = clip(rint(f32(acc) * M) + zp, lo, hi), M = f32(s_in * s_w) * f32(1 / s_out)
                 per output channel for per-channel weights; a fused ReLU / ReLU6 sets lo / hi
    max-pool, reshape, permute   on the integers (the program's float round trip is the same)
    add, cat     dequantize, add / concatenate, quantize, in float32   (utils.aot.layers.qdq)
    average      integer sums, one float multiplier                     (utils.aot.layers.qdq)
    activations  a 256-entry table made by the program's own float op   (utils.aot.layers.lut)

int8 activations (-128..127) become the records' uint8 by adding 128 to values and zero
points: every record computes on q - zp, which the shift leaves as it is.
"""
from dataclasses import dataclass

import numpy as np
import torch
from torch.fx import Interpreter

from utils.cli import StageError, one_line
from utils.fx_clamps import clamp_bounds
from utils.aot.layers import (Dequantize, Flatten, FloatActivation, LogSoftmax, MaxPool2d, Permute, QConv2d,
                              QLinear, QLookup, Quantize, Reshape, Softmax)
from utils.aot.layers.base import F32, pair, quantize_bias, requant_multiplier
from utils.aot.layers.qdq import FloatAdd, FloatCat, IntegerAverage
from utils.aot.layers.reshape import swapped_dims
from utils.aot.model_file import register_quantized_decomposed
from utils.aot.torchscript import INPUT

register_quantized_decomposed()
QD = torch.ops.quantized_decomposed
QUANTIZE = {QD.quantize_per_tensor.default, QD.quantize_per_tensor.tensor}
DEQUANTIZE = {QD.dequantize_per_tensor.default, QD.dequantize_per_tensor.tensor}
DEQUANTIZE_CHANNEL = {QD.dequantize_per_channel.default}
A = torch.ops.aten
RELU = {A.relu.default, A.relu_.default}
CLAMPS = {A.hardtanh.default, A.hardtanh_.default, A.clamp.default, A.relu6.default}
SHAPES = {A.flatten.using_ints, A.view.default, A.reshape.default, A._unsafe_view.default, A.squeeze.dim,
          A.squeeze.dims, A.unsqueeze.default, A.permute.default, A.transpose.int, A.contiguous.default,
          A.clone.default, A.dropout.default}
POOLS = {A.max_pool2d.default, A.max_pool2d_with_indices.default, A.avg_pool2d.default,
         A.adaptive_avg_pool2d.default, A.mean.dim}
# elementwise float ops between a DQ and a Q: a lookup table made by running them
ELEMENTWISE = {A.hardswish.default, A.hardswish_.default, A.sigmoid.default, A.tanh.default,
               A.hardsigmoid.default, A.hardsigmoid_.default, A.leaky_relu.default, A.leaky_relu_.default,
               A.elu.default, A.gelu.default, A.silu.default, A.silu_.default, A.relu6.default,
               A.hardtanh.default, A.relu.default, A.relu_.default, A.clamp.default}
FLOAT_OUTPUTS = {A.log_softmax.int, A._log_softmax.default, A.softmax.int, A._softmax.default,
                 A.sigmoid.default, A.tanh.default}


@dataclass
class _Quantized:
    name: str                   # the record value holding it (uint8)
    scale: float
    zero_point: int             # uint8's: an int8 tensor's + 128
    shift: int                  # 128 for an int8 tensor, 0 for uint8


@dataclass
class _Dequantized:
    of: _Quantized


@dataclass
class _Weight:
    values: np.ndarray          # int8
    scales: object              # float, or float64 [O]


@dataclass
class _Float:
    name: str                   # a float value of the records (the input, or after the last DQ)


@dataclass
class _Pending:
    """A float op between DQ nodes and the Q that ends it, with a fused activation."""
    node: object
    inputs: list                # _Dequantized
    low: str = None             # "relu": the output's zero point is the lowest value
    high: float = None          # ReLU6's 6.0, as a float bound
    after: tuple = ()           # shape ops on its float result before the Q (they move no value)


def _fail(what, node=None):
    where = ""
    if node is not None:
        trace = (node.meta.get("stack_trace") or "").strip().splitlines()
        frames = [line.strip() for line in trace if line.strip().startswith("File ")]
        if frames:
            where = " at " + frames[0].replace("File ", "").replace('"', "")
    raise StageError(f"{what}{where} in the PT2E program; 0201 reads quantized conv, linear, pools, add, cat, "
                     f"shape ops and elementwise activations between quantize/dequantize nodes")


class Pt2eParser:
    def __init__(self, program):
        self.program = program
        self.layers = []
        self.values = {}
        signature = program.graph_signature
        state = dict(program.state_dict)
        state.update(program.constants)
        self.consts = {}
        for name, target in list(signature.inputs_to_parameters.items()) + \
                list(signature.inputs_to_buffers.items()) + \
                list(getattr(signature, "inputs_to_lifted_tensor_constants", {}).items()):
            self.consts[name] = state[target]
        self.user_inputs = list(signature.user_inputs)

    # ------------------------------------------------------------------ walk

    def parse(self):
        if len(self.user_inputs) != 1:
            raise StageError(f"the program takes {len(self.user_inputs)} inputs; the library has one")
        for node in self.program.graph.nodes:
            if node.op == "placeholder":
                if node.name in self.consts:
                    self.values[node] = self.consts[node.name]
                else:
                    self.values[node] = _Float(INPUT)
            elif node.op == "get_attr":
                self.values[node] = getattr(self.program.graph_module, node.target)
            elif node.op == "call_function":
                self.values[node] = self._call(node)
            elif node.op == "output":
                self._output(node)
        if not any(isinstance(layer, (QConv2d, QLinear)) for layer in self.layers):
            raise StageError("the PT2E program has quantize/dequantize nodes but no quantized conv or linear "
                             "layer; quantize it with prepare_pt2e and a quantizer that annotates them")
        return self.layers

    def _value(self, a):
        if isinstance(a, torch.fx.Node):
            return self.values.get(a, a)
        if isinstance(a, (list, tuple)):
            return [self._value(v) for v in a]
        return a

    def _call(self, node):
        target = node.target
        args = [self._value(a) for a in node.args]
        if target in QUANTIZE:
            return self._quantize(node, args)
        if target in DEQUANTIZE:
            source = args[0]
            if isinstance(source, torch.Tensor):      # per-tensor weights
                return _Weight(_int8(source, node), float(args[1]))
            if not isinstance(source, _Quantized):
                _fail(f"a dequantize of {type(source).__name__}", node)
            return _Dequantized(source)
        if target in DEQUANTIZE_CHANNEL:
            if int(args[3]) != 0 or bool(torch.as_tensor(args[2]).ne(0).any()):
                _fail("per-channel weights not along axis 0 with zero points 0", node)
            return _Weight(_int8(args[0], node), torch.as_tensor(args[1]).double().numpy())
        pending = [a for a in args if isinstance(a, _Pending)]
        if pending and target in SHAPES and isinstance(args[0], _Pending):
            first = args[0]
            return _Pending(first.node, first.inputs, first.low, first.high, first.after + (node,))
        if pending:
            fused = self._fuse(node, pending[0], args)
            if fused is not None:
                return fused
            args = [self._settle(a) if isinstance(a, _Pending) else
                    [self._settle(v) if isinstance(v, _Pending) else v for v in a] if isinstance(a, list) else a
                    for a in args]
        dequantized = [a for a in _flat(args) if isinstance(a, _Dequantized)]
        if dequantized:
            return _Pending(node, dequantized)
        if target in FLOAT_OUTPUTS and isinstance(args[0], _Float):
            return self._float_output(node, args)
        if all(not isinstance(a, (_Float, _Quantized, _Weight, torch.fx.Node)) for a in _flat(args)):
            return _evaluate(node, args)            # arithmetic on constants
        _fail(f"float op {target} outside a quantize/dequantize pair", node)

    def _fuse(self, node, pending, args):
        """A ReLU or a ReLU6 right after a conv, linear or add, before its Q; else None."""
        fusable = pending.node.target in (A.conv2d.default, A.conv1d.default, A.linear.default, A.add.Tensor,
                                          A.add_.Tensor)
        if fusable and pending.low is None and pending.high is None:
            if node.target in RELU and not pending.after:
                return _Pending(pending.node, pending.inputs, low="relu")
            # an add's requantization has a lower bound only: a clamp after it stays a table
            if node.target in CLAMPS and not pending.after and pending.node.target not in (A.add.Tensor,
                                                                                            A.add_.Tensor):
                low, high = clamp_bounds(node)
                if low == 0.0:
                    return _Pending(pending.node, pending.inputs, low="relu", high=high)
        return None

    def _settle(self, pending):
        """An elementwise or shape op that the quantizer left without a Q of its own (stock
        quantizers do so for ReLU6, for one): its result is quantized with its input's
        parameters, which bounded activations fit, and computed on them. This departs from the
        program, which keeps the float value; the report counts how often that shows."""
        node = pending.node
        if node.target not in ELEMENTWISE and node.target not in SHAPES or len(pending.inputs) != 1 \
                or pending.low is not None or pending.high is not None:
            _fail(f"{node.target} whose float result goes on unquantized", node)
        x = pending.inputs[0].of
        out = _Quantized(f"{node.name}_requantized", x.scale, x.zero_point, x.shift)
        self._materialize(pending, out, float(np.float32(1.0 / x.scale)), out.name)
        return _Dequantized(out)

    def _quantize(self, node, args):
        source, scale, zero_point, qmin, qmax, dtype = args[:6]
        shift = {torch.int8: 128, torch.uint8: 0}.get(dtype)
        if shift is None or (int(qmin), int(qmax)) != ((-128, 127) if shift else (0, 255)):
            _fail(f"activations quantized to {dtype} in [{qmin}, {qmax}] (int8 or uint8, the full range)", node)
        scale, zero_point = float(scale), int(zero_point) + shift
        out = _Quantized(node.name, scale, zero_point, shift)
        inv = float(np.float32(1.0 / scale))
        if isinstance(source, _Float):
            if source.name != INPUT:
                _fail("a quantize after the output's dequantize", node)
            self._add(Quantize(scale, zero_point, inv=inv), [INPUT], node.name)
            return out
        if isinstance(source, _Dequantized):        # a requantization between two scales
            src = source.of
            if (src.scale, src.zero_point) == (scale, zero_point):
                return src
            self._add(FloatCat(((src.scale, src.zero_point),), 1, inv, zero_point), [src.name], node.name)
            return out
        if not isinstance(source, _Pending):
            _fail(f"a quantize of {type(source).__name__}", node)
        self._materialize(source, out, inv, node.name)
        return out

    def _materialize(self, pending, out, inv, name):
        """The pending op's layer, quantized like `out`, then the shape ops that followed it."""
        names = [f"{name}_before_{shape.name}" for shape in pending.after] + [name]
        self._add(self._layer(pending, out, inv), [d.of.name for d in pending.inputs], names[0])
        for shape, source, target in zip(pending.after, names, names[1:]):
            args = [self.values.get(a, a) if isinstance(a, torch.fx.Node) else a for a in shape.args]
            self._add(_shape_layer(shape, shape.target, args), [source], target)

    def _output(self, node):
        results = node.args[0]
        results = list(results) if isinstance(results, (tuple, list)) else [results]
        if len(results) != 1:
            raise StageError(f"the program returns {len(results)} tensors; the library has one output")
        value = self.values.get(results[0])
        if isinstance(value, _Pending) and value.node.target in FLOAT_OUTPUTS and len(value.inputs) == 1 \
                and value.low is None:
            # the model's last op runs in float on the dequantized logits
            quantized = value.inputs[0].of
            dequantized = f"{quantized.name}_dequantized"
            self._add(Dequantize(quantized.scale, quantized.zero_point), [quantized.name], dequantized)
            node_args = [self.values.get(a, a) if isinstance(a, torch.fx.Node) else a for a in value.node.args]
            value = self._float_output(value.node, [_Float(dequantized)] + node_args[1:])
        if isinstance(value, _Dequantized):
            self._add(Dequantize(value.of.scale, value.of.zero_point), [value.of.name], results[0].name)
            value = _Float(results[0].name)
        if not isinstance(value, _Float) or value.name == INPUT:
            raise StageError("the program returns no dequantized or float result; the library's output is float32")
        if self.layers[-1].output != value.name:
            raise StageError("the program's output is not its last computed value")

    def _float_output(self, node, args):
        source = args[0].name
        target = node.target
        if target in (A.log_softmax.int, A._log_softmax.default):
            layer = LogSoftmax(int(args[1]))
        elif target in (A.softmax.int, A._softmax.default):
            layer = Softmax(int(args[1]))
        else:
            layer = FloatActivation("sigmoid" if target == A.sigmoid.default else "tanh")
        self._add(layer, [source], node.name)
        return _Float(node.name)

    def _add(self, layer, inputs, output):
        layer.inputs, layer.output, layer.origin = tuple(inputs), output, ("pt2e", output)
        self.layers.append(layer)

    # ------------------------------------------------------------------ one layer

    def _layer(self, pending, out, inv):
        node, target = pending.node, pending.node.target
        ins = [d.of for d in pending.inputs]
        args = [self.values.get(a, a) if isinstance(a, torch.fx.Node) else a for a in node.args]
        low = out.zero_point if pending.low == "relu" else 0
        if target in (A.conv2d.default, A.conv1d.default, A.linear.default):
            return self._conv_or_linear(node, target, ins[0], args, out, pending)
        if target in (A.add.Tensor, A.add_.Tensor):
            if len(ins) != 2 or (len(args) > 2 and args[2] != 1):
                _fail("an add of other than two quantized tensors", node)
            return FloatAdd(((ins[0].scale, ins[0].zero_point), (ins[1].scale, ins[1].zero_point)), inv,
                            out.zero_point, low)
        if target == A.cat.default:
            dim = int(args[1]) if len(args) > 1 else 0
            rank = len(node.meta["val"].shape)
            return FloatCat(tuple((i.scale, i.zero_point) for i in ins), dim % rank, inv, out.zero_point)
        if pending.low or pending.high is not None:
            _fail(f"a ReLU fused into {target}", node)
        if target in POOLS:
            return self._pool(node, target, ins[0], args, out)
        if target in SHAPES:
            self._same_quantization(node, ins[0], out)
            return _shape_layer(node, target, args)
        if target in ELEMENTWISE:
            return _lookup(node, ins[0], out)
        _fail(f"op {target}", node)

    def _conv_or_linear(self, node, target, x, args, out, pending):
        weight, bias = args[1], args[2] if len(args) > 2 else None
        if not isinstance(weight, _Weight):
            _fail(f"{target} whose weight is not a dequantized int8 constant", node)
        if bias is not None and not isinstance(bias, torch.Tensor):
            _fail(f"{target} with a computed bias", node)
        b = None if bias is None else bias.detach().float().numpy()
        fields = dict(weight=weight.values, bias=quantize_bias(b, weight.scales, x.scale), in_zero_point=x.zero_point,
                      multiplier=requant_multiplier(weight.scales, x.scale, out.scale), out_scale=out.scale,
                      out_zero_point=out.zero_point, relu=pending.low == "relu")
        if pending.high is not None:
            fields["clip_high"] = int(min(255, np.rint(np.float32(pending.high) * np.float32(1.0 / out.scale))
                                          + out.zero_point))
        name = node.name
        if target == A.linear.default:
            return QLinear(name=name, **fields)
        conv1d = target == A.conv1d.default
        dims = 1 if conv1d else 2
        stride, padding, dilation, groups = (list(args[3:]) + [None] * 4)[:4]
        stride, padding, dilation = (_ints(v, dims, d) for v, d in ((stride, 1), (padding, 0), (dilation, 1)))
        w = fields["weight"]
        if conv1d:
            fields["weight"] = w[:, :, None, :]
            stride, padding, dilation = (1,) + stride, (0,) + padding, (1,) + dilation
        return QConv2d(name=name, **fields, stride=stride, padding=padding, dilation=dilation,
                       groups=int(groups or 1), conv1d=conv1d)

    def _pool(self, node, target, x, args, out):
        shape = tuple(node.args[0].meta["val"].shape)
        if target in (A.max_pool2d.default, A.max_pool2d_with_indices.default):
            self._same_quantization(node, x, out)
            kernel = pair(args[1])
            stride = pair(args[2]) if len(args) > 2 and args[2] else kernel
            padding = pair(args[3]) if len(args) > 3 else (0, 0)
            dilation = pair(args[4]) if len(args) > 4 else (1, 1)
            return MaxPool2d(kernel, stride, padding, dilation, bool(args[5]) if len(args) > 5 else False)
        if target == A.avg_pool2d.default:
            kernel = pair(args[1])
            stride = pair(args[2]) if len(args) > 2 and args[2] else kernel
            padding = pair(args[3]) if len(args) > 3 else (0, 0)
            extra = list(args[4:]) + [False, True, None][len(args[4:]):]
            ceil_mode, count_include_pad, divisor = extra[:3]
            if ceil_mode or divisor is not None or (any(padding) and not count_include_pad):
                _fail("avg_pool2d with ceil_mode, a divisor or padding left out of the count", node)
            keep = True
        elif target == A.adaptive_avg_pool2d.default:
            if tuple(pair(args[1])) != (1, 1):
                _fail(f"adaptive_avg_pool2d to {args[1]} (only to 1x1)", node)
            kernel, stride, padding, keep = shape[2:], (1, 1), (0, 0), True
        else:  # mean
            dims = sorted(int(d) % len(shape) for d in args[1])
            if dims != [2, 3]:
                _fail(f"mean over dims {args[1]} (only over H x W)", node)
            kernel, stride, padding, keep = shape[2:], (1, 1), (0, 0), bool(args[2]) if len(args) > 2 else False
        count = int(kernel[0]) * int(kernel[1])
        multiplier = float(np.float32(x.scale / (count * out.scale)))
        return IntegerAverage(tuple(int(k) for k in kernel), tuple(stride), tuple(padding), x.zero_point,
                              multiplier, out.zero_point, keep)

    def _same_quantization(self, node, x, out):
        if (x.scale, x.zero_point) != (out.scale, out.zero_point):
            _fail(f"{node.target} whose output is quantized unlike its input (share the quantization "
                  f"parameters, e.g. with SharedQuantizationSpec)", node)


def _lookup(node, x, out):
    """table[q] = Q(op(DQ(q))) for every byte, with the program's own float op."""
    raw = torch.arange(256, dtype=torch.int32) - x.shift
    dtype = torch.int8 if x.shift else torch.uint8
    floats = QD.dequantize_per_tensor(raw.to(dtype), x.scale, x.zero_point - x.shift, int(raw.min()),
                                      int(raw.max()), dtype)
    others = [a for a in node.args[1:]]
    result = node.target(floats, *others, **node.kwargs)
    out_dtype = torch.int8 if out.shift else torch.uint8
    q = QD.quantize_per_tensor(result, out.scale, out.zero_point - out.shift, -out.shift, 255 - out.shift, out_dtype)
    table = (q.to(torch.int32) + out.shift).numpy().astype(np.uint8)
    return QLookup(str(node.target), table, out.scale, out.zero_point)


def _shape_layer(node, target, args):
    if target in (A.contiguous.default, A.clone.default, A.dropout.default):
        return Reshape(tuple(node.meta["val"].shape))
    if target in (A.permute.default, A.transpose.int):
        rank = len(node.args[0].meta["val"].shape)
        if target == A.permute.default:
            dims = tuple(int(d) % rank for d in args[1])
        else:
            dims = swapped_dims(rank, args[1], args[2])
        if dims[0] != 0:
            _fail("a permute that moves the batch dimension", node)
        return Permute(dims)
    shape = tuple(int(d) for d in node.meta["val"].shape)
    if not shape or shape[0] != 1:
        _fail(f"a reshape to {list(shape)} that moves the batch dimension", node)
    if target == A.flatten.using_ints and len(args) >= 2:
        return Flatten(int(args[1]), int(args[2]) if len(args) > 2 else -1)
    return Reshape(shape)


def _int8(tensor, node):
    if tensor.dtype != torch.int8:
        _fail(f"weights of {tensor.dtype} (int8 only)", node)
    return tensor.detach().numpy().astype(np.int8)


def _ints(value, dims, default):
    if value is None:
        return (default,) * dims
    value = [value] if isinstance(value, int) else list(value)
    return tuple(int(v) for v in (value * dims if len(value) == 1 else value))


def _flat(args):
    for a in args:
        if isinstance(a, (list, tuple)):
            yield from a
        else:
            yield a


def _evaluate(node, args):
    return node.target(*args, **node.kwargs)


def parse_pt2e(program):
    """Layer records of a PT2E-quantized ExportedProgram, in graph order."""
    try:
        return Pt2eParser(program).parse()
    except StageError:
        raise
    except Exception as exc:  # a program shaped unlike any the reader knows: one line, not a traceback
        raise StageError(f"cannot read the PT2E program ({type(exc).__name__}: {one_line(exc)}); "
                         f"quantize it with prepare_pt2e/convert_pt2e and export it with static shapes") from None


class _Capture(Interpreter):
    """Runs the program and keeps the value of one node (the quantized logits)."""

    def __init__(self, module, name):
        super().__init__(module)
        self.name, self.kept = name, None

    def run_node(self, n):
        value = super().run_node(n)
        if n.name == self.name:
            self.kept = value
        return value


def pt2e_reference(program, layers, x):
    """PyTorch's Q/DQ program on float32 inputs x: (outputs float32, its quantized logits as
    the records' uint8), one input at a time (the program was exported for batch 1)."""
    dequantize = [layer for layer in layers if isinstance(layer, Dequantize)][-1]
    module = program.module()
    outs, logits = [], []
    with torch.no_grad():
        for row in np.asarray(x, np.float32):
            runner = _Capture(module, dequantize.inputs[0])
            out = runner.run(torch.from_numpy(row[None]))
            out = out[0] if isinstance(out, (tuple, list)) else out
            if runner.kept is None:
                raise StageError("the program's quantized logits were not found when it ran")
            kept = runner.kept
            shift = 128 if kept.dtype == torch.int8 else 0
            outs.append(out.numpy().astype(F32))
            logits.append((kept.to(torch.int32) + shift).numpy().astype(np.uint8))
    return np.concatenate(outs), np.concatenate(logits)
