"""int8: read a traced, converted PyTorch model into a list of layers; lower them to Relax.

No TVM frontend reads torch's quantized modules, so this module mirrors what the converted
modules compute (their packed weights, scales and zero points under the qnnpack engine), not
the float `forward` they came from. Four parts:

- `parse_int8(script_module)`: walk the traced top-level graph and turn each call into a
  layer record (`FloatScalarOps` before the QuantStub, `Quantize`, `QConv2d`, `QLinear`,
  `MaxPool2d`, `Flatten`, `QRelu`, `Dequantize`, `LogSoftmax`). Anything else is a
  StageError naming the module or op.
- `golden_int8(layers, x)`: the same arithmetic in plain numpy, the readable reference.
- `int8_to_relax(layers, input_shape)`: the same arithmetic as Relax ops.
- `torch_int8_reference(model, layers, x)`: PyTorch itself, stepped through the model's
  submodules so the uint8 logits can be compared, not only the log-probabilities.

The arithmetic that matches qnnpack bit for bit:
  quantize    q = clip(rint(x * (1/s)) + zp, 0, 255), all float32, rint = round half to even
  conv/linear acc = sum((q_in - zp_in) * w) in int32 + rint(b * (1.0f / float32(s_w * s_in))) as int32;
              the input zero point is subtracted in int16 first, so zero padding pads with it
  requantize  q_out = clip(rint(float32(acc) * M) + zp_out, lo, 255),
              M = float32(s_w * s_in) * (1 / s_out), all float32; a fused ReLU sets lo = zp_out
  max-pool    on uint8
  dequantize  (float32(q) - zp) * s
"""
from dataclasses import dataclass

import numpy as np

from utils.cli import StageError

F32 = np.float32


# ----------------------------------------------------------------------------- layer records

@dataclass
class Quantize:
    scale: float
    zero_point: int

    @property
    def inv_scale(self):
        # torch quantizes with x * (1.0f / scale), all in float32
        return F32(1.0) / F32(self.scale)


@dataclass
class QConv2d:
    name: str
    weight: np.ndarray          # int8 [O, I, kh, kw]
    bias: np.ndarray            # int32 [O]
    in_zero_point: int
    multiplier: np.float32      # requantization factor M
    out_scale: float
    out_zero_point: int
    relu: bool
    stride: tuple
    padding: tuple
    dilation: tuple
    groups: int


@dataclass
class QLinear:
    name: str
    weight: np.ndarray          # int8 [O, I]
    bias: np.ndarray            # int32 [O]
    in_zero_point: int
    multiplier: np.float32
    out_scale: float
    out_zero_point: int
    relu: bool


@dataclass
class MaxPool2d:
    kernel: tuple
    stride: tuple
    padding: tuple
    dilation: tuple
    ceil_mode: bool


@dataclass
class Flatten:
    start_dim: int
    end_dim: int


@dataclass
class QRelu:
    zero_point: int


@dataclass
class Dequantize:
    scale: float
    zero_point: int


@dataclass
class LogSoftmax:
    dim: int


@dataclass
class FloatScalarOps:
    """Float elementwise steps with scalar constants before the QuantStub, e.g. MnistModel's
    Normalize ((x - mean) / std), computed in float32 as torch does."""
    ops: list                   # [("sub" | "add" | "mul" | "div", value), ...]


SCALAR_OPS = {"aten::sub": "sub", "aten::add": "add", "aten::mul": "mul", "aten::div": "div"}


def _float_scalar_ops(module):
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
        if kind in ("aten::sub", "aten::add") and _constant_value(args[2]) != 1:
            return None  # alpha != 1
        if kind == "aten::div" and len(args) > 2 and _constant_value(args[2]) is not None:
            return None  # rounding_mode
        ops.append((SCALAR_OPS[kind], float(value)))
        current = node.output().debugName()
    if not ops or graph.return_node().input().debugName() != current:
        return None
    return ops


def _requant_multiplier(w_scale, in_scale, out_scale):
    # qnnpack: (float(w_scale) * float(in_scale)) * (1.0f / float(out_scale)); dividing by out_scale
    # instead differs in the last bit and flips ~1 in 10^4 outputs
    return F32(F32(w_scale) * F32(in_scale)) * (F32(1.0) / F32(out_scale))


def _quantize_bias(bias, w_scale, in_scale):
    # torch quantizes the bias to qint32 with scale w_scale * in_scale (a double product),
    # as x * (1.0f / float(scale)), rounded half to even
    if bias is None:
        return None
    inv = F32(1.0) / F32(float(w_scale) * float(in_scale))
    return np.rint(bias.astype(F32) * inv).astype(np.int32)


# ----------------------------------------------------------------------------- parsing

QUANTIZED_CONV = {"Conv2d", "ConvReLU2d"}
QUANTIZED_LINEAR = {"Linear", "LinearReLU"}
PASS_THROUGH = {"Identity", "Dropout"}
QUINT8_SCALAR_TYPE = 13  # c10::ScalarType::QUInt8, how a traced graph spells torch.quint8


def _is_quantized_module(module):
    """A module of torch.ao.nn.quantized / torch.ao.nn.intrinsic.quantized (by its script type)."""
    return ".quantized." in str(module._c._type().qualified_name())


def _per_tensor_weight(weight, layer):
    import torch
    if weight.qscheme() not in (torch.per_tensor_affine, torch.per_tensor_symmetric):
        raise StageError(f"{layer}: weights quantized {weight.qscheme()}; 0201 supports per-tensor "
                         f"weights only (quantize with the qnnpack qconfig)")
    return float(weight.q_scale()), int(weight.q_zero_point())


def _graph_constants(module, op_kind):
    """Constant arguments of the one `op_kind` node in a traced submodule's graph."""
    nodes = [n for n in module.graph.nodes() if n.kind() == op_kind]
    if len(nodes) != 1:
        return None
    return [_constant_value(v) for v in list(nodes[0].inputs())[1:]]


def _quantized_op(module, name):
    """(op, output scale, output zero point) of the one quantized:: call in a traced submodule."""
    nodes = [n for n in module.graph.nodes() if n.kind().startswith("quantized::")]
    if len(nodes) != 1:
        raise StageError(f"{name}: expected one quantized op in its traced graph, found {len(nodes)}; "
                         f"trace the converted model with torch.jit.trace")
    args = list(nodes[0].inputs())
    return nodes[0].kind(), float(_constant_value(args[2])), int(_constant_value(args[3]))


def _constant_value(value):
    node = value.node()
    if node.kind() == "prim::Constant":
        return value.toIValue()
    if node.kind() == "prim::ListConstruct":
        return [_constant_value(v) for v in node.inputs()]
    raise StageError(f"cannot read a constant from {node.kind()}; trace the model with torch.jit.trace")


def _pair(v):
    return tuple(v) if isinstance(v, (list, tuple)) else (v, v)


class _Parser:
    def __init__(self, model):
        import torch
        self.torch = torch
        self.model = model
        self.layers = []
        # the quantization of the tensor flowing through the chain: None while float
        self.qparams = None
        self._last = None  # the value the next layer must consume
        self.origins = []  # per layer: ("module", name) or ("aten", node), to rerun it in torch

    def fail(self, what):
        raise StageError(f"unsupported {what} in the int8 model; 0201 lowers quantized Conv2d/ConvReLU2d, "
                         f"Linear/LinearReLU, MaxPool2d, ReLU, flatten, Quantize/DeQuantize, log_softmax "
                         f"and float scalar arithmetic before the QuantStub")

    def need_quantized(self, name):
        if self.qparams is None:
            raise StageError(f"{name} receives a float tensor; the int8 model must start with a QuantStub")

    def need_float(self, name):
        if self.qparams is not None:
            raise StageError(f"{name} receives a quantized tensor; put a DeQuantStub before it")

    def parse(self):
        graph = self.model.graph
        inputs = list(graph.inputs())
        if len(inputs) != 2:
            raise StageError(f"the model's forward takes {len(inputs) - 1} inputs; 0201 needs exactly one")
        values = {inputs[1].debugName(): "tensor"}
        modules = {inputs[0].debugName(): ("module", self.model, "")}
        for node in graph.nodes():
            kind = node.kind()
            outs = [o.debugName() for o in node.outputs()]
            ins = [i.debugName() for i in node.inputs()]
            if kind in ("prim::Constant", "prim::ListConstruct"):
                continue
            if kind == "prim::GetAttr":
                owner = modules.get(ins[0])
                if owner is None:
                    self.fail(f"attribute access {node.s('name')}")
                name = node.s("name")
                child = getattr(owner[1], name)
                modules[outs[0]] = ("module", child, f"{owner[2]}.{name}".lstrip("."))
                continue
            if kind == "prim::CallMethod":
                _, module, name = modules[ins[0]]
                tensor_args = [i for i in ins[1:]]
                if not tensor_args:
                    # a traced Identity (the ReLU slot left by fusion) returns None and takes nothing
                    if module.original_name not in PASS_THROUGH:
                        self.fail(f"module {name} ({module.original_name})")
                    continue
                self._check_chain(tensor_args, values, name)
                if module.original_name not in PASS_THROUGH:
                    self.module(name, module)
                    self.origins.append(("module", name))
                values[outs[0]] = "tensor"
                self._last = outs[0]
                continue
            if kind.startswith("aten::"):
                tensor_args = [i for i in ins if i in values]
                self._check_chain(tensor_args, values, kind)
                self.aten(kind, node, kind)
                self.origins.append(("aten", node))
                values[outs[0]] = "tensor"
                self._last = outs[0]
                continue
            self.fail(f"op {kind}")
        if not self.layers or not isinstance(self.layers[-1], LogSoftmax):
            raise StageError("the int8 model must end with log_softmax (the firmware's output contract)")
        return self.layers

    def _check_chain(self, args, values, name):
        if len(args) != 1 or args[0] not in values:
            raise StageError(f"{name} takes {len(args)} tensors; 0201 lowers a plain chain of layers")
        if self._last is not None and args[0] != self._last:
            raise StageError(f"{name} does not consume the previous layer's output; 0201 lowers a plain chain")

    def module(self, name, module):
        kind = module.original_name
        quantized = _is_quantized_module(module)
        if kind == "Quantize":
            self.need_float(name)
            args = _graph_constants(module, "aten::quantize_per_tensor")
            if args is None:
                self.fail(f"module {name} (Quantize, not traced)")
            scale, zero_point, dtype = args
            if dtype not in (self.torch.quint8, QUINT8_SCALAR_TYPE):
                raise StageError(f"{name} quantizes to {dtype}; 0201 needs quint8 activations")
            layer = Quantize(float(scale), int(zero_point))
            self.qparams = (layer.scale, layer.zero_point)
        elif kind == "DeQuantize":
            self.need_quantized(name)
            layer = Dequantize(*self.qparams)
            self.qparams = None
        elif quantized and kind in QUANTIZED_CONV:
            self.need_quantized(name)
            layer = self.conv(name, module)
        elif quantized and kind in QUANTIZED_LINEAR:
            self.need_quantized(name)
            layer = self.linear(name, module)
        elif kind == "MaxPool2d":
            args = _graph_constants(module, "aten::max_pool2d")
            if args is None:
                self.fail(f"module {name} (MaxPool2d, not traced)")
            kernel, stride, padding, dilation, ceil_mode = args
            layer = MaxPool2d(_pair(kernel), _pair(stride or kernel), _pair(padding), _pair(dilation),
                              bool(ceil_mode))
            if self.qparams is None:
                self.fail(f"float {name} (MaxPool2d) in the int8 model")
        elif kind in ("ReLU",):
            self.need_quantized(name)
            layer = QRelu(self.qparams[1])
        elif kind == "Flatten":
            args = _graph_constants(module, "aten::flatten")
            layer = Flatten(*(args or (1, -1)))
        elif self.qparams is None and not self.layers and _float_scalar_ops(module):
            layer = FloatScalarOps(_float_scalar_ops(module))
        else:
            self.fail(f"module {name} ({kind})")
        self.layers.append(layer)

    def aten(self, kind, node, name):
        args = [_constant_value(v) if v.node().kind() in ("prim::Constant", "prim::ListConstruct") else None
                for v in node.inputs()]
        if kind == "aten::flatten":
            self.layers.append(Flatten(args[1], args[2]))
        elif kind == "aten::relu":
            self.need_quantized(name)
            self.layers.append(QRelu(self.qparams[1]))
        elif kind == "aten::log_softmax":
            self.need_float(name)
            self.layers.append(LogSoftmax(args[1]))
        elif kind == "aten::max_pool2d":
            self.need_quantized(name)
            kernel, stride, padding, dilation, ceil_mode = args[1:6]
            self.layers.append(MaxPool2d(_pair(kernel), _pair(stride or kernel), _pair(padding),
                                         _pair(dilation), bool(ceil_mode)))
        else:
            self.fail(f"op {kind}")

    def _common(self, name, weight, bias):
        w_scale, w_zp = _per_tensor_weight(weight, name)
        if w_zp != 0:
            raise StageError(f"{name}: weight zero point {w_zp}; 0201 needs symmetric int8 weights (zero point 0)")
        in_scale, in_zp = self.qparams
        b = None if bias is None else bias.detach().float().numpy()
        return dict(weight=weight.int_repr().numpy().astype(np.int8),
                    bias=_quantize_bias(b, w_scale, in_scale), in_zero_point=in_zp)

    def conv(self, name, module):
        op, out_scale, out_zp = _quantized_op(module, name)
        if op not in ("quantized::conv2d", "quantized::conv2d_relu"):
            self.fail(f"op {op} in {name}")
        relu = op.endswith("_relu")
        packed = module._packed_params
        if packed.transpose():
            self.fail(f"module {name} (transposed convolution)")
        weight, bias = self.torch.ops.quantized.conv2d_unpack(packed)
        if weight.dim() != 4:
            self.fail(f"module {name} ({weight.dim() - 2}-d convolution)")
        w_scale, _ = _per_tensor_weight(weight, name)
        layer = QConv2d(name=name, **self._common(name, weight, bias),
                        multiplier=_requant_multiplier(w_scale, self.qparams[0], out_scale),
                        out_scale=out_scale, out_zero_point=out_zp, relu=relu,
                        stride=tuple(packed.stride()), padding=tuple(packed.padding()),
                        dilation=tuple(packed.dilation()), groups=int(packed.groups()))
        self.qparams = (out_scale, out_zp)
        return layer

    def linear(self, name, module):
        op, out_scale, out_zp = _quantized_op(module, name)
        if op not in ("quantized::linear", "quantized::linear_relu"):
            self.fail(f"op {op} in {name}")
        relu = op.endswith("_relu")
        weight, bias = self.torch.ops.quantized.linear_unpack(module._packed_params._packed_params)
        w_scale, _ = _per_tensor_weight(weight, name)
        layer = QLinear(name=name, **self._common(name, weight, bias),
                        multiplier=_requant_multiplier(w_scale, self.qparams[0], out_scale),
                        out_scale=out_scale, out_zero_point=out_zp, relu=relu)
        self.qparams = (out_scale, out_zp)
        return layer


def parse_int8(script_module):
    """Layers of a traced int8 model, in call order."""
    parser = _Parser(script_module)
    layers = parser.parse()
    for layer, origin in zip(layers, parser.origins):
        layer.origin = origin
    return layers


def torch_int8_reference(script_module, layers, x):
    """PyTorch's own answer, layer by layer through the model's submodules (so the uint8
    logits, which the model's forward hides behind log_softmax, can be read):
    returns (log-probabilities float32 [N,10], uint8 logits [N,10])."""
    import torch
    import torch.nn.functional as F
    logits_at = last_quantized_layer(layers)
    t = torch.from_numpy(np.ascontiguousarray(x, dtype=F32))
    logits = None
    with torch.no_grad():
        for index, layer in enumerate(layers):
            if layer.origin[0] == "module":
                t = getattr_path(script_module, layer.origin[1])(t)
            elif isinstance(layer, Flatten):
                t = torch.flatten(t, layer.start_dim, layer.end_dim)
            elif isinstance(layer, QRelu):
                t = torch.relu(t)
            elif isinstance(layer, MaxPool2d):
                t = F.max_pool2d(t, layer.kernel, layer.stride, layer.padding, layer.dilation,
                                 layer.ceil_mode)
            elif isinstance(layer, LogSoftmax):
                t = torch.log_softmax(t, layer.dim)
            else:
                raise StageError(f"no torch replay for {type(layer).__name__}")
            if index == logits_at:
                logits = t.int_repr().numpy().astype(np.uint8)
        whole = script_module(torch.from_numpy(np.ascontiguousarray(x, dtype=F32)))
    if not torch.equal(whole, t):
        raise StageError("replaying the int8 model layer by layer does not give its forward's output; "
                         "0201 does not understand this model's graph")
    return t.numpy().astype(F32), logits


def getattr_path(module, dotted):
    for part in dotted.split("."):
        module = getattr(module, part)
    return module


def last_quantized_layer(layers):
    """The layer whose uint8 output are the logits (the one before Dequantize)."""
    for i, layer in enumerate(layers):
        if isinstance(layer, Dequantize):
            return i - 1
    raise StageError("the int8 model has no DeQuantStub")


# ----------------------------------------------------------------------------- golden numpy

def _requantize(acc, layer):
    q = np.rint(acc.astype(F32) * layer.multiplier) + F32(layer.out_zero_point)
    low = layer.out_zero_point if layer.relu else 0
    return np.clip(q, low, 255).astype(np.uint8)


def _conv_int(x, w, stride, padding, dilation, groups):
    """Integer NCHW convolution, accumulating in int64 (exact), via im2col."""
    n, c, h, wd = x.shape
    o, ci, kh, kw = w.shape
    x = np.pad(x, ((0, 0), (0, 0), (padding[0], padding[0]), (padding[1], padding[1])))
    oh = (x.shape[2] - dilation[0] * (kh - 1) - 1) // stride[0] + 1
    ow = (x.shape[3] - dilation[1] * (kw - 1) - 1) // stride[1] + 1
    out = np.zeros((n, o, oh, ow), np.int64)
    per_group = o // groups
    for g in range(groups):
        xs = x[:, g * ci:(g + 1) * ci]
        cols = np.empty((n, ci, kh, kw, oh, ow), np.int64)
        for i in range(kh):
            for j in range(kw):
                cols[:, :, i, j] = xs[:, :, i * dilation[0]: i * dilation[0] + stride[0] * oh: stride[0],
                                      j * dilation[1]: j * dilation[1] + stride[1] * ow: stride[1]]
        wg = w[g * per_group:(g + 1) * per_group].reshape(per_group, -1).astype(np.int64)
        out[:, g * per_group:(g + 1) * per_group] = np.einsum("ok,nkhw->nohw", wg,
                                                              cols.reshape(n, -1, oh, ow))
    return out


def _max_pool(x, layer):
    if layer.ceil_mode or any(layer.padding) or any(d != 1 for d in layer.dilation):
        raise StageError("the golden max-pool handles no padding, dilation or ceil_mode")
    (kh, kw), (sh, sw) = layer.kernel, layer.stride
    oh = (x.shape[2] - kh) // sh + 1
    ow = (x.shape[3] - kw) // sw + 1
    out = np.zeros(x.shape[:2] + (oh, ow), x.dtype)
    for i in range(kh):
        for j in range(kw):
            out = np.maximum(out, x[:, :, i:i + sh * oh:sh, j:j + sw * ow:sw])
    return out


def golden_int8(layers, x, stop_after=None):
    """Run the layers on float32 input x in numpy; `stop_after` returns an intermediate."""
    for index, layer in enumerate(layers):
        if isinstance(layer, FloatScalarOps):
            x = x.astype(F32)
            for op, value in layer.ops:
                x = {"sub": np.subtract, "add": np.add, "mul": np.multiply,
                     "div": np.divide}[op](x, F32(value)).astype(F32)
        elif isinstance(layer, Quantize):
            q = np.rint(x.astype(F32) * layer.inv_scale) + F32(layer.zero_point)
            x = np.clip(q, 0, 255).astype(np.uint8)
        elif isinstance(layer, QConv2d):
            acc = _conv_int(x.astype(np.int64) - layer.in_zero_point, layer.weight.astype(np.int64),
                            layer.stride, layer.padding, layer.dilation, layer.groups)
            if layer.bias is not None:
                acc = acc + layer.bias.reshape(1, -1, 1, 1)
            x = _requantize(acc.astype(np.int32), layer)
        elif isinstance(layer, QLinear):
            acc = (x.astype(np.int64) - layer.in_zero_point) @ layer.weight.astype(np.int64).T
            if layer.bias is not None:
                acc = acc + layer.bias
            x = _requantize(acc.astype(np.int32), layer)
        elif isinstance(layer, MaxPool2d):
            x = _max_pool(x, layer)
        elif isinstance(layer, Flatten):
            end = layer.end_dim % x.ndim
            x = x.reshape(x.shape[:layer.start_dim] + (-1,) + x.shape[end + 1:])
        elif isinstance(layer, QRelu):
            x = np.maximum(x, np.uint8(layer.zero_point))
        elif isinstance(layer, Dequantize):
            x = (x.astype(F32) - F32(layer.zero_point)) * F32(layer.scale)
        elif isinstance(layer, LogSoftmax):
            shifted = x - x.max(axis=layer.dim, keepdims=True)
            x = shifted - np.log(np.exp(shifted).sum(axis=layer.dim, keepdims=True))
        if stop_after == index:
            return x
    return x


# ----------------------------------------------------------------------------- Relax

def int8_to_relax(layers, input_shape):
    """An IRModule whose `main(input0: float32[input_shape])` computes the layers."""
    from tvm import relax

    def const(value, dtype):
        return relax.const(np.asarray(value, dtype=dtype), dtype)

    bb = relax.BlockBuilder()
    x_in = relax.Var("input0", relax.TensorType(list(input_shape), "float32"))

    def requantize(acc, layer):
        x = bb.emit(relax.op.astype(acc, "float32"))
        x = bb.emit(relax.op.multiply(x, const(layer.multiplier, "float32")))
        x = bb.emit(relax.op.round(x))  # round lowers to nearbyintf: half to even, like qnnpack
        x = add_zero_point(x, layer.out_zero_point)
        low = layer.out_zero_point if layer.relu else 0
        x = bb.emit(relax.op.clip(x, relax.prim_value(float(low)), relax.prim_value(255.0)))
        return bb.emit(relax.op.astype(x, "uint8"))

    def centered(x, zero_point):
        # int16 so that (q - zp) is exact and zero padding afterwards pads with the zero point
        x = bb.emit(relax.op.astype(x, "int16"))
        if zero_point == 0:
            return x
        return bb.emit(relax.op.subtract(x, const(zero_point, "int16")))

    def add_zero_point(x, zero_point):
        if zero_point == 0:
            return x
        return bb.emit(relax.op.add(x, const(zero_point, "float32")))

    with bb.function("main", [x_in]):
        with bb.dataflow():
            x = x_in
            for layer in layers:
                if isinstance(layer, FloatScalarOps):
                    for op, value in layer.ops:
                        fn = {"sub": relax.op.subtract, "add": relax.op.add, "mul": relax.op.multiply,
                              "div": relax.op.divide}[op]
                        x = bb.emit(fn(x, const(value, "float32")))
                elif isinstance(layer, Quantize):
                    x = bb.emit(relax.op.multiply(x, const(layer.inv_scale, "float32")))
                    x = bb.emit(relax.op.round(x))
                    x = add_zero_point(x, layer.zero_point)
                    x = bb.emit(relax.op.clip(x, relax.prim_value(0.0), relax.prim_value(255.0)))
                    x = bb.emit(relax.op.astype(x, "uint8"))
                elif isinstance(layer, QConv2d):
                    x = centered(x, layer.in_zero_point)
                    # never astype a weight constant: FoldConstant would store it widened
                    acc = bb.emit(relax.op.nn.conv2d(
                        x, const(layer.weight, "int8"), strides=layer.stride, padding=layer.padding,
                        dilation=layer.dilation, groups=layer.groups, out_dtype="int32"))
                    if layer.bias is not None:
                        acc = bb.emit(relax.op.add(acc, const(layer.bias.reshape(1, -1, 1, 1), "int32")))
                    x = requantize(acc, layer)
                elif isinstance(layer, QLinear):
                    x = centered(x, layer.in_zero_point)
                    weight_t = np.ascontiguousarray(layer.weight.T)
                    acc = bb.emit(relax.op.matmul(x, const(weight_t, "int8"), out_dtype="int32"))
                    if layer.bias is not None:
                        acc = bb.emit(relax.op.add(acc, const(layer.bias, "int32")))
                    x = requantize(acc, layer)
                elif isinstance(layer, MaxPool2d):
                    x = bb.emit(relax.op.nn.max_pool2d(x, layer.kernel, layer.stride, layer.padding,
                                                       layer.dilation, ceil_mode=layer.ceil_mode))
                elif isinstance(layer, Flatten):
                    shape = [int(d) for d in x.ty.shape]
                    end = layer.end_dim % len(shape)
                    flat = int(np.prod(shape[layer.start_dim:end + 1]))
                    x = bb.emit(relax.op.reshape(x, shape[:layer.start_dim] + [flat] + shape[end + 1:]))
                elif isinstance(layer, QRelu):
                    x = bb.emit(relax.op.maximum(x, const(layer.zero_point, "uint8")))
                elif isinstance(layer, Dequantize):
                    x = bb.emit(relax.op.astype(x, "float32"))
                    if layer.zero_point != 0:
                        x = bb.emit(relax.op.subtract(x, const(layer.zero_point, "float32")))
                    x = bb.emit(relax.op.multiply(x, const(layer.scale, "float32")))
                elif isinstance(layer, LogSoftmax):
                    x = bb.emit(relax.op.nn.log_softmax(x, axis=layer.dim))
                else:
                    raise StageError(f"no Relax lowering for {type(layer).__name__}")
            out = bb.emit_output(x)
        bb.emit_func_output(out)
    return bb.get()
