"""The Python API, mirroring the CLI: ``fedsqueeze.run(config) -> Result``."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch

from fedsqueeze.config import Config, apply_overrides, from_dict, load_config
from fedsqueeze.errors import ConfigError, MissingExtraError
from fedsqueeze.metrics.results import Result


def default_run_dir(cfg: Config) -> Path:
    return Path(cfg.output_dir) / f"{cfg.name}-{time.strftime('%Y%m%d-%H%M%S')}"


def run(config: Config | dict | str | Path, *, run_dir: str | Path | None = None, overrides: list[str] | None = None,
        resume: bool = False, progress: Any = None, dataset: Any = None, threads: int = 1, plot: bool = True,
        log: Any = None) -> Result:
    """Run one experiment on the embedded simulation engine.

    ``config``: a ``Config``, a dict, or a TOML path. ``run_dir``: where results and checkpoints go
    (default ``<output_dir>/<name>-<timestamp>``); with ``resume=True`` an interrupted run there
    continues from its last checkpoint and ends with the metrics an uninterrupted run would have.
    ``progress``: a callable given each round's record; ``log``: a callable given one-line messages
    (the partition summary). ``threads``: torch intra-op threads (1 is
    fastest on small machines; parallelism comes from ``engine.workers`` processes).
    """
    from fedsqueeze.engine.simulation import Simulation

    if isinstance(config, Config):
        cfg = config if not overrides else from_dict(apply_overrides(config.to_dict(), overrides))
    elif isinstance(config, dict):
        cfg = from_dict(apply_overrides(config, overrides or []))
    else:
        cfg = load_config(config, overrides)
    if resume and run_dir is None:
        raise ConfigError("resume needs the run directory to continue")
    torch.set_num_threads(threads)
    sim = Simulation(cfg, run_dir or default_run_dir(cfg), dataset=dataset, progress=progress, log=log)
    result = sim.run(resume=resume)
    result.warnings = sim.warnings  # type: ignore[attr-defined]
    if plot:
        try:
            from fedsqueeze.metrics.plots import plot_runs
        except MissingExtraError as e:  # the run itself is complete; only the picture is missing
            result.warnings = [*result.warnings, f"no accuracy_vs_mb.png: {e}"]  # type: ignore[attr-defined]
        else:
            plot_runs([sim.run_dir], sim.run_dir / "accuracy_vs_mb.png", title=cfg.name)
    return result


def run_config(run_dir: str | Path, overrides: list[str] | None = None) -> Config:
    """The configuration a run directory was started with (plus overrides, e.g. more rounds)."""
    import json

    cfg_file = Path(run_dir) / "config.json"
    if not cfg_file.exists():
        raise ConfigError(f"{run_dir} is not a fedsqueeze run directory (no config.json); "
                          "pass a folder made by `fedsqueeze run`")
    return from_dict(apply_overrides(json.loads(cfg_file.read_text()), overrides or []))


def resume(run_dir: str | Path, *, overrides: list[str] | None = None, **kw: Any) -> Result:
    """Continue an interrupted run from its directory (its saved config; ``rounds`` may be raised)."""
    return run(run_config(run_dir, overrides), run_dir=run_dir, resume=True, **kw)
