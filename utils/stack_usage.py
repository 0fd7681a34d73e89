"""Worst-case stack depth of a thread in a Cortex-M (Thumb) ELF, from its disassembly.

Why: RIOT's main thread has a fixed stack (THREAD_STACKSIZE_MAIN) and nobody here has the
board to watch it with `ps`. The bound is computed from the final link, so it covers
everything that runs on that stack: RIOT's start-up, the protocol parser, the generated
model code, libc and libgcc.

Method: `objdump -d` of the ELF; per function, the bytes its prologue(s) reserve (push,
vpush, stmdb sp!, sub sp) and its direct calls (bl/blx <f>) and tail calls (b.w <f>).
The depth of a function is its frame plus the deepest callee at the offset of the call.
Conservative where the code is not linear: every push and sub sp of a function counts,
pops never give space back. Indirect calls (blx rN) cannot be followed from the binary: the
caller names their targets (`indirect`: {caller pattern: [target patterns]}); indirect calls
left unnamed, recursion and frames of unknown size are reported, and the bound is only
complete without them.
"""
import argparse
import fnmatch
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field

FUNCTION = re.compile(r"^([0-9a-f]+) <([^>]+)>:$")
INSTRUCTION = re.compile(r"^\s*([0-9a-f]+):\s+(\S+)\s*(.*)$")
REG_LIST = re.compile(r"\{([^}]*)\}")
IMMEDIATE = re.compile(r"#(-?(?:0x[0-9a-f]+|\d+))")
TARGET = re.compile(r"^[0-9a-f]+ <([^>+]+)(\+0x[0-9a-f]+)?>")
CALL = {"bl", "blx"}
BRANCH = {"b", "b.w", "b.n"}


@dataclass
class Function:
    name: str
    frame: int = 0
    calls: list = field(default_factory=list)      # (offset at the call, callee)
    tail_calls: list = field(default_factory=list)
    indirect: int = 0                                # blx rN / bx rN (not lr)
    dynamic: bool = False                            # sub sp by a register of unknown value


def _register_count(operands: str) -> tuple:
    """(core registers, bytes of FP registers) in a {...} list, ranges included."""
    match = REG_LIST.search(operands)
    if not match:
        return 0, 0
    core, fp_bytes = 0, 0
    for part in match.group(1).split(","):
        part = part.strip()
        bounds = part.split("-")
        kind = part[0]
        if len(bounds) == 2:
            count = int(bounds[1][1:]) - int(bounds[0][1:]) + 1
        else:
            count = 1
        if kind == "d":
            fp_bytes += 8 * count
        elif kind == "s":
            fp_bytes += 4 * count
        else:
            core += count
    return core, fp_bytes


def parse_disassembly(text: str) -> dict:
    functions = {}
    current = None
    registers = {}
    for line in text.splitlines():
        head = FUNCTION.match(line)
        if head:
            current = functions.setdefault(head.group(2), Function(head.group(2)))
            registers = {}
            continue
        if current is None:
            continue
        ins = INSTRUCTION.match(line)
        if not ins:
            continue
        mnemonic, operands = ins.group(2), ins.group(3).split("@")[0].strip()
        base = mnemonic.split(".")[0]
        if base == "push" or (base == "stmdb" and operands.startswith("sp!")):
            core, fp_bytes = _register_count(operands)
            current.frame += 4 * core + fp_bytes
        elif base == "vpush" or (base == "vstmdb" and operands.startswith("sp!")):
            current.frame += sum(_register_count(operands))
        elif base in ("sub", "subw") and operands.startswith("sp,"):
            args = [a.strip() for a in operands.split(",")]
            last = args[-1]
            if last.startswith("#"):
                current.frame += int(last[1:], 0)
            elif last in registers:
                current.frame += registers[last]
            else:
                current.dynamic = True
        elif base in ("mov", "movw", "movs") and "#" in operands:
            reg = operands.split(",")[0].strip()
            imm = IMMEDIATE.search(operands)
            if imm:
                registers[reg] = int(imm.group(1), 0)
        elif mnemonic in CALL:
            target = TARGET.match(operands)
            if target:
                current.calls.append((current.frame, target.group(1)))
            else:
                current.indirect += 1
        elif mnemonic in BRANCH:
            target = TARGET.match(operands)
            if target and target.group(1) != current.name and target.group(2) is None:
                current.tail_calls.append(target.group(1))
        elif base == "bx" and operands != "lr":
            current.indirect += 1
    return functions


@dataclass
class StackReport:
    root: str
    worst_bytes: int
    path: list                 # [(function, its frame bytes)] along the deepest chain
    indirect: list             # reachable functions whose indirect calls nobody named
    recursive: list            # functions found on a cycle (cut there)
    dynamic: list              # functions with a frame of unknown size
    unknown: list              # called but not in the ELF's disassembly

    @property
    def complete(self) -> bool:
        return not (self.indirect or self.recursive or self.dynamic or self.unknown)


def worst_case(functions: dict, root: str, indirect=None) -> StackReport:
    if root not in functions:
        raise KeyError(f"{root} is not a function in this ELF")
    indirect = indirect or {}
    # callers and targets are fnmatch patterns: GCC's clones (.isra.0, .constprop.0) match too
    targets = {}
    for caller_pattern, patterns in indirect.items():
        found = {f for pattern in patterns for f in fnmatch.filter(functions, pattern)}
        for caller in fnmatch.filter(functions, caller_pattern):
            targets[caller] = sorted(targets.get(caller, set()) | found)
    memo, on_path = {}, set()
    recursive, unknown = set(), set()
    reachable = set()

    def depth(name):
        if name in memo:
            return memo[name]
        if name not in functions:
            unknown.add(name)
            return 0, []
        if name in on_path:
            recursive.add(name)
            return 0, []
        on_path.add(name)
        reachable.add(name)
        fn = functions[name]
        best, best_path = fn.frame, []
        for offset, callee in fn.calls:
            d, p = depth(callee)
            if offset + d > best:
                best, best_path = offset + d, p
        for callee in fn.tail_calls:
            d, p = depth(callee)
            if d > best:
                best, best_path = d, p
        # the offset of an indirect call is not kept: count the whole frame
        for callee in targets.get(name, []) if fn.indirect else []:
            d, p = depth(callee)
            if fn.frame + d > best:
                best, best_path = fn.frame + d, p
        on_path.discard(name)
        memo[name] = (best, [(name, fn.frame)] + best_path)
        return memo[name]

    worst, path = depth(root)
    return StackReport(
        root=root, worst_bytes=worst, path=path,
        indirect=sorted(n for n in reachable if functions[n].indirect and n not in targets),
        recursive=sorted(recursive),
        dynamic=sorted(n for n in reachable if functions[n].dynamic),
        unknown=sorted(unknown))


def objdump_for(elf) -> str:
    for tool in ("arm-none-eabi-objdump", "objdump"):
        if shutil.which(tool):
            return tool
    raise FileNotFoundError("no objdump found (install binutils-arm-none-eabi)")


def analyse(elf, root: str, indirect=None) -> StackReport:
    text = subprocess.run([objdump_for(elf), "-d", "--no-show-raw-insn", str(elf)],
                          check=True, capture_output=True, text=True).stdout
    return worst_case(parse_disassembly(text), root, indirect)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("elf", help="a Cortex-M ELF")
    parser.add_argument("--root", default="main_trampoline",
                        help="the thread's entry function (RIOT's main thread: main_trampoline)")
    parser.add_argument("--indirect", action="append", default=[], metavar="CALLER=T1,T2",
                        help="targets of CALLER's indirect calls (fnmatch patterns); repeatable")
    args = parser.parse_args(argv)
    indirect = {}
    for item in args.indirect:
        caller, _, callees = item.partition("=")
        indirect.setdefault(caller, []).extend(c for c in callees.split(",") if c)
    report = analyse(args.elf, args.root, indirect)
    print(f"worst-case stack from {report.root}: {report.worst_bytes} bytes")
    print("deepest chain: " + " -> ".join(f"{n} ({b})" for n, b in report.path))
    for label, names in (("indirect calls not named in", report.indirect),
                         ("recursion cut at", report.recursive),
                         ("frame of unknown size in", report.dynamic),
                         ("not in the disassembly", report.unknown)):
        if names:
            print(f"{label}: {', '.join(names)}")
    return report


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
