"""The Python API, mirroring the CLI: ``fedsqueeze.run(config) -> Result``."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch

from fedsqueeze.config import Config, apply_overrides, from_dict, load_config
from fedsqueeze.engine import rundir
from fedsqueeze.errors import ConfigError
from fedsqueeze.metrics.results import Result


def default_run_dir(cfg: Config) -> Path:
    """``<output_dir>/<name>-<timestamp>`` (``-2``, ``-3``, ... if that folder exists already)."""
    base = Path(cfg.output_dir) / f"{cfg.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    path, n = base, 1
    while path.exists():
        n += 1
        path = base.with_name(f"{base.name}-{n}")
    return path


def run(config: Config | dict | str | Path, *, run_dir: str | Path | None = None, overrides: list[str] | None = None,
        resume: bool = False, overwrite: bool = False, progress: Any = None, dataset: Any = None, threads: int = 1,
        plot: bool = True, log: Any = None) -> Result:
    """Run one experiment on the embedded simulation engine.

    ``config``: a ``Config``, a dict, or a TOML path. ``run_dir``: where results and checkpoints go
    (default ``<output_dir>/<name>-<timestamp>``); with ``resume=True`` an interrupted run there
    continues from its last checkpoint and ends with the metrics an uninterrupted run would have.
    An existing run folder is refused unless ``resume=True`` or ``overwrite=True`` (which replaces that
    run's own files and keeps any others); a non-empty folder that is not a run is refused unless
    ``overwrite=True``, and even then none of its files is deleted or written over. The folder is
    created only once the config, data and model are validated, and is locked while the run lasts:
    a second run on it fails at once (``fedsqueeze.engine.rundir``).
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
    folder = Path(run_dir) if run_dir is not None else default_run_dir(cfg)
    rundir.check_target(folder, resume=resume, overwrite=overwrite)  # before anything is loaded or made
    torch.set_num_threads(threads)
    sim = Simulation(cfg, folder, dataset=dataset, progress=progress, log=log)  # validates; creates nothing
    with rundir.claim(folder, resume=resume, overwrite=overwrite):
        result = sim.run(resume=resume)
        if plot:
            from fedsqueeze.metrics.plots import plot_runs
            plot_runs([sim.run_dir], sim.run_dir / "accuracy_vs_mb.png", title=cfg.name)
    result.warnings = sim.warnings  # type: ignore[attr-defined]
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
