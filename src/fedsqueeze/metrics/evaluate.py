"""Accuracy, loss and the configured metrics (``eval.metrics``) of a model on a labelled set, in batches,
without gradients."""
from __future__ import annotations

from typing import Any

import torch
from torch import nn


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 1000,
             loss: str = "cross_entropy") -> tuple[int, float, int]:
    """(number correct, summed task loss, number of samples); ``loss`` names ``train.loss`` (correct is 0
    for float targets)."""
    from fedsqueeze.metrics.losses import get_loss, is_regression, loss_sum

    fn = get_loss(loss)
    model.eval()
    correct, total = 0, 0.0
    classes = not is_regression(y)
    for i in range(0, len(y), batch_size):
        logits = model(x[i:i + batch_size])
        yb = y[i:i + batch_size]
        total += loss_sum(loss, fn, logits, yb)
        if classes:
            correct += int((logits.argmax(1) == yb).sum())
    return correct, total, int(len(y))


@torch.no_grad()
def evaluate_metrics(model: nn.Module, x: torch.Tensor, y: torch.Tensor, names: list[str], batch_size: int = 1000,
                     loss: str = "cross_entropy") -> dict[str, Any]:
    """``{name: value}`` for ``names`` (accuracy, loss, top<k>, mae, registered metrics); each the mean over
    the samples (batch means weighted by batch size). None for an empty set."""
    from fedsqueeze.metrics.losses import metric_fn

    n = int(len(y))
    if n == 0:
        return {m: None for m in names}
    extra = {m: metric_fn(m) for m in names if m not in ("accuracy", "loss")}
    sums = dict.fromkeys(extra, 0.0)
    if extra:
        model.eval()
        for i in range(0, n, batch_size):
            logits = model(x[i:i + batch_size])
            yb = y[i:i + batch_size]
            for m, fn in extra.items():
                sums[m] += float(fn(logits, yb)) * len(yb)
    out: dict[str, Any] = {}
    if "accuracy" in names or "loss" in names:
        correct, total, _ = evaluate(model, x, y, batch_size, loss)
        out.update(accuracy=correct / n, loss=total / n)
    out.update({m: s / n for m, s in sums.items()})
    return {m: out[m] for m in names}
