"""Stage 0202 (int8): the Cortex-M kernels against 0201's library, bit for bit, on the host
(plain-C micro-kernels) and on the emulated Cortex-M7 (the DSP micro-kernels), with real
TVM, real compilers, real MNIST and real QEMU."""
import json
import subprocess
import tarfile

import numpy as np
import pytest
import torch

from tests.fixtures_models import run_stage
from tests.fixtures_tools import require_tools
from utils.aot.compiler import compile_model
from utils.aot.host_library import HostLibrary
from utils.aot.backends.cortex_m import CORTEX_M
from utils.aot.backends.generic import GENERIC
from utils.aot.model_file import load_model
from utils.aot import verify
from utils.data import mnist_arrays

ARENA_GOAL = 4 * 1024
FLASH_GOAL = 66_000  # bytes: 66 KB read as 1000s, the stricter reading


@pytest.fixture(scope="module")
def optim_tar(quick_qat_model, tmp_path_factory):
    out = tmp_path_factory.mktemp("optim") / "optim.tar"
    return compile_model(load_model(quick_qat_model, "int8"), out, CORTEX_M).tar


@pytest.fixture(scope="module")
def last_500_images():
    images, _ = mnist_arrays(False)
    return images[-500:]


def _same_bits(a, b):
    return np.array_equal(np.asarray(a, np.float32).view(np.uint32), np.asarray(b, np.float32).view(np.uint32))


def test_stage_passes_and_reports(quick_qat_model, tmp_path):
    reports = tmp_path / "reports"
    out = tmp_path / "mnistCNN.tar"
    run_stage("0202tvm_optim.py", "--model", quick_qat_model, "--out", out, "--quick", "--images", "300",
              reports_dir=reports)
    figures = json.loads((reports / "0202tvm_optim.json").read_text())
    assert out.is_file()
    assert figures["backend"] == "cortex_m" and figures["kind"] == "int8"
    assert figures["vs_golden"]["bit_exact"] is True and figures["uint8_exact_fraction"] == 1.0
    assert figures["images"] == 300
    assert figures["arena_bytes"] <= ARENA_GOAL
    assert figures["arm_flash_bytes"] <= FLASH_GOAL
    assert figures["library_cflags"] == ["-O2"]
    assert figures["warnings"] == []  # host gcc -Wall -Wextra and arm-none-eabi-gcc, both
    assert not verify.disallowed(figures["arm_undefined_symbols"])


def test_host_library_same_bits_as_no_optim(optim_tar, quick_mlf_tar, last_500_images):
    optim_out, optim_logits = HostLibrary(optim_tar).run_with_logits(last_500_images)
    base_out, base_logits = HostLibrary(quick_mlf_tar).run_with_logits(last_500_images)
    assert np.array_equal(optim_logits, base_logits)
    assert _same_bits(optim_out, base_out)


def test_tar_is_a_drop_in_replacement(optim_tar, quick_mlf_tar, tmp_path):
    """Same API header contract and file layout as 0201's, so every firmware build takes it."""
    def unpack(tar, name):
        with tarfile.open(tar) as t:
            t.extractall(tmp_path / name, filter="data")
        return tmp_path / name
    optim, base = unpack(optim_tar, "optim"), unpack(quick_mlf_tar, "base")
    meta, base_meta = (json.loads((d / "metadata.json").read_text()) for d in (optim, base))
    assert meta["sources"] == base_meta["sources"] and meta["include_dirs"] == base_meta["include_dirs"]
    assert meta["inputs"] == base_meta["inputs"] and meta["outputs"] == base_meta["outputs"]
    assert meta["backend"] == "cortex_m" and meta["arena_bytes"] < base_meta["arena_bytes"]
    header = (optim / "codegen/host/include/tvmgen_default.h").read_text()
    assert "int32_t tvmgen_default_run(struct tvmgen_default_inputs* inputs" in header
    kernels = (optim / "codegen/host/src/default_lib1.c").read_text()
    assert "__smlad" in kernels and "smlad %[a0]" in kernels
    # the dense layers: the input widened once per layer, 4 channels per micro-kernel call
    assert "utvm_widen_u8_x4(x, " in kernels and kernels.count("utvm_dense_c4(wide, ") == 3
    # both pooled convolutions run a 4-pixel micro-kernel: conv1 (one input channel) on pairs
    # across its rows, conv2 on the int16 activations conv1 writes for it
    assert "utvm_rowpairs_u8(x, " in kernels and kernels.count("utvm_pool_pairs_p4c2(rows_ptr, ") == 1
    assert kernels.count("utvm_pool_s16_p4c2(x, ") == 1 and kernels.count("utvm_widen_s8x4_pairs(w, ") == 2


def _emulator_scores(tar, images, directory):
    from utils.serial_link import Board
    from utils.standin import StandIn
    standin = StandIn("qemu-m7", tar, link=directory / "port", build_dir=directory / "build")
    standin.start()
    try:
        with Board(standin.port, timeout=20) as board:
            results = [board.infer(image) for image in images]
    finally:
        standin.stop()
    return results


def test_emulated_cortex_m7_same_bits_and_fewer_instructions(optim_tar, quick_mlf_tar, tmp_path):
    require_tools("qemu-system-arm", "arm-none-eabi-gcc")
    images, _ = mnist_arrays(False)
    images = images[:12]
    optim = _emulator_scores(optim_tar, images, tmp_path / "optim")
    base = _emulator_scores(quick_mlf_tar, images, tmp_path / "base")
    for fast, slow in zip(optim, base):
        assert fast.digit == slow.digit
        assert _same_bits(fast.scores, slow.scores)  # same newlib expf/logf on both: same bits
        assert fast.time_unit == slow.time_unit == "instructions"
    fast_median = float(np.median([r.time for r in optim]))
    slow_median = float(np.median([r.time for r in base]))
    assert fast_median < 1_000_000 and fast_median < slow_median / 4, (fast_median, slow_median)


# ----------------------------------------------------------------------------- other shapes

def _traced_int8(model, path):
    import torch.ao.quantization as tq
    from utils.quantize import to_int8, use_qnnpack
    torch.manual_seed(0)
    use_qnnpack()
    model = model.eval()
    model.qconfig = tq.get_default_qconfig("qnnpack")
    prepared = tq.prepare(model)
    images, _ = mnist_arrays(False)
    prepared(torch.from_numpy(images[:64].astype(np.float32)[:, None] / 255.0))
    torch.jit.trace(to_int8(prepared), torch.zeros(1, 1, 28, 28)).save(str(path))
    return path


def _odd_shapes_net():
    """Shapes LeNet-5 does not have: unpooled convs with an odd output width, convs that
    write a padded buffer for the next one, tails of every length in the micro-kernels, a
    flatten of H, W > 1 (weights permuted to channels-last), 7 and 10 output channels."""
    import torch.nn as nn
    import torch.nn.functional as F
    from torch.ao.quantization import DeQuantStub, QuantStub

    class OddShapes(nn.Module):
        def __init__(self):
            super().__init__()
            self.quant, self.dequant = QuantStub(), DeQuantStub()
            self.conv1 = nn.Conv2d(1, 4, 3, padding=1)  # 28x28, writes conv2's padded input
            self.conv2 = nn.Conv2d(4, 6, 4, padding=1)  # 27x27: odd width, no pool
            self.conv3 = nn.Conv2d(6, 2, 3, padding=1)  # 27x27 through a border
            self.fc1 = nn.Linear(2 * 27 * 27, 7)
            self.fc2 = nn.Linear(7, 10)

        def forward(self, x):
            x = torch.relu(self.conv1(self.quant(x)))
            x = self.conv2(x)
            x = torch.relu(self.conv3(x))
            x = torch.relu(self.fc1(torch.flatten(x, 1)))
            return F.log_softmax(self.dequant(self.fc2(x)), dim=1)

    return OddShapes()


@pytest.fixture(scope="module")
def odd_shapes_tars(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("odd")
    source = load_model(_traced_int8(_odd_shapes_net(), tmp / "odd_int8.pth"), "int8")
    return (compile_model(source, tmp / "optim.tar", CORTEX_M).tar,
            compile_model(source, tmp / "base.tar", GENERIC).tar)


def test_odd_shapes_same_bits_on_the_host(odd_shapes_tars, last_500_images):
    optim_tar, base_tar = odd_shapes_tars
    optim_out, optim_logits = HostLibrary(optim_tar).run_with_logits(last_500_images[:200])
    base_out, base_logits = HostLibrary(base_tar).run_with_logits(last_500_images[:200])
    assert np.array_equal(optim_logits, base_logits)
    assert _same_bits(optim_out, base_out)
    assert len(set(base_logits[:, 0])) > 1  # the test sees varied values, not a constant


def test_odd_shapes_same_bits_on_the_emulator(odd_shapes_tars, tmp_path):
    require_tools("qemu-system-arm", "arm-none-eabi-gcc")
    optim_tar, base_tar = odd_shapes_tars
    images, _ = mnist_arrays(False)
    optim = _emulator_scores(optim_tar, images[:4], tmp_path / "optim")
    base = _emulator_scores(base_tar, images[:4], tmp_path / "base")
    for fast, slow in zip(optim, base):
        assert fast.digit == slow.digit and _same_bits(fast.scores, slow.scores)


def test_the_chain_planner_refuses_in_one_line(tmp_path):
    """What the chain kernels cannot run is one StageError line (the backend then lowers the
    model layer by layer), naming the layer and 0201."""
    import torch.nn as nn
    import torch.nn.functional as F
    from torch.ao.quantization import DeQuantStub, QuantStub
    from utils.aot.backends.cortex_m import int8_to_relax_cortex_m
    from utils.aot.compiler import to_relax
    from utils.cli import StageError

    class Strided(nn.Module):
        def __init__(self):
            super().__init__()
            self.quant, self.dequant = QuantStub(), DeQuantStub()
            self.conv = nn.Conv2d(1, 4, 3, stride=2)
            self.fc = nn.Linear(4 * 13 * 13, 10)

        def forward(self, x):
            x = self.conv(self.quant(x))
            return F.log_softmax(self.dequant(self.fc(torch.flatten(x, 1))), dim=1)

    source = load_model(_traced_int8(Strided(), tmp_path / "strided_int8.pth"), "int8")
    _, layers = to_relax(source, GENERIC)
    with pytest.raises(StageError) as refused:
        int8_to_relax_cortex_m(layers, source.input_shape)
    message = str(refused.value)
    assert "\n" not in message and "0202 cannot optimize conv" in message and "0201tvm_no_optim.py" in message


# ----------------------------------------------------------------------------- RIOT

def test_riot_native64_takes_the_optimized_tar(riot_base, optim_tar, tmp_path, mnist_test_100,
                                                host_digits_100):
    """RIOT's build of the package appends the tar's cflags (-O2) and runs it unchanged."""
    from utils.serial_link import Board
    from utils.standin import StandIn
    standin = StandIn("native64", optim_tar, link=tmp_path / "port", build_dir=tmp_path / "build")
    standin.start()
    try:
        with Board(standin.port, timeout=30) as board:
            digits = [board.infer(image).digit for image in mnist_test_100[0][:30]]
    finally:
        standin.stop()
    assert digits == host_digits_100[:30]


def test_riot_stm32_links_the_optimized_tar_and_its_stack_fits(riot_base, optim_tar, tmp_path):
    from utils import riot
    problem = riot.stm32_packages_problem(riot_base)
    if problem:
        pytest.skip(f"stm32f746g-disco build not tested: {problem}")
    elf = riot.build(riot.STM32, optim_tar, tmp_path / "stm32")
    symbols = subprocess.run(["arm-none-eabi-nm", "-S", "-t", "d", str(elf)], capture_output=True, text=True,
                             check=True).stdout
    assert "utvm_rowpairs_u8" in symbols and "tvmgen_default_conv3_fc1_fc2" in symbols
    stack = riot.main_stack(elf)
    assert stack["main_stack_bound_complete"] and stack["main_stack_worst_case_bytes"] <= stack["main_stack_bytes"]
    assert riot.f746_budget(riot.sizes(riot.STM32, elf))["flash_used_percent"] < 10
