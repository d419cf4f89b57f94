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
# name -> module that defines it, imported on first use
_LAZY = {
    "run": "fedsqueeze.api", "resume": "fedsqueeze.api",
    "Config": "fedsqueeze.config", "load_config": "fedsqueeze.config",
    "Result": "fedsqueeze.metrics.results",
    "register_model": "fedsqueeze.plugins", "register_codec": "fedsqueeze.plugins",
    "register_algorithm": "fedsqueeze.plugins", "register_dataset": "fedsqueeze.plugins",
    "register_partitioner": "fedsqueeze.plugins", "unregister": "fedsqueeze.plugins",
    "registered": "fedsqueeze.plugins", "register_loss": "fedsqueeze.plugins",
    "register_metric": "fedsqueeze.plugins", "Callback": "fedsqueeze.callbacks",
    "FederatedData": "fedsqueeze.data.federated",
    "Dataset": "fedsqueeze.data.sources",
    "Partition": "fedsqueeze.data.partition", "make_partition": "fedsqueeze.data.partition",
    "iid": "fedsqueeze.data.partition", "dirichlet": "fedsqueeze.data.partition",
    "shards": "fedsqueeze.data.partition", "natural": "fedsqueeze.data.partition",
    "Codec": "fedsqueeze.codecs.base", "make_codec": "fedsqueeze.codecs.spec",
    "Algorithm": "fedsqueeze.algorithms.base", "build_model": "fedsqueeze.models.zoo",
}
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
