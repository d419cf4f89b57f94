"""Acceptance of issue 18: a run whose model, data (FederatedData from a loader), codec and loss are all
named by module:qualname (tests/custom_parts.py, not registered) is SIGKILLed mid-run, resumed with
``fedsqueeze run --resume`` in a fresh interpreter, and ends with exactly the uninterrupted run's metrics,
ledger and final server state; without the helper module on the path the resume refuses with one line
naming the missing part."""
from __future__ import annotations

import multiprocessing as mp
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from fedsqueeze.bench.kill import fingerprint, same
from fedsqueeze.cli import main
from fedsqueeze.config import from_dict, to_toml
from fedsqueeze.engine.atomic import CRASH_ENV
from fedsqueeze.metrics.results import TIMING_FIELDS, read_history

ROOT = Path(__file__).resolve().parent.parent
TESTS = Path(__file__).resolve().parent

CONFIG = {"name": "custom-parts", "rounds": 4, "seed": 3,
          "model": {"name": "custom_parts:Net", "options": {"hidden": 16}},
          "data": {"source": "custom_parts:load_data", "num_clients": 6},
          "codec": {"up": {"name": "custom_parts:Half", "scale": 2.0}},
          "train": {"loss": "custom_parts:smooth_ce", "clients_per_round": 3, "local_epochs": 2, "lr": 0.3},
          "eval": {"metrics": ["accuracy", "loss", "top2"], "personal_every": 2}}


def _killed_cli(argv: list[str], crash: str) -> None:
    os.environ[CRASH_ENV] = crash
    os._exit(main(argv))


def _cli(args: list[str], pythonpath: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": pythonpath}
    env.pop(CRASH_ENV, None)
    return subprocess.run([sys.executable, "-m", "fedsqueeze", *args], capture_output=True, text=True, env=env,
                          cwd=ROOT, timeout=300)


@pytest.mark.slow
def test_custom_parts_run_killed_then_resumed_from_the_command_line_is_identical(tmp_path):
    path = tmp_path / "custom.toml"
    path.write_text(to_toml(from_dict(CONFIG).to_dict()))
    full, cut = tmp_path / "full", tmp_path / "cut"
    assert main(["run", str(path), "--quiet", "--out", str(full)]) == 0  # uninterrupted (tests/ is on sys.path)
    # killed by SIGKILL after round 2 is in metrics.jsonl but before its checkpoint
    proc = mp.get_context("fork").Process(target=_killed_cli, args=(
        ["run", str(path), "--quiet", "--out", str(cut)], "round-recorded:2"))
    proc.start()
    proc.join(120)
    assert proc.exitcode == -signal.SIGKILL
    strip = lambda d: [{k: v for k, v in r.items() if k not in TIMING_FIELDS} for r in read_history(d)]  # noqa: E731
    assert strip(cut) == strip(full)[:2] and not (cut / "ledger.csv").exists()
    assert "global_top2" in strip(full)[0]
    # a fresh interpreter rebuilds every part from config.json's module:qualname names
    out = _cli(["run", "--resume", str(cut), "--quiet"], f"{ROOT / 'src'}{os.pathsep}{TESTS}")
    assert out.returncode == 0, out.stderr[-2000:]
    a, b = fingerprint(full), fingerprint(cut)
    assert a["server_state"] is not None and all(same(a[k], b[k]) for k in a)
    row = (cut / "summary.csv").read_text()
    assert "custom_parts:Half(scale=2.0)" in row
    # the global model learned the 3-class task (chance is 1/3)
    assert strip(full)[-1]["global_acc"] > 0.6


def test_resume_without_the_custom_parts_refuses_with_one_line(tmp_path):
    path = tmp_path / "custom.toml"
    path.write_text(to_toml(from_dict({**CONFIG, "rounds": 1}).to_dict()))
    run = tmp_path / "r"
    assert main(["run", str(path), "--quiet", "--out", str(run)]) == 0
    out = _cli(["run", "--resume", str(run), "--rounds", "2", "--quiet"], str(ROOT / "src"))  # no tests/ on the path
    assert out.returncode == 2, out.stderr[-2000:]
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in out.stderr
    assert "custom_parts:" in lines[0] and "register" in lines[0], lines[0]
    assert len(read_history(run)) == 1  # nothing was changed
