"""Name -> implementation, for every pluggable part. Entries are imported lazily on first use.

Built-in parts are listed below as ``"module:attribute"`` strings. Users add their own with the public
``fedsqueeze.register_model`` / ``register_codec`` / ``register_algorithm`` / ``register_dataset`` /
``register_partitioner`` / ``register_loss`` / ``register_metric`` (see ``fedsqueeze.plugins``); installed
packages add theirs through entry points (groups ``fedsqueeze.models``, ``fedsqueeze.codecs``,
``fedsqueeze.algorithms``, ``fedsqueeze.datasets``, ``fedsqueeze.partitioners``, ``fedsqueeze.losses``,
``fedsqueeze.metrics``), read on the first lookup of a name that is not registered. A name of the
form ``"package.module:QualName"`` is imported directly, so a config can point at an importable class
without registering it. The ``Registry`` objects themselves are internal.
"""
from __future__ import annotations

import difflib
import importlib
import importlib.metadata
import warnings
from typing import Any

from fedsqueeze.errors import RegistryError


def _entry_points(group: str) -> list[Any]:
    """The installed entry points of ``group`` (a seam: tests replace it)."""
    return list(importlib.metadata.entry_points(group=group))


def _import_path(path: str) -> Any:
    """``"pkg.mod:Outer.Inner"`` -> the object; raises ImportError/AttributeError if it is not there."""
    module, _, qualname = path.partition(":")
    if not module or not qualname or "<" in qualname:
        raise ImportError(path)
    obj: Any = importlib.import_module(module)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    return obj


class _Plugin:
    """An entry point not loaded yet."""

    def __init__(self, ep: Any) -> None:
        self.ep = ep


class Registry:
    def __init__(self, kind: str, entries: dict[str, str], group: str = "") -> None:
        self.kind = kind
        self.group = group  # entry-point group of installed plugins
        self._entries: dict[str, Any] = dict(entries)  # name -> "module:attr" or the object itself
        self._plugins_loaded = not group

    # ---- plugins -------------------------------------------------------------------------------
    def _load_plugins(self) -> None:
        if self._plugins_loaded:
            return
        self._plugins_loaded = True
        try:
            eps = _entry_points(self.group)
        except Exception as e:  # noqa: BLE001 — broken metadata must not break built-in names
            warnings.warn(f"fedsqueeze: could not list {self.group} entry points: {e}", stacklevel=3)
            return
        for ep in eps:
            if ep.name in self._entries:
                continue  # built-in and explicitly registered names win over plugins
            self._entries[ep.name] = _Plugin(ep)  # loaded on first get()

    # ---- registration (behind fedsqueeze.register_*) -----------------------------------------------
    def register(self, name: str, obj: Any, *, replace: bool = False) -> None:
        if not isinstance(name, str) or not name.strip() or name != name.strip():
            raise RegistryError(f"a {self.kind} name must be a non-empty string without surrounding spaces, "
                                f"got {name!r}")
        if any(c in name for c in "|()=,'\"") or ":" in name:
            raise RegistryError(f"{self.kind} name {name!r} may not contain any of | ( ) = , ' \" : "
                                "(they have a meaning in config values)")
        self._load_plugins()
        if name in self._entries and not replace:
            current = self._resolve(name, self._entries[name])
            if current is not obj:
                raise RegistryError(f"{self.kind} {name!r} is already registered ({_describe(current)}); "
                                    f"pick another name or pass replace=True")
        self._entries[name] = obj

    def unregister(self, name: str) -> None:
        if name not in self._entries:
            raise RegistryError(f"{self.kind} {name!r} is not registered")
        del self._entries[name]

    def name_of(self, obj: Any) -> str | None:
        """The registered name of ``obj`` (an implementation, not a config), if any."""
        for name, entry in self._entries.items():
            if entry is obj:
                return name
        for name, entry in list(self._entries.items()):
            if isinstance(entry, (str, _Plugin)):
                try:
                    if self._resolve(name, entry) is obj:
                        return name
                except Exception:  # noqa: BLE001 — a broken built-in import is reported by get()
                    continue
        return None

    # ---- lookup -------------------------------------------------------------------------------
    def names(self) -> list[str]:
        self._load_plugins()
        return list(self._entries)

    def __contains__(self, name: object) -> bool:
        if not isinstance(name, str):
            return False
        if name not in self._entries:
            self._load_plugins()
        return name in self._entries or (":" in name and self._importable(name))

    def _importable(self, path: str) -> bool:
        try:
            _import_path(path)
        except Exception:  # noqa: BLE001
            return False
        return True

    def _resolve(self, name: str, entry: Any) -> Any:
        if isinstance(entry, str):
            module, _, attr = entry.partition(":")
            return getattr(importlib.import_module(module), attr)
        if isinstance(entry, _Plugin):
            try:
                obj = entry.ep.load()
            except Exception as e:
                raise RegistryError(f"{self.kind} {name!r} from an installed plugin ({entry.ep.value}) failed to "
                                    f"load: {type(e).__name__}: {e}") from e
            self._entries[name] = obj
            return obj
        return entry

    def get(self, name: str) -> Any:
        if not isinstance(name, str):
            raise RegistryError(f"a {self.kind} is named by a string, got {name!r} ({type(name).__name__})")
        if name not in self._entries:
            self._load_plugins()
        if name not in self._entries:
            if ":" in name:
                try:
                    return _import_path(name)
                except Exception:  # noqa: BLE001
                    raise RegistryError(
                        f"{self.kind} {name!r} cannot be rebuilt; register it with "
                        f"fedsqueeze.register_{_SINGULAR.get(self.kind, self.kind)} and pass that name") from None
            hint = difflib.get_close_matches(name, self._entries, n=1)
            raise RegistryError(
                f"unknown {self.kind} {name!r}" + (f" (did you mean {hint[0]!r}?)" if hint else "")
                + f"; available: {', '.join(self._entries)}. `fedsqueeze list` describes them.")
        return self._resolve(name, self._entries[name])

    def describe(self, name: str) -> str:
        obj = self.get(name)
        doc = (obj.__doc__ or "").strip().splitlines()
        return doc[0] if doc else ""


_SINGULAR = {"codec": "codec", "algorithm": "algorithm", "model": "model", "dataset": "dataset",
             "partitioner": "partitioner", "loss": "loss", "metric": "metric"}


def _describe(obj: Any) -> str:
    return f"{getattr(obj, '__module__', '?')}:{getattr(obj, '__qualname__', type(obj).__qualname__)}"


CODECS = Registry("codec", group="fedsqueeze.codecs", entries={
    "fp32": "fedsqueeze.codecs.floats:Float32",
    "fp16": "fedsqueeze.codecs.floats:Float16",
    "bf16": "fedsqueeze.codecs.floats:BFloat16",
    "drive": "fedsqueeze.codecs.drive:Drive",
    "eden": "fedsqueeze.codecs.eden:Eden",
    "svd": "fedsqueeze.codecs.svd:SVD",
    "powersgd": "fedsqueeze.codecs.powersgd:PowerSGD",
    "rdq": "fedsqueeze.codecs.rdq:RDQ",
    "pipeline": "fedsqueeze.codecs.pipeline:Pipeline",
    "topk": "fedsqueeze.codecs.topk:TopK",
    "randk": "fedsqueeze.codecs.randk:RandK",
    "qsgd": "fedsqueeze.codecs.qsgd:QSGD",
    "terngrad": "fedsqueeze.codecs.terngrad:TernGrad",
    "signsgd": "fedsqueeze.codecs.signsgd:SignSGD",
    "threelc": "fedsqueeze.codecs.threelc:ThreeLC",
    "ef": "fedsqueeze.codecs.ef:ErrorFeedback",
    "rowsparse": "fedsqueeze.codecs.rowsparse:RowSparse",
})

ALGORITHMS = Registry("algorithm", group="fedsqueeze.algorithms", entries={
    "fedavg": "fedsqueeze.algorithms.fedavg:FedAvg",
    "fedprox": "fedsqueeze.algorithms.fedprox:FedProx",
    "local": "fedsqueeze.algorithms.local:LocalOnly",
    "scaffold": "fedsqueeze.algorithms.scaffold:Scaffold",
    "fedper": "fedsqueeze.algorithms.fedper:FedPer",
    "spatl": "fedsqueeze.algorithms.spatl:SPATL",
    "quped": "fedsqueeze.algorithms.quped:QuPeD",
    "local_quant": "fedsqueeze.algorithms.quped:LocalQuant",
    "fedavg_ft": "fedsqueeze.algorithms.fedavg_ft:FedAvgFT",
    "pfedme": "fedsqueeze.algorithms.pfedme:PFedMe",
    "perfedavg": "fedsqueeze.algorithms.perfedavg:PerFedAvg",
    "feddkd": "fedsqueeze.algorithms.feddkd:FedDKD",
    "fedkd": "fedsqueeze.algorithms.fedkd:FedKD",
})

MODELS = Registry("model", group="fedsqueeze.models", entries={
    "mlp": "fedsqueeze.models.zoo:MLP",
    "cnn": "fedsqueeze.models.zoo:McMahanCNN",
    "small_cnn": "fedsqueeze.models.zoo:SmallCNN",
    "logreg": "fedsqueeze.models.zoo:LogReg",
    "resnet20": "fedsqueeze.models.resnet:ResNet",
    "vgg11": "fedsqueeze.models.vgg:VGG11",
    "char_lstm": "fedsqueeze.models.zoo:CharLSTM",
    "char_gru": "fedsqueeze.models.zoo:CharGRU",
    "char_lstm_small": "fedsqueeze.models.zoo:CharLSTMSmall",
})

DATASETS = Registry("dataset", group="fedsqueeze.datasets", entries={
    "fashion_mnist": "fedsqueeze.data.sources:load_fashion_mnist",
    "digits": "fedsqueeze.data.sources:load_digits",
    "synthetic": "fedsqueeze.data.sources:load_synthetic",
    "fortunes": "fedsqueeze.data.fortunes:load_fortunes",
    "cifar10": "fedsqueeze.data.cifar:load_cifar10",
    "cifar100": "fedsqueeze.data.cifar:load_cifar100",
})

PARTITIONERS = Registry("partitioner", group="fedsqueeze.partitioners", entries={
    "iid": "fedsqueeze.data.partition:iid",
    "dirichlet": "fedsqueeze.data.partition:dirichlet",
    "shards": "fedsqueeze.data.partition:shards",
    "natural": "fedsqueeze.data.partition:natural",
})

# task losses (train.loss) and evaluation metrics (eval.metrics; also accuracy, loss and top<k>):
# fedsqueeze.metrics.losses
LOSSES = Registry("loss", group="fedsqueeze.losses", entries={
    "cross_entropy": "fedsqueeze.metrics.losses:cross_entropy",
    "mse": "fedsqueeze.metrics.losses:mse",
})

METRICS = Registry("metric", group="fedsqueeze.metrics", entries={
    "mae": "fedsqueeze.metrics.losses:mae",
})

ALL = {"algorithms": ALGORITHMS, "codecs": CODECS, "models": MODELS,
       "datasets": DATASETS, "partitioners": PARTITIONERS, "losses": LOSSES, "metrics": METRICS}
