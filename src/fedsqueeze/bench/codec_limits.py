"""The R–D limits the codec benchmark measures codecs against, per update: independent Gaussian layers of the
same variances, and Blahut–Arimoto on each layer's empirical distribution (``fedsqueeze.bench.rd``), at the
codec's distortion (layers at equal slope) or at its NMSE (every layer at the same relative error)."""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import torch

from fedsqueeze.bench import rd

Update = dict[str, torch.Tensor]


def floats(update: Mapping[str, torch.Tensor]) -> dict[str, np.ndarray]:
    """The update's non-empty float tensors, flat, in float64."""
    return {k: v.detach().double().reshape(-1).numpy() for k, v in update.items()
            if v.is_floating_point() and v.numel()}


class Limits:
    """Per-update R–D limits (Gaussian and Blahut–Arimoto), the BA curves computed once per update."""

    layer_curves: list[list[rd.RDCurve]]

    def __init__(self, updates: Sequence[Update], distortions: Sequence[float],
                 nmses: Sequence[float] = ()) -> None:
        self.layers = [floats(up) for up in updates]
        var_max = max((float(np.var(v)) for lay in self.layers for v in lay.values()), default=0.0)
        # the slope sweep must reach the distortions the codecs hit on the *big* layers, whose variance
        # can be orders of magnitude below the largest layer variance (real CNN updates: a small
        # high-variance bias vs a 1.6 M-weight fully connected layer): bound it by the mean power
        sizes = [len(v) for lay in self.layers for v in lay.values()]
        power = (sum(float((v ** 2).sum()) for lay in self.layers for v in lay.values()) / sum(sizes)
                 if sizes else 0.0)
        pos = [d for d in distortions if d > 0]
        # equal-NMSE points put the quiet layers at NMSE x their (small) power: the sweep must reach them
        low = min((m for m in nmses if m > 0), default=0.0)
        pos += [low * float(np.mean(v ** 2)) for lay in self.layers for v in lay.values()
                if low > 0 and float(np.mean(v ** 2)) > 0]
        d_lo = max(min(pos, default=power) / 4, power * 2.0 ** -20)
        count = max(40, math.ceil(2 * math.log2(max(2 * var_max / d_lo, 2.0)))) if var_max > 0 else 0
        self.betas = rd.betas_for(d_lo, 2 * var_max, count) if var_max > 0 else np.zeros(0)
        self.layer_curves = [[rd.rd_curve(v, self.betas) for v in lay.values()] if len(self.betas) else []
                             for lay in self.layers]
        self.curves = [rd.combine(cs, [len(v) for v in lay.values()]) if cs else None
                       for cs, lay in zip(self.layer_curves, self.layers)]

    def frontier(self) -> dict[str, np.ndarray]:
        """The first update's limits as (rate, NMSE) curves, for the plot."""
        layers = self.layers[0] if self.layers else {}
        if not layers or self.curves[0] is None:
            return {}
        n = sum(len(v) for v in layers.values())
        power = sum(float((v ** 2).sum()) for v in layers.values()) / n
        if power <= 0:
            return {}
        c = self.curves[0]
        ok = np.isfinite(c.rate) & (c.distortion > 0)
        sizes = [len(v) for v in layers.values()]
        var = [float(np.var(v)) for v in layers.values()]
        d = c.distortion[ok]
        return {"ba_rate": c.rate[ok], "ba_nmse": d / power, "gauss_nmse": d / power,
                "gauss_rate": np.array([rd.gaussian_rate_layers(var, sizes, x) for x in d])}

    def rates(self, i: int, distortion: float) -> tuple[float, float]:
        layers = self.layers[i]
        if not layers:
            return math.nan, math.nan
        sizes = [len(v) for v in layers.values()]
        gauss = rd.gaussian_rate_layers([float(np.var(v)) for v in layers.values()], sizes, distortion)
        ba = rd.rate_at(self.curves[i], distortion) if self.curves[i] is not None else math.nan
        return gauss, ba

    def equal_nmse_rate(self, i: int, nmse: float) -> float:
        """BA bits/parameter with every layer of update ``i`` at the same NMSE (equal relative error)."""
        layers = self.layers[i]
        if not layers or not self.layer_curves[i]:
            return math.nan
        total, n = 0.0, 0
        for v, curve in zip(layers.values(), self.layer_curves[i]):
            power = float(np.mean(v ** 2))
            r = 0.0 if power == 0 or nmse >= 1 else rd.rate_at(curve, nmse * power)
            total += len(v) * r
            n += len(v)
        return total / n if n else math.nan


def weighted(values: Sequence[float], weights: Sequence[int]) -> float:
    w = np.asarray(weights, dtype=np.float64)
    v = np.asarray(values, dtype=np.float64)
    return float((v * w).sum() / w.sum()) if w.sum() else math.nan
