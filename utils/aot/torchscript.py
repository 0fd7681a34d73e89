"""Read a traced, converted (torch.ao eager int8) TorchScript model into layer records.

No TVM frontend reads torch's quantized modules, so the compiler mirrors what the converted
modules compute (their packed weights, scales and zero points under the qnnpack engine), not
the float `forward` they came from. `parse_int8` walks the traced top-level graph and hands
each call to the parse rule its layer unit registered (utils.aot.layers); anything no rule
takes is a StageError naming the module or op. `torch_int8_reference` is PyTorch itself,
stepped through the same calls, so the uint8 logits can be compared, not only the outputs.
"""
import numpy as np
import torch

from utils.cli import StageError
from utils.aot.layers import ATEN_RULES, F32, FALLBACK_RULES, MODULE_RULES, Dequantize, LogSoftmax
from utils.aot.layers.base import constant_value

PASS_THROUGH = {"Identity", "Dropout"}


class Parser:
    """The state a parse rule sees: the layers so far and the quantization of the tensor
    flowing through the chain (None while it is float)."""

    def __init__(self, model):
        self.model = model
        self.layers = []
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
                    self.layers.append(self.module(name, module))
                    self.origins.append(("module", name))
                values[outs[0]] = "tensor"
                self._last = outs[0]
                continue
            if kind.startswith("aten::"):
                tensor_args = [i for i in ins if i in values]
                self._check_chain(tensor_args, values, kind)
                self.layers.append(self.aten(kind, node))
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
        rule = MODULE_RULES.get(kind)
        layer = rule(self, name, module) if rule else None
        for fallback in FALLBACK_RULES:
            if layer is not None:
                break
            layer = fallback(self, name, module)
        if layer is None:
            self.fail(f"module {name} ({kind})")
        return layer

    def aten(self, kind, node):
        rule = ATEN_RULES.get(kind)
        if rule is None:
            self.fail(f"op {kind}")
        args = [constant_value(v) if v.node().kind() in ("prim::Constant", "prim::ListConstruct") else None
                for v in node.inputs()]
        return rule(self, node, args)


def parse_int8(script_module):
    """Layers of a traced int8 model, in call order."""
    parser = Parser(script_module)
    layers = parser.parse()
    for layer, origin in zip(layers, parser.origins):
        layer.origin = origin
    return layers


def torch_int8_reference(script_module, layers, x):
    """PyTorch's own answer, layer by layer through the model's submodules (so the uint8
    logits, which the model's forward hides behind log_softmax, can be read):
    returns (log-probabilities float32 [N,10], uint8 logits [N,10])."""
    logits_at = last_quantized_layer(layers)
    t = torch.from_numpy(np.ascontiguousarray(x, dtype=F32))
    logits = None
    with torch.no_grad():
        for index, layer in enumerate(layers):
            if layer.origin[0] == "module":
                t = getattr_path(script_module, layer.origin[1])(t)
            else:
                t = layer.torch_replay(t)
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
