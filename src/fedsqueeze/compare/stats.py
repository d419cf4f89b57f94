"""Summaries over seeds: the mean and the 95% Student-t confidence half-interval.

For n values x_1..x_n with mean m and sample standard deviation s (n − 1 in the denominator), the
two-sided 95% interval for the true mean is m ± t(0.975, n − 1) · s / √n (Student, 1908; any
statistics text, e.g. Wasserman, *All of Statistics*, §6.3.2). With n = 1 there is no interval.

t(0.975, ν) comes from a table for ν ≤ 30 (values to 9 decimals) and, beyond it, from the
Cornish–Fisher expansion of the t quantile around the normal one (Abramowitz & Stegun 26.7.5),
whose error at ν = 30 is below 1e−6 and falls with ν — no SciPy needed.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

# t(0.975, nu) for nu = 1..30
_T975 = (12.706204736, 4.302652730, 3.182446305, 2.776445105, 2.570581836, 2.446911851, 2.364624252,
         2.306004135, 2.262157163, 2.228138852, 2.200985160, 2.178812830, 2.160368656, 2.144786688,
         2.131449546, 2.119905299, 2.109815578, 2.100922040, 2.093024054, 2.085963447, 2.079613845,
         2.073873068, 2.068657610, 2.063898562, 2.059538553, 2.055529439, 2.051830516, 2.048407142,
         2.045229642, 2.042272456)
_Z975 = 1.959963984540054  # the standard normal's 0.975 quantile


def t975(dof: int) -> float:
    """The 0.975 quantile of Student's t with ``dof`` degrees of freedom (the 95% two-sided factor)."""
    if isinstance(dof, bool) or not isinstance(dof, int) or dof < 1:
        raise ValueError(f"degrees of freedom must be an integer >= 1, got {dof!r}")
    if dof <= len(_T975):
        return _T975[dof - 1]
    z, v = _Z975, float(dof)
    g1 = (z ** 3 + z) / 4
    g2 = (5 * z ** 5 + 16 * z ** 3 + 3 * z) / 96
    g3 = (3 * z ** 7 + 19 * z ** 5 + 17 * z ** 3 - 15 * z) / 384
    g4 = (79 * z ** 9 + 776 * z ** 7 + 1482 * z ** 5 - 1920 * z ** 3 - 945 * z) / 92160
    return z + g1 / v + g2 / v ** 2 + g3 / v ** 3 + g4 / v ** 4


def mean_ci95(values: Sequence[float]) -> tuple[float | None, float | None]:
    """``(mean, half-width of the 95% t-interval)``; ``(mean, None)`` for one value, ``(None, None)`` for none."""
    xs = [float(v) for v in values if v is not None]
    n = len(xs)
    if n == 0:
        return None, None
    mean = math.fsum(xs) / n
    if n == 1:
        return mean, None
    sd = math.sqrt(math.fsum((x - mean) ** 2 for x in xs) / (n - 1))
    return mean, t975(n - 1) * sd / math.sqrt(n)
