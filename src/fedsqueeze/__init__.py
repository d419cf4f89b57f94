"""fedsqueeze: communication-efficient federated learning with real bytes on the wire.

The public API (docs/api.md): ``run``/``resume``, configuration, your own parts (``register_*``,
``FederatedData``) and the building blocks they plug into. Everything else is internal.

Light to import: apart from the errors, the names below load their modules (and torch) on first
attribute access (PEP 562), so ``fedsqueeze --help`` and ``fedsqueeze presets`` start without torch;
``from fedsqueeze import run`` works as usual.
"""
from __future__ import annotations

import importlib
import importlib.util
from typing import Any

from fedsqueeze.errors import (CodecError, ConfigError, DataError, FedsqueezeError, MissingExtraError,
                               PayloadError, RegistryError)

__version__ = "0.1.0"
# module -> the names it defines, each imported on first use
_LAZY_FROM = {
    "fedsqueeze.api": "run resume",
    "fedsqueeze.config": "Config load_config",
    "fedsqueeze.metrics.results": "Result",
    "fedsqueeze.plugins": "register_model register_codec register_algorithm register_dataset register_partitioner "
                          "unregister registered register_loss register_metric",
    "fedsqueeze.callbacks": "Callback",
    "fedsqueeze.data.federated": "FederatedData",
    "fedsqueeze.data.sources": "Dataset",
    "fedsqueeze.data.partition": "Partition make_partition iid dirichlet shards natural",
    "fedsqueeze.codecs.base": "Codec",
    "fedsqueeze.codecs.spec": "make_codec",
    "fedsqueeze.algorithms.base": "Algorithm",
    "fedsqueeze.models.zoo": "build_model",
}
_LAZY = {name: module for module, names in _LAZY_FROM.items() for name in names.split()}  # name -> its module
__all__ = [
    # running
    "run", "resume", "Config", "load_config", "Result",
    # your own parts
    "register_model", "register_codec", "register_algorithm", "register_dataset", "register_partitioner",
    "register_loss", "register_metric", "unregister", "registered", "FederatedData", "Callback",
    # building blocks
    "Dataset", "Partition", "make_partition", "iid", "dirichlet", "shards", "natural",
    "Codec", "make_codec", "Algorithm", "build_model",
    # errors
    "FedsqueezeError", "ConfigError", "DataError", "CodecError", "PayloadError", "RegistryError",
    "MissingExtraError",
    "__version__",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    if not name.startswith("_") and importlib.util.find_spec(f"fedsqueeze.{name}") is not None:
        return importlib.import_module(f"fedsqueeze.{name}")  # a submodule, e.g. fedsqueeze.api
    raise AttributeError(f"module 'fedsqueeze' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
