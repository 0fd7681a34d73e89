"""utils.cli: the output-path checks every stage runs before its long work, argparse types and
the --help formatter."""
import argparse

import pytest

from tests.fixtures_outputs import bad_output_paths, read_only_dir  # noqa: F401 (fixture)
from utils.cli import (DefaultsHelpFormatter, StageError, check_output_dir, check_output_path,
                       positive_float, positive_int)


def test_writable_outputs_pass_and_nothing_is_created(tmp_path):
    assert check_output_path(tmp_path / "model.pth") == tmp_path / "model.pth"
    # one missing level is fine: the stage creates it, as mkdir does
    assert check_output_path(tmp_path / "new" / "model.pth") == tmp_path / "new" / "model.pth"
    assert check_output_dir(tmp_path / "new") == tmp_path / "new"
    existing = tmp_path / "old.pth"
    existing.write_bytes(b"old")
    check_output_path(existing)
    assert existing.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["old.pth"]  # no probe left behind


def test_each_bad_output_path_is_one_line_naming_the_option(read_only_dir, tmp_path):
    for case, path, fragment in bad_output_paths(read_only_dir, tmp_path, "model.pth"):
        with pytest.raises(StageError) as info:
            check_output_path(path, "--out")
        message = str(info.value)
        assert message.startswith(f"--out {path}") and fragment in message, (case, message)
        assert "\n" not in message
        with pytest.raises(StageError, match=fragment):
            check_output_dir(path.parent / "weights", "--out-dir")
    with pytest.raises(StageError, match="is a folder; give a file name"):
        check_output_path(tmp_path, "--plot")
    a_file = tmp_path / "a-file"
    with pytest.raises(StageError, match="is a file, not a folder"):
        check_output_dir(a_file, "--out-dir")


def test_positive_types_and_help_without_noise():
    parser = argparse.ArgumentParser(formatter_class=DefaultsHelpFormatter)
    parser.add_argument("--baud", type=positive_int, default=115200, help="baud rate")
    parser.add_argument("--timeout", type=positive_float, default=5.0, help="seconds")
    parser.add_argument("--lr", type=float, default=None, help="rate (default: 0.05 or 1.0)")
    parser.add_argument("--flag", action="store_true", help="a switch")
    assert parser.parse_args(["--baud", "9600", "--timeout", "0.5"]).baud == 9600
    for bad in (["--baud", "0"], ["--baud", "-9600"], ["--baud", "fast"],
                ["--timeout", "-1"], ["--timeout", "0"], ["--timeout", "nan"]):
        with pytest.raises(SystemExit) as info:
            parser.parse_args(bad)
        assert info.value.code == 2, bad
    text = parser.format_help()
    assert "baud rate (default: 115200)" in text
    assert text.count("default:") == 3 and "None" not in text and "False" not in text
