"""The Cortex-M7 cycle estimate (utils/cycle_estimate.py) on loops whose cycles follow from
published M7 measurements: real arm-none-eabi-gcc, real QEMU with the block-counting plugin,
real llvm-mca-14. The expected figures and their source are in
utils.cycle_estimate.VALIDATION_LOOPS; the tolerance is VALIDATION_TOLERANCE."""
import pytest

from utils import bench, cycle_estimate
from utils.cycle_estimate import Insn, VALIDATION_LOOPS, VALIDATION_TOLERANCE


@pytest.fixture(scope="module")
def check(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cycles")
    return bench.validate_cycle_estimate(tmp, bench.build_plugin(tmp))


@pytest.mark.parametrize("loop", [loop.name for loop in VALIDATION_LOOPS])
def test_estimate_within_tolerance_of_the_measured_m7(check, loop):
    row = next(r for r in check["loops"] if r["loop"] == loop)
    expected = next(x for x in VALIDATION_LOOPS if x.name == loop).cycles
    assert row["expected_cycles_per_iteration"] == expected
    assert abs(row["estimated_cycles_per_iteration"] / expected - 1) <= VALIDATION_TOLERANCE, row
    # the block counts times the block lengths are the plugin's exact instruction count
    assert row["instructions_match_plugin"], row


def test_report_says_the_source_and_the_worst_error(check):
    assert "jnk0le/random" in check["source"]
    assert check["max_abs_relative_error"] == max(abs(r["relative_error"]) for r in check["loops"])
    assert check["within_tolerance"] is True and not check["unreadable_instructions"]


def test_loops_tell_latency_from_throughput(check):
    """A dependent multiply chain costs twice an independent-add loop of the same length: the
    estimate sees latency, not only instruction counts."""
    per = {r["loop"]: r["estimated_cycles_per_iteration"] for r in check["loops"]}
    assert per["mul_chain"] > 1.8 * per["mac_chain"]
    assert per["fadd_chain"] > 2.5 * per["fadd_independent"]


def test_it_blocks_reach_llvm_mca_unconditional():
    assert cycle_estimate._unconditional(Insn(0, "movge", "r2, #3", "ge")) == "mov r2, #3"
    assert cycle_estimate._unconditional(Insn(0, "addne.w", "r1, r1, #1", "eq")) == "add.w r1, r1, #1"
    assert cycle_estimate._unconditional(Insn(0, "movs", "r0, #0")) == "movs r0, #0"


def test_register_lists():
    assert cycle_estimate._register_count("{r4, r5, r6, r7, r8, r9, r10, r11, lr}") == 9
    assert cycle_estimate._register_count("r9, {r1-r8}") == 8


def test_multiple_transfers_cost_two_registers_a_cycle(tmp_path):
    """llvm-mca's M7 model alone charges an 8-register LDM one cycle; the estimate charges 4."""
    block = cycle_estimate.Block((0, 4), ["ldm r9, {r1, r2, r3, r4, r5, r6, r7, r8}"],
                                 multiples=[("ldm r9, {r1, r2, r3, r4, r5, r6, r7, r8}", 8)])
    cycles, _ = cycle_estimate.block_cycles([block])
    assert cycles[(0, 4)] == pytest.approx(4.0, abs=0.05)
    raw, _ = cycle_estimate._mca_regions({"x": block.mca_lines})
    assert raw["x"] < 2.0
