"""A cycle estimate for the Cortex-M7 from the emulator's block counts and llvm-mca.

QEMU executes instructions, not cycles. The M7 issues two instructions per cycle when it can
and stalls on load and multiply latencies, so instructions over-state or under-state its time
by up to 2x. The estimate:

    cycles = sum over blocks  executions(block) x cycles(block)

`executions` comes from the benchmark's TCG plugin (bench/insn_count_plugin.c, bb=on): how
often each translation block (a straight run of instructions ending at a branch) ran during
one inference. `cycles(block)` is llvm-mca-14 -mcpu=cortex-m7 on the block's instructions,
taken from the ELF's disassembly (llvm-objdump-14), as the steady-state cost of one
execution: llvm-mca's total cycles for ITERATIONS back-to-back copies, divided by ITERATIONS.
A hot loop is one block run again and again, which is exactly that; a block run once gets the
overlap it would have with whatever comes after it, which is what the pipeline does on the
board.

What llvm-mca does not model, and what is done instead (each rule from the measurements in
VALIDATION_SOURCE):
- branches: llvm-mca makes a conditional branch wait for its flags and holds the in-order
  pipeline behind it; the M7 predicts it and issues it beside a neighbour. Branches are
  taken out of the block and each executed one costs BRANCH_CYCLES (one issue slot).
  Mispredictions (6-8 cycles on the M7) are not modelled.
- IT: llvm-mca does not know the instruction; it is counted as a NOP would be (one issue slot)
  and the instructions it predicates are given to llvm-mca unconditional.
- load/store multiple (LDM, STM, PUSH, POP): the M7 moves two registers per cycle and issues
  nothing beside them; llvm-mca's M7 model charges an 8-register LDM one cycle. Each such
  instruction is charged ceil(registers / 2) cycles in place of what llvm-mca gave it alone.

Left out altogether: flash wait states and ST's ART accelerator (the STM32F746 at 216 MHz
needs 7 wait states from flash), the caches (I/D, 4 KB each on the F746) and their misses,
the TCMs (where code and data run without them), bus contention, and interrupts. The estimate
is the core's time with every fetch and access hitting zero-wait memory: a lower bound for
code in flash with the caches cold, close for code and data in TCM or cache.
"""
import functools
import math
import re
import subprocess
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from utils.cli import StageError

LLVM_MCA = "llvm-mca-14"
OBJDUMP = "llvm-objdump-14"
MCA_FLAGS = ["-mtriple=thumbv7em-none-eabihf", "-mcpu=cortex-m7"]
ITERATIONS = 100
BRANCH_CYCLES = 0.5
CLOCK_HZ = 216e6  # the STM32F746's top clock
VALIDATION_SOURCE = ("jnk0le/random, 'pipeline cycle test/doc/cortex_m7.md' (DWT.CYCCNT on an "
                     "STM32H743, https://github.com/jnk0le/random); see also "
                     "https://www.quinapalus.com/cm7cycles.html (STM32H730)")

_BRANCH = re.compile(r"^(b|bl|blx|bx|cbz|cbnz)(eq|ne|cs|hs|cc|lo|mi|pl|vs|vc|hi|ls|ge|lt|gt|le|al)?"
                     r"(\.w|\.n)?$")
_MULTIPLE = re.compile(r"^(ldm|stm|push|pop)(ia|db|fd|ea)?(\.w|\.n)?$")
_IT = re.compile(r"^it([te]{0,3})$")
_CONDITIONS = ["eq", "ne", "cs", "cc", "mi", "pl", "vs", "vc", "hi", "ls", "ge", "lt", "gt", "le"]
_ALIASES = {"hs": "cs", "lo": "cc"}
_INVERSE = {c: _CONDITIONS[i ^ 1] for i, c in enumerate(_CONDITIONS)}


@dataclass
class Insn:
    address: int
    mnemonic: str
    operands: str
    condition: str = ""    # inside an IT block: the condition it runs under

    @property
    def text(self):
        return f"{self.mnemonic} {self.operands}".strip()


def _run(command, what, stdin=None):
    try:
        proc = subprocess.run(command, input=stdin, capture_output=True, text=True)
    except FileNotFoundError:
        raise StageError(f"{command[0]} not found; it comes with the clang that setup.sh installs "
                         f"({what})") from None
    return proc


@functools.lru_cache(maxsize=8)
def _disassemble_cached(elf: str, mtime_ns: int) -> dict:
    proc = _run([OBJDUMP, "-d", "--no-show-raw-insn", "--mcpu=cortex-m7", "--triple=thumbv7em-none-eabihf",
                 elf], "disassembly")
    if proc.returncode != 0:
        raise StageError(f"{OBJDUMP} cannot disassemble {elf}: {proc.stderr.strip()[:200]}")
    insns = {}
    it_left = []
    line_re = re.compile(r"^\s*([0-9a-f]+):\s+([a-z][a-z0-9.]*)\s*(.*)$")
    for line in proc.stdout.splitlines():
        match = line_re.match(line)
        if not match:
            if line.endswith(">:"):  # a new symbol: no IT block carries over
                it_left = []
            continue
        address, mnemonic, operands = int(match.group(1), 16), match.group(2), match.group(3)
        if mnemonic.startswith("."):  # data (.word, .short, .byte)
            continue
        operands = operands.split("@")[0].strip()
        insn = Insn(address, mnemonic, operands)
        if it_left:
            insn.condition = it_left.pop(0)
        it = _IT.match(mnemonic)
        if it:
            first = _ALIASES.get(operands, operands)
            if first not in _INVERSE:
                raise StageError(f"{elf}: unexpected IT condition {operands!r} at {address:#x}")
            it_left = [first] + [first if c == "t" else _INVERSE[first] for c in it.group(1)]
        insns[address] = insn
    return insns


def disassemble(elf) -> dict:
    """address → Insn, every instruction of the ELF's code (data in code skipped)."""
    elf = Path(elf)
    return _disassemble_cached(str(elf), elf.stat().st_mtime_ns)


def _unconditional(insn: Insn) -> str:
    """The instruction without the condition its IT block gives it (llvm-mca has no IT)."""
    if not insn.condition:
        return insn.text
    base, dot, width = insn.mnemonic.partition(".")
    for cond in {insn.condition, _INVERSE[insn.condition]} | {a for a, c in _ALIASES.items()
                                                             if c in (insn.condition, _INVERSE[insn.condition])}:
        if base.endswith(cond) and len(base) > len(cond):
            base = base[:-len(cond)]
            break
    return f"{base}{dot}{width} {insn.operands}".strip()


def _register_count(operands: str) -> int:
    """Registers in a register list like {r4, r5, r6, lr} or {r4-r7}."""
    inside = operands[operands.index("{") + 1:operands.index("}")]
    count = 0
    for item in inside.split(","):
        item = item.strip()
        if "-" in item:
            lo, hi = (int(re.sub(r"\D", "", r)) for r in item.split("-"))
            count += hi - lo + 1
        elif item:
            count += 1
    return count


@dataclass
class Block:
    """One translation block's instructions as llvm-mca gets them, and the costs added to
    what llvm-mca says."""
    key: tuple
    mca_lines: list
    branches: int = 0
    its: int = 0
    multiples: list = None   # (mca text, register count) of each LDM/STM/PUSH/POP


def block_of(insns: dict, start: int, end: int, count: int) -> Block:
    """The `count` instructions the plugin saw from `start` (its `end` is only a bound: QEMU
    ends a block before a 32-bit instruction that crosses a 1 KB page, and then reports the
    end as the page's)."""
    addresses = sorted(a for a in insns if start <= a < end)[:count]
    if len(addresses) != count or (addresses and addresses[0] != start):
        raise StageError(f"block {start:#x}-{end:#x}: the plugin ran {count} instructions, the "
                         f"disassembly has {len(addresses)} there")
    found = [insns[a] for a in addresses]
    block = Block((start, end), [], multiples=[])
    for insn in found:
        base = insn.mnemonic
        if _IT.match(base):
            block.its += 1
            continue
        text = _unconditional(insn)
        mnemonic = text.split()[0]
        if _BRANCH.match(mnemonic):
            block.branches += 1
            continue
        if _MULTIPLE.match(mnemonic) and "{" in insn.operands:
            block.multiples.append((text, _register_count(insn.operands)))
        block.mca_lines.append(text)
    return block


def _mca_regions(regions: dict) -> dict:
    """name → cycles per execution (llvm-mca, ITERATIONS copies) of each region's lines.
    An instruction llvm-mca cannot read becomes a NOP-sized ALU slot (reported back)."""
    names = [n for n, lines in regions.items() if lines]
    results = {n: 0.0 for n in regions if not regions[n]}
    replaced = defaultdict(int)
    bodies = {n: list(regions[n]) for n in names}
    for _ in range(20):
        text = []
        line_of = {}
        for n in names:
            text.append(f"# LLVM-MCA-BEGIN {n}")
            for i, line in enumerate(bodies[n]):
                line_of[len(text) + 1] = (n, i)
                text.append(line)
            text.append("# LLVM-MCA-END")
        proc = _run([LLVM_MCA, *MCA_FLAGS, f"-iterations={ITERATIONS}", "-summary-view",
                     "-instruction-info=0", "-resource-pressure=0"], "the cycle estimate", "\n".join(text) + "\n")
        if proc.returncode == 0:
            break
        bad = set()
        for match in re.finditer(r"<stdin>:(\d+):\d+: error", proc.stderr):
            bad.add(line_of.get(int(match.group(1))))
        for match in re.finditer(r"note: instruction:\s*(.+)", proc.stderr):
            wanted = " ".join(match.group(1).split())
            for n in names:
                for i, line in enumerate(bodies[n]):
                    if " ".join(line.replace(",", ", ").split()) == wanted or \
                            " ".join(line.split()) == wanted:
                        bad.add((n, i))
        bad.discard(None)
        if not bad:
            raise StageError(f"{LLVM_MCA} failed: {proc.stderr.strip()[:300]}")
        for n, i in bad:
            replaced[bodies[n][i].split()[0]] += 1
            bodies[n][i] = "mov r0, r0"
    else:
        raise StageError(f"{LLVM_MCA} keeps failing on the blocks")
    cycles = [int(c) for c in re.findall(r"Total Cycles:\s+(\d+)", proc.stdout)]
    if len(cycles) != len(names):
        raise StageError(f"{LLVM_MCA} reported {len(cycles)} regions for {len(names)} blocks")
    results.update({n: c / ITERATIONS for n, c in zip(names, cycles)})
    return results, dict(replaced)


def block_cycles(blocks: list) -> tuple:
    """key → estimated cycles of one execution, for each Block; and the mnemonics llvm-mca
    could not read (counted as one ALU slot each)."""
    regions = {f"b{i}": b.mca_lines for i, b in enumerate(blocks)}
    singles = sorted({text for b in blocks for text, _ in b.multiples})
    for j, text in enumerate(singles):
        regions[f"m{j}"] = [text]
    mca, replaced = _mca_regions(regions)
    single_cost = {text: mca[f"m{j}"] for j, text in enumerate(singles)}
    out = {}
    for i, b in enumerate(blocks):
        cycles = mca[f"b{i}"] + BRANCH_CYCLES * (b.branches + b.its)
        for text, registers in b.multiples:
            cycles += math.ceil(registers / 2) - single_cost[text]
        out[b.key] = max(cycles, 0.0)
    return out, replaced


# ------------------------------------------------------------------ plugin output

def parse_bb_lines(text: str) -> dict:
    """pass → {(start, end, insns): executions} from the plugin's `bb` lines."""
    out = defaultdict(lambda: defaultdict(int))
    for line in text.splitlines():
        fields = line.split()
        if len(fields) == 6 and fields[0] == "bb":
            key = (int(fields[2], 16), int(fields[3], 16), int(fields[4]))
            out[int(fields[1])][key] += int(fields[5])
    return {p: dict(v) for p, v in out.items()}


@dataclass
class Estimate:
    cycles: float
    instructions: int          # sum of executions x block length (checks the exact count)
    blocks: int
    unreadable: dict


def block_costs(elf, keys) -> tuple:
    """{(start, end, insns): cycles of one execution} for the blocks `keys` of `elf`, and the
    mnemonics llvm-mca could not read."""
    insns = disassemble(elf)
    keys = sorted(keys)
    blocks = [block_of(insns, s, e, n) for s, e, n in keys]
    cycles, replaced = block_cycles(blocks)
    return {key: cycles[key[:2]] for key in keys}, replaced


def weigh(runs: dict, baseline: dict, costs: dict) -> Estimate:
    """Cycles of the blocks `runs` ({(start, end, insns): executions}) minus those of
    `baseline` (the empty pass: the markers' own)."""
    total, count = 0.0, 0
    for key in set(runs) | set(baseline or {}):
        delta = runs.get(key, 0) - (baseline or {}).get(key, 0)
        total += delta * costs[key]
        count += delta * key[2]
    return Estimate(total, count, len(runs), {})


def estimate(elf, runs: dict, baseline: dict = None) -> Estimate:
    """Cycles of one pass's blocks, the baseline's subtracted."""
    costs, replaced = block_costs(elf, set(runs) | set(baseline or {}))
    result = weigh(runs, baseline, costs)
    result.unreadable = replaced
    return result


def milliseconds(cycles: float, clock_hz: float = CLOCK_HZ) -> float:
    return cycles / clock_hz * 1e3


# ------------------------------------------------------------------ validation

@dataclass(frozen=True)
class Loop:
    name: str            # the function in bench/cycle_loops.c
    cycles: float        # per iteration, from the measured rules in VALIDATION_SOURCE
    rule: str


# Each loop's body, plus one cycle for its SUBS + BNE (two issue slots: a correctly predicted
# branch issues beside its neighbour).
VALIDATION_LOOPS = [
    Loop("alu_pairs", 16 + 1, "32 independent ADD.W #imm: simple-constant ALU ops dual-issue, 2 per cycle"),
    Loop("mac_chain", 16 + 1, "16 SMLAD on one accumulator: MACs chain on the accumulator every cycle "
                              "and never dual-issue with each other"),
    Loop("mul_chain", 32 + 1, "16 dependent MUL: a multiply's result has one extra cycle of latency"),
    Loop("ldm_eight", 16 + 1, "4 LDM of 8 registers: ceil(8 / 2) cycles each, nothing beside them"),
    Loop("stores", 16 + 1, "16 STR: two stores never dual-issue"),
    Loop("fadd_chain", 48 + 1, "16 dependent VADD.F32: 3 cycles of result latency into VADD"),
    Loop("fadd_independent", 16 + 1, "16 independent VADD.F32: FP arithmetic never dual-issues"),
    Loop("load_alu_pairs", 16 + 1, "16 LDR each beside an independent ADD.W: an AGU op and an ALU op "
                                   "dual-issue"),
]
VALIDATION_ITERATIONS = 1000   # ITERATIONS in bench/cycle_loops.c
VALIDATION_TOLERANCE = 0.15    # relative, per loop
