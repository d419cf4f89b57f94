"""Partitioners: exact coverage, determinism, non-empty clients, label skew, holdout, errors."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedsqueeze.data.partition import Partition, describe, dirichlet, iid, make_partition, shards
from fedsqueeze.errors import DataError
from fedsqueeze.registry import PARTITIONERS

PARTITIONER_CASES = [("iid", {}), ("dirichlet", {"alpha": 0.5}), ("dirichlet", {"alpha": 1e-4}),
                     ("shards", {"shards_per_client": 2})]


def balanced_labels(n: int, num_classes: int = 10, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).permutation(np.arange(n) % num_classes)


def assert_partition_of_range(parts: list[np.ndarray], n: int) -> None:
    flat = np.concatenate(parts)
    assert flat.size == n
    np.testing.assert_array_equal(np.sort(flat), np.arange(n))


def assert_valid(parts: list[np.ndarray], n: int, num_clients: int) -> None:
    assert len(parts) == num_clients
    assert min(len(p) for p in parts) >= 1
    assert all(np.issubdtype(p.dtype, np.integer) for p in parts)
    assert_partition_of_range(parts, n)


def same(a: list[np.ndarray], b: list[np.ndarray]) -> bool:
    return len(a) == len(b) and all(np.array_equal(x, y) for x, y in zip(a, b))


# ---- partitioners -------------------------------------------------------------------------------
def test_registry_names_resolve_here() -> None:
    assert PARTITIONERS.get("iid") is iid
    assert PARTITIONERS.get("dirichlet") is dirichlet
    assert PARTITIONERS.get("shards") is shards


@pytest.mark.parametrize("name, params", PARTITIONER_CASES)
def test_invariants_and_determinism(name: str, params: dict) -> None:
    labels = balanced_labels(1000)
    fn = PARTITIONERS.get(name)
    a = fn(labels, 37, seed=3, **params)
    assert_valid(a, 1000, 37)
    assert same(a, fn(labels, 37, seed=3, **params))
    assert not same(a, fn(labels, 37, seed=4, **params))


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 300), num_classes=st.integers(1, 12), data=st.data(),
       alpha=st.floats(1e-6, 1e3), seed=st.integers(0, 2**31))
def test_invariants_property(n: int, num_classes: int, data: st.DataObject, alpha: float, seed: int) -> None:
    labels = np.random.default_rng(seed).integers(0, num_classes, n)
    k = data.draw(st.integers(1, n), label="num_clients")
    assert_valid(iid(labels, k, seed=seed), n, k)
    assert_valid(dirichlet(labels, k, seed=seed, alpha=alpha), n, k)
    per = data.draw(st.integers(1, max(1, n // k)), label="shards_per_client")
    assert_valid(shards(labels, k, seed=seed, shards_per_client=per), n, k)


@pytest.mark.parametrize("name, params", PARTITIONER_CASES + [("dirichlet", {"alpha": 1e-300})])
def test_ten_thousand_clients(name: str, params: dict) -> None:
    # No timing assertion (machines vary); vectorised code finishes in well under a second.
    labels = balanced_labels(60_000)
    part = make_partition(name, labels, 10_000, seed=0, **params)
    assert len(part.train) == len(part.holdout) == 10_000
    assert min(len(t) for t in part.train) >= 1
    assert_partition_of_range(part.train + part.holdout, 60_000)


def test_iid_sizes_balanced() -> None:
    sizes = [len(p) for p in iid(np.zeros(103, np.int64), 10, seed=0)]
    assert sorted(sizes) == [10] * 7 + [11] * 3


def test_dirichlet_tiny_alpha_fills_empty_clients_from_the_largest() -> None:
    # One class, tiny alpha: essentially all samples land on one client; the three empty clients
    # then get one sample each, all taken from that largest client.
    parts = dirichlet(np.zeros(100, np.int64), 4, seed=0, alpha=1e-6)
    assert sorted(len(p) for p in parts) == [1, 1, 1, 97]


def test_dirichlet_empty_clients_levels_donors() -> None:
    # alpha = 1e-300 puts each class (50 samples) wholly on one client (two distinct ones for this
    # seed); the 8 empty clients are then fed by levelling both donors down evenly, not one.
    parts = dirichlet(np.repeat([0, 1], 50), 10, seed=1, alpha=1e-300)
    assert sorted(len(p) for p in parts) == [1] * 8 + [46, 46]


def test_dirichlet_skew_moves_with_alpha() -> None:
    labels = balanced_labels(20_000)

    def mean_classes(alpha: float) -> float:
        part = make_partition("dirichlet", labels, 100, seed=0, alpha=alpha)
        return part.stats(labels, 10)["summary"]["mean_classes_per_client"]

    skew = [mean_classes(a) for a in (0.01, 0.1, 1.0, 100.0)]
    assert skew == sorted(skew) and skew[0] < 3 and skew[-1] == 10


def test_shards_give_few_classes() -> None:
    # 1000 balanced samples, 50 clients x 2 shards of 10: shards never straddle a class here.
    labels = balanced_labels(1000)
    for part in shards(labels, 50, seed=0, shards_per_client=2):
        assert len(part) == 20 and len(np.unique(labels[part])) <= 2


# ---- make_partition, holdout and stats ----------------------------------------------------------
@pytest.mark.parametrize("fraction", [0.0, 0.2, 0.5, 0.99])
def test_holdout_sizes_and_coverage(fraction: float) -> None:
    labels = balanced_labels(500)
    base = dirichlet(labels, 20, seed=5, alpha=0.3)
    part = make_partition("dirichlet", labels, 20, seed=5, alpha=0.3, holdout_fraction=fraction)
    assert_partition_of_range(part.train + part.holdout, 500)
    for b, t, h in zip(base, part.train, part.holdout):
        n = len(b)
        assert len(h) == min(int(np.floor(fraction * n + 1e-9)), n - 1) and len(t) >= 1
        np.testing.assert_array_equal(np.sort(np.concatenate([t, h])), b)  # drawn from own samples
        assert np.all(np.diff(t) > 0) and np.all(np.diff(h) > 0)


def test_make_partition_deterministic() -> None:
    labels = balanced_labels(300)
    a = make_partition("shards", labels, 10, seed=9, shards_per_client=3, holdout_fraction=0.3)
    b = make_partition("shards", labels, 10, seed=9, shards_per_client=3, holdout_fraction=0.3)
    assert same(a.train, b.train) and same(a.holdout, b.holdout)


def test_stats_exact_and_describe() -> None:
    labels = np.array([0, 0, 1, 2, 2, 2, 1])
    part = Partition(train=[np.array([0, 1, 2]), np.array([3, 4]), np.array([6])],
                     holdout=[np.array([], np.int64), np.array([5]), np.array([], np.int64)])
    stats = part.stats(labels, 4)
    assert stats["train_sizes"] == [3, 2, 1] and stats["holdout_sizes"] == [0, 1, 0]
    assert stats["label_histograms"] == [[2, 1, 0, 0], [0, 0, 2, 0], [0, 1, 0, 0]]
    assert stats["summary"] == {"train_total": 6, "holdout_total": 1, "min_size": 1, "median_size": 2.0,
                                "max_size": 3, "mean_classes_per_client": pytest.approx(4 / 3)}
    text = describe(stats)
    assert "3 clients" in text and "min 1, median 2, max 3" in text and "1.3 of 4 classes" in text
    assert len(text.splitlines()) == 2


# ---- errors -------------------------------------------------------------------------------------
@pytest.mark.parametrize("call, match", [
    (lambda y: iid(y, 11, seed=0), "at most 10 clients"),
    (lambda y: dirichlet(y, 11, seed=0), "at most 10 clients"),
    (lambda y: iid(y, 0, seed=0), "num_clients must be at least 1"),
    (lambda y: iid(y, 2.0, seed=0), "num_clients must be an integer"),
    (lambda y: dirichlet(y, 2, seed=0, alpha=0), "alpha must be a finite number > 0"),
    (lambda y: dirichlet(y, 2, seed=0, alpha=-1.0), "alpha must be a finite number > 0"),
    (lambda y: dirichlet(y, 2, seed=0, alpha=float("nan")), "alpha must be a finite number > 0"),
    (lambda y: shards(y, 2, seed=0, shards_per_client=0), "shards_per_client must be at least 1"),
    (lambda y: shards(y, 4, seed=0, shards_per_client=3), "12 shards, more than the 10 samples"),
    (lambda y: iid(y, 2, seed="x"), "seed must be an integer"),
    (lambda y: make_partition("iid", y, 2, seed=0, holdout_fraction=1.0), r"holdout_fraction .* \[0, 1\)"),
    (lambda y: make_partition("iid", y, 2, seed=0, holdout_fraction=-0.1), r"holdout_fraction .* \[0, 1\)"),
    (lambda y: make_partition("dirichlet_skew", y, 2, seed=0),
     "unknown partitioner 'dirichlet_skew'.*dirichlet"),
    (lambda y: iid(y.reshape(2, 5), 2, seed=0), "1-D array"),
    (lambda y: iid(y.astype(float), 2, seed=0), "labels must be integers"),
    (lambda y: iid(y - 5, 2, seed=0), "non-negative"),
    (lambda y: Partition([np.arange(10)], [np.zeros(0, np.int64)]).stats(y, 3), "outside 0..2"),
])
def test_errors(call, match: str) -> None:
    with pytest.raises(DataError, match=match):
        call(np.arange(10) % 5)
