"""PT2E int8 quantization (torchao) for microcontrollers: the project's quantizer and the steps
0102 (PTQ), 0103 (QAT) and the tests take on the torch.export path.

    torch.export.export(model)  →  prepare_pt2e / prepare_qat_pt2e with MicroQuantizer
    →  calibrate / train  →  convert_pt2e  →  torch.export.export(batch 1)  →  .pt2

MicroQuantizer's scheme is what the compiler (utils/aot/pt2e.py) reads:
  activations  int8, per-tensor affine, the full range -128..127;
  weights      int8 symmetric -127..127, zero points 0: per output channel (axis 0) for conv
               and linear by default, per tensor with per_channel=False;
  bias         left float: the compiler quantizes it to int32 with s_in * s_w;
  conv + BatchNorm folded (prepare_pt2e folds an eval-mode BN; a train-mode BN is trained
               folded and convert_pt2e folds it); conv / linear + ReLU / ReLU6 fused, no
               quantize between them; add + ReLU fused;
  joins        max-pool, average pools and shape ops keep their input's quantization
               parameters; add has its own output parameters; cat's inputs and output share
               one set where the graph allows it.
"""
import copy
import logging
from pathlib import Path

import torch
import torch.nn as nn
from torch.export import Dim
from torch.fx import Node

# torchao logs a deprecation note through torch's pytree logger when it is imported; the
# PT2E path is the one torch points to, so the note says nothing here
_PYTREE_LOG = logging.getLogger("torch.utils._pytree")
_PYTREE_LEVEL = _PYTREE_LOG.level
_PYTREE_LOG.setLevel(logging.ERROR)
try:
    from torchao.quantization.pt2e import (FusedMovingAvgObsFakeQuantize, HistogramObserver, MinMaxObserver,
                                           MovingAverageMinMaxObserver, MovingAveragePerChannelMinMaxObserver,
                                           PerChannelMinMaxObserver, allow_exported_model_train_eval,
                                           disable_observer, move_exported_model_to_eval)
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e, prepare_qat_pt2e
    from torchao.quantization.pt2e.quantizer import (QuantizationAnnotation, QuantizationSpec, Quantizer,
                                                     SharedQuantizationSpec)
finally:
    _PYTREE_LOG.setLevel(_PYTREE_LEVEL)

from utils.cli import StageError, one_line  # noqa: E402
from utils.fx_clamps import clamp_bounds  # noqa: E402
from utils.model import MnistModel  # noqa: E402

A = torch.ops.aten
INPUT_SHAPE = (1, 1, 28, 28)
ANNOTATION = "quantization_annotation"

CONVS = {A.conv1d.default, A.conv2d.default}
LINEARS = {A.linear.default}
BATCH_NORMS = {A.batch_norm.default, A._native_batch_norm_legit.default,
               A._native_batch_norm_legit_no_training.default}
RELUS = {A.relu.default, A.relu_.default}
CLAMPS = {A.hardtanh.default, A.hardtanh_.default, A.relu6.default, A.clamp.default}
ADDS = {A.add.Tensor, A.add_.Tensor}
CATS = {A.cat.default}
# Elementwise activations between a quantize and a dequantize: the compiler reads each as a
# 256-entry table of the quantized input (utils.aot.layers.lut), so each gets a quantized
# input and its own output parameters (its output range is not its input's).
ACTIVATIONS = {A.hardswish.default, A.hardswish_.default, A.hardsigmoid.default,
               A.hardsigmoid_.default, A.sigmoid.default, A.tanh.default, A.silu.default,
               A.silu_.default, A.gelu.default, A.elu.default, A.leaky_relu.default,
               A.leaky_relu_.default} | RELUS | CLAMPS
# a model's last op that runs in float on the dequantized result
FLOAT_OUTPUTS = {A.sigmoid.default, A.tanh.default}
# ops that move or pick values without computing new ones: they keep their input's
# quantization parameters, so the compiler runs them on the integers (an average's output
# range lies within its input's, so it loses nothing by sharing them either)
SHARING = {A.max_pool2d.default, A.avg_pool2d.default, A.adaptive_avg_pool2d.default,
           A.mean.dim, A.flatten.using_ints, A.view.default, A.reshape.default,
           A._unsafe_view.default, A.squeeze.dim, A.squeeze.dims, A.unsqueeze.default,
           A.permute.default, A.transpose.int, A.contiguous.default, A.clone.default,
           A.dropout.default}

# torchao's own floor for a scale (XNNPACKQuantizer's): an all-zero tensor still gets a
# valid scale, not 0
EPS = 2 ** -12


def activation_spec(qat: bool) -> QuantizationSpec:
    """int8, per-tensor affine, -128..127: the compiler refuses narrower activation ranges.
    PTQ observes a histogram (the eager qnnpack default's observer); QAT fake-quantizes with
    moving-average min/max ranges."""
    observer = (FusedMovingAvgObsFakeQuantize.with_args(observer=MovingAverageMinMaxObserver, eps=EPS)
                if qat else HistogramObserver.with_args(eps=EPS))
    return QuantizationSpec(dtype=torch.int8, quant_min=-128, quant_max=127,
                            qscheme=torch.per_tensor_affine, is_dynamic=False,
                            observer_or_fake_quant_ctr=observer)


def weight_spec(qat: bool, per_channel: bool = True) -> QuantizationSpec:
    """int8 symmetric -127..127 (zero points 0), per output channel along axis 0 or per tensor."""
    if per_channel:
        observer = (FusedMovingAvgObsFakeQuantize.with_args(observer=MovingAveragePerChannelMinMaxObserver,
                                                            eps=EPS)
                    if qat else PerChannelMinMaxObserver.with_args(eps=EPS))
        qscheme = torch.per_channel_symmetric
    else:
        observer = (FusedMovingAvgObsFakeQuantize.with_args(observer=MovingAverageMinMaxObserver, eps=EPS)
                    if qat else MinMaxObserver.with_args(eps=EPS))
        qscheme = torch.per_tensor_symmetric
    return QuantizationSpec(dtype=torch.int8, quant_min=-127, quant_max=127, qscheme=qscheme, ch_axis=0,
                            is_dynamic=False, observer_or_fake_quant_ctr=observer)


def _is(node, targets) -> bool:
    return isinstance(node, Node) and node.op == "call_function" and node.target in targets


def _annotated(node) -> bool:
    annotation = node.meta.get(ANNOTATION) if isinstance(node, Node) else None
    return annotation is not None and annotation._annotated


def _annotate(node, inputs=None, output=None):
    node.meta[ANNOTATION] = QuantizationAnnotation(input_qspec_map=dict(inputs or {}), output_qspec=output,
                                                   _annotated=True)


def _is_float_tensor(node) -> bool:
    value = node.meta.get("val") if isinstance(node, Node) else None
    return isinstance(value, torch.Tensor) and value.dtype == torch.float32


def fusable_activation(node) -> bool:
    """ReLU, or a clamp from 0 (ReLU6, hardtanh(0, h), clamp(min=0)): after a conv or a linear
    the compiler applies it as the bounds of the requantized integers, so no quantize sits
    between the two."""
    if _is(node, RELUS):
        return True
    if _is(node, CLAMPS):
        low, high = clamp_bounds(node)
        return low == 0.0 and (high is None or high > 0.0)
    return False


def _only_user(node):
    users = list(node.users)
    return users[0] if len(users) == 1 else None


class MicroQuantizer(Quantizer):
    """int8 for microcontrollers (the module docstring gives the scheme). `qat` picks fake
    quantization for prepare_qat_pt2e; `per_channel=False` gives per-tensor weights (the
    Cortex-M backend's kernels take those)."""

    def __init__(self, qat: bool = False, per_channel: bool = True):
        super().__init__()
        self.qat = qat
        self.per_channel = per_channel
        self.act = activation_spec(qat)
        self.weight = weight_spec(qat, per_channel)

    # -------------------------------------------------------------- the passes

    def annotate(self, model: torch.fx.GraphModule) -> torch.fx.GraphModule:
        nodes = list(model.graph.nodes)
        for node in nodes:
            if _is(node, CONVS | LINEARS):
                self._conv_or_linear(node)
        for node in nodes:
            if _is(node, ADDS):
                self._add(node)
            elif _is(node, CATS):
                self._cat(node)
        for node in nodes:
            if _is(node, ACTIVATIONS) and not _annotated(node):
                self._activation(node)
        for node in nodes:  # graph order: a chain of pools and reshapes shares one set
            if _is(node, SHARING) and not _annotated(node):
                self._sharing(node)
        return model

    def _conv_or_linear(self, node):
        """Input, weight (and a float bias); the output after a BN (QAT: trained folded) and a
        fused ReLU/ReLU6, when each is the only user of what it follows."""
        if _annotated(node) or not isinstance(node.args[1], Node):
            return
        out = node
        bn = _only_user(node)
        if self.qat and _is(bn, {A.batch_norm.default}) and _is(node, CONVS):
            out = bn
        act = _only_user(out)
        if fusable_activation(act):
            out = act
        inputs = {node.args[0]: self.act, node.args[1]: self.weight}
        bias = node.args[2] if len(node.args) > 2 else None
        if isinstance(bias, Node):
            inputs[bias] = None   # float: the compiler makes it int32 with s_in * s_w
        _annotate(node, inputs, self.act if out is node else None)
        if out is not node:
            _annotate(out, output=self.act)
        for constant in (node.args[1], bias):
            if isinstance(constant, Node) and not _annotated(constant):
                _annotate(constant)

    def _add(self, node):
        """Two quantized tensors in, its own output parameters (the compiler adds in float);
        a ReLU that is the only user of the sum is fused. ReLU6 is not: the compiler's add
        takes a lower bound only, so ReLU6 after an add stays an op of its own (a table)."""
        a, b = node.args[0], node.args[1]
        if _annotated(node) or not (_is_float_tensor(a) and _is_float_tensor(b)) or \
                (len(node.args) > 2 and node.args[2] != 1) or node.kwargs.get("alpha", 1) != 1:
            return
        relu = _only_user(node)
        fused = _is(relu, RELUS) and not _annotated(relu)
        _annotate(node, {a: self.act, b: self.act}, None if fused else self.act)
        if fused:
            _annotate(relu, output=self.act)

    def _cat(self, node):
        """One set of parameters for every input and the output: torch's Q/DQ cat
        requantizes each input to the output's parameters, so shared ones leave the bytes
        as they are. prepare_pt2e joins the producers' observers into that one set; an input
        whose parameters are fixed otherwise is requantized, as the compiler's cat can."""
        tensors = [t for t in node.args[0] if isinstance(t, Node)]
        if _annotated(node) or not tensors or not all(_is_float_tensor(t) for t in tensors):
            return
        first = tensors[0]
        shared = SharedQuantizationSpec((first, node))
        inputs = {first: self.act}
        for tensor in tensors[1:]:
            inputs.setdefault(tensor, shared)
        _annotate(node, inputs, shared)

    def _activation(self, node):
        # Hardswish (and any other activation that is not a clamp from 0) is its own
        # quantized op even right after a conv: the compiler's conv ends in integer bounds,
        # not a float epilogue, and reads the activation as a 256-entry table of the conv's
        # quantized output, table[q] = Q(hardswish(DQ(q))), the very arithmetic of the Q/DQ
        # program, so library and program agree on that layer byte for byte.
        source = node.args[0]
        if not _is_float_tensor(source):
            return
        if _is(node, FLOAT_OUTPUTS) and all(user.op == "output" for user in node.users):
            return   # the model's last op: it runs in float on the dequantized result
        _annotate(node, {source: self.act}, self.act)

    def _sharing(self, node):
        source = node.args[0]
        if not _is_float_tensor(source):
            return
        annotation = source.meta.get(ANNOTATION)
        quantized = annotation is not None and annotation.output_qspec is not None
        _annotate(node, {source: SharedQuantizationSpec(source) if quantized else self.act},
                  SharedQuantizationSpec((source, node)))

    def validate(self, model: torch.fx.GraphModule) -> None:
        """A BatchNorm that will not be folded into a conv would leave float arithmetic in the
        program that the compiler refuses; say so now, in one line."""
        for node in model.graph.nodes:
            if not _is(node, BATCH_NORMS):
                continue
            conv = node.args[0]
            if not _is(conv, CONVS):
                raise StageError(f"{node.name}: a BatchNorm that does not directly follow a convolution "
                                 f"cannot be folded; put it right after a conv, or remove it")
            if len(conv.users) != 1:
                raise StageError(f"{node.name}: a BatchNorm after a convolution whose output is also used "
                                 f"elsewhere cannot be folded into it")
            if self.qat and (node.target != A.batch_norm.default or not node.args[5]):
                raise StageError(f"{node.name}: a BatchNorm exported in eval mode for QAT; export the "
                                 f"model in train mode (model.train()) before prepare_qat_pt2e")
            if not self.qat:
                raise StageError(f"{node.name}: a BatchNorm exported in train mode for PTQ; export the "
                                 f"model in eval mode (model.eval()) before prepare_pt2e")


# ------------------------------------------------------------------ the flow


def pt2e_ready(model: nn.Module) -> nn.Module:
    """A copy of model ready for torch.export and the quantizer. MnistModel's Normalize
    ((x - mean) / std on the float input) is folded into conv1, which has no padding, so the
    folded conv computes the same function and the program starts with a quantize, as the
    compiler reads it. LeNet-5's QuantStub/DeQuantStub are identities in a float model; any
    other network goes as it is."""
    model = copy.deepcopy(model)
    if isinstance(model, MnistModel):
        norm, conv = model.normalize, model.conv1
        if any(conv.padding):
            raise StageError("MnistModel's conv1 has padding: its Normalize cannot be folded into it")
        with torch.no_grad():
            weight = conv.weight.detach().clone()
            conv.weight.copy_(weight / norm.std)
            conv.bias.copy_(conv.bias - weight.sum(dim=(1, 2, 3)) * (norm.mean / norm.std))
        model.normalize = nn.Identity()
    return model


def export_for_quantization(model: nn.Module, input_shape=INPUT_SHAPE) -> torch.fx.GraphModule:
    """torch.export with a dynamic batch (calibration and training run batches; the final
    program is exported again with batch 1), as the GraphModule prepare_pt2e takes."""
    example = torch.rand((2,) + tuple(input_shape[1:]))
    batch = Dim("batch", min=1, max=65536)
    program = torch.export.export(model, (example,), dynamic_shapes=({0: batch},))
    return program.module()


def _trainable(prepared):
    # the training loop and evaluation call model.train() / model.eval(): torchao maps them
    # to move_exported_model_to_train / _eval (dropout, BatchNorm) on this GraphModule
    allow_exported_model_train_eval(prepared)
    return prepared


def prepare_ptq(model: nn.Module, input_shape=INPUT_SHAPE, per_channel: bool = True) -> torch.fx.GraphModule:
    """Exported in eval mode (prepare_pt2e folds each BatchNorm into its conv) with observers
    in place, ready for calibration."""
    model = pt2e_ready(model).eval()
    exported = export_for_quantization(model, input_shape)
    return _trainable(prepare_pt2e(exported, MicroQuantizer(per_channel=per_channel)))


def prepare_qat(model: nn.Module, input_shape=INPUT_SHAPE, per_channel: bool = True) -> torch.fx.GraphModule:
    """Exported in train mode (a BatchNorm trains folded into its conv, convert_pt2e folds it)
    with fake quantization, ready for training."""
    model = pt2e_ready(model).train()
    exported = export_for_quantization(model, input_shape)
    return _trainable(prepare_qat_pt2e(exported, MicroQuantizer(qat=True, per_channel=per_channel)))


def freeze_observers(prepared: torch.fx.GraphModule):
    """Stop moving the quantization ranges, so the last epochs train against fixed scales."""
    prepared.apply(disable_observer)


def to_int8(prepared: torch.fx.GraphModule) -> torch.fx.GraphModule:
    """The Q/DQ GraphModule (int8 weights as constants) of a calibrated or trained one."""
    model = copy.deepcopy(prepared)
    move_exported_model_to_eval(model)
    converted = convert_pt2e(model)
    _drop_unused_tensors(converted)
    return _trainable(converted)


def _drop_unused_tensors(module: torch.fx.GraphModule):
    """convert_pt2e leaves the float weights beside their int8 copies; torch.export would save
    both, so the ones the graph no longer reads go."""
    used = {node.target for node in module.graph.nodes if node.op == "get_attr"}
    for name, _ in list(module.named_parameters()) + list(module.named_buffers()):
        if name not in used:
            owner, _, attr = name.rpartition(".")
            target = module.get_submodule(owner) if owner else module
            if attr in target._parameters:
                del target._parameters[attr]
            elif attr in target._buffers:
                del target._buffers[attr]


def export_int8(converted: torch.fx.GraphModule, input_shape=INPUT_SHAPE) -> torch.export.ExportedProgram:
    """The program to save: exported again with a static batch of 1, as the compiler reads it."""
    return torch.export.export(converted, (torch.zeros((1,) + tuple(input_shape[1:])),))


def save_program(program: torch.export.ExportedProgram, path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.export.save(program, str(path))
    return path


def load_program(path) -> torch.export.ExportedProgram:
    """A .pt2 file as an ExportedProgram; one line when torch cannot read it."""
    try:
        return torch.export.load(str(path))
    except Exception as exc:
        raise StageError(f"{path} is not a torch.export program this torch can read ({one_line(exc)})") from None


class ProgramModule(nn.Module):
    """A batch-1 exported program as a module that takes any batch, one image at a time, so
    the stages' evaluation (utils.train.predict) runs it as it runs an eager model."""

    def __init__(self, program: torch.export.ExportedProgram):
        super().__init__()
        # kept out of the module tree: an exported module refuses .train() and .eval()
        self.__dict__["program_module"] = program.module()

    def train(self, mode: bool = True):
        return self

    @torch.no_grad()
    def forward(self, x):
        return torch.cat([self.program_module(row[None]) for row in x])


def is_quantized(program) -> bool:
    """Whether a program (or graph) quantizes anything: it calls the quantized_decomposed ops."""
    graph = program.graph if hasattr(program, "graph") else program
    return any(node.op == "call_function" and "quantized_decomposed" in str(node.target)
               for node in graph.nodes)


def op_counts(program) -> dict:
    """{op name: how often the program calls it}, e.g. "aten.conv2d.default" or
    "quantized_decomposed.quantize_per_tensor.default", for reports and tests."""
    graph = program.graph if hasattr(program, "graph") else program
    counts = {}
    for node in graph.nodes:
        if node.op == "call_function":
            name = str(node.target)
            counts[name] = counts.get(name, 0) + 1
    return counts


def _program_state(program) -> dict:
    state = dict(program.state_dict)
    state.update(program.constants)
    return state


# Images the saved program and the converted model are compared on, one at a time: a Q/DQ
# program runs a few milliseconds per image (it dequantizes its weights on every call).
ROUND_TRIP_IMAGES = 200


def check_round_trip(converted, program, path, loader, images: int = ROUND_TRIP_IMAGES) -> int:
    """Reload the saved .pt2 and require the program just measured: the same graph, the same
    constants bit for bit, and the converted model's outputs bit for bit on the first
    `images` images of loader, each run at batch 1 as the program was exported.
    Returns the number of images compared."""
    reloaded = load_program(path)
    if str(reloaded.graph_module.code) != str(program.graph_module.code):
        raise StageError(f"reloaded {path} has another graph than the program saved")
    saved, loaded = _program_state(program), _program_state(reloaded)
    if set(saved) != set(loaded) or not all(torch.equal(saved[k], loaded[k]) for k in saved):
        raise StageError(f"reloaded {path} has other constants than the program saved")
    module = ProgramModule(reloaded)
    compared = 0
    with torch.no_grad():
        for x, _ in loader:
            for row in x[:images - compared]:
                expected, got = converted(row[None]), module(row[None])
                if not torch.equal(expected, got):
                    diff = (expected - got).abs().max().item()
                    raise StageError(f"reloaded {path} differs from the converted model (max {diff:g})")
                compared += 1
            if compared >= images:
                break
    return compared
