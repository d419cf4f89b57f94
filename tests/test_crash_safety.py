"""Crash safety: SIGKILL at random points — inside checkpoint and client-state writes too — and the
resumed run ends with exactly the uninterrupted run's metrics; a damaged checkpoint is set aside and
never rotated over the good previous one. (Corrupt-latest fallback itself: tests/test_engine.py.)"""
from __future__ import annotations

import multiprocessing as mp
import os
import signal

import pytest

from conftest import digits_config
from fedsqueeze.bench.kill import POINTS, fingerprint, run_kills, same
from fedsqueeze.cli import main
from fedsqueeze.config import from_dict, to_toml
from fedsqueeze.engine.atomic import CRASH_ENV, arm_crash
from fedsqueeze.engine.simulation import Simulation
from fedsqueeze.metrics.results import TIMING_FIELDS, read_history


def test_sigkill_at_random_points_then_resume_gives_identical_runs(tmp_path):
    report = run_kills(10, seed=3, rounds=5, work=tmp_path, log=lambda msg: None)
    assert report.kills == 10 and report.ok, report.line() + " " + report.details()
    assert report.runs >= 1 and report.identical_runs == report.runs
    # every kind of point was hit, two of them in the middle of writing a checkpoint
    assert set(report.by_point) == set(POINTS), report.by_point
    assert report.line() == "kills survived: 10/10, metrics identical"


def _cli_with_crash_env(argv: list[str], crash: str) -> None:
    os.environ[CRASH_ENV] = crash
    from fedsqueeze.cli import main

    os._exit(main(argv))


def test_a_crash_point_from_the_environment_kills_the_cli_mid_checkpoint(tmp_path, digits):
    cfg = from_dict(digits_config(rounds=4, algorithm={"name": "local"}))
    path = tmp_path / "c.toml"
    path.write_text(to_toml(cfg.to_dict()))
    full = tmp_path / "full"
    Simulation(cfg, full, dataset=digits).run()
    cut = tmp_path / "cut"
    # the CLI in a forked process (a fresh interpreter would spend seconds importing torch)
    proc = mp.get_context("fork").Process(target=_cli_with_crash_env, args=(
        ["run", str(path), "--quiet", "--out", str(cut)], "checkpoint-temp:2"))
    proc.start()
    proc.join(120)
    assert proc.exitcode == -signal.SIGKILL
    # killed with the second checkpoint complete in its temp file, not yet renamed
    assert [p.name.startswith(".checkpoint.pt.") for p in cut.iterdir() if p.suffix == ".tmp"] == [True]
    strip = lambda d: [{k: v for k, v in r.items() if k not in TIMING_FIELDS} for r in read_history(d)]  # noqa: E731
    assert strip(cut) == strip(full)[:2] and not (cut / "ledger.csv").exists()  # killed in round 2
    assert CRASH_ENV not in os.environ
    assert main(["run", "--resume", str(cut), "--quiet"]) == 0
    assert not [p for p in cut.iterdir() if p.suffix == ".tmp"]  # the stale temp file was removed
    a, b = fingerprint(full), fingerprint(cut)
    assert all(same(a[k], b[k]) for k in a)


def test_a_corrupt_checkpoint_after_a_resume_falls_back_with_its_client_files(tmp_path, digits):
    """Resume (rounds 3), save, damage the newest checkpoint, resume again: the fallback checkpoint's
    client-state files must still be there (they are what the previous checkpoint names)."""
    def cfg(rounds):  # every client trains every round: each round replaces every client file
        return from_dict(digits_config(rounds=rounds, algorithm={"name": "local"}, train={"clients_per_round": 10}))

    Simulation(cfg(2), tmp_path / "cut", dataset=digits).run()
    Simulation(cfg(3), tmp_path / "cut", dataset=digits).run(resume=True)
    latest = tmp_path / "cut" / "checkpoint.pt"
    latest.write_bytes(latest.read_bytes()[:-100])
    sim = Simulation(cfg(4), tmp_path / "cut", dataset=digits)
    sim.run(resume=True)
    assert any("corrupt" in w for w in sim.warnings)
    assert (tmp_path / "cut" / "checkpoint.corrupt.pt").exists()  # set aside, not rotated into .prev
    Simulation(cfg(4), tmp_path / "full", dataset=digits).run()
    a, b = fingerprint(tmp_path / "full"), fingerprint(tmp_path / "cut")
    assert all(same(a[k], b[k]) for k in a)


def test_arm_crash_rejects_a_malformed_point():
    with pytest.raises(ValueError, match="'<point>:<n>'"):
        arm_crash("checkpoint-temp")
    arm_crash(None)
