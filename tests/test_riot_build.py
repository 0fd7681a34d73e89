"""The RIOT builds: the STM32F746G-DISCO firmware links, fits the chip with room to spare and
its main thread's stack covers the worst case; the model package (makefiles/utvm*) follows
its tar; a missing tar is one line. Needs a RIOT clone (RIOTBASE, default ./RIOT); the stm32
build also needs RIOT's three packages (network or local mirrors). Skipped, saying so, without.
"""
import io
import subprocess
import tarfile

import pytest

from utils import paths, riot


@pytest.fixture(scope="module")
def stm32_elf(riot_base, quick_mlf_tar, tmp_path_factory):
    problem = riot.stm32_packages_problem(riot_base)
    if problem:
        pytest.skip(f"stm32f746g-disco build not tested: {problem}")
    return riot.build(riot.STM32, quick_mlf_tar, tmp_path_factory.mktemp("stm32"))


def test_stm32_firmware_links_and_fits_the_f746(riot_base, stm32_elf):
    figures = riot.sizes(riot.STM32, stm32_elf)
    budget = riot.f746_budget(figures)
    assert figures["text_bytes"] > 0 and budget["flash_used_bytes"] > figures["text_bytes"] - 1
    # room to spare: at most half of the flash and of the RAM
    assert budget["flash_used_percent"] < 50, budget
    assert budget["ram_used_percent"] < 50, budget
    symbols = subprocess.run(["arm-none-eabi-nm", str(stm32_elf)], capture_output=True,
                             text=True, check=True).stdout.split()
    for needed in ("tvmgen_default_run", "proto_feed", "platform_read_byte", "main"):
        assert needed in symbols


def test_stm32_main_stack_covers_the_worst_case(riot_base, stm32_elf):
    stack = riot.main_stack(stm32_elf)
    assert stack["main_stack_bound_complete"], stack["main_stack_not_followed"]
    assert stack["main_stack_worst_case_bytes"] <= stack["main_stack_bytes"], stack


def _make(*args, timeout=300):
    return subprocess.run(["make", "-C", str(paths.ROOT), "-j2", *args],
                          capture_output=True, text=True, timeout=timeout)


def _with_extra_source(tar_path, out_path, name, text):
    """A copy of an MLF tar with one more generated source file."""
    with tarfile.open(tar_path) as src, tarfile.open(out_path, "w") as dst:
        for member in src.getmembers():
            dst.addfile(member, src.extractfile(member) if member.isfile() else None)
        data = text.encode()
        info = tarfile.TarInfo(f"./codegen/host/src/{name}")
        info.size = len(data)
        dst.addfile(info, io.BytesIO(data))


def test_a_new_tar_replaces_the_old_model_and_its_objects(riot_base, quick_mlf_tar, tmp_path):
    # `pkg-build` compiles only the packages: the model module, in seconds
    bindir = tmp_path / "bin"
    probe_tar = tmp_path / "with_probe.tar"
    _with_extra_source(quick_mlf_tar, probe_tar, "stale_probe.c",
                       "int stale_probe(void);\nint stale_probe(void) { return 1; }\n")
    common = ["BOARD=native64", f"RIOTBASE={riot_base}", f"BINDIRBASE={bindir}"]
    first = _make(*common, f"UTVM_TAR={probe_tar}", "pkg-build")
    assert first.returncode == 0, first.stdout[-2000:] + first.stderr[-2000:]
    objects = bindir / "native64" / "mnistCNN"
    unpacked = bindir / "native64" / "pkg" / "mnistCNN" / "codegen" / "host" / "src"
    assert (objects / "stale_probe.o").is_file() and (unpacked / "stale_probe.c").is_file()

    second = _make(*common, f"UTVM_TAR={quick_mlf_tar}", "pkg-build")
    assert second.returncode == 0, second.stdout[-2000:] + second.stderr[-2000:]
    assert not (unpacked / "stale_probe.c").exists()
    assert not (objects / "stale_probe.o").exists()
    assert sorted(p.stem for p in objects.glob("*.o")) == sorted(p.stem for p in unpacked.glob("*.c"))


def test_a_missing_tar_is_one_line_saying_how_to_make_it(riot_base, tmp_path):
    result = _make("BOARD=native64", f"RIOTBASE={riot_base}", f"BINDIRBASE={tmp_path}",
                   f"UTVM_TAR={tmp_path / 'absent.tar'}", "pkg-build")
    assert result.returncode != 0
    complaints = [line for line in result.stderr.splitlines() if "absent.tar" in line
                  and "not found" in line]
    assert complaints == [f"{tmp_path / 'absent.tar'} not found: run python3 0201tvm_no_optim.py "
                          f"to compile the model into it"]
