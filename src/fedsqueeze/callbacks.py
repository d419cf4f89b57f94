"""Callbacks and experiment trackers: ``fedsqueeze.run(cfg, callbacks=[...])``.

A callback is any object with some of these methods (subclass :class:`Callback` to get no-op defaults):

- ``on_run_start(config, run_dir)``: once, before the first round (also on a resume); ``config`` is the
  run's resolved config as a dict, ``run_dir`` its folder;
- ``on_round_end(record)``: after every round, once the round is in metrics.jsonl and checkpointed;
  ``record`` is that round's dict (``round``, ``global_acc``, ``global_loss``, ``bytes_up``, ...);
- ``on_run_end(result)``: once, with the finished run's :class:`~fedsqueeze.Result`.

An exception raised by a callback stops the run with a :class:`CallbackError` naming the callback and
the hook (the rounds done so far are checkpointed: ``run --resume`` continues). Callbacks run in the
process that calls ``run``, never in worker processes.

Built-in trackers, each an optional extra imported only when used: :class:`TensorBoard`
(``pip install 'fedsqueeze[tensorboard]'``), :class:`MLflow` (``[mlflow]``) and :class:`WandB`
(``[wandb]``); on the command line ``fedsqueeze run CONFIG --log-to tensorboard,mlflow,wandb``. Each logs
:func:`scalars` of every round at step = round number.
"""
from __future__ import annotations

import importlib
import numbers
from pathlib import Path
from typing import Any

from fedsqueeze.errors import FedsqueezeError, MissingExtraError


class CallbackError(FedsqueezeError):
    """A callback raised; the message names the callback, the hook and the error."""


class Callback:
    """Base class with no-op hooks; override the ones you need."""

    def on_run_start(self, config: dict, run_dir: Path) -> None:
        """Before the first round (also when a run resumes)."""

    def on_round_end(self, record: dict) -> None:
        """After each round, with that round's record (as written to metrics.jsonl)."""

    def on_run_end(self, result: Any) -> None:
        """After the last round, with the run's ``Result``."""


def scalars(record: dict) -> dict[str, float]:
    """A round record's numbers as tracker scalars: every numeric entry but ``round`` (None and booleans
    left out), and the clients' reported means as ``client_<name>``."""
    out: dict[str, float] = {}
    for key, value in record.items():
        if key != "round" and isinstance(value, numbers.Real) and not isinstance(value, bool):
            out[key] = float(value)
    for key, value in (record.get("client_metrics") or {}).items():
        if isinstance(value, numbers.Real) and not isinstance(value, bool):
            out[f"client_{key}"] = float(value)
    return out


def _flat(config: dict, prefix: str = "") -> dict[str, Any]:
    """A nested config as flat ``section.key`` parameters (lists and tables as their text)."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, dict) and key not in ("options",):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value if isinstance(value, (int, float, str, bool)) else str(value)
    return out


def _require(module: str, extra: str, what: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError:
        raise MissingExtraError(f"{what} needs the {extra} package, which is not installed: "
                                f"pip install 'fedsqueeze[{extra}]'") from None


class TensorBoard(Callback):
    """Writes every round's scalars as TensorBoard events to ``log_dir`` (default ``<run_dir>/tensorboard``)."""

    def __init__(self, log_dir: str | Path | None = None) -> None:
        # torch ships the writer; it needs the tensorboard package
        self._module = _require("torch.utils.tensorboard", "tensorboard", "--log-to tensorboard")
        self.log_dir = log_dir
        self.writer: Any = None

    def on_run_start(self, config: dict, run_dir: Path) -> None:
        log_dir = Path(self.log_dir) if self.log_dir is not None else Path(run_dir) / "tensorboard"
        self.writer = self._module.SummaryWriter(log_dir=str(log_dir))

    def on_round_end(self, record: dict) -> None:
        for key, value in scalars(record).items():
            self.writer.add_scalar(key, value, global_step=int(record["round"]))
        self.writer.flush()

    def on_run_end(self, result: Any) -> None:
        if self.writer is not None:
            self.writer.close()


class MLflow(Callback):
    """Logs the config as parameters and every round's scalars as metrics to an MLflow run (the tracking
    server of ``tracking_uri`` or ``MLFLOW_TRACKING_URI``, else ``./mlruns``); experiment ``experiment``
    (default: MLflow's), run name = the run's ``name``."""

    def __init__(self, experiment: str | None = None, tracking_uri: str | None = None) -> None:
        self._mlflow = _require("mlflow", "mlflow", "--log-to mlflow")
        self.experiment, self.tracking_uri = experiment, tracking_uri
        self._active = False

    def on_run_start(self, config: dict, run_dir: Path) -> None:
        mlflow = self._mlflow
        if self.tracking_uri:
            mlflow.set_tracking_uri(self.tracking_uri)
        if self.experiment:
            mlflow.set_experiment(self.experiment)
        mlflow.start_run(run_name=str(config.get("name", Path(run_dir).name)))
        self._active = True
        mlflow.log_params({**_flat(config), "run_dir": str(run_dir)})

    def on_round_end(self, record: dict) -> None:
        self._mlflow.log_metrics(scalars(record), step=int(record["round"]))

    def on_run_end(self, result: Any) -> None:
        if self._active:
            self._mlflow.end_run()
            self._active = False


class WandB(Callback):
    """Logs the config and every round's scalars to Weights & Biases (``project``, default "fedsqueeze";
    further ``wandb.init`` options as keyword arguments, e.g. ``mode="offline"``)."""

    def __init__(self, project: str = "fedsqueeze", **init_options: Any) -> None:
        self._wandb = _require("wandb", "wandb", "--log-to wandb")
        self.project, self.init_options = project, init_options
        self.run: Any = None

    def on_run_start(self, config: dict, run_dir: Path) -> None:
        self.run = self._wandb.init(project=self.project, name=str(config.get("name", Path(run_dir).name)),
                                    config=config, dir=str(run_dir), **self.init_options)

    def on_round_end(self, record: dict) -> None:
        self.run.log(scalars(record), step=int(record["round"]))

    def on_run_end(self, result: Any) -> None:
        if self.run is not None:
            self.run.finish()
            self.run = None


TRACKERS = {"tensorboard": TensorBoard, "mlflow": MLflow, "wandb": WandB}


def trackers(names: str | list[str]) -> list[Callback]:
    """``"tensorboard,mlflow"`` (or a list) -> the tracker callbacks; a one-line error for an unknown name
    or a missing package."""
    if isinstance(names, str):
        names = [n.strip() for n in names.split(",")]
    out = []
    for name in names:
        if name not in TRACKERS:
            raise FedsqueezeError(f"--log-to {name!r} is not a tracker; choose from {', '.join(TRACKERS)} "
                                  "(comma-separated)")
        out.append(TRACKERS[name]())
    return out


def _label(cb: Any) -> str:
    return f"{type(cb).__qualname__} ({type(cb).__module__})"


class Dispatcher:
    """Calls every callback's hooks, turning an exception into one ``CallbackError`` naming the callback."""

    def __init__(self, callbacks: list[Any] | None) -> None:
        self.callbacks = list(callbacks or [])
        for cb in self.callbacks:
            if not any(hasattr(cb, h) for h in ("on_run_start", "on_round_end", "on_run_end")):
                raise FedsqueezeError(f"callback {cb!r} has none of on_run_start, on_round_end, on_run_end; "
                                      "subclass fedsqueeze.Callback and override them")

    def _call(self, hook: str, *args: Any, context: str = "") -> None:
        for cb in self.callbacks:
            fn = getattr(cb, hook, None)
            if fn is None:
                continue
            try:
                fn(*args)
            except FedsqueezeError as e:
                raise CallbackError(f"callback {_label(cb)} failed in {hook}{context}: {e}") from e
            except Exception as e:  # noqa: BLE001 — user code: name it, keep the traceback for --debug
                raise CallbackError(f"callback {_label(cb)} failed in {hook}{context}: {type(e).__name__}: {e}; "
                                    "the rounds done so far are checkpointed (run --resume continues)") from e

    def run_start(self, config: dict, run_dir: Path) -> None:
        self._call("on_run_start", config, run_dir)

    def round_end(self, record: dict) -> None:
        self._call("on_round_end", record, context=f" (round {record.get('round')})")

    def run_end(self, result: Any) -> None:
        self._call("on_run_end", result)
