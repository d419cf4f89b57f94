"""Rate–distortion limits: Gaussian closed forms, Blahut–Arimoto against known R(D) curves."""
from __future__ import annotations

import math

import numpy as np
import pytest

from fedsqueeze.bench.rd import (RDCurve, blahut_arimoto, combine, gaussian_distortion, gaussian_rate,
                                 gaussian_rate_layers, rate_at, rd_curve)


def h2(p):
    p = np.asarray(p, dtype=np.float64)
    return -(p * np.log2(p) + (1 - p) * np.log2(1 - p))


def test_gaussian_closed_forms():
    assert gaussian_distortion(1.0, 4.0) == 1.0
    assert gaussian_rate(1.0, 4.0) == 1.0
    assert gaussian_rate(8.0, 4.0) == 0.0
    assert gaussian_rate(0.0) == math.inf
    r = np.array([0.1, 0.5, 2.0, 5.0])
    assert np.allclose(gaussian_rate(gaussian_distortion(r, 3.0), 3.0), r)


def test_reverse_water_filling_by_hand():
    # variances 1 and 0.01, mean distortion 0.1: θ + 0.01 = 0.2 -> θ = 0.19, only layer 1 costs bits
    r = gaussian_rate_layers([1.0, 0.01], [1, 1], 0.1)
    assert r == pytest.approx(0.5 * 0.5 * math.log2(1 / 0.19), rel=1e-9)
    # below the smaller variance both layers share θ = D
    assert gaussian_rate_layers([1.0, 0.01], [3, 1], 0.001) == pytest.approx(
        (3 * 0.5 * math.log2(1000) + 0.5 * math.log2(10)) / 4, rel=1e-9)
    assert gaussian_rate_layers([1.0, 0.01], [1, 1], 0.6) == 0.0


def test_blahut_arimoto_binary_hamming():
    p = np.array([0.7, 0.3])
    d, r = blahut_arimoto(p, 1.0 - np.eye(2), [1.0, 2.0, 3.0, 5.0])
    assert np.all((d > 0) & (d < 0.3))
    assert np.allclose(r, h2(0.3) - h2(d), atol=2e-4)


def test_blahut_arimoto_uniform_quaternary_hamming():
    m = 4
    d, r = blahut_arimoto(np.full(m, 1 / m), 1.0 - np.eye(m), [1.5, 2.5, 4.0])
    closed = math.log2(m) - h2(d) - d * math.log2(m - 1)
    assert np.allclose(r, closed, atol=2e-4)
    # slope β relates to D in closed form for this source: D = (m-1) e^-β / (1 + (m-1) e^-β)
    e = np.exp(-np.array([1.5, 2.5, 4.0]))
    assert np.allclose(d, (m - 1) * e / (1 + (m - 1) * e), atol=1e-5)


def test_blahut_arimoto_gaussian_source_matches_half_log():
    x = np.random.default_rng(0).standard_normal(400_000) * 2.0
    curve = rd_curve(x)
    ok = np.isfinite(curve.rate) & (curve.rate > 0.4) & (curve.rate < 3.5)
    assert ok.sum() >= 8
    expect = 0.5 * np.log2(x.var() / curve.distortion[ok])
    assert np.allclose(curve.rate[ok], expect, rtol=0.03)


def test_laplace_limit_sits_below_the_gaussian_one():
    x = np.random.default_rng(1).laplace(size=200_000)
    curve = rd_curve(x)
    ok = np.isfinite(curve.rate) & (curve.rate > 0.3)
    assert np.all(curve.rate[ok] < gaussian_rate(curve.distortion[ok], x.var()))


def test_rate_at_and_combine():
    c = RDCurve(np.array([1.0, 0.5, 0.25, np.nan]), np.array([0.0, 0.5, 1.0, np.nan]))
    assert rate_at(c, 0.5) == 0.5
    assert rate_at(c, math.sqrt(0.5)) == pytest.approx(0.25)  # linear in log D
    assert rate_at(c, 2.0) == 0.0  # beyond the variance: free
    assert math.isnan(rate_at(c, 0.1))  # below the resolved range
    both = combine([c, RDCurve(np.array([2.0, 2.0, 1.0, 1.0]), np.array([0.0, 0.0, 1.0, 1.0]))], [1, 3])
    assert both.distortion[:3].tolist() == [1.75, 1.625, 0.8125] and both.rate[2] == 1.0


def test_constant_layer_is_free():
    c = rd_curve(np.full(100, 3.0))
    assert np.all(c.rate == 0) and np.all(c.distortion == 0)
