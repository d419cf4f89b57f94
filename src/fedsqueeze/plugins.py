"""Registering your own parts: ``register_model``, ``register_codec``, ``register_algorithm``,
``register_dataset``, ``register_partitioner``, ``register_loss``, ``register_metric``.

Each works as a decorator, ``@register_model("mynet")``, or as a call, ``register_model("mynet", MyNet)``,
and returns the object unchanged. A registered name can then be used anywhere a built-in one can: in
TOML (``[model] name = "mynet"``), with ``--set``, in suites, and in ``fedsqueeze.run``. Registering a
name twice raises ``RegistryError`` unless ``replace=True``; registering the same object again under
the same name is a no-op. An installed package can provide names through entry points instead (groups
``fedsqueeze.models``, ``fedsqueeze.codecs``, ``fedsqueeze.algorithms``, ``fedsqueeze.datasets``,
``fedsqueeze.partitioners``, ``fedsqueeze.losses``, ``fedsqueeze.metrics``); they are loaded on the first lookup of a name that is not registered.

What each kind must be:

- model: an ``nn.Module`` subclass or a callable, built as ``obj(input_shape, num_classes, **options)``.
- codec: a ``fedsqueeze.codecs.Codec`` subclass (a frozen dataclass) whose ``codec_id`` equals the name:
  payload headers name their codec by it, so receivers find the decoder by that name.
- algorithm: a ``fedsqueeze.algorithms.base.Algorithm`` subclass.
- dataset: a callable ``loader(**options) -> fedsqueeze.Dataset`` (or a ``fedsqueeze.FederatedData``); it
  must accept and ignore unknown keyword arguments (the engine passes one common set of options).
- partitioner: a callable ``f(labels, num_clients, *, seed, **params) -> list of index arrays`` that puts
  every training sample in exactly one non-empty client (checked after every call).
- loss: a function ``loss(outputs, targets) -> scalar tensor``, the mean over the batch (``train.loss``).
- metric: a function ``metric(outputs, targets) -> number``, the mean over the batch (``eval.metrics``).
"""
from __future__ import annotations

import inspect
import re
from collections.abc import Callable
from typing import Any, TypeVar

from fedsqueeze.errors import RegistryError

T = TypeVar("T")

_KINDS = ("model", "codec", "algorithm", "dataset", "partitioner", "loss", "metric")


def _registry(kind: str):
    from fedsqueeze import registry

    return {"model": registry.MODELS, "codec": registry.CODECS, "algorithm": registry.ALGORITHMS,
            "dataset": registry.DATASETS, "partitioner": registry.PARTITIONERS, "loss": registry.LOSSES,
            "metric": registry.METRICS}[kind]


def check_kind(kind: str, name: str, obj: Any) -> None:
    """Raise ``RegistryError`` if ``obj`` cannot be a ``kind``."""
    what = f"register_{kind}({name!r}, ...)"
    if kind == "model":
        import torch.nn as nn
        if inspect.isclass(obj) and not issubclass(obj, nn.Module):
            raise RegistryError(f"{what} needs an nn.Module subclass or a function returning a module; "
                                f"{obj.__qualname__} is not an nn.Module")
        if isinstance(obj, nn.Module) or not callable(obj):
            raise RegistryError(f"{what} needs an nn.Module subclass or a function returning a module "
                                f"(called as obj(input_shape, num_classes, **options)), got a "
                                f"{type(obj).__name__} instance")
    elif kind == "codec":
        from fedsqueeze.codecs.base import Codec
        if not (inspect.isclass(obj) and issubclass(obj, Codec)):
            raise RegistryError(f"{what} needs a fedsqueeze.codecs.Codec subclass (a frozen dataclass), "
                                f"got {obj!r}" + (" — register the class, not an instance" if isinstance(obj, Codec)
                                                  else ""))
        if obj.codec_id != name:
            raise RegistryError(f"{what}: the class's codec_id is {obj.codec_id!r}; set codec_id = {name!r} "
                                "on the class (payload headers name their codec by it)")
    elif kind == "algorithm":
        from fedsqueeze.algorithms.base import Algorithm
        if not (inspect.isclass(obj) and issubclass(obj, Algorithm)):
            raise RegistryError(f"{what} needs a fedsqueeze.algorithms.base.Algorithm subclass, got {obj!r}")
    elif kind in ("loss", "metric"):
        if not callable(obj) or inspect.isclass(obj):
            raise RegistryError(f"{what} needs a function {kind}(outputs, targets) -> "
                                f"{'scalar tensor' if kind == 'loss' else 'number'} (the batch mean), got {obj!r}")
        if kind == "metric" and (name in ("accuracy", "loss") or re.fullmatch(r"top[0-9]+", name)):
            raise RegistryError(f"{what}: {name!r} is a built-in metric name; pick another name")
    elif not callable(obj) or inspect.isclass(obj) and kind == "partitioner":
        signature = ("loader(**options) -> Dataset" if kind == "dataset"
                     else "f(labels, num_clients, *, seed, **params) -> list of index arrays")
        raise RegistryError(f"{what} needs a function {signature}, got {obj!r}")


def _register(kind: str, name: str, obj: Any = None, *, replace: bool = False) -> Any:
    def add(target: T) -> T:
        check_kind(kind, name, target)
        _registry(kind).register(name, target, replace=replace)
        return target

    if not isinstance(name, str):
        raise RegistryError(f"register_{kind} takes the name first: register_{kind}('name', obj) or "
                            f"@register_{kind}('name'); got {name!r}")
    return add if obj is None else add(obj)


def register_model(name: str, model: Any = None, *, replace: bool = False) -> Any:
    """Register an ``nn.Module`` class (or factory) as model ``name``; decorator or call."""
    return _register("model", name, model, replace=replace)


def register_codec(name: str, codec: Any = None, *, replace: bool = False) -> Any:
    """Register a ``Codec`` subclass (its ``codec_id`` must be ``name``) as codec ``name``."""
    return _register("codec", name, codec, replace=replace)


def register_algorithm(name: str, algorithm: Any = None, *, replace: bool = False) -> Any:
    """Register an ``Algorithm`` subclass as algorithm ``name``; decorator or call."""
    return _register("algorithm", name, algorithm, replace=replace)


def register_dataset(name: str, loader: Callable[..., Any] | None = None, *, replace: bool = False) -> Any:
    """Register a loader ``(**options) -> Dataset | FederatedData`` as data source ``name``."""
    return _register("dataset", name, loader, replace=replace)


def register_partitioner(name: str, partitioner: Callable[..., Any] | None = None, *,
                         replace: bool = False) -> Any:
    """Register ``f(labels, num_clients, *, seed, **params) -> index arrays`` as partitioner ``name``."""
    return _register("partitioner", name, partitioner, replace=replace)


def register_loss(name: str, loss: Callable[..., Any] | None = None, *, replace: bool = False) -> Any:
    """Register ``loss(outputs, targets) -> scalar tensor`` (the batch mean) as ``train.loss = name``."""
    return _register("loss", name, loss, replace=replace)


def register_metric(name: str, metric: Callable[..., Any] | None = None, *, replace: bool = False) -> Any:
    """Register ``metric(outputs, targets) -> number`` (the batch mean) for ``eval.metrics = [name]``."""
    return _register("metric", name, metric, replace=replace)


def unregister(kind: str, name: str) -> None:
    """Remove a registered name (``kind``: model, codec, algorithm, dataset, partitioner, loss or metric)."""
    if kind not in _KINDS:
        raise RegistryError(f"unknown kind {kind!r}; choose from {', '.join(_KINDS)}")
    _registry(kind).unregister(name)


def registered(kind: str) -> list[str]:
    """The names usable for ``kind`` now: built-in, registered and installed plugins."""
    if kind not in _KINDS:
        raise RegistryError(f"unknown kind {kind!r}; choose from {', '.join(_KINDS)}")
    return _registry(kind).names()
