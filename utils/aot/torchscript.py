"""Read a traced, converted (torch.ao eager int8) TorchScript model into layer records.

No TVM frontend reads torch's quantized modules, so the compiler mirrors what the converted
modules compute (their packed weights, scales and zero points under the qnnpack engine), not
the float `forward` they came from. `parse_int8` walks the traced top-level graph and hands
each call to the parse rule its layer unit registered (utils.aot.layers); anything no rule
takes is a StageError naming the module or op. `torch_int8_reference` is PyTorch itself,
stepped through the same calls, so the uint8 logits can be compared, not only the outputs.
"""
import operator
from pathlib import Path

import numpy as np
import torch

from utils.cli import StageError, one_line
from utils.aot.layers import ATEN_RULES, F32, FALLBACK_RULES, MODULE_RULES, Dequantize
from utils.aot.layers.base import constant_value, is_quantized_module
from utils.aot.layers.reshape import split_pieces

PASS_THROUGH = {"Identity", "Dropout"}
# aten ops that hand their input on unchanged (in an eval-mode trace)
ALIAS_OPS = {"aten::dropout", "aten::contiguous", "aten::detach", "aten::clone", "aten::feature_dropout"}
# integer arithmetic on sizes (x.size(1) * x.size(2)), evaluated at parse time
SHAPE_ARITHMETIC = {"aten::mul": operator.mul, "aten::add": operator.add, "aten::sub": operator.sub,
                    "aten::floordiv": operator.floordiv, "aten::floor_divide": operator.floordiv,
                    "aten::div": operator.floordiv, "aten::remainder": operator.mod}
# name of the model's input in the layer records (every graph's own name for it is replaced)
INPUT = "input0"


class Parser:
    """The state a parse rule sees: the layers so far; for the call being parsed, PyTorch
    example tensors of its inputs (`examples`) and the quantization of the first one
    (`qparams`, None while it is float)."""

    def __init__(self, model, input_shape=None, engine="qnnpack"):
        self.model = model
        self.engine = engine
        self.layers = []
        self.qparams = None
        self.examples = []
        self.input_shape = tuple(input_shape) if input_shape else None
        self._values = {}    # graph value → its PyTorch example (a tensor, an int, a list)
        self._names = {}     # graph value → the layer value it stands for (aliases, the input)
        self._modules = {}   # graph value → (module, dotted name)
        self._lists = {}     # graph value → the graph values of a list of tensors
        self._where = ""     # the line of the model's code the node being parsed came from
        self._scope = ""     # prefix of the value names of the submodule graph being walked
        self._calls = 0      # containers walked so far (each call gets a scope of its own)
        self._inside = []    # "name (Type)" of the containers being walked, outermost first

    def fail(self, what):
        where = f" in module {self._inside[-1]}" if self._inside else ""
        where += f" at {self._where}" if self._where else ""
        raise StageError(f"unsupported {what}{where} in the int8 model: replace it with a layer 0201 lowers "
                         f"({supported_ops()}), or run it in float after a DeQuantStub")

    def need_quantized(self, name):
        if self.qparams is None:
            raise StageError(f"{name} receives a float tensor; the int8 model must start with a QuantStub")

    def need_float(self, name):
        if self.qparams is not None:
            raise StageError(f"{name} receives a quantized tensor; put a DeQuantStub before it")

    # ------------------------------------------------------------------ the graph walk

    def parse(self):
        graph = self.model.graph
        inputs = list(graph.inputs())
        if len(inputs) != 2:
            raise StageError(f"the model's forward takes {len(inputs) - 1} inputs; 0201 needs exactly one")
        x = inputs[1]
        self.input_shape = self.input_shape or _traced_shape(x)
        if self.input_shape is None:
            raise StageError("the traced model does not record its input shape; pass --input-shape")
        self._values[x.debugName()] = torch.zeros(self.input_shape)
        self._names[x.debugName()] = INPUT
        self._modules[inputs[0].debugName()] = (self.model, "")
        for node in graph.nodes():
            self._node(node)
        result = graph.return_node().input().debugName()
        if result not in self._names or self._names[result] == INPUT:
            raise StageError("the model's forward returns no computed tensor (or a tuple); the library has "
                             "one output")
        self._prune(self._names[result])
        return self.layers

    def _node(self, node):
        self._where = _source_line(node)
        kind = node.kind()
        outs = [self._key(o) for o in node.outputs()]
        ins = [self._key(i) for i in node.inputs()]
        if kind == "prim::Constant":
            return
        if kind == "prim::GetAttr":
            owner = self._modules.get(ins[0])
            if owner is None:
                self.fail(f"attribute access {node.s('name')}")
            name = node.s("name")
            self._modules[outs[0]] = (getattr(owner[0], name), f"{owner[1]}.{name}".lstrip("."))
            return
        if kind == "prim::ListConstruct":
            if ins and all(isinstance(self._values.get(i), torch.Tensor) for i in ins):
                self._lists[outs[0]] = ins              # the tensors of a cat
            elif any(i in self._values for i in ins):  # shape arithmetic, constants among it
                self._values[outs[0]] = [self._values[self._key(v)] if self._key(v) in self._values
                                         else constant_value(v) for v in node.inputs()]
            return                                      # constant lists are read where used
        if kind in ("prim::NumToTensor", "aten::Int", "aten::IntImplicit", "prim::ScalarImplicit"):
            self._values[outs[0]] = self._int(ins[0], kind)
            return
        if kind == "aten::size":
            example = self._tensor(ins[0], kind)
            dim = constant_value(node.inputsAt(1)) if len(ins) > 1 else None
            self._values[outs[0]] = int(example.shape[dim]) if dim is not None else list(example.shape)
            return
        if kind == "prim::CallMethod":
            module, name = self._modules[ins[0]]
            tensors = ins[1:]
            if not tensors:
                # a traced Identity (a ReLU slot left by fusion, an observer) takes and returns nothing
                if module.original_name not in PASS_THROUGH:
                    self.fail(f"module {name} ({module.original_name})")
                return
            if module.original_name in PASS_THROUGH:
                self._alias(outs[0], tensors[0])
                return
            self._begin(tensors, name)
            layer = self.module(name, module, allow_none=True)
            if layer is not None:
                self._add(layer, tensors, outs[0], ("module", name))
            elif _is_container(module):
                self._inline(module, name, tensors, outs[0])
            else:
                self.fail(f"module {name} ({module.original_name})")
            return
        if kind in ALIAS_OPS:
            self._alias(outs[0], ins[0])
            return
        if kind in ("aten::chunk", "aten::split", "aten::split_with_sizes", "aten::unsafe_chunk",
                    "aten::unsafe_split"):
            self._begin([ins[0]], kind)
            args = [self._argument(v) for v in node.inputs()]
            names = []
            for index, piece in enumerate(split_pieces(self, node, args)):
                names.append(f"{outs[0]}#{index}")
                self._begin([ins[0]], kind)
                self._add(piece, [ins[0]], names[-1], ("aten", node))
            self._lists[outs[0]] = names
            return
        if kind in ("prim::ListUnpack", "prim::TupleUnpack") and ins[0] in self._lists:
            pieces = self._lists[ins[0]]
            if len(pieces) != len(outs):
                self.fail(f"{kind} of {len(pieces)} tensors into {len(outs)}")
            for out, piece in zip(outs, pieces):
                self._alias(out, piece)
            return
        if kind in SHAPE_ARITHMETIC and not any(isinstance(self._values.get(i), torch.Tensor)
                                                and self._values.get(i).dim() > 0 for i in ins):
            operands = [_as_int(self._argument(v)) for v in node.inputs()][:2]
            if all(isinstance(v, int) for v in operands):
                self._values[outs[0]] = int(SHAPE_ARITHMETIC[kind](*operands))
                return
        if kind.startswith(("aten::", "quantized::")):
            tensors = []
            for i in ins:  # a list of tensors (cat): its elements are the inputs
                tensors += self._lists.get(i, [i] if isinstance(self._values.get(i), torch.Tensor) else [])
            if not tensors:
                self.fail(f"op {kind} on no tensor")
            self._begin(tensors, kind)
            args = [self._argument(v) for v in node.inputs()]
            self._add(self.aten(kind, node, args), tensors, outs[0], ("aten", node))
            return
        self.fail(f"op {kind}")

    def _begin(self, tensors, what):
        missing = [t for t in tensors if not isinstance(self._values.get(t), torch.Tensor)]
        if missing:
            self.fail(f"{what} on a value the compiler did not follow")
        self.examples = [self._values[t] for t in tensors]
        first = self.examples[0]
        self.qparams = (float(first.q_scale()), int(first.q_zero_point())) if first.is_quantized else None

    def _add(self, layer, tensors, out, origin):
        layer.inputs = tuple(self._names[t] for t in tensors)
        layer.output = out
        layer.origin = origin
        with torch.no_grad():
            self._values[out] = replay(self.model, layer, self.examples)
        self._names[out] = out
        self.layers.append(layer)

    def _alias(self, out, source):
        self._values[out] = self._values[source]
        self._names[out] = self._names[source]
        if source in self._lists:
            self._lists[out] = self._lists[source]

    def _key(self, value):
        """A graph value's name, unique across the submodule graphs being walked."""
        return self._scope + value.debugName()

    def _inline(self, module, name, tensors, out):
        """A container (nn.Sequential, a user's block): its own traced graph, walked in place,
        its values named under a scope of their own."""
        self._calls += 1
        graph, outer = module.graph, self._scope
        inputs = list(graph.inputs())
        if len(inputs) != len(tensors) + 1:
            self.fail(f"module {name} ({module.original_name}) called with {len(tensors)} tensors")
        self._scope = f"{name}#{self._calls}/"
        self._inside.append(f"{name} ({module.original_name})")
        try:
            self._modules[self._key(inputs[0])] = (module, name)
            for value, tensor in zip(inputs[1:], tensors):
                self._alias(self._key(value), tensor)
            for node in graph.nodes():
                self._node(node)
            result = self._key(graph.return_node().input())
        finally:
            self._scope = outer
            self._inside.pop()
        if result not in self._values:
            self.fail(f"module {name} ({module.original_name}) returning a value the compiler did not follow")
        self._alias(out, result)

    def _int(self, name, what):
        value = self._values.get(name)
        if value is None:
            self.fail(f"{what} of a value the compiler did not follow")
        return value

    def _tensor(self, name, what):
        value = self._values.get(name)
        if not isinstance(value, torch.Tensor):
            self.fail(f"{what} of a value the compiler did not follow")
        return value

    def _argument(self, value):
        """A call's argument as the rules see it: constants and shape arithmetic evaluated,
        tensors None."""
        key = self._key(value)
        if key in self._values:
            found = self._values[key]
            return None if isinstance(found, torch.Tensor) else found
        if key in self._lists:
            return None
        if value.node().kind() in ("prim::Constant", "prim::ListConstruct"):
            return constant_value(value)
        return None

    def _prune(self, result):
        """Keep the layers the output depends on (a trace may compute things it never uses);
        the output's layer is the last one."""
        needed, kept = {result}, []
        for layer in reversed(self.layers):
            if layer.output in needed:
                kept.append(layer)
                needed.update(layer.inputs)
        self.layers = kept[::-1]

    # ------------------------------------------------------------------ the rules

    def module(self, name, module, allow_none=False):
        kind = module.original_name
        rule = MODULE_RULES.get(kind)
        layer = rule(self, name, module) if rule else None
        for fallback in FALLBACK_RULES:
            if layer is not None:
                break
            layer = fallback(self, name, module)
        if layer is None and not allow_none:
            self.fail(f"module {name} ({kind})")
        return layer

    def aten(self, kind, node, args):
        rule = ATEN_RULES.get(kind)
        if rule is None:
            self.fail(f"op {kind}")
        return rule(self, node, args)


def _as_int(value):
    """A size as an int: a traced 0-d integer tensor constant counts."""
    if isinstance(value, torch.Tensor) and value.dim() == 0 and not value.is_floating_point():
        return int(value.item())
    return value


def _is_container(module):
    """A module whose traced forward calls other modules or ops (not a quantized leaf)."""
    if is_quantized_module(module):
        return False
    try:
        graph = module.graph
    except RuntimeError:
        return False
    return any(n.kind() == "prim::CallMethod" or n.kind().startswith(("aten::", "quantized::"))
               for n in graph.nodes())


TORCH_DIR = Path(torch.__file__).resolve().parent


def _source_line(node):
    """"model.py:42": the first frame outside torch itself of the code a traced node came
    from (the user's forward), or ''."""
    for frame in str(node.sourceRange()).splitlines():
        path, _, rest = frame.strip().rpartition("(")
        line = rest.split(")")[0]
        if path and line.isdigit() and TORCH_DIR not in Path(path).resolve().parents:
            return f"{Path(path).name}:{line}"
    return ""


def supported_ops():
    """What the parse rules take, for the one-line refusal."""
    modules = sorted(set(MODULE_RULES))
    ops = sorted({kind.split("::")[1] for kind in ATEN_RULES})
    return f"modules {', '.join(modules)} and ops {', '.join(ops)}"


def _traced_shape(value):
    try:
        sizes = value.type().sizes()
    except RuntimeError:
        return None
    return tuple(int(d) for d in sizes) if sizes and all(d is not None for d in sizes) else None


def replay(model, layer, tensors):
    """PyTorch's own answer for one layer: its submodule, or its op."""
    if layer.origin[0] == "module":
        return getattr_path(model, layer.origin[1])(*tensors)
    return layer.torch_replay(*tensors)


def parse_int8(script_module, input_shape=None, engine="qnnpack"):
    """Layers of a traced int8 model in an order where every layer comes after its inputs;
    each has `inputs` (value names; INPUT is the model's input) and `output`. `engine`: whose
    arithmetic the records follow where torch's engines differ."""
    parser = Parser(script_module, input_shape, engine)
    try:
        return parser.parse()
    except StageError:
        raise
    except Exception as exc:  # a graph shaped unlike any the walker knows: one line, not a traceback
        where = f" in module {parser._inside[-1]}" if parser._inside else ""
        where += f" at {parser._where}" if parser._where else ""
        raise StageError(f"cannot read the int8 model{where} ({type(exc).__name__}: {one_line(exc)}); "
                         f"trace the converted model with torch.jit.trace") from None


def torch_int8_reference(script_module, layers, x):
    """PyTorch's own answer, layer by layer through the model's submodules (so the uint8
    logits, which the model's forward may hide behind a float op, can be read):
    returns (outputs float32, uint8 logits)."""
    logits_of = logits_value(layers)
    values = {INPUT: torch.from_numpy(np.ascontiguousarray(x, dtype=F32))}
    with torch.no_grad():
        for layer in layers:
            values[layer.output] = replay(script_module, layer, [values[name] for name in layer.inputs])
        whole = script_module(torch.from_numpy(np.ascontiguousarray(x, dtype=F32)))
    out = values[layers[-1].output]
    if not torch.equal(whole, out):
        raise StageError("replaying the int8 model layer by layer does not give its forward's output; "
                         "0201 does not understand this model's graph")
    logits = values[logits_of].int_repr().numpy().astype(np.uint8)
    return out.numpy().astype(F32), logits


def getattr_path(module, dotted):
    for part in dotted.split("."):
        module = getattr(module, part)
    return module


def logits_value(layers):
    """The value whose uint8 elements are the logits: what the last Dequantize reads."""
    dequantize = [layer for layer in layers if isinstance(layer, Dequantize)]
    if not dequantize:
        raise StageError("the int8 model has no DeQuantStub")
    return dequantize[-1].inputs[0]


def last_quantized_layer(layers):
    """Index of the layer that computes the logits."""
    name = logits_value(layers)
    return next(i for i, layer in enumerate(layers) if layer.output == name)
