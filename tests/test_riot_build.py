"""The RIOT builds: the STM32F746G-DISCO firmware links, fits the chip with room to spare and
its main thread's stack covers the worst case; the model package (makefiles/utvm*) follows
its tar; a missing tar is one line; an STM32 family whose CMSIS headers RIOT cannot fetch is
one line naming the package to mirror. Needs a RIOT clone (RIOTBASE, default ./RIOT); the
stm32 build also needs RIOT's packages (network or local mirrors). Skipped, saying so,
without, except the offline hint's logic, also checked against a stub of the few RIOT
variables it reads.
"""
import io
import os
import subprocess
import tarfile

import pytest

from utils import paths, riot

# Every github.com URL points nowhere: git fails as it does offline, whatever the network.
OFFLINE = {"GIT_CONFIG_COUNT": "1", "GIT_CONFIG_KEY_0": "url.file:///nonexistent/.insteadOf",
           "GIT_CONFIG_VALUE_0": "https://github.com/"}


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


def _make(*args, timeout=300, env=None):
    return subprocess.run(["make", "-C", str(paths.ROOT), "-j2", *args],
                          capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


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


def _stub_riot(base, family="l4"):
    """The RIOT variables the Makefile's offline check reads, as an STM32 board of `family`
    sets them (RIOT's cpu/stm32/Makefile.include and Makefile.cmsis); `all` only says so."""
    (base / "cpu" / "stm32").mkdir(parents=True)
    (base / "Makefile.include").write_text(
        "RIOTCPU = $(RIOTBASE)/cpu\nCPU = stm32\n"
        f"CPU_FAM = {family}\n"
        "STM32FAM_INCLUDE_FILE = $(RIOTBASE)/build/stm32/cmsis/$(CPU_FAM)/Include/stm32$(CPU_FAM)xx.h\n"
        "all:\n\t@echo stub build of $(BOARD)\n")
    (base / "cpu" / "stm32" / "Makefile.cmsis").write_text(
        "PKG_URL=https://github.com/STMicroelectronics/cmsis-device-$(CPU_FAM)\n")
    return base


def _one_line_hint(result, base, family, alone=True):
    """make stopped with the hint utils.riot gives; `alone`: nothing else on stderr (a real
    RIOT may warn about other things first)."""
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode != 0 and lines, result.stdout[-2000:] + result.stderr[-2000:]
    assert len(lines) == 1 or not alone, result.stderr
    assert riot.fetch_hint([riot.cmsis_device_url(family, base)]) in lines[-1]
    assert f"cmsis-device-{family}" in lines[-1] or f"cmsis_device_{family}" in lines[-1]
    assert "Could not resolve" not in result.stderr


def test_offline_stm32_family_is_one_line_naming_its_package(tmp_path):
    base = _stub_riot(tmp_path / "riot")
    result = _make("BOARD=nucleo-l476rg", f"RIOTBASE={base}", f"BINDIRBASE={tmp_path / 'bin'}",
                   env=OFFLINE, timeout=60)
    _one_line_hint(result, base, "l4")


def test_offline_hint_stays_quiet_with_a_mirror_or_the_headers(tmp_path):
    base = _stub_riot(tmp_path / "riot")
    mirror = tmp_path / "cmsis-device-l4"
    subprocess.run(["git", "init", "-q", str(mirror)], check=True)
    subprocess.run(["git", "-C", str(mirror), "-c", "user.name=t", "-c", "user.email=t@t",
                    "commit", "-q", "--allow-empty", "-m", "mirror"], check=True)
    url = riot.cmsis_device_url("l4", base)
    mirrored = {"GIT_CONFIG_COUNT": "1", "GIT_CONFIG_KEY_0": f"url.{mirror}.insteadOf",
                "GIT_CONFIG_VALUE_0": url}
    common = ["BOARD=nucleo-l476rg", f"RIOTBASE={base}", f"BINDIRBASE={tmp_path / 'bin'}"]
    through_mirror = _make(*common, env=mirrored, timeout=60)
    assert through_mirror.returncode == 0 and "stub build" in through_mirror.stdout, \
        through_mirror.stderr
    header = base / "build" / "stm32" / "cmsis" / "l4" / "Include" / "stm32l4xx.h"
    header.parent.mkdir(parents=True)
    header.write_text("")
    fetched = _make(*common, env=OFFLINE, timeout=60)
    assert fetched.returncode == 0 and "stub build" in fetched.stdout, fetched.stderr


def test_offline_stm32_family_with_riot(riot_base, tmp_path):
    family = "l4"
    if (riot_base / "build" / "stm32" / "cmsis" / family).is_dir():
        pytest.skip(f"this RIOT has the {family} headers already; nothing to fetch")
    result = _make("BOARD=nucleo-l476rg", f"RIOTBASE={riot_base}", f"BINDIRBASE={tmp_path}",
                   env=OFFLINE, timeout=120)
    _one_line_hint(result, riot_base, family, alone=False)


def _disassembly(elf, function) -> str:
    return subprocess.run(["arm-none-eabi-objdump", "-d", f"--disassemble={function}", str(elf)],
                          capture_output=True, text=True, check=True).stdout


def test_stm32_baud_is_a_make_variable_and_the_dwt_times_the_inference(riot_base, quick_mlf_tar,
                                                                      tmp_path_factory):
    """`make BAUD=921600`: the rate the firmware reports in `info` is the one RIOT's stdio UART
    is set up with; on the Cortex-M7 the inference is timed by the DWT cycle counter."""
    problem = riot.stm32_packages_problem(riot_base)
    if problem:
        pytest.skip(f"stm32f746g-disco build not tested: {problem}")
    elf = riot.build(riot.STM32, quick_mlf_tar, tmp_path_factory.mktemp("stm32-baud"), baud=921600)
    assert "#921600" in _disassembly(elf, "platform_baud")
    assert "e0001000" in _disassembly(elf, "platform_timestamp")  # DWT_CTRL/CYCCNT's block
    init = _disassembly(elf, "platform_init")
    assert "c5acce55" in init and "e0001000" in init  # the M7's DWT unlocked and started
