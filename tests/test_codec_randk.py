"""Random-K: the seed-derived subset, the wire (values only), and unbiasedness."""
from __future__ import annotations

import struct

import numpy as np
import pytest
import torch

from chunk_kit import only_chunk
from fedsqueeze.codecs.randk import RandK, sample_positions
from fedsqueeze.seeding import derive_seed


@pytest.mark.parametrize("d,k", [(1000, 10), (1000, 250), (1000, 251), (1000, 999), (7, 7), (1, 1)])
def test_positions_are_a_sorted_k_subset_fixed_by_the_seed(d, k):
    a = sample_positions(d, k, 123)
    assert len(a) == k and len(np.unique(a)) == k and np.all(np.diff(a) > 0) and a.min() >= 0 and a.max() < d
    assert np.array_equal(a, sample_positions(d, k, 123))
    if k < d:
        assert not np.array_equal(a, sample_positions(d, k, 124))


@pytest.mark.parametrize("k", [3, 12])  # both samplers: k <= d/4 and k > d/4
def test_positions_are_uniform(k):
    d, trials = 20, 4000
    counts = np.zeros(d)
    for s in range(trials):
        counts[sample_positions(d, k, s)] += 1
    expected = trials * k / d
    sd = np.sqrt(trials * (k / d) * (1 - k / d))
    assert np.all(np.abs(counts - expected) < 5 * sd)


def test_only_the_values_travel_hand_checked():
    x = torch.tensor([1.0, -2.0, 3.0, -4.0, 5.0, 6.0, 7.0, 8.0])
    payload = RandK(k=2).encode({"w": x}, seed=9)
    idx = sample_positions(8, 2, derive_seed(9, 0))  # the tensor's seed: derived from (seed, index)
    assert only_chunk(payload) == struct.pack("<2f", *x[idx].tolist())
    expect = torch.zeros(8)
    expect[idx] = x[idx] * 4  # d / k = 4
    assert torch.equal(RandK(k=2).decode(payload)["w"], expect)


def test_unbiased():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(50, generator=g)
    codec = RandK(fraction=0.1)  # k = 5, d/k = 10
    n = 2000
    mean = sum(codec.decode(codec.encode({"x": x}, seed=s))["x"].double() for s in range(n)) / n
    sd = x.double().abs() * np.sqrt((10 - 1) / n)  # per-entry variance (d/k - 1) x^2
    assert torch.all((mean - x.double()).abs() <= 5 * sd + 1e-9)
