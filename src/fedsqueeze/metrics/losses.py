"""Task losses (``train.loss``) and evaluation metrics (``eval.metrics``), and the checks that tie them to
the data's targets.

Losses. ``"cross_entropy"`` (the default: integer class labels, the model outputs logits) and ``"mse"``
(float targets of shape (N,) or (N, k); a model output of shape (N, 1) meets 1-D targets), or a name
registered with ``fedsqueeze.register_loss``: a callable ``loss(outputs, targets) -> scalar tensor``, the
mean over the batch. Every algorithm reaches it through ``ClientContext.loss`` (the one entry point);
knowledge-distillation terms (FedKD, QuPeD, FedDKD) stay as their papers define them, only the task
term is the configured loss.

Metrics. ``"accuracy"``, ``"loss"`` (the configured task loss), ``"top<k>"`` (e.g. ``"top5"``: the label is
among the k largest outputs), ``"mae"`` (mean absolute error), or a name registered with
``fedsqueeze.register_metric``: a callable ``metric(outputs, targets) -> number``, the mean over the
batch (the evaluation weights batches by their size, so any per-sample mean comes out exact). An empty
``eval.metrics`` (the default) means accuracy and loss for class labels, loss for float targets.
Accuracy and loss are recorded as ``global_acc``/``global_loss`` as always; any other metric ``m`` as
``global_m`` in metrics.jsonl and rounds.csv.
"""
from __future__ import annotations

import difflib
import re
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from fedsqueeze.errors import ConfigError, DataError

Loss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
_TOPK = re.compile(r"top([1-9][0-9]*)")
BUILTIN_METRICS = ("accuracy", "loss", "mae")  # and top<k>


def _matched(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """(N, 1) outputs against (N,) targets: the single column."""
    if outputs.ndim == targets.ndim + 1 and outputs.shape[-1] == 1:
        return outputs.squeeze(-1)
    return outputs


def cross_entropy(outputs: torch.Tensor, targets: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Cross-entropy of logits against integer class labels."""
    return F.cross_entropy(outputs, targets, reduction=reduction)


def mse(outputs: torch.Tensor, targets: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Mean squared error against float targets ((N,) or (N, k)); with reduction="none", one value per sample."""
    outputs = _matched(outputs, targets)
    if reduction == "none":
        per = (outputs - targets) ** 2
        return per.reshape(len(per), -1).mean(1)
    return F.mse_loss(outputs, targets, reduction=reduction)


def mae(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean absolute error against float targets."""
    return (_matched(outputs, targets) - targets).abs().mean()


BUILTIN_LOSSES: dict[str, Loss] = {"cross_entropy": cross_entropy, "mse": mse}
# what each built-in loss needs of the targets
_NEEDS = {"cross_entropy": "labels", "mse": "values"}


def get_loss(name: str) -> Loss:
    """The loss named ``name`` (built-in or registered); a ConfigError if there is none."""
    from fedsqueeze.registry import LOSSES, RegistryError

    try:
        return LOSSES.get(name)
    except RegistryError as e:
        raise ConfigError(f"train.loss: {e}") from None


def per_sample(name: str) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None:
    """A built-in loss as one value per sample (for vectorised clients); None for a registered one."""
    fn = BUILTIN_LOSSES.get(name)
    return None if fn is None else (lambda outputs, targets: fn(outputs, targets, reduction="none"))


def loss_sum(name: str, fn: Loss, outputs: torch.Tensor, targets: torch.Tensor) -> float:
    """The loss summed over a batch (built-ins exactly; a registered loss as its mean × batch size)."""
    if name in BUILTIN_LOSSES:
        return float(fn(outputs, targets, reduction="sum"))
    return float(fn(outputs, targets)) * len(targets)


def is_regression(targets: torch.Tensor) -> bool:
    """Float targets: a regression task (no class labels)."""
    return targets.dtype.is_floating_point


def metric_names(configured: list, targets: torch.Tensor) -> list[str]:
    """``eval.metrics``, or the default for these targets (accuracy and loss; loss alone for float targets)."""
    if configured:
        return list(configured)
    return ["loss"] if is_regression(targets) else ["accuracy", "loss"]


def metric_fn(name: str) -> Callable[[torch.Tensor, torch.Tensor], Any]:
    """A batch-mean metric by name (not ``accuracy``/``loss``, which the evaluation computes as counts/sums)."""
    from fedsqueeze.registry import METRICS, RegistryError

    m = _TOPK.fullmatch(name)
    if m:
        k = int(m.group(1))
        return lambda outputs, targets: (outputs.topk(min(k, outputs.shape[1]), dim=1).indices
                                         == targets[:, None]).any(1).float().mean()
    if name in METRICS or ":" in name:
        try:
            return METRICS.get(name)
        except RegistryError as e:
            raise ConfigError(f"eval.metrics: {e}") from None
    known = ["accuracy", "loss", *METRICS.names()]
    hint = difflib.get_close_matches(name, known, n=1)
    raise ConfigError(f"eval.metrics: unknown metric {name!r}" + (f" (did you mean {hint[0]!r}?)" if hint else "")
                      + f"; available: {', '.join(known)}, top<k> (e.g. top5), or fedsqueeze.register_metric")


def check_task(loss: str, metrics: list, targets: torch.Tensor, num_classes: int) -> None:
    """A one-line error if the loss or a metric cannot work with these targets (class labels or float values)."""
    if not isinstance(metrics, list) or not all(isinstance(m, str) for m in metrics):
        raise ConfigError(f"eval.metrics must be a list of metric names, e.g. [\"accuracy\", \"top5\"], got {metrics!r}")
    if len(set(metrics)) != len(metrics):
        raise ConfigError(f"eval.metrics lists a metric twice: {metrics!r}")
    get_loss(loss)
    regression = is_regression(targets)
    kind = "float targets" if regression else "integer class labels"
    need = _NEEDS.get(loss)
    if need == "labels" and regression:
        raise DataError(f"train.loss = {loss!r} needs integer class labels but the data has {kind} "
                        f"({targets.dtype}); set train.loss = \"mse\" (or register a loss for these targets)")
    if need == "values" and not regression:
        raise DataError(f"train.loss = {loss!r} needs float targets but the data has {kind} ({targets.dtype}); "
                        "pass float targets (e.g. y.float()) or use train.loss = \"cross_entropy\"")
    for m in metric_names(metrics, targets):
        topk = _TOPK.fullmatch(m)
        if (m == "accuracy" or topk) and regression:
            raise DataError(f"eval.metrics {m!r} needs class labels but the data has {kind}; for regression use "
                            "eval.metrics = [\"loss\", \"mae\"]")
        if m == "mae" and not regression:
            raise DataError(f"eval.metrics 'mae' needs float targets but the data has {kind}; use \"accuracy\" "
                            "or \"loss\"")
        if topk and int(topk.group(1)) > num_classes:
            raise ConfigError(f"eval.metrics {m!r}: k = {topk.group(1)} exceeds the {num_classes} classes; "
                              f"use top1..top{num_classes}")
        if m not in ("accuracy", "loss"):
            metric_fn(m)
