"""Bad configs, options and data files through the command line: each gives exit code 2 and one
``error:`` line naming the problem and the fix, never a traceback (unless ``--debug``).

The table is ``fedsqueeze.bench.badinput.CASES`` (``fedsqueeze bench badinput`` prints its coverage)."""
from __future__ import annotations

import subprocess
import sys

import pytest

from fedsqueeze.bench import badinput
from fedsqueeze.bench.badinput import CASES, Case, command_line, fake_fashion, problems
from fedsqueeze.cli import main
from fedsqueeze.data.sources import load_fashion_mnist

BY_NAME = {c.name: c for c in CASES}


def test_the_table_is_large_and_every_case_names_a_problem_and_a_fix():
    assert len(CASES) >= 30 and len(BY_NAME) == len(CASES)
    assert all(c.problem.strip() and c.fix.strip() for c in CASES)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input_gives_one_clean_error_line(case: Case, tmp_path, capsys):
    argv = command_line(case, tmp_path)
    capsys.readouterr()  # drop what preparing the case printed
    code = main(argv)
    err = capsys.readouterr().err
    assert problems(case, tmp_path, code, err) == [], err


def test_the_fake_fashion_files_are_valid_so_each_corruption_is_the_cause(tmp_path):
    fake_fashion(tmp_path)
    ds = load_fashion_mnist(tmp_path)
    assert (len(ds.y_train), len(ds.y_test), ds.input_shape) == (12, 4, (1, 28, 28))


@pytest.mark.parametrize("name", ["zero rounds", "IDX with a bad magic number"])
def test_real_process_exit_code_and_no_traceback(name, tmp_path):
    argv = command_line(BY_NAME[name], tmp_path)
    proc = subprocess.run([sys.executable, "-m", "fedsqueeze", *argv], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and proc.stderr.rstrip().endswith(errors[0])
    assert BY_NAME[name].problem.lower() in errors[0].lower()


def test_debug_shows_the_traceback(tmp_path, capsys):
    argv = command_line(BY_NAME["unknown codec"], tmp_path)
    assert main(["--debug", *argv]) == 2
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and "RegistryError: unknown codec 'topkk'" in err
    assert err.rstrip().splitlines()[-1].startswith("error: unknown codec 'topkk'")


def test_bench_badinput_counts_clean_errors(monkeypatch, capsys):
    accepted = Case("a good config", "-", "-", {})  # runs fine: exit 0, so not a clean error
    monkeypatch.setattr(badinput, "CASES", [BY_NAME["zero rounds"], BY_NAME["unknown section"], accepted])
    assert main(["bench", "badinput"]) == 1
    assert "bad inputs covered: 3, clean one-line errors with exit 2: 2" in capsys.readouterr().out
