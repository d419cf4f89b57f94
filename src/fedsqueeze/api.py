"""The Python API, mirroring the CLI: ``fedsqueeze.run(config) -> Result``.

Besides names in the config, ``run`` takes your own parts as objects: ``model=`` (an ``nn.Module``
class or factory), ``data=`` (a ``FederatedData`` or ``Dataset``), ``codec_up=``/``codec_down=`` (codec
objects), ``algorithm=`` (an ``Algorithm`` class). Each is recorded in the run's config.json/config.toml
by its registered name if it has one, else as ``"module:qualname"`` (codecs with their ``get_config()``),
so ``run --resume`` and ``compare`` rebuild it from there; a part that cannot be imported back (a lambda,
a class defined inside a function) makes a later resume stop with a one-line error naming the
registration it needs. ``run`` leaves no global state behind: torch's thread count and the torch,
NumPy and ``random`` RNG states are restored when it returns or raises.
"""
from __future__ import annotations

import contextlib
import dataclasses
import random
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fedsqueeze.config import Config, apply_overrides, from_dict, load_config
from fedsqueeze.engine import rundir
from fedsqueeze.errors import ConfigError, DataError, MissingExtraError
from fedsqueeze.metrics.results import Result


def default_run_dir(cfg: Config) -> Path:
    """``<output_dir>/<name>-<timestamp>`` (``-2``, ``-3``, ... if that folder exists already)."""
    base = Path(cfg.output_dir) / f"{cfg.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    path, n = base, 1
    while path.exists():
        n += 1
        path = base.with_name(f"{base.name}-{n}")
    return path


@contextlib.contextmanager
def preserved_global_state() -> Iterator[None]:
    """Restore torch's intra-op thread count and the torch/CUDA, NumPy and ``random`` RNG states on exit."""
    threads = torch.get_num_threads()
    torch_rng = torch.random.get_rng_state()
    cuda_rng = torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else None
    np_rng = np.random.get_state()
    py_rng = random.getstate()
    try:
        yield
    finally:
        torch.set_num_threads(threads)
        torch.random.set_rng_state(torch_rng)
        if cuda_rng is not None:
            torch.cuda.set_rng_state_all(cuda_rng)
        np.random.set_state(np_rng)
        random.setstate(py_rng)


# ---- objects -> names ------------------------------------------------------------------------------
def _plain(obj: Any) -> Any:
    """Like ``dataclasses.asdict``, but leaves codec objects (dataclasses too) and other objects alone."""
    from fedsqueeze.codecs.base import Codec

    if dataclasses.is_dataclass(obj) and not isinstance(obj, type) and not isinstance(obj, Codec):
        return {f.name: _plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_plain(v) for v in obj]
    return obj


def _path_of(obj: Any) -> str:
    return f"{getattr(obj, '__module__', '?')}:{getattr(obj, '__qualname__', type(obj).__qualname__)}"


class _Names:
    """Turns objects into config names; parts not importable by their path are registered for this run only."""

    def __init__(self) -> None:
        self.temporary: list[tuple[Any, str]] = []

    def name(self, kind: str, obj: Any) -> Any:
        from fedsqueeze import registry
        from fedsqueeze.plugins import check_kind

        if isinstance(obj, str):
            return obj
        reg = {"model": registry.MODELS, "codec": registry.CODECS, "algorithm": registry.ALGORITHMS,
               "dataset": registry.DATASETS, "partitioner": registry.PARTITIONERS, "loss": registry.LOSSES,
               "metric": registry.METRICS}[kind]
        found = reg.name_of(obj)
        if found is not None:
            return found
        path = _path_of(obj)
        check_kind(kind, path, obj) if kind != "codec" else None
        try:
            importable = registry._import_path(path) is obj
        except Exception:  # noqa: BLE001
            importable = False
        if not importable and path not in reg._entries:
            reg._entries[path] = obj  # this run only: a later resume needs a registration
            self.temporary.append((reg, path))
        return path

    def codec(self, spec: Any) -> Any:
        from fedsqueeze.codecs.base import Codec

        if isinstance(spec, Codec):
            return {"name": self.name("codec", type(spec)), **spec.spec_config()}
        if isinstance(spec, type) and issubclass(spec, Codec):
            return {"name": self.name("codec", spec)}
        if isinstance(spec, (list, tuple)):
            return [self.codec(s) for s in spec]
        if isinstance(spec, dict) and not isinstance(spec.get("name", ""), str):
            return {**spec, "name": self.name("codec", spec["name"])}
        return spec

    def close(self) -> None:
        for reg, path in self.temporary:
            reg._entries.pop(path, None)
        self.temporary.clear()


def _raw_config(config: Config | dict | str | Path | None) -> dict:
    import tomllib

    if config is None:
        return {}
    if isinstance(config, Config):
        raw = _plain(config)
        t, d = raw["train"], raw["data"]
        if not t["client_fraction"] and t["clients_per_round"] > d["num_clients"]:
            del t["clients_per_round"]  # as a config file that leaves it out: all clients take part
        return raw
    if isinstance(config, dict):
        return _plain(config)
    p = Path(config)
    if not p.is_file():
        from fedsqueeze import presets

        p = presets.path(str(config)) or p  # a shipped preset by name, e.g. "digits-quick"
    if not p.is_file():
        load_config(p)  # the usual "not found" error
    try:
        return tomllib.loads(p.read_text())
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{p}: invalid TOML: {e}; fix the syntax there") from e


def _check_rebuildable(cfg: Config, dataset: Any) -> None:
    """Fail before anything is written if a named part cannot be found (e.g. a resume of a run whose
    model was a local class)."""
    from fedsqueeze.codecs.spec import make_codec
    from fedsqueeze.registry import ALGORITHMS, MODELS

    MODELS.get(cfg.model.name)
    ALGORITHMS.get(cfg.algorithm_name)
    make_codec(cfg.codec.up)
    make_codec(cfg.codec.down)
    from fedsqueeze.metrics.losses import get_loss, metric_fn
    get_loss(cfg.train.loss)
    for m in cfg.eval.metrics:
        if isinstance(m, str) and m not in ("accuracy", "loss"):
            metric_fn(m)
    if dataset is None and cfg.data.source.startswith("object:"):
        from fedsqueeze.engine.simulation import load_dataset
        load_dataset(cfg)  # raises its one-line DataError


def run(config: Config | dict | str | Path | None = None, *, model: Any = None, data: Any = None,
        codec_up: Any = None, codec_down: Any = None, algorithm: Any = None,
        run_dir: str | Path | None = None, overrides: list[str] | None = None,
        resume: bool = False, overwrite: bool = False, progress: Any = None, dataset: Any = None, threads: int = 1, plot: bool = True,
        log: Any = None, callbacks: list[Any] | None = None) -> Result:
    """Run one experiment on the embedded simulation engine.

    ``config``: a ``Config``, a dict, or a TOML path (None: all defaults). ``model``/``codec_up``/
    ``codec_down``/``algorithm``: your own parts as objects (or names), overriding the config's.
    ``data``: a ``FederatedData`` (own samples and clients) or ``Dataset`` (partitioned by the config).
    ``run_dir``: where results and checkpoints go (default ``<output_dir>/<name>-<timestamp>``); with
    ``resume=True`` an interrupted run there continues from its last checkpoint and ends with the metrics
    an uninterrupted run would have (pass the same objects again). ``progress``: a callable given each
    round's record; ``log``: a callable given one-line messages (the partition summary). ``callbacks``:
    objects with ``on_run_start(config, run_dir)``, ``on_round_end(record)``, ``on_run_end(result)``
    (``fedsqueeze.Callback``; the trackers in ``fedsqueeze.callbacks``); one that raises stops the run with
    an error naming it. ``train.loss`` and ``eval.metrics`` may hold functions too (recorded like the
    other parts: registered name or module:qualname). ``threads``:
    torch intra-op threads during the run (1 is fastest on small machines; parallelism comes from
    ``engine.workers`` processes); the caller's setting is restored afterwards, as are the RNG states.
    An existing run folder is refused unless ``resume=True`` or ``overwrite=True`` (which replaces that
    run's own files and keeps any others); a non-empty folder that is not a run is refused unless
    ``overwrite=True``, and even then none of its files is deleted or written over. The folder is
    created only once the config, data and model are validated, and is locked while the run lasts:
    a second run on it fails at once (``fedsqueeze.engine.rundir``).
    ``dataset``: the older spelling of ``data`` for a ``Dataset`` that replaces the config's source
    as-is (the config's ``data.source`` is kept).
    """
    if data is not None and dataset is not None:
        raise ConfigError("pass data= or dataset=, not both")
    with preserved_global_state():
        names = _Names()
        try:
            return _run(config, names, model=model, data=data, codec_up=codec_up, codec_down=codec_down,
                        algorithm=algorithm, run_dir=run_dir, overrides=overrides, resume=resume, overwrite=overwrite,
                        progress=progress, dataset=dataset, threads=threads, plot=plot, log=log,
                        callbacks=callbacks)
        finally:
            names.close()


def _run(config: Any, names: _Names, *, model: Any, data: Any, codec_up: Any, codec_down: Any, algorithm: Any,
         run_dir: Any, overrides: Any, resume: bool, overwrite: bool, progress: Any, dataset: Any, threads: int, plot: bool,
         log: Any, callbacks: Any = None) -> Result:
    from fedsqueeze.callbacks import Dispatcher
    from fedsqueeze.data.federated import FederatedData
    from fedsqueeze.data.sources import Dataset
    from fedsqueeze.engine.simulation import Simulation

    raw = _raw_config(config)
    for section in ("model", "codec", "data"):
        if not isinstance(raw.get(section, {}), dict):
            raise ConfigError(f"config key {section!r} must be a table, got {raw[section]!r}")
    if model is not None:
        raw.setdefault("model", {})["name"] = model
    if algorithm is not None:
        algo = raw.get("algorithm")
        raw["algorithm"] = {**(algo if isinstance(algo, dict) else {}), "name": algorithm}
    if codec_up is not None:
        raw.setdefault("codec", {})["up"] = codec_up
    if codec_down is not None:
        raw.setdefault("codec", {})["down"] = codec_down
    # objects -> names (registered, or module:qualname)
    if "name" in raw.get("model", {}):
        raw["model"]["name"] = names.name("model", raw["model"]["name"])
    if isinstance(raw.get("algorithm"), dict) and "name" in raw["algorithm"]:
        raw["algorithm"]["name"] = names.name("algorithm", raw["algorithm"]["name"])
    for key in ("up", "down"):
        if key in raw.get("codec", {}):
            raw["codec"][key] = names.codec(raw["codec"][key])
    d = raw.get("data", {})
    if "source" in d and not isinstance(d["source"], str):
        d["source"] = names.name("dataset", d["source"])
    if "partition" in d and not isinstance(d["partition"], str):
        d["partition"] = names.name("partitioner", d["partition"])
    t, e = raw.get("train"), raw.get("eval")
    if isinstance(t, dict) and "loss" in t and callable(t["loss"]):
        t["loss"] = names.name("loss", t["loss"])
    if isinstance(e, dict) and isinstance(e.get("metrics"), (list, tuple)):
        e["metrics"] = [names.name("metric", m) if callable(m) else m for m in e["metrics"]]
    if data is not None:
        if isinstance(data, FederatedData):
            raw.setdefault("data", {}).update(data.config_entries())
        elif isinstance(data, Dataset):
            raw.setdefault("data", {})["source"] = f"object:{data.name}"
        else:
            raise DataError(f"data= takes a fedsqueeze.FederatedData or fedsqueeze.Dataset, got "
                            f"{type(data).__name__}; wrap tensors or a torch Dataset in FederatedData(...)")
        dataset = data
    cfg = from_dict(apply_overrides(raw, overrides or []))
    if resume and run_dir is None:
        raise ConfigError("resume needs the run directory to continue")
    _check_rebuildable(cfg, dataset)
    folder = Path(run_dir) if run_dir is not None else default_run_dir(cfg)
    rundir.check_target(folder, resume=resume, overwrite=overwrite)  # before anything is loaded or made
    dispatch = Dispatcher(callbacks)
    torch.set_num_threads(threads)
    sim = Simulation(cfg, folder, dataset=dataset, progress=progress, log=log,  # validates; creates nothing
                     callbacks=[lambda rec: dispatch.round_end(dict(rec))] if dispatch.callbacks else None)
    plot_warnings: list[str] = []
    with rundir.claim(folder, resume=resume, overwrite=overwrite):
        dispatch.run_start(cfg.to_dict(), folder)
        result = sim.run(resume=resume)
        if plot:
            try:
                from fedsqueeze.metrics.plots import plot_runs
            except MissingExtraError as e:  # the run itself is complete; only the picture is missing
                plot_warnings.append(f"no accuracy_vs_mb.png: {e}")
            else:
                plot_runs([sim.run_dir], sim.run_dir / "accuracy_vs_mb.png", title=cfg.name)
    result.warnings = [*sim.warnings, *plot_warnings]  # type: ignore[attr-defined]
    dispatch.run_end(result)
    return result


def run_config(run_dir: str | Path, overrides: list[str] | None = None) -> Config:
    """The configuration a run directory was started with (plus overrides, e.g. more rounds)."""
    import json

    cfg_file = Path(run_dir) / "config.json"
    if not cfg_file.exists():
        raise ConfigError(f"{run_dir} is not a fedsqueeze run directory (no config.json); "
                          "pass a folder made by `fedsqueeze run`")
    try:
        raw = json.loads(cfg_file.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise ConfigError(f"{cfg_file} is damaged ({type(e).__name__}: {str(e)[:80]}); restore it from the run's "
                          "config.toml or start a new run") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{cfg_file} is damaged (not a table of settings); restore it or start a new run")
    return from_dict(apply_overrides(raw, overrides or []))


def resume(run_dir: str | Path, *, overrides: list[str] | None = None, **kw: Any) -> Result:
    """Continue an interrupted run from its directory (its saved config; ``rounds`` may be raised)."""
    return run(run_config(run_dir, overrides), run_dir=run_dir, resume=True, **kw)
