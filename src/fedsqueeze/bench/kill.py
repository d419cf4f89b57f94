"""``fedsqueeze bench kill``: kill a run with SIGKILL at random points, resume it, compare.

A small federated run (digits, SCAFFOLD with an error-feedback top-k uplink, so server state, client
states and codec residuals all matter, plus simulated dropouts, stragglers and NaN/raising clients, so
rejections must replay too) is run once uninterrupted (in this process), then again in a forked child that is killed
over and over — each time resumed from its checkpoint by a new child — until ``points`` kills have
landed. Kill points are drawn from a seeded RNG among:

- the writers' crash points (``fedsqueeze.engine.atomic``): ``checkpoint-temp`` (new checkpoint in its
  temp file, not renamed), ``checkpoint-rotated`` (old one renamed to ``.prev``, new one not written),
  ``state-temp`` (a client state's temp file), ``round-recorded`` (round in metrics.jsonl, not in a
  checkpoint), each at its 1st-3rd pass after the resume;
- ``async``: SIGKILL from the parent after a random delay — anywhere, including mid-round.

After a quarter of the kills (at random) the latest checkpoint is also truncated, as a half-written
file would be: the resume must detect it (SHA-256) and continue from the previous one. When a run
finishes, its metrics (every field of metrics.jsonl but timings), ledger, rejections and final server
state must equal the uninterrupted run's, bit for bit; then a new killed run starts, until all kills
are spent.
"""
from __future__ import annotations

import multiprocessing as mp
import os
import shutil
import signal
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

POINTS = ("checkpoint-temp", "checkpoint-rotated", "state-temp", "round-recorded", "async")
_DATASET: Any = None  # loaded once in the parent, inherited by the forked children


def bench_config(rounds: int = 6, seed: int = 0) -> dict:
    return {
        "name": "bench-kill", "seed": seed, "rounds": rounds,
        "data": {"source": "digits", "num_clients": 10, "partition": "dirichlet", "alpha": 0.5},
        "model": {"name": "mlp", "options": {"hidden": 16}},
        "train": {"clients_per_round": 4, "local_epochs": 1, "batch_size": 32, "lr": 0.1},
        "algorithm": {"name": "scaffold"},
        "codec": {"up": "ef(inner='topk(fraction=0.25)')", "down": "fp32"},
        "eval": {"every": 1, "personal_every": 2},
        "engine": {"dropout": 0.1, "straggler": 0.1, "faults": {"nan": 0.1, "raise": 0.05}},
    }


def _child(cfg_dict: dict, run_dir: str, crash: str | None, resume: bool) -> None:
    """A forked run: arm the crash point, run (or resume) to the end; never returns."""
    code = 0
    try:
        from fedsqueeze.config import from_dict
        from fedsqueeze.engine.atomic import arm_crash
        from fedsqueeze.engine.simulation import Simulation

        torch.set_num_threads(1)
        arm_crash(crash)
        Simulation(from_dict(cfg_dict), run_dir, dataset=_DATASET).run(resume=resume)
    except BaseException:  # noqa: BLE001 — report, then leave without running the parent's cleanup
        traceback.print_exc()
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _clear_run(run_dir: Path) -> None:
    """Remove a previous bench run folder; a folder that is not a run (the user's, in ``--out``) is refused."""
    from fedsqueeze.engine import rundir
    from fedsqueeze.errors import FedsqueezeError

    run_dir = Path(run_dir)
    if run_dir.is_symlink() or (run_dir.exists() and not rundir.only_run_files(run_dir)):
        raise FedsqueezeError(f"{run_dir} exists and is not a run folder this bench made; choose another --out")
    shutil.rmtree(run_dir, ignore_errors=True)


def _reference_run(cfg_dict: dict, run_dir: Path) -> None:
    from fedsqueeze.config import from_dict
    from fedsqueeze.engine.simulation import Simulation

    _clear_run(run_dir)
    Simulation(from_dict(cfg_dict), run_dir, dataset=_DATASET).run()


def _launch(cfg: dict, run_dir: Path, crash: str | None, delay: float | None, resume: bool,
            limit: float = 300.0) -> int:
    """Run a child; SIGKILL it after ``delay`` seconds if given. Its exit code (-9 = killed)."""
    proc = mp.get_context("fork").Process(target=_child, args=(cfg, str(run_dir), crash, resume))
    proc.start()
    proc.join(delay if delay is not None else limit)
    if proc.is_alive():
        if delay is None:  # a hang is a failure, not a kill
            proc.kill()
            proc.join()
            raise RuntimeError(f"a run did not finish within {limit:.0f} s")
        os.kill(proc.pid, signal.SIGKILL)
        proc.join()
    return int(proc.exitcode if proc.exitcode is not None else 1)


def _done_rounds(run_dir: Path) -> int:
    from fedsqueeze.engine.checkpoint import load_checkpoint

    if not run_dir.exists():
        return 0
    ckpt, _ = load_checkpoint(run_dir)
    return int(ckpt["round"]) if ckpt else 0


def fingerprint(run_dir: Path) -> dict[str, Any]:
    """What must match between runs: deterministic metrics, ledger, rejections, final server state."""
    from fedsqueeze.engine.checkpoint import load_checkpoint
    from fedsqueeze.metrics.results import TIMING_FIELDS, read_history

    ckpt, _ = load_checkpoint(run_dir)
    return {
        "metrics": [{k: v for k, v in rec.items() if k not in TIMING_FIELDS} for rec in read_history(run_dir)],
        "ledger": (run_dir / "ledger.csv").read_text(),
        "rejections": (run_dir / "rejections.jsonl").read_text(),
        "server_state": ckpt["server_state"] if ckpt else None,
    }


def same(a: Any, b: Any) -> bool:
    """Bitwise equality of nested dicts/lists of tensors and plain values."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.dtype == b.dtype
                and a.shape == b.shape and torch.equal(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    return a == b


def _truncate(path: Path) -> bool:
    if not path.exists():
        return False
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])
    return True


@dataclass
class KillReport:
    points: int
    kills: int = 0
    runs: int = 0
    identical_runs: int = 0
    corrupted: int = 0
    by_point: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    mismatches: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.kills >= self.points and self.identical_runs == self.runs and not self.mismatches

    def line(self) -> str:
        verdict = "metrics identical" if self.ok else "METRICS DIFFER: " + "; ".join(self.mismatches)
        return f"kills survived: {self.kills}/{self.points}, {verdict}"

    def details(self) -> str:
        at = ", ".join(f"{k} x{v}" for k, v in sorted(self.by_point.items()))
        return (f"kill points: {at}; half-written latest checkpoints: {self.corrupted} (detected by checksum, "
                "resumed from the previous one); "
                f"{self.runs} killed run(s) finished, {self.identical_runs} identical to the uninterrupted run "
                f"(metrics, ledger, rejections, server state); {self.seconds:.1f} s")


def run_kills(points: int, *, seed: int = 0, rounds: int = 6, work: Path | None = None,
              log: Any = print) -> KillReport:
    """Kill a run ``points`` times at random points (see the module doc) and check every resumed run."""
    global _DATASET
    from fedsqueeze.data.sources import load_digits
    from fedsqueeze.engine.checkpoint import load_checkpoint

    t0 = time.perf_counter()
    if _DATASET is None:
        _DATASET = load_digits()
    own = work is None
    work = Path(tempfile.mkdtemp(prefix="fsq-kill-")) if own else Path(work)
    work.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    cfg = bench_config(rounds, seed)
    report = KillReport(points)
    try:
        _reference_run(cfg, work / "reference")  # in this process: also warms up the imports the children share
        t_ref = time.perf_counter()
        _reference_run(cfg, work / "timing")
        per_round = (time.perf_counter() - t_ref) / rounds
        reference = fingerprint(work / "reference")
        plan = list(rng.permutation(POINTS)) + list(rng.choice(POINTS, size=max(0, points - len(POINTS))))
        while report.kills < points:
            run_dir = work / f"killed-{report.runs}"
            _clear_run(run_dir)
            finished = False
            while report.kills < points and not finished:
                point = str(plan[report.kills])
                left = rounds - _done_rounds(run_dir)
                if point == "async":
                    crash, delay = None, float(rng.uniform(0.0, 0.8)) * (left * per_round + 0.2)
                else:
                    crash, delay = f"{point}:{int(rng.integers(1, 4))}", None
                code = _launch(cfg, run_dir, crash, delay, resume=True)
                if code == -signal.SIGKILL:
                    report.kills += 1
                    report.by_point[point] = report.by_point.get(point, 0) + 1
                    # only with a previous checkpoint to fall back to (a damaged only checkpoint is refused)
                    if (rng.random() < 0.25 and (run_dir / "checkpoint.prev.pt").exists()
                            and _truncate(run_dir / "checkpoint.pt")):
                        report.corrupted += 1
                        _, warnings = load_checkpoint(run_dir)
                        if not any("corrupt" in w for w in warnings):
                            report.mismatches.append("a half-written checkpoint was not detected")
                elif code == 0:
                    finished = True  # the point was never reached: the run ended; try it on the next run
                else:
                    raise RuntimeError(f"a resumed run failed with exit code {code} (see its traceback above)")
            if not finished and _launch(cfg, run_dir, None, None, resume=True) != 0:
                raise RuntimeError("the final resume failed")
            report.runs += 1
            got = fingerprint(run_dir)
            bad = [k for k in reference if not same(reference[k], got[k])]
            if bad:
                report.mismatches.append(f"{run_dir.name}: {', '.join(bad)} differ")
            else:
                report.identical_runs += 1
            log(f"run {report.runs}: {report.kills}/{points} kills so far, "
                f"{'identical' if not bad else 'DIFFERENT: ' + ', '.join(bad)}")
    finally:
        if own:
            shutil.rmtree(work, ignore_errors=True)
    report.seconds = time.perf_counter() - t0
    return report


def main(args: Any) -> int:
    from fedsqueeze.errors import ConfigError

    if args.points < 1 or args.rounds < 2:
        raise ConfigError("bench kill needs --points >= 1 and --rounds >= 2; e.g. --points 20 --rounds 6")
    torch.set_num_threads(1)
    report = run_kills(args.points, seed=args.seed, rounds=args.rounds,
                       work=Path(args.out) if args.out else None,
                       log=(lambda msg: None) if args.quiet else (lambda msg: print(msg, flush=True)))
    print(report.details())
    print(report.line())
    return 0 if report.ok else 1
