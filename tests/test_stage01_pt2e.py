"""The PT2E flow of stage 01: the project's quantizer (utils.quantize_pt2e.MicroQuantizer) on
real torch.export graphs and real MNIST, 0102/0103 --flow pt2e as real processes, and the .pt2
programs they write compiled and verified by 0201."""
import json
import shutil

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from tests.fixtures_models import run_stage, stage_report
from utils import quantize, quantize_pt2e
from utils.cli import StageError
from utils.data import mnist_arrays
from utils.model import MnistModel
from utils.qmodel import QMnistModel
from utils.train import images_to_tensor, mnist_loader, setup_torch

torch.set_num_threads(2)
A = torch.ops.aten
QD = torch.ops.quantized_decomposed
QUANTIZE = QD.quantize_per_tensor.default
DEQUANTIZE = QD.dequantize_per_tensor.default
DEQUANTIZE_CHANNEL = QD.dequantize_per_channel.default


class JoinNet(nn.Module):
    """Every pattern the quantizer annotates, on MNIST's input: conv+BN+ReLU6, a depthwise
    conv+BN with Hardswish, a residual add+ReLU, max-pool, two branches joined by cat,
    average pool, flatten, linear+ReLU6 (nn.ReLU6: hardtanh in the graph), linear."""

    def __init__(self):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.dw, self.bn2 = nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.BatchNorm2d(8)
        self.pw = nn.Conv2d(8, 8, 1)
        self.a, self.b = nn.Conv2d(8, 4, 1), nn.Conv2d(8, 4, 3, padding=1)
        self.pool, self.avg = nn.MaxPool2d(2), nn.AvgPool2d(2)
        self.fc1, self.relu6, self.fc2 = nn.Linear(8 * 7 * 7, 16), nn.ReLU6(), nn.Linear(16, 10)

    def forward(self, x):
        x = F.relu6(self.bn1(self.conv1(x)))
        y = F.hardswish(self.bn2(self.dw(x)))
        x = self.pool(F.relu(self.pw(y) + x))
        x = torch.cat([F.relu(self.a(x)), F.relu(self.b(x))], 1)
        x = torch.flatten(self.avg(x), 1)
        return F.log_softmax(self.fc2(self.relu6(self.fc1(x))), dim=1)


class GapNet(nn.Module):
    """Global average pooling as x.mean over H x W, then a linear layer."""

    def __init__(self):
        super().__init__()
        self.conv, self.fc = nn.Conv2d(1, 8, 3, stride=2), nn.Linear(8, 10)

    def forward(self, x):
        return F.log_softmax(self.fc(F.relu(self.conv(x)).mean((2, 3))), dim=1)


class BnAfterAdd(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.bn, self.fc = nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.Linear(4 * 26 * 26, 10)

    def forward(self, x):
        x = self.conv(x)
        return self.fc(torch.flatten(self.bn(x + x), 1))


def _calibration_batches(batches=4):
    return mnist_loader(True, 64, limit=64 * batches, seed=3)


def ptq_program(network, per_channel=True):
    setup_torch(0)
    model = network()
    with torch.no_grad():   # BatchNorms with statistics of their own, so folding them shows
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
    prepared = quantize_pt2e.prepare_ptq(model, per_channel=per_channel)
    quantize.calibrate(prepared, _calibration_batches(), 4)
    converted = quantize_pt2e.to_int8(prepared)
    return quantize_pt2e.export_int8(converted), converted


def qat_program(network):
    setup_torch(0)
    prepared = quantize_pt2e.prepare_qat(network())
    optimizer = torch.optim.SGD(prepared.parameters(), lr=0.01, momentum=0.9)
    prepared.train()
    for x, y in _calibration_batches(8):
        optimizer.zero_grad()
        F.nll_loss(prepared(x), y).backward()
        optimizer.step()
    return quantize_pt2e.export_int8(quantize_pt2e.to_int8(prepared))


@pytest.fixture(scope="module")
def join_ptq():
    return ptq_program(JoinNet)[0]


@pytest.fixture(scope="module")
def join_qat():
    return qat_program(JoinNet)


# ---------------------------------------------------------------- reading a converted graph

def _constant(program, node):
    """The tensor a placeholder of the program stands for (a parameter, buffer or constant)."""
    signature = program.graph_signature
    names = {**signature.inputs_to_parameters, **signature.inputs_to_buffers,
             **getattr(signature, "inputs_to_lifted_tensor_constants", {})}
    state = {**program.state_dict, **program.constants}
    return state[names[node.name]]


def _calls(program, targets):
    targets = targets if isinstance(targets, (set, tuple, list)) else {targets}
    return [n for n in program.graph.nodes if n.op == "call_function" and n.target in targets]


def _qparams(node):
    """(scale, zero point) of a quantize or dequantize node."""
    return float(node.args[1]), int(node.args[2])


def _input_dq(node, index=0):
    source = node.args[index]
    assert source.target == DEQUANTIZE, f"{node.name}'s input {index} is {source.target}, not a dequantize"
    return source


def _output_q(node):
    users = list(node.users)
    assert len(users) == 1 and users[0].target == QUANTIZE, \
        f"{node.name} is followed by {[u.target for u in users]}, not one quantize"
    return users[0]


# ---------------------------------------------------------------- the quantizer's patterns

@pytest.mark.parametrize("which", ["ptq", "qat"])
def test_no_batch_norm_left_and_every_weight_per_channel_int8(which, join_ptq, join_qat):
    program = join_ptq if which == "ptq" else join_qat
    counts = quantize_pt2e.op_counts(program)
    assert not [op for op in counts if "batch_norm" in op], counts
    layers = _calls(program, {A.conv2d.default, A.linear.default})
    assert len(layers) == 7
    for layer in layers:
        weight = layer.args[1]
        assert weight.target == DEQUANTIZE_CHANNEL, f"{layer.name}: {weight.target}"
        values, scales, zero_points = (_constant(program, a) for a in weight.args[:3])
        axis, qmin, qmax, dtype = weight.args[3:7]
        assert values.dtype == torch.int8 and dtype == torch.int8
        assert (axis, qmin, qmax) == (0, -127, 127)
        assert int(values.abs().max()) <= 127 and int(values.abs().max()) >= 64
        assert scales.numel() == values.shape[0] and torch.all(zero_points == 0)
        bias = layer.args[2]
        assert bias.op == "placeholder" and _constant(program, bias).dtype == torch.float32  # left float


@pytest.mark.parametrize("which", ["ptq", "qat"])
def test_activations_are_int8_full_range_per_tensor(which, join_ptq, join_qat):
    program = join_ptq if which == "ptq" else join_qat
    for node in _calls(program, {QUANTIZE, DEQUANTIZE}):
        assert tuple(node.args[3:6]) == (-128, 127, torch.int8), node.name
        assert isinstance(node.args[1], float) and -128 <= int(node.args[2]) <= 127


@pytest.mark.parametrize("which", ["ptq", "qat"])
def test_relu_and_relu6_fused_into_their_conv_or_linear(which, join_ptq, join_qat):
    program = join_ptq if which == "ptq" else join_qat
    fused = []
    for layer in _calls(program, {A.conv2d.default, A.linear.default}):
        (user,) = layer.users
        if user.target in (A.relu.default, A.relu6.default, A.hardtanh.default):
            fused.append(str(user.target))
            _output_q(user)       # no quantize between the layer and its activation
            if user.target == A.hardtanh.default:
                assert list(user.args[1:]) == [0.0, 6.0]
            assert _qparams(_output_q(user))[1] == -128   # the output starts at 0
        else:
            _output_q(layer)
    # conv1+F.relu6, a+ReLU, b+ReLU, fc1+nn.ReLU6; pw feeds the add, dw feeds Hardswish
    assert sorted(fused) == ["aten.hardtanh.default", "aten.relu.default", "aten.relu.default",
                             "aten.relu6.default"]


@pytest.mark.parametrize("which", ["ptq", "qat"])
def test_hardswish_is_its_own_quantized_op(which, join_ptq, join_qat):
    program = join_ptq if which == "ptq" else join_qat
    (hardswish,) = _calls(program, A.hardswish.default)
    dq = _input_dq(hardswish)
    conv = dq.args[0].args[0]
    assert conv.target == A.conv2d.default and conv.args[-1] == 8   # the depthwise conv's output
    assert _qparams(_output_q(hardswish)) != _qparams(dq)           # its own output parameters


@pytest.mark.parametrize("which", ["ptq", "qat", "mean"])
def test_pools_and_shape_ops_share_their_input_parameters(which, join_ptq, join_qat):
    program = {"ptq": join_ptq, "qat": join_qat}.get(which) or ptq_program(GapNet)[0]
    expected = {A.mean.dim} if which == "mean" else {A.max_pool2d.default, A.avg_pool2d.default,
                                                     A.flatten.using_ints}
    sharing = _calls(program, {A.max_pool2d.default, A.avg_pool2d.default, A.flatten.using_ints, A.mean.dim})
    assert {n.target for n in sharing} == expected
    for node in sharing:
        assert _qparams(_output_q(node)) == _qparams(_input_dq(node)), node.name


@pytest.mark.parametrize("which", ["ptq", "qat"])
def test_add_has_its_own_output_and_fuses_relu(which, join_ptq, join_qat):
    program = join_ptq if which == "ptq" else join_qat
    (add,) = _calls(program, A.add.Tensor)
    left, right = _input_dq(add, 0), _input_dq(add, 1)
    (relu,) = add.users
    assert relu.target == A.relu.default
    out = _qparams(_output_q(relu))
    assert out != _qparams(left) and out != _qparams(right)


@pytest.mark.parametrize("which", ["ptq", "qat"])
def test_cat_inputs_and_output_share_one_set(which, join_ptq, join_qat):
    program = join_ptq if which == "ptq" else join_qat
    (cat,) = _calls(program, A.cat.default)
    ins = {_qparams(dq) for dq in cat.args[0]}
    assert all(dq.target == DEQUANTIZE for dq in cat.args[0])
    assert ins == {_qparams(_output_q(cat))}


def test_per_tensor_weights_on_request():
    program, _ = ptq_program(JoinNet, per_channel=False)
    for layer in _calls(program, {A.conv2d.default, A.linear.default}):
        weight = layer.args[1]
        assert weight.target == DEQUANTIZE, weight.target
        assert int(weight.args[2]) == 0 and tuple(weight.args[3:6]) == (-127, 127, torch.int8)


def test_the_program_computes_what_the_float_network_computes():
    program, converted = ptq_program(JoinNet)
    setup_torch(0)
    images, labels = mnist_arrays(False)
    x = images_to_tensor(images[:64])
    with torch.no_grad():
        expected = converted(x).argmax(1)
        got = quantize_pt2e.ProgramModule(program)(x).argmax(1)
    assert (got == expected).float().mean() >= 0.95


def test_a_batch_norm_that_cannot_be_folded_is_one_line():
    with pytest.raises(StageError, match="BatchNorm that does not directly follow a convolution"):
        quantize_pt2e.prepare_ptq(BnAfterAdd())


def test_qat_of_an_eval_mode_export_is_one_line():
    exported = quantize_pt2e.export_for_quantization(JoinNet().eval())
    with pytest.raises(StageError, match="exported in eval mode for QAT"):
        quantize_pt2e.prepare_qat_pt2e(exported, quantize_pt2e.MicroQuantizer(qat=True))


def test_mnist_models_normalize_folds_into_conv1():
    setup_torch(0)
    model = MnistModel().eval()
    ready = quantize_pt2e.pt2e_ready(model).eval()
    assert isinstance(ready.normalize, nn.Identity) and not isinstance(model.normalize, nn.Identity)
    x = images_to_tensor(mnist_arrays(False)[0][:256])
    with torch.no_grad():
        assert torch.allclose(ready(x), model(x), atol=1e-4)


def test_join_net_compiles_and_verifies(join_ptq, tmp_path):
    path = quantize_pt2e.save_program(join_ptq, tmp_path / "join_ptq.pt2")
    reports = tmp_path / "reports"
    proc = run_stage("0201tvm_no_optim.py", "--model", path, "--out", tmp_path / "join.tar", "--quick",
                     "--images", "300", reports_dir=reports)
    report = json.loads((reports / "0201tvm_no_optim.json").read_text())["pt2e"]
    assert report["kind"] == "int8" and report["flow"] == "pt2e", proc.stdout
    assert report["vs_golden_model"]["bit_exact"] is True
    assert report["argmax_agreement"] >= 0.999 and report["max_lsb_diff"] <= 2


# ---------------------------------------------------------------- the stages

@pytest.fixture(scope="module")
def pt2e_qat(quick_qat_model, tmp_path_factory):
    """0103 --flow pt2e --quick, reporting beside a copy of the eager run's report, so the
    report shows both flows."""
    out = tmp_path_factory.mktemp("qat_pt2e") / "qmnist_lenet5_int8.pt2"
    (out.parent / "reports").mkdir()
    eager_report = stage_report(quick_qat_model, "0103mnist_QAT")
    shutil.copy(quick_qat_model.parent / "reports" / "0103mnist_QAT.json", out.parent / "reports")
    proc = run_stage("0103mnist_QAT.py", "--flow", "pt2e", "--quick", "--out", out,
                     reports_dir=out.parent / "reports")
    return {"path": out, "proc": proc, "eager_report": eager_report,
            "report": stage_report(out, "0103mnist_QAT")}


def test_0103_pt2e_writes_a_program_and_its_own_section(pt2e_qat):
    path, report = pt2e_qat["path"], pt2e_qat["report"]
    assert path.is_file() and quantize.is_program_file(path)
    assert (path.parent / "qmnist_lenet5_fp32.pth").is_file()
    section = report["pt2e"]
    assert section["flow"] == "pt2e" and section["quick"] is True
    assert section["int8_accuracy"] >= 90.0 and section["test_images"] == 2000
    assert section["program_matches_converted"] is True and section["round_trip_images"] == 200
    assert section["ops"]["quantized_decomposed.dequantize_per_channel.default"] == 5
    assert not [op for op in section["ops"] if "batch_norm" in op]
    # the eager flow's figures stay where everything reads them
    eager = pt2e_qat["eager_report"]
    assert {k: report[k] for k in eager} == eager
    assert report["flow"] == "eager" and report["eager"]["model_hash"] == eager["model_hash"]
    assert "PT2E QAT int8" in pt2e_qat["proc"].stdout


def test_0103_pt2e_program_loads_as_a_host_model(pt2e_qat):
    model = quantize.load_int8_model(pt2e_qat["path"])
    images, labels = mnist_arrays(False)
    digits, _ = quantize.predict_int8(model, images[:300])
    assert (digits == labels[:300]).mean() >= 0.9


def test_a_float_program_is_not_a_host_model(tmp_path):
    program = torch.export.export(QMnistModel().eval(), (torch.zeros(1, 1, 28, 28),))
    path = quantize_pt2e.save_program(program, tmp_path / "float.pt2")
    assert quantize.describe_model_file(path) == "a torch.export program (.pt2)"
    with pytest.raises(StageError, match="a torch.export float program; expected"):
        quantize.load_int8_model(path)


def test_0201_compiles_the_0103_program_and_keeps_each_flow_in_its_section(pt2e_qat, quick_qat_model,
                                                                            tmp_path):
    reports = tmp_path / "reports"
    run_stage("0201tvm_no_optim.py", "--model", quick_qat_model, "--out", tmp_path / "eager.tar", "--quick",
              "--images", "200", reports_dir=reports)
    proc = run_stage("0201tvm_no_optim.py", "--model", pt2e_qat["path"], "--out", tmp_path / "pt2e.tar",
                     "--quick", reports_dir=reports)
    report = json.loads((reports / "0201tvm_no_optim.json").read_text())
    pt2e, eager = report["pt2e"], report["eager"]
    assert pt2e["flow"] == "pt2e" and pt2e["images"] == 1000
    assert pt2e["vs_golden_model"]["bit_exact"] is True and pt2e["argmax_agreement"] >= 0.999
    assert pt2e["max_lsb_diff"] <= 2 and pt2e["uint8_exact_fraction"] >= 0.8
    assert pt2e["library_accuracy"] >= 0.9
    assert eager["flow"] == "eager" and eager["images"] == 200 and eager["uint8_exact_fraction"] == 1.0
    assert report["model_hash"] == pt2e["model_hash"] != eager["model_hash"]
    assert "same as the golden integer model: 100.00%" in proc.stdout


def test_0102_pt2e_lenet5_program_compiles_and_verifies(pt2e_qat, tmp_path):
    reports = tmp_path / "reports"
    proc = run_stage("0102quantization.py", "--flow", "pt2e", "--model", "lenet5", "--quick",
                     "--weights", pt2e_qat["path"].parent / "qmnist_lenet5_fp32.pth", "--out-dir", tmp_path,
                     reports_dir=reports)
    path = tmp_path / "qmnist_lenet5_ptq_int8.pt2"
    report = json.loads((reports / "0102quantization.json").read_text())
    assert set(report) == {"pt2e"}, "the pt2e flow leaves the eager flow's top level alone"
    section = report["pt2e"]["lenet5"]
    assert section["model_path"] == str(path) and section["int8_accuracy"] >= 90.0
    assert section["calib_images"] == 32 * 64 and "PT2E int8" in proc.stdout
    run_stage("0201tvm_no_optim.py", "--model", path, "--out", tmp_path / "ptq.tar", "--quick", "--images", "300",
              reports_dir=reports)
    compiled = json.loads((reports / "0201tvm_no_optim.json").read_text())["pt2e"]
    assert compiled["vs_golden_model"]["bit_exact"] is True and compiled["argmax_agreement"] >= 0.999


def test_flow_must_be_eager_or_pt2e():
    proc = run_stage("0103mnist_QAT.py", "--flow", "fx", check=False)
    assert proc.returncode == 2 and "invalid choice: 'fx'" in proc.stderr
