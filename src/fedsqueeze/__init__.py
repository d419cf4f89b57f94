"""fedsqueeze: communication-efficient federated learning with real bytes on the wire.

Light to import: the names below load their modules (and torch) on first attribute access, so
``fedsqueeze --help`` and ``fedsqueeze presets`` start without torch.
"""
from __future__ import annotations

import importlib
import importlib.util
from typing import Any

from fedsqueeze.errors import (CodecError, ConfigError, DataError, FedsqueezeError, MissingExtraError,
                               PayloadError, RegistryError)

__version__ = "0.1.0"
# name -> module that defines it, imported on first use (PEP 562)
_LAZY = {"run": "fedsqueeze.api", "resume": "fedsqueeze.api", "Config": "fedsqueeze.config",
         "load_config": "fedsqueeze.config", "Result": "fedsqueeze.metrics.results"}
__all__ = ["CodecError", "Config", "ConfigError", "DataError", "FedsqueezeError", "MissingExtraError", "PayloadError",
           "RegistryError", "Result", "load_config", "resume", "run", "__version__"]


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
