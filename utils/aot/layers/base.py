"""What every int8 layer unit shares: the Layer interface, the registries its parse rules go
into, qnnpack's quantization arithmetic, and the readers of a traced graph's constants.

A layer unit (one module beside this one) holds one layer type: its record (a dataclass
subclassing Layer), its parse rule(s) for the traced TorchScript graph (registered with
`module_rule` / `aten_rule`), its golden numpy arithmetic (`golden`), its generic Relax
lowering (`to_relax`) and, for layers parsed from an aten op, how PyTorch replays it
(`torch_replay`). Backends may add their own kernels for it (utils.aot.backends.cortex_m).

The arithmetic that matches qnnpack bit for bit:
  quantize    q = clip(rint(x * (1/s)) + zp, 0, 255), all float32, rint = round half to even
  conv/linear acc = sum((q_in - zp_in) * w) in int32 + rint(b * (1.0f / float32(s_w * s_in))) as int32;
              the input zero point is subtracted in int16 first, so zero padding pads with it
  requantize  q_out = clip(rint(float32(acc) * M) + zp_out, lo, 255),
              M = float32(s_w * s_in) * (1 / s_out), all float32; a fused ReLU sets lo = zp_out
  max-pool    on uint8
  dequantize  (float32(q) - zp) * s
"""
from pathlib import Path

import numpy as np
import torch

from utils.cli import StageError

F32 = np.float32
QUINT8_SCALAR_TYPE = 13  # c10::ScalarType::QUInt8, how a traced graph spells torch.quint8

# original_name of a traced submodule → parse rule(parser, name, module) -> Layer | None
MODULE_RULES = {}
# aten op kind → parse rule(parser, node, args) -> Layer, args = constant inputs (None elsewhere)
ATEN_RULES = {}
# rules tried, in order, for a module no MODULE_RULES entry took: rule(parser, name, module) -> Layer | None
FALLBACK_RULES = []


def module_rule(*names):
    def register(rule):
        for name in names:
            MODULE_RULES[name] = rule
        return rule
    return register


def aten_rule(*kinds):
    def register(rule):
        for kind in kinds:
            ATEN_RULES[kind] = rule
        return rule
    return register


def fallback_rule(rule):
    FALLBACK_RULES.append(rule)
    return rule


class Layer:
    """One layer of a parsed int8 model. `origin` ("module", dotted name) or ("aten", node)
    is set by the parser, so PyTorch can rerun the layer on its own."""
    origin = None

    def golden(self, x):
        """This layer's arithmetic in plain numpy: the readable reference."""
        raise NotImplementedError(type(self).__name__)

    def to_relax(self, r, x):
        """This layer as Relax ops emitted through `r` (utils.aot.backends.generic.RelaxEmitter)."""
        raise StageError(f"no Relax lowering for {type(self).__name__}")

    def torch_replay(self, t):
        """PyTorch's own op for a layer parsed from an aten call."""
        raise StageError(f"no torch replay for {type(self).__name__}")


# ----------------------------------------------------------------------------- quantization

def requant_multiplier(w_scale, in_scale, out_scale):
    # qnnpack: (float(w_scale) * float(in_scale)) * (1.0f / float(out_scale)); dividing by out_scale
    # instead differs in the last bit and flips ~1 in 10^4 outputs
    return F32(F32(w_scale) * F32(in_scale)) * (F32(1.0) / F32(out_scale))


def quantize_bias(bias, w_scale, in_scale):
    # torch quantizes the bias to qint32 with scale w_scale * in_scale (a double product, per
    # output channel for per-channel weights), as x * (1.0f / float(scale)), rounded half to even
    if bias is None:
        return None
    inv = F32(1.0) / (np.asarray(w_scale, np.float64) * float(in_scale)).astype(F32)
    return np.rint(bias.astype(F32) * inv).astype(np.int32)


def channel_shaped(value, ndim):
    """A per-output-channel array shaped to broadcast over an [N, O, ...] tensor of `ndim`
    dimensions; a scalar stays a scalar."""
    value = np.asarray(value)
    return value if value.ndim == 0 else value.reshape((1, -1) + (1,) * (ndim - 2))


def _cpu_has_avx512_vnni():
    try:
        return " avx512_vnni" in Path("/proc/cpuinfo").read_text()
    except OSError:
        return False


# torch's x86 engine runs a convolution through oneDNN on a CPU with AVX512-VNNI when it has
# at most this many groups and symmetric weights (should_use_onednn_quant), else through fbgemm
ONEDNN_MAX_GROUPS = 100
X86_CONV_USES_ONEDNN = _cpu_has_avx512_vnni()


def requantization(engine, w_scale, in_scale, out_scale, bias, conv_groups=None):
    """The fields multiplier, bias (int32 or None), bias_float, pre_scale of a conv or linear
    layer: the engine's requantization, q = rint(f * multiplier) + zp with, all in float32,
      qnnpack  f = f32(acc + bias_q), bias_q = rint(b / f32(s_w * s_in)), M = f32(s_w * s_in) * (1 / s_out)
      fbgemm   f = f32(acc) + f32(b / a), M = f32(a / s_out), a = f32(s_in) * f32(s_w)
      oneDNN   f = f32(acc) * a + b, M = 1 / s_out  (x86's convolutions where it picks oneDNN)
    x86 runs linear layers, and convolutions it does not give oneDNN, as fbgemm does."""
    style = engine
    if engine == "x86":
        onednn = conv_groups is not None and X86_CONV_USES_ONEDNN and conv_groups <= ONEDNN_MAX_GROUPS
        style = "onednn" if onednn else "fbgemm"
    if style == "qnnpack":
        return dict(multiplier=requant_multiplier(w_scale, in_scale, out_scale),
                    bias=quantize_bias(bias, w_scale, in_scale), bias_float=None, pre_scale=None)
    act_times_w = (F32(in_scale) * np.asarray(w_scale, np.float64).astype(F32)).astype(F32)
    if style == "fbgemm":
        return dict(multiplier=(act_times_w / F32(out_scale)).astype(F32), bias=None, pre_scale=None,
                    bias_float=None if bias is None else (bias.astype(F32) / act_times_w).astype(F32))
    return dict(multiplier=F32(1.0) / F32(out_scale), bias=None, pre_scale=act_times_w,
                bias_float=None if bias is None else bias.astype(F32))


def golden_requantize(acc, layer):
    f = acc.astype(F32)
    if layer.pre_scale is not None:
        f = (f * channel_shaped(layer.pre_scale, acc.ndim)).astype(F32)
    if layer.bias_float is not None:
        f = (f + channel_shaped(layer.bias_float, acc.ndim)).astype(F32)
    q = np.rint(f * channel_shaped(layer.multiplier, acc.ndim)) + F32(layer.out_zero_point)
    low = layer.out_zero_point if layer.relu else 0
    return np.clip(q, low, layer.clip_high).astype(np.uint8)


def weight_scales(weight, layer):
    """The weights' scale: a float (per tensor) or a float64 array, one per output channel.
    Their zero points must be 0 (symmetric int8), as every qconfig for int8 weights makes them."""
    scheme = weight.qscheme()
    if scheme in (torch.per_tensor_affine, torch.per_tensor_symmetric):
        if int(weight.q_zero_point()) != 0:
            raise StageError(f"{layer}: weight zero point {int(weight.q_zero_point())}; 0201 needs symmetric "
                             f"int8 weights (zero point 0)")
        return float(weight.q_scale())
    if scheme in (torch.per_channel_affine, torch.per_channel_symmetric):
        if int(weight.q_per_channel_axis()) != 0:
            raise StageError(f"{layer}: weights quantized per channel along axis {weight.q_per_channel_axis()}; "
                             f"0201 takes per-output-channel weights (axis 0)")
        if bool((weight.q_per_channel_zero_points() != 0).any()):
            raise StageError(f"{layer}: per-channel weight zero points other than 0; 0201 needs symmetric int8 "
                             f"weights")
        return weight.q_per_channel_scales().double().numpy()
    raise StageError(f"{layer}: weights quantized {scheme}; 0201 takes per-tensor or per-channel int8 weights")


# ----------------------------------------------------------------------------- traced graphs

def is_quantized_module(module):
    """A module of torch.ao.nn.quantized / torch.ao.nn.intrinsic.quantized (by its script type)."""
    return ".quantized." in str(module._c._type().qualified_name())


def constant_value(value):
    node = value.node()
    if node.kind() == "prim::Constant":
        return value.toIValue()
    if node.kind() == "prim::ListConstruct":
        return [constant_value(v) for v in node.inputs()]
    raise StageError(f"cannot read a constant from {node.kind()}; trace the model with torch.jit.trace")


def graph_constants(module, op_kind):
    """Constant arguments of the one `op_kind` node in a traced submodule's graph."""
    nodes = [n for n in module.graph.nodes() if n.kind() == op_kind]
    if len(nodes) != 1:
        return None
    return [constant_value(v) for v in list(nodes[0].inputs())[1:]]


def quantized_op(module, name):
    """(op, output scale, output zero point) of the one quantized:: call in a traced submodule."""
    nodes = [n for n in module.graph.nodes() if n.kind().startswith("quantized::")]
    if len(nodes) != 1:
        raise StageError(f"{name}: expected one quantized op in its traced graph, found {len(nodes)}; "
                         f"trace the converted model with torch.jit.trace")
    args = list(nodes[0].inputs())
    return nodes[0].kind(), float(constant_value(args[2])), int(constant_value(args[3]))


def pair(v):
    """A 2-d argument (an int, or a list of 1 or 2) as (height, width)."""
    v = list(v) if isinstance(v, (list, tuple)) else [v]
    return (v[0], v[0]) if len(v) == 1 else tuple(v)
