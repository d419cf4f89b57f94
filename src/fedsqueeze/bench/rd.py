"""Rate–distortion limits a codec is measured against (docs/methods.md, "The limit a codec is measured against").

- Gaussian source of variance σ²: D(R) = σ²·2^(−2R), R(D) = max(0, ½·log2(σ²/D)). For several
  independent Gaussian layers the limit at a total distortion is reverse water-filling
  (``gaussian_rate_layers``).
- Empirical source (the values of one layer): R(D) by the Blahut–Arimoto algorithm (Blahut 1972,
  Arimoto 1972) on a discretisation — the values are histogrammed on ``bins`` cells between the
  1e-5 and 1−1e-5 quantiles (outliers fall in the edge cells; their mass is ≤ 2e-5) and reproduced
  on ``levels`` equally spaced points over the same range, squared-error distortion. For a slope
  β (nats per unit of distortion) BA alternates Q(y|x) ∝ q(y)·exp(−β·d(x, y)) and q(y) = Σₓ p(x)Q(y|x);
  at convergence (D, R) is the point of the R(D) curve where dR/dD = −β.
- Several layers: a common β sweep gives each layer's point at the same slope, which is the optimal
  allocation of distortion between independent layers; the element-weighted sums of the layers' D
  and R are the whole update's curve (``combine``). ``rate_at`` interpolates R at a given D (in log D).

The discretisation bounds what the curve can resolve: for points whose distortion falls below a
few cell widths squared (where the histogram's entropy, not the source, would cap R) the curve
switches to the Shannon lower bound h(X) − ½·log2(2πe·D), which is tight at high resolution.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

LN2 = math.log(2.0)


# ---- Gaussian bound -------------------------------------------------------------------------------
def gaussian_distortion(rate: float | np.ndarray, variance: float = 1.0) -> float | np.ndarray:
    """D(R) = σ²·2^(−2R): the least MSE any code of R bits/sample achieves on N(0, σ²)."""
    return variance * np.exp2(-2.0 * np.asarray(rate, dtype=np.float64))


def gaussian_rate(distortion: float | np.ndarray, variance: float = 1.0) -> float | np.ndarray:
    """R(D) = max(0, ½·log2(σ²/D)) bits/sample; +inf at D = 0."""
    d = np.asarray(distortion, dtype=np.float64)
    with np.errstate(divide="ignore"):
        r = np.maximum(0.0, 0.5 * np.log2(variance / d))
    return float(r) if r.ndim == 0 else r


def gaussian_rate_layers(variances: Sequence[float], sizes: Sequence[int], distortion: float) -> float:
    """Bits/sample to reach mean MSE ``distortion`` over independent Gaussian layers (reverse water-filling).

    Each layer gets distortion min(θ, σ_l²) with the water level θ set so the size-weighted mean is
    ``distortion``; the rate is the size-weighted mean of ½·log2(σ_l²/min(θ, σ_l²)).
    """
    var = np.asarray(variances, dtype=np.float64)
    n = np.asarray(sizes, dtype=np.float64)
    total = n.sum()
    if distortion <= 0:
        return math.inf
    if distortion >= float((n * var).sum() / total):
        return 0.0
    lo, hi = 0.0, float(var.max())
    for _ in range(200):  # bisection on the water level θ: mean distortion is monotone in θ
        theta = 0.5 * (lo + hi)
        if float((n * np.minimum(theta, var)).sum() / total) < distortion:
            lo = theta
        else:
            hi = theta
    theta = 0.5 * (lo + hi)
    keep = var > theta
    return float((n[keep] * 0.5 * np.log2(var[keep] / theta)).sum() / total)


# ---- Blahut–Arimoto ---------------------------------------------------------------------------------
def blahut_arimoto(p: np.ndarray, dist: np.ndarray, betas: Sequence[float], *, tol: float = 1e-6,
                   max_iter: int = 2000) -> tuple[np.ndarray, np.ndarray]:
    """(D, R) points of the rate–distortion function of source ``p`` under distortion matrix ``dist``.

    ``p``: source probabilities, shape (N,); ``dist``: d(x, y), shape (N, M); ``betas``: slopes
    (nats per unit distortion, > 0), swept in the given order with warm starts. Iterates until an
    update moves q by less than ``tol`` nats (−Σ q·log c); on a Gaussian source this leaves the rate
    within 0.5% of ½·log2(σ²/D). Returns distortions and rates in bits, one per beta.
    """
    p = np.asarray(p, dtype=np.float64)
    keep = p > 0
    p, dist = p[keep] / p[keep].sum(), np.asarray(dist, dtype=np.float64)[keep]
    n_out = dist.shape[1]
    d_min = dist.min(axis=1, keepdims=True)
    shifted = dist - d_min  # row shift keeps exp() away from underflow; undone in log Z
    ds, rs = [], []
    q = np.full(n_out, 1.0 / n_out)
    for beta in betas:
        kernel = np.exp(-beta * shifted)
        q = np.maximum(q, 1e-12)  # warm start from the previous slope; revive pruned points
        q /= q.sum()
        for _ in range(max_iter):  # q <- q * c, c = K^T (p / K q): the BA update in matrix-vector form
            c = kernel.T @ (p / (kernel @ q))
            # step size −Σ q·log c ≥ 0 (Σ q·c = 1); Blahut's max-log-c bound is far looser in practice
            step = -float(q @ np.log(np.maximum(c, 1e-300)))
            q = q * c
            if step < tol:
                break
        z = kernel @ q
        d_x = (kernel * dist) @ q / z
        big_d = float(p @ d_x)
        # I(X;Y) = Σ p(x) Σ Q(y|x) log(Q(y|x)/q(y)) and log(Q/q) = −β·d(x,y) − log Z(x), Z on unshifted d
        log_z = np.log(z) - beta * d_min[:, 0]
        rate = float(p @ (-beta * d_x - log_z)) / LN2
        ds.append(big_d)
        rs.append(max(rate, 0.0))
    return np.asarray(ds), np.asarray(rs)


@dataclass(frozen=True)
class RDCurve:
    """Points of an R(D) curve (bits per sample), sorted by decreasing distortion."""

    distortion: np.ndarray
    rate: np.ndarray


def betas_for(d_min: float, d_max: float, count: int = 24) -> np.ndarray:
    """Slopes whose Gaussian-equivalent distortion 1/(2β) spans [d_min, d_max] (log-spaced)."""
    d = np.geomspace(max(d_max, 1e-300), max(d_min, 1e-300), count)
    return 1.0 / (2.0 * d)


def rd_curve(values: np.ndarray, betas: Sequence[float] | None = None, *, bins: int = 512,
             levels: int = 256) -> RDCurve:
    """The squared-error R(D) of the empirical distribution of ``values`` (Blahut–Arimoto)."""
    x = np.asarray(values, dtype=np.float64).reshape(-1)
    var = float(np.mean((x - x.mean()) ** 2)) if x.size else 0.0
    if betas is None:
        betas = betas_for(var * 1e-3, 2.0 * var)
    betas = np.asarray(betas, dtype=np.float64)
    if x.size == 0 or var == 0.0:  # a constant is free at any distortion
        return RDCurve(np.zeros(len(betas)), np.zeros(len(betas)))
    lo, hi = np.quantile(x, [1e-5, 1.0 - 1e-5])
    if hi <= lo:
        lo, hi = float(x.min()), float(x.max())
    width = (hi - lo) / bins
    counts = np.bincount(np.clip(((x - lo) / width).astype(np.int64), 0, bins - 1), minlength=bins)
    centers = lo + (np.arange(bins) + 0.5) * width
    recon = np.linspace(lo, hi, levels)
    dist = (centers[:, None] - recon[None, :]) ** 2
    d, r = blahut_arimoto(counts / counts.sum(), dist, betas)
    # a cell of width w already carries w²/12 of unresolved spread; trust points well above it.
    # Below that, the high-resolution regime holds: the Shannon lower bound
    # R(D) >= h(X) - ½·log2(2πe·D) is tight as D -> 0, with D = 1/(2β) on the curve's slope and the
    # differential entropy h estimated from the histogram (discrete entropy + log2 of the cell width).
    floor = 4.0 * max(width, (hi - lo) / max(levels - 1, 1)) ** 2
    fine = d < floor
    if fine.any():
        prob = counts[counts > 0] / counts.sum()
        h = float(-(prob * np.log2(prob)).sum()) + math.log2(width)
        d_hr = np.minimum(1.0 / (2.0 * betas[fine]), var)  # never beyond the rate-0 distortion
        d = d.copy()
        r = r.copy()
        d[fine] = d_hr
        r[fine] = np.maximum(0.0, h - 0.5 * np.log2(2 * math.pi * math.e * d_hr))
    return RDCurve(d, r)


def combine(curves: Sequence[RDCurve], sizes: Sequence[int]) -> RDCurve:
    """Element-weighted sum of per-layer curves computed on the same betas (equal-slope allocation)."""
    n = np.asarray(sizes, dtype=np.float64)
    d = sum(w * c.distortion for w, c in zip(n, curves)) / n.sum()
    r = sum(w * c.rate for w, c in zip(n, curves)) / n.sum()
    return RDCurve(np.asarray(d), np.asarray(r))


def rate_at(curve: RDCurve, distortion: float) -> float:
    """R at ``distortion`` by interpolation in log D; NaN outside the curve's resolved range."""
    ok = np.isfinite(curve.distortion) & np.isfinite(curve.rate) & (curve.distortion > 0)
    d, r = curve.distortion[ok], curve.rate[ok]
    if d.size == 0 or not distortion > 0:
        return math.nan
    order = np.argsort(d)
    d, r = d[order], r[order]
    if distortion > d[-1]:
        return 0.0 if r[-1] < 1e-6 else math.nan
    if distortion < d[0]:
        return math.nan
    return float(np.interp(math.log(distortion), np.log(d), r))
