"""Run a suite: every run on the shared federation, cached and resumable, then table and plots.

Each run lives in ``OUT/<suite>/<run>/`` (a normal run folder). A finished run whose saved config
equals the planned one is skipped; an interrupted one resumes from its checkpoint; a folder made
with a different config is refused unless the run is named in ``rerun`` (then it starts afresh: its
own files are replaced, nothing outside its folder is touched — see ``fedsqueeze.engine.rundir``).
"""
from __future__ import annotations

import json
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fedsqueeze.compare import table as tbl
from fedsqueeze.compare.suite import RunSpec, Suite
from fedsqueeze.config import Config, from_dict
from fedsqueeze.engine import rundir
from fedsqueeze.errors import ConfigError, MissingExtraError

# config keys that do not change results: the run's name and where/how it is executed (the device
# changes floating-point rounding only: a run finished on one device counts as done on another)
_NEUTRAL = ("name", "output_dir", "engine.workers", "engine.device", "engine.devices")


def _comparable(cfg: dict) -> dict:
    cfg = json.loads(json.dumps(cfg))
    for key in _NEUTRAL:
        *parents, last = key.split(".")
        node = cfg
        for p in parents:
            node = node.get(p, {})
        node.pop(last, None)
    data = cfg.get("data", {})
    if data.get("partition") != "dirichlet":  # partition options the chosen partition does not read
        data.pop("alpha", None)
    if data.get("partition") != "shards":
        data.pop("shards_per_client", None)
    return cfg


def plan(spec: RunSpec, workers: int | None, device: str | None = None) -> tuple[Config, str]:
    cfg = spec.config
    note = ""
    if spec.budget_mb:
        from fedsqueeze.compare.budget import plan_budget
        cfg, budget = plan_budget(cfg, spec.budget_mb)
        note = budget.describe(cfg.rounds, cfg.train.clients_per_round)
    if workers is not None:
        raw = cfg.to_dict()
        raw["engine"]["workers"] = workers
        cfg = from_dict(raw)
    if device is not None:
        raw = cfg.to_dict()
        raw["engine"]["device"] = device
        cfg = from_dict(raw)
    return cfg, note


def status(run_dir: Path, cfg: Config) -> str:
    """'done', 'resume', 'fresh' or 'changed'."""
    saved_file = run_dir / "config.json"
    if not saved_file.exists():
        return "fresh"
    try:  # through from_dict: keys added to the config since the run was made take their defaults
        saved = from_dict(json.loads(saved_file.read_text())).to_dict()
    except (ConfigError, ValueError):
        return "changed"
    if _comparable(saved) != _comparable(cfg.to_dict()):
        return "changed"
    if (run_dir / "summary.csv").exists() and (run_dir / "ledger.csv").exists():
        return "done"
    return "resume" if (run_dir / "checkpoint.pt").exists() or (run_dir / "checkpoint.prev.pt").exists() else "fresh"


def run_suite(suite: Suite, out: str | Path, *, workers: int | None = None, device: str | None = None, rerun: tuple[str, ...] = (),
              only: tuple[str, ...] = (), console: Any = None,
              progress_factory: Callable[[Config], tuple[Any, Any]] | None = None, jobs: int = 1) -> dict[str, Any]:
    """Run the suite's pending runs (``jobs`` > 1: that many at once, each in its own process with one
    torch thread; every run's results are the same as when run alone), then ``report``."""
    import fedsqueeze

    say = console.print if console is not None else (lambda *a, **k: None)
    out_dir = Path(out) / suite.name
    for name in (*rerun, *only):  # unknown names: a clear error before anything runs (or is created)
        entry, _, seed = name.partition("/seed") if suite.seeds else (name, "", "")
        suite.run(entry)
        if seed and (not seed.isdigit() or int(seed) not in suite.seeds):
            raise ConfigError(f"{name!r}: seed {seed!r} is not one of the suite's seeds "
                              f"({', '.join(map(str, suite.seeds))}); name an entry or ENTRY/seedN")
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise ConfigError(f"--jobs must be a whole number >= 1, got {jobs!r}")
    out_dir.mkdir(parents=True, exist_ok=True)
    todo = [j for j in suite.jobs() if not only or j[1].name in only or j[0] in only]
    pending: list[tuple[str, Config, Path, str]] = []
    for i, (key, spec, folder) in enumerate(todo, 1):
        run_dir = out_dir / folder
        if not rundir.inside(run_dir, out_dir):  # names are checked by load_suite; belt and braces
            raise ConfigError(f"suite run {key!r} would live outside {out_dir}; rename it")
        cfg, note = plan(spec, workers, device)
        state = status(run_dir, cfg)
        redo = spec.name in rerun or key in rerun
        if state == "changed" and not redo:
            raise ConfigError(f"{run_dir} was made with a different config than suite run {key!r} now has; "
                              f"pass --rerun {spec.name} to start it afresh (or delete the folder)")
        if redo:  # replace the run's own files, inside its folder only (nothing is rmtree'd)
            state = "fresh"
        head = f"[{i}/{len(todo)}] {key}"
        if state == "done":
            say(f"{head}: cached ({run_dir})")
            continue
        say(f"{head}: {'resuming' if state == 'resume' else 'running'} — {cfg.algorithm_name} · {cfg.model.name} · "
            f"up={tbl._spec_text(cfg.codec.up)} down={tbl._spec_text(cfg.codec.down)}")
        if note:
            say(f"  {note}")
        if jobs > 1:
            pending.append((key, cfg, run_dir, state))
            continue
        prog = update = None
        if progress_factory is not None:
            prog, update = progress_factory(cfg)
            prog.start()
        try:
            # "fresh" over an existing folder: this run's own leftovers (same config, no checkpoint) or --rerun
            fedsqueeze.run(cfg, run_dir=run_dir, resume=state == "resume", overwrite=state == "fresh",
                           progress=update, plot=False)
        finally:
            if prog is not None:
                prog.stop()
    if pending:
        _run_parallel(pending, jobs, say)
    return report(suite, out_dir, console=console)


def _run_one(cfg: dict, run_dir: str, state: str) -> dict[str, Any]:
    """One suite run in a worker process (spawned: nothing inherited but the arguments)."""
    import fedsqueeze

    t0 = time.perf_counter()
    result = fedsqueeze.run(from_dict(cfg), run_dir=run_dir, resume=state == "resume", overwrite=state == "fresh",
                            plot=False, threads=1)
    last = result.history[-1] if result.history else {}
    return {"seconds": time.perf_counter() - t0, "acc": last.get("global_acc")}


def _run_parallel(pending: list[tuple[str, Config, Path, str]], jobs: int, say: Callable[..., Any]) -> None:
    """Run ``pending`` with ``jobs`` processes; every run finishes (or fails) before the first error is raised."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    say(f"running {len(pending)} runs, {min(jobs, len(pending))} at a time")
    errors: list[tuple[str, BaseException]] = []
    with ProcessPoolExecutor(max_workers=min(jobs, len(pending)),
                             mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = {pool.submit(_run_one, cfg.to_dict(), str(run_dir), state): key
                   for key, cfg, run_dir, state in pending}
        for n, fut in enumerate(as_completed(futures), 1):
            key = futures[fut]
            try:
                info = fut.result()
            except Exception as e:  # noqa: BLE001 - reported below, after the other runs finish
                errors.append((key, e))
                say(f"  [{n}/{len(pending)}] {key}: failed — {e}")
                continue
            acc = info["acc"]
            say(f"  [{n}/{len(pending)}] {key}: done in {info['seconds']:.0f} s"
                + (f", final accuracy {100 * acc:.2f}%" if isinstance(acc, float) else ""))
    if errors:
        key, err = errors[0]
        more = f" ({len(errors) - 1} more failed)" if len(errors) > 1 else ""
        if isinstance(err, ConfigError):
            raise ConfigError(f"suite run {key!r}: {err}{more}") from err
        raise RuntimeError(f"suite run {key!r} failed: {err}{more}") from err


def load_groups(suite: Suite, out_dir: Path) -> dict[str, dict[int, tbl.RunData]]:
    """The finished runs of a suite with seeds: ``{entry: {seed: run}}`` (entries with none left out)."""
    groups: dict[str, dict[int, tbl.RunData]] = {}
    for spec in suite.runs:
        for seed in suite.seeds:
            run_dir = out_dir / spec.name / f"seed{seed}"
            if (run_dir / "ledger.csv").exists():
                groups.setdefault(spec.name, {})[seed] = tbl.load_run(run_dir, f"{spec.name}/seed{seed}",
                                                                      label=spec.label, budget_mb=spec.budget_mb)
    return groups


def report(suite: Suite, out_dir: Path, *, console: Any = None) -> dict[str, Any]:
    """Table (terminal, Markdown, CSV) and plots from the finished run folders. With seeds: one row per
    entry with mean ± 95% t-interval over its seeds (comparison.csv), the per-seed rows in
    comparison_seeds.csv, and plots of the mean curve with a min–max band."""
    runs: dict[str, Any] = {}
    if suite.seeds:
        groups = load_groups(suite, out_dir)
        if not groups:
            raise ConfigError(f"no finished runs in {out_dir} for seeds {', '.join(map(str, suite.seeds))}; "
                              "run the suite first")
        target = tbl.target_of_seeds(groups, suite.baselines, suite.target)
        per_seed, rows = tbl.seed_rows(groups, baseline=suite.baseline, target=target, networks=suite.networks)
        tbl.write_csv(per_seed, out_dir / "comparison_seeds.csv")
        runs = {name: [g[s] for s in sorted(g)] for name, g in groups.items()}
        seeds_text = (f"Seeds: {', '.join(map(str, suite.seeds))}. Each cell is the mean ± the half-width of the 95% "
                      "Student-t interval over the entry's finished seeds (t(0.975, n−1)·s/√n; no ± with one seed); "
                      "MB, rounds and time to target over the seeds that reached it (column *reached*); × fewer "
                      "bytes is per seed against the baseline's run with the same seed. Per-seed rows: "
                      "`comparison_seeds.csv`. Plots: the mean curve, the band from the lowest to the highest seed.\n")
    else:
        for spec in suite.runs:
            run_dir = out_dir / spec.name
            if (run_dir / "ledger.csv").exists():
                runs[spec.name] = tbl.load_run(run_dir, spec.name, label=spec.label, budget_mb=spec.budget_mb)
        if not runs:
            raise ConfigError(f"no finished runs in {out_dir}; run the suite first")
        target = tbl.target_of(runs, suite.baselines, suite.target)
        rows = tbl.rows(runs, baseline=suite.baseline, target=target, networks=suite.networks)
        seeds_text = ""
    title = f"{suite.name}: target {100 * target:.2f}% global accuracy; × fewer bytes vs {suite.baseline}"
    if console is not None:
        tbl.print_table(rows, suite.networks, console, title)
    tbl.write_csv(rows, out_dir / "comparison.csv")
    meta = metadata(suite)
    md = [f"# {suite.name}\n", suite.description + "\n" if suite.description else "",
          f"Command: `{meta['command']}`  \nDate: {meta['date']}  \nMachine: {meta['machine']}  \n"
          f"Versions: {meta['versions']}\n",
          f"Target: **{100 * target:.2f}%** global test accuracy "
          f"({'given by the suite' if suite.target is not None else 'best final accuracy of ' + ', '.join(suite.baselines) + (' (mean over seeds)' if suite.seeds else '') + ' minus 1 point'}); "
          f"ratios against `{suite.baseline}`.\n",
          seeds_text,
          "Networks: " + "; ".join(p.describe() for p in suite.networks) + "\n",
          tbl.markdown(rows, suite.networks)]
    (out_dir / "comparison.md").write_text("\n".join(x for x in md if x))
    extra = {"seeds": suite.seeds} if suite.seeds else {}
    (out_dir / "suite.json").write_text(json.dumps({**meta, "target": target, "baseline": suite.baseline,
                                                    "networks": [p.describe() for p in suite.networks], **extra},
                                                   indent=1))
    try:
        from fedsqueeze.compare.plots import plot_suite
    except MissingExtraError as e:  # the table is written; only the pictures are missing
        plots = []
        if console is not None:
            console.print(f"no plots: {e}")
    else:
        plots = plot_suite(runs, out_dir, target=target, title=suite.name, networks=suite.networks)
    if console is not None:
        console.print(f"wrote {out_dir / 'comparison.md'}, comparison.csv and {len(plots)} plots")
    return {"target": target, "rows": rows, "out_dir": out_dir, "plots": plots}


def metadata(suite: Suite) -> dict[str, str]:
    import os

    import numpy
    import torch

    from fedsqueeze import __version__

    try:
        import flwr
        flwr_v = f", flwr {flwr.__version__}"
    except Exception:  # noqa: BLE001 - optional
        flwr_v = ""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "command": "fedsqueeze " + " ".join(sys.argv[1:]) if sys.argv and "fedsqueeze" in sys.argv[0]
        else f"fedsqueeze compare {suite.path}",
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{cpu}, {os.cpu_count()} cores, {platform.system()} {platform.release()}",
        "versions": f"fedsqueeze {__version__}, Python {platform.python_version()}, torch {torch.__version__}, "
                    f"numpy {numpy.__version__}{flwr_v}",
    }
