"""Bad configs, options and data files through the command line: each gives exit code 2 and one
``error:`` line naming the problem and the fix, never a traceback (unless ``--debug``).

The table is ``fedsqueeze.bench.badinput.CASES`` (``fedsqueeze bench badinput`` prints its coverage)."""
from __future__ import annotations

import errno
import os
import subprocess
import sys

import pytest

from fedsqueeze.bench import badinput
from fedsqueeze.bench.badinput import (BASE, CASES, Case, changes, command_line, fake_fashion, problems, run_case,
                                      snapshot)
from fedsqueeze.cli import main
from fedsqueeze.config import to_toml
from fedsqueeze.data.sources import load_fashion_mnist

BY_NAME = {c.name: c for c in CASES}


def test_the_table_is_large_and_every_case_names_a_problem_and_a_fix():
    assert len(CASES) >= 30 and len(BY_NAME) == len(CASES)
    assert all(c.problem.strip() and c.fix.strip() for c in CASES)


def test_the_corpus_has_150_cases_across_the_classes():
    assert len(CASES) >= 150
    text = " ".join(c.name.lower() for c in CASES)
    for word in ("utf-8", "nested", "seed", "inf", "nan", "100 kb", "pipeline", "**kwargs", "date", "model",
                 "synthetic", "--budget-mb", "--out", "resume", "plot", "personal", "suite", "flower", "bench", "name"):
        assert word in text, word


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input_gives_one_clean_error_line(case: Case, tmp_path):
    """Exit 2, one ``error:`` line naming the problem and the fix, within CASE_SECONDS, and the case's folder
    (also the working directory) byte-for-byte unchanged."""
    code, err, bad = run_case(case, tmp_path)
    assert bad == [], err[-2000:]


def test_the_checks_catch_a_slow_case_and_a_written_file(tmp_path):
    case = Case("x", "boom", "fix it")
    before = snapshot(tmp_path)
    (tmp_path / "new.txt").write_text("x")
    found = problems(case, tmp_path, 2, "error: boom; fix it\n", seconds=11.0,
                     changed=changes(before, snapshot(tmp_path)))
    assert found == ["took 11.0 s (more than 10 s)", "the folder changed: created new.txt"]
    assert problems(case, tmp_path, 2, "error: boom; fix it\n", seconds=0.1, changed=[]) == []


def test_a_data_dir_with_a_tab_and_quotes_is_a_value_not_toml(tmp_path):
    """--data-dir is passed as a value: a folder named with a tab and quotes works, and config.toml reads back."""
    import json
    import tomllib

    weird = tmp_path / "fm\tnist 'x\" \\ y"
    fake_fashion(weird)
    cfg = tmp_path / "c.toml"
    cfg.write_text(to_toml({**BASE, "data": {**BASE["data"], "source": "fashion_mnist"}}))
    assert main(["run", str(cfg), "--quiet", "--out", str(tmp_path / "run"), "--data-dir", str(weird)]) == 0
    assert json.loads((tmp_path / "run" / "config.json").read_text())["data"]["dir"] == str(weird)
    assert tomllib.loads((tmp_path / "run" / "config.toml").read_text())["data"]["dir"] == str(weird)


def test_to_toml_escapes_every_control_character():
    import tomllib

    text = "".join(chr(i) for i in range(0x20)) + '"\\\x7f é'
    assert tomllib.loads(to_toml({"name": text, "t": {"s": text}})) == {"name": text, "t": {"s": text}}
    odd = {"a = 1\n[evil]": 1, "x y": {"k\"": 2}}  # keys are quoted unless bare
    assert tomllib.loads(to_toml({"t": odd, "u": 1})) == {"t": odd, "u": 1}


@pytest.mark.parametrize("err", [errno.ENOSPC, errno.EROFS, errno.EACCES])
def test_disk_full_or_read_only_mid_run_is_one_line_naming_the_path(err, tmp_path, capsys, monkeypatch):
    from fedsqueeze.metrics.results import RunWriter

    def fail(self, rec):
        path = self.dir / "metrics.jsonl"
        raise OSError(err, os.strerror(err), str(path))

    monkeypatch.setattr(RunWriter, "append_round", fail)
    cfg = tmp_path / "c.toml"
    cfg.write_text(to_toml(BASE))
    assert main(["run", str(cfg), "--quiet", "--out", str(tmp_path / "run")]) == 2
    out = capsys.readouterr().err
    lines = [ln for ln in out.splitlines() if ln.strip()]
    assert "Traceback" not in out and lines[-1].startswith("error:")
    errors = [ln for ln in lines if ln.startswith("error:")]
    assert len(errors) == 1 and str(tmp_path / "run" / "metrics.jsonl") in errors[0]
    assert {errno.ENOSPC: "free some disk space", errno.EROFS: "read-only",
            errno.EACCES: "fix its permissions"}[err] in errors[0]


def test_a_write_error_without_a_file_name_names_the_run_folder(tmp_path, capsys, monkeypatch):
    from fedsqueeze.metrics.results import RunWriter

    def full(self, rec):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))  # what f.write() raises on a full disk

    monkeypatch.setattr(RunWriter, "append_round", full)
    cfg = tmp_path / "c.toml"
    cfg.write_text(to_toml(BASE))
    assert main(["run", str(cfg), "--quiet", "--out", str(tmp_path / "run")]) == 2
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line.startswith(f"error: cannot use '{tmp_path / 'run'}': No space left on device; free some disk space")


def test_an_unexpected_exception_is_one_internal_error_line_with_exit_1(monkeypatch, capsys):
    import fedsqueeze.cli as cli

    def broken(args):
        raise ZeroDivisionError("division by zero")

    monkeypatch.setattr(cli, "cmd_presets", broken)
    assert cli.main(["presets"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: internal error (ZeroDivisionError") and "--debug" in err[0]


def test_a_long_name_is_printed_truncated_and_quickly(tmp_path, capsys):
    """A 4,000-character data source passes the length cap, reaches the banner (truncated) and fails as unknown."""
    import time

    cfg = tmp_path / "c.toml"
    cfg.write_text(to_toml(BASE))
    start = time.perf_counter()
    assert main(["run", str(cfg), "--quiet", "--out", str(tmp_path / "run"), "--set", "data.source=" + "m" * 4000]) == 2
    assert time.perf_counter() - start < 10
    err = capsys.readouterr().err
    assert "4,000 characters" in err and "unknown dataset" in err and not (tmp_path / "run").exists()


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


def test_plot_out_a_folder_writes_inside_it_and_leaves_the_run_unchanged(tmp_path, capsys):
    from fedsqueeze.bench.badinput import _finished_run

    _finished_run(tmp_path)
    before = snapshot(tmp_path / "done")
    (tmp_path / "pics").mkdir()
    assert main(["plot", str(tmp_path / "done"), "--out", str(tmp_path / "pics")]) == 0
    assert (tmp_path / "pics" / "comparison.png").stat().st_size > 1000
    assert not (tmp_path / "pics.png").exists() and snapshot(tmp_path / "done") == before


def test_checking_model_options_draws_no_random_numbers():
    """The parameter count on the meta device leaves the RNG where it was: same weights as a direct build."""
    import torch

    from fedsqueeze.models.zoo import MLP, build_model

    torch.manual_seed(3)
    checked = build_model("mlp", (1, 8, 8), 10, hidden=16)
    torch.manual_seed(3)
    direct = MLP((1, 8, 8), 10, hidden=16)
    assert all(torch.equal(a, b) for a, b in zip(checked.state_dict().values(), direct.state_dict().values()))


def test_a_config_path_with_newlines_cannot_inject_into_the_flower_apps_pyproject(tmp_path, capsys):
    import tomllib

    pytest.importorskip("flwr")
    cfg = tmp_path / 'c\n[evil]\nx = 1\n#.toml'
    cfg.write_text(to_toml(BASE))
    assert main(["flower", "app", str(cfg), str(tmp_path / "app")]) == 0
    pyproject = tomllib.loads((tmp_path / "app" / "pyproject.toml").read_text())
    assert "evil" not in pyproject and "project" in pyproject
