"""The command line: list, run, plot, errors as one line with exit code 2."""
from __future__ import annotations

import subprocess
import sys

import pytest

from fedsqueeze.cli import main


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "fedsqueeze", *args], capture_output=True, text=True)


def test_list_shows_every_registry(capsys):
    assert main(["list"]) == 0
    err = capsys.readouterr().err
    for name in ("fedavg", "local", "fp32", "fp16", "mlp", "cnn", "small_cnn", "fashion_mnist", "digits",
                 "dirichlet", "shards"):
        assert name in err
    assert "McMahan" in err  # descriptions are shown


@pytest.mark.parametrize("args", [[], ["run"], ["plot"], ["list"], ["bench"], ["bench", "engine"]])
def test_help_on_every_command(args, capsys):
    with pytest.raises(SystemExit) as e:
        main(args + ["--help"])
    assert e.value.code == 0 and "usage:" in capsys.readouterr().out


def test_bad_config_is_one_line_exit_2(tmp_path, capsys):
    assert main(["run", "configs/digits-quick.toml", "--set", "train.lr=-1", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.strip().splitlines() == [err.strip()] and err.startswith("error: config key 'train.lr'")
    assert main(["run", str(tmp_path / "missing.toml")]) == 2
    assert "not found" in capsys.readouterr().err
    out = run_cli("--debug", "run", "configs/digits-quick.toml", "--set", "train.lr=-1", "--quiet")
    assert out.returncode == 2 and "Traceback" in out.stderr and "error: config key" in out.stderr


def test_run_and_plot(tmp_path, capsys):
    assert main(["run", "configs/digits-quick.toml", "--rounds", "2", "--out", str(tmp_path / "a"), "--quiet"]) == 0
    err = capsys.readouterr().err
    assert "final" in err and "run folder" in err
    assert main(["run", "configs/digits-quick.toml", "--rounds", "2", "--set", "codec.up=fp16",
                 "--out", str(tmp_path / "b"), "--quiet"]) == 0
    png = tmp_path / "both.png"
    assert main(["plot", str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(png)]) == 0
    assert png.read_bytes()[:4] == b"\x89PNG"
    assert main(["plot", str(tmp_path)]) == 2  # not a run directory: clear error
