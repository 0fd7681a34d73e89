"""utils.stack_usage, the bound behind THREAD_STACKSIZE_MAIN, checked against GCC itself:
a Cortex-M7 program compiled and linked with arm-none-eabi-gcc -fstack-usage, whose frames
the disassembly must reproduce and whose call chains it must add up. No RIOT needed."""
import subprocess

import pytest

from tests.fixtures_tools import require_tools
from utils import stack_usage

CC = "arm-none-eabi-gcc"
FLAGS = ["-mcpu=cortex-m7", "-mthumb", "-mfpu=fpv5-sp-d16", "-mfloat-abi=hard", "-Os",
         "-fno-inline", "-fno-optimize-sibling-calls", "-fno-ipa-ra", "-fstack-usage"]

PROGRAM = r"""
typedef int (*handler)(int);
volatile int sink;

int leaf_small(int x) { volatile char b[24]; b[0] = (char)x; return b[0] + 1; }
int leaf_big(int x) { volatile char b[3000]; b[x & 7] = 1; return b[1]; }
float leaf_float(float a, float b) {
    volatile float t[6]; t[0] = a; t[1] = b; return t[0] * t[1] + (float)sink;
}
float keep_float(float a) { float k = a * 3.0f; sink = leaf_small(1); return k + a; }
int middle(int x) { volatile int m[20]; m[0] = leaf_small(x); return m[0] + leaf_big(x); }
int on_event(int x) { volatile char e[200]; e[0] = (char)x; return e[0] + leaf_small(x); }
handler table[] = { on_event };
int dispatch(int x) { volatile int d[4]; d[0] = x; return table[d[0] & 0](x); }
int countdown(int x) { volatile int c[2]; c[0] = x; return x ? countdown(x - 1) + c[0] : 0; }
int root(void) {
    volatile int r[8];
    r[0] = middle(1) + dispatch(2) + (int)leaf_float(1.0f, 2.0f) + (int)keep_float(2.0f);
    return r[0];
}
void entry(void) { sink = root() + countdown(3); for (;;) {} }
"""


@pytest.fixture(scope="module")
def program(tmp_path_factory):
    require_tools(CC, hint="apt-packages.txt: gcc-arm-none-eabi")
    folder = tmp_path_factory.mktemp("stack")
    source = folder / "prog.c"
    source.write_text(PROGRAM)
    elf = folder / "prog.elf"
    subprocess.run([CC, *FLAGS, "-nostdlib", "-nostartfiles", "-Wl,-e,entry", "-o", str(elf),
                    str(source)], check=True, cwd=folder)
    gcc_frames = {}
    for su in folder.glob("*.su"):
        for line in su.read_text().splitlines():
            where, size, kind = line.split("\t")
            gcc_frames[where.rsplit(":", 1)[-1]] = (int(size), kind)
    text = subprocess.run(["arm-none-eabi-objdump", "-d", "--no-show-raw-insn", str(elf)],
                          check=True, capture_output=True, text=True).stdout
    return elf, stack_usage.parse_disassembly(text), gcc_frames


def test_frames_equal_gccs_own_stack_usage(program):
    _, functions, gcc_frames = program
    assert set(gcc_frames) >= {"leaf_small", "leaf_big", "leaf_float", "keep_float", "middle", "root"}
    for name, (size, kind) in gcc_frames.items():
        assert kind == "static", f"{name}: {kind}"
        assert functions[name].frame == size, f"{name}: disassembly {functions[name].frame}, gcc {size}"
    # the cases that matter: a large frame (sub.w sp, #imm) and FP registers kept over a call
    assert gcc_frames["leaf_big"][0] >= 3000
    assert "vpush" in subprocess.run(["arm-none-eabi-objdump", "-d", "--no-show-raw-insn",
                                      str(program[0])], capture_output=True, text=True).stdout


def test_worst_case_adds_frames_along_the_deepest_chain(program):
    _, functions, su = program
    report = stack_usage.worst_case(functions, "middle")
    expected = su["middle"][0] + max(su["leaf_small"][0], su["leaf_big"][0])
    assert report.worst_bytes == expected
    assert [name for name, _ in report.path] == ["middle", "leaf_big"]
    assert report.complete


def test_indirect_calls_are_reported_until_named(program):
    _, functions, su = program
    unnamed = stack_usage.worst_case(functions, "dispatch")
    assert unnamed.indirect == ["dispatch"] and not unnamed.complete
    assert unnamed.worst_bytes == su["dispatch"][0]

    named = stack_usage.worst_case(functions, "dispatch", {"dispatch": ["on_*"]})
    assert named.complete
    assert named.worst_bytes == su["dispatch"][0] + su["on_event"][0] + su["leaf_small"][0]


def test_recursion_is_cut_and_reported(program):
    _, functions, _ = program
    report = stack_usage.worst_case(functions, "entry", {"dispatch": ["on_event"]})
    assert report.recursive == ["countdown"]
    assert not report.complete
    # root's chain through middle and leaf_big is still the deepest
    assert [name for name, _ in report.path][:4] == ["entry", "root", "middle", "leaf_big"]


def test_command_line_prints_the_chain(program, capsys):
    elf, _, _ = program
    stack_usage.main([str(elf), "--root", "root", "--indirect", "dispatch=on_event"])
    out = capsys.readouterr().out
    assert "worst-case stack from root:" in out
    assert "root (" in out and "leaf_big (" in out
