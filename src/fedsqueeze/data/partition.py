"""Splitting a training set among federated clients: IID, Dirichlet label skew, label shards, natural.

A partitioner maps ``labels`` (one int per training sample) to one sorted index array per client.
Every sample goes to exactly one client, every client gets at least one sample, and the result
depends only on the seed. All three are vectorised (no per-sample or rejection loops), so 10,000
clients over 60,000 samples take milliseconds, and no parameter value can make them loop forever.

- ``iid``: a random permutation dealt round-robin; client sizes differ by at most one.
- ``dirichlet``: the per-class scheme of Yurochkin et al. (2019, "Bayesian nonparametric federated
  learning of neural networks") used by NIID-Bench (Li et al., 2022, "Federated learning on non-IID
  data silos: an experimental study"): for each class, the clients' shares of it are drawn from
  Dir(alpha * 1). Small alpha -> few classes per client, and unequal client sizes. (Hsu et al.
  2019 instead draw each client's label mix; not implemented.)
- ``natural``: the dataset's own clients (``groups``, one client id per sample), for datasets
  with natural clients such as ``fortunes``; ``num_clients`` must equal their number.
- ``shards``: the scheme of McMahan et al. (2017), "Communication-efficient learning of deep
  networks from decentralized data": sort by label, cut into ``num_clients * k`` equal shards,
  deal ``k`` random shards to each client.

Dirichlet shares can round to zero samples for some clients. Each such empty client then receives
one sample taken from the largest clients (levelling them down one sample at a time), a minimal
change to the drawn distribution that keeps every client trainable.

:func:`make_partition` adds a per-client holdout drawn from each client's own samples, for
personalised evaluation.
"""
from __future__ import annotations

import difflib
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from fedsqueeze.errors import DataError
from fedsqueeze.seeding import numpy_rng


# ---- validation ---------------------------------------------------------------------------------
def _check_labels(labels: Any) -> np.ndarray:
    arr = np.asarray(labels)
    if arr.ndim != 1 or arr.size == 0:
        raise DataError(f"labels must be a non-empty 1-D array of class ids, got shape {arr.shape}")
    if not np.issubdtype(arr.dtype, np.integer):
        raise DataError(f"labels must be integers (class ids), got dtype {arr.dtype}; "
                        "pass the dataset's y_train, not its inputs or one-hot targets")
    if arr.min() < 0:
        raise DataError(f"labels must be non-negative class ids, found {arr.min()}")
    return arr.astype(np.int64, copy=False)


def check_int(name: str, value: Any, minimum: int, maximum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise DataError(f"{name} must be an integer, got {value!r}")
    if value < minimum:
        raise DataError(f"{name} must be at least {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise DataError(f"{name} must be at most {maximum:,}, got {value:,}")
    return int(value)


def _check_clients(num_clients: Any, num_samples: int) -> int:
    k = check_int("num_clients", num_clients, 1)
    if k > num_samples:
        raise DataError(f"cannot give {k} clients at least one sample each from {num_samples} samples; "
                        f"use at most {num_samples} clients (or a larger dataset)")
    return k


# ---- shared machinery ---------------------------------------------------------------------------
def _grouped_order(keys: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Sample indices sorted by ``keys``, in random order within equal keys."""
    shuffled = rng.permutation(len(keys))
    return shuffled[np.argsort(keys[shuffled], kind="stable")]


def _group(client_of: np.ndarray, num_clients: int) -> list[np.ndarray]:
    """Turn a client id per sample into one ascending index array per client."""
    order = np.argsort(client_of, kind="stable")
    counts = np.bincount(client_of, minlength=num_clients)
    return np.split(order, np.cumsum(counts)[:-1])


def _fill_empty(client_of: np.ndarray, num_clients: int, rng: np.random.Generator) -> np.ndarray:
    """Move one sample to each empty client, taken from the currently largest clients."""
    sizes = np.bincount(client_of, minlength=num_clients)
    empty = np.flatnonzero(sizes == 0)
    if empty.size == 0:
        return client_of
    order = _grouped_order(client_of, rng)
    rank = np.arange(len(order)) - np.repeat(np.cumsum(sizes) - sizes, sizes)
    # Taking the highest within-client ranks first levels the largest clients down (water-filling).
    # Rank 0 is never reached because n >= num_clients leaves enough samples of rank >= 1,
    # so no donor is emptied.
    donated = order[np.argsort(-rank, kind="stable")[: empty.size]]
    client_of = client_of.copy()
    client_of[donated] = empty
    return client_of


def _dirichlet_rows(rng: np.random.Generator, alpha: float, rows: int, cols: int) -> np.ndarray:
    """``rows`` draws from Dir(alpha * 1_cols), exact and NaN-free for any alpha > 0.

    Normalised gamma draws underflow to all-zero rows (0/0 = NaN) for small alpha. We work in
    log space instead, using Gamma(a) = Gamma(a + 1) * U**(1/a), and normalise with a softmax.
    """
    with np.errstate(divide="ignore", over="ignore"):
        log_u = np.log1p(-rng.random((rows, cols)))  # log U with U in (0, 1]
        log_g = np.log(rng.gamma(alpha + 1.0, size=(rows, cols))) + log_u / alpha
    top = log_g.max(axis=1, keepdims=True)
    degenerate = ~np.isfinite(top[:, 0])
    if degenerate.any():
        # alpha so tiny that every term overflowed to -inf: take the alpha -> 0 limit, all mass
        # on the entry with the largest U-term (the one that would dominate).
        winner = log_u[degenerate].argmax(axis=1)
        log_g[degenerate] = np.where(np.arange(cols) == winner[:, None], 0.0, -np.inf)
        top = log_g.max(axis=1, keepdims=True)
    weights = np.exp(log_g - top)
    return weights / weights.sum(axis=1, keepdims=True)


# ---- partitioners -------------------------------------------------------------------------------
def iid(labels: np.ndarray, num_clients: int, *, seed: int, **unused: Any) -> list[np.ndarray]:
    """Uniformly random, equal-sized (+-1) client datasets."""
    labels = _check_labels(labels)
    k = _check_clients(num_clients, len(labels))
    rng = numpy_rng(check_int("seed", seed, -(2**63)), "partition", "iid")
    client_of = np.empty(len(labels), np.int64)
    client_of[rng.permutation(len(labels))] = np.arange(len(labels)) % k
    return _group(client_of, k)


def dirichlet(labels: np.ndarray, num_clients: int, *, seed: int, alpha: float = 0.5,
              **unused: Any) -> list[np.ndarray]:
    """Per-class Dirichlet label skew: each class is spread over clients by Dir(alpha)."""
    labels = _check_labels(labels)
    k = _check_clients(num_clients, len(labels))
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float, np.number)) \
            or not math.isfinite(alpha) or alpha <= 0:
        raise DataError(f"dirichlet alpha must be a finite number > 0, got {alpha!r} "
                        "(small, e.g. 0.1, = strong label skew; large, e.g. 100, = nearly IID)")
    rng = numpy_rng(check_int("seed", seed, -(2**63)), "partition", "dirichlet")
    order = _grouped_order(labels, rng)
    _, starts, counts = np.unique(labels[order], return_index=True, return_counts=True)
    shares = _dirichlet_rows(rng, float(alpha), len(counts), k)
    client_of = np.empty(len(labels), np.int64)
    # A loop over classes (few), each step vectorised over the class's samples and the clients.
    for c, (start, count) in enumerate(zip(starts, counts)):
        bounds = np.round(np.cumsum(shares[c]) * count)  # cumulative samples per client
        bounds[-1] = count
        client_of[order[start:start + count]] = np.searchsorted(bounds, np.arange(count), side="right")
    return _group(_fill_empty(client_of, k, rng), k)


def shards(labels: np.ndarray, num_clients: int, *, seed: int, shards_per_client: int = 2,
           **unused: Any) -> list[np.ndarray]:
    """Label-sorted shards, ``shards_per_client`` random ones per client."""
    labels = _check_labels(labels)
    k = _check_clients(num_clients, len(labels))
    per = check_int("shards_per_client", shards_per_client, 1)
    n, num_shards = len(labels), k * per
    if num_shards > n:
        raise DataError(f"{k} clients x {per} shards = {num_shards} shards, more than the {n} samples; "
                        f"use shards_per_client <= {n // k} or fewer clients")
    rng = numpy_rng(check_int("seed", seed, -(2**63)), "partition", "shards")
    order = _grouped_order(labels, rng)
    shard_sizes = np.diff(np.arange(num_shards + 1) * n // num_shards)  # all >= 1, differ by <= 1
    shard_of_position = np.repeat(np.arange(num_shards), shard_sizes)
    client_of_shard = np.empty(num_shards, np.int64)
    client_of_shard[rng.permutation(num_shards)] = np.arange(num_shards) // per
    client_of = np.empty(n, np.int64)
    client_of[order] = client_of_shard[shard_of_position]
    return _group(client_of, k)


def natural(labels: np.ndarray, num_clients: int, *, seed: int, groups: Any = None,
            **unused: Any) -> list[np.ndarray]:
    """The dataset's own clients (e.g. fortunes' category files), given as one client id per sample."""
    labels = _check_labels(labels)
    k = check_int("num_clients", num_clients, 1)
    if groups is None:
        raise DataError("partition 'natural' needs a dataset that defines its own clients (such as 'fortunes'); "
                        "this one does not: use data.partition = 'iid', 'dirichlet' or 'shards'")
    g = np.asarray(groups)
    if g.shape != labels.shape or not np.issubdtype(g.dtype, np.integer) or g.min() < 0:
        raise DataError(f"the dataset's client ids must be one non-negative integer per training sample "
                        f"({labels.shape[0]}), got shape {g.shape} and dtype {g.dtype}; "
                        "this is a bug in the data source")
    defined = int(g.max()) + 1
    if k != defined:
        raise DataError(f"data.num_clients = {k}, but the dataset defines {defined} natural clients; set "
                        f"data.num_clients = {defined} (its options, e.g. data.options.max_clients, choose how many)")
    if np.bincount(g, minlength=defined).min() < 1:
        raise DataError("the dataset defines a client without samples; this is a bug in the data source")
    return _group(g.astype(np.int64, copy=False), defined)


# ---- partition with holdout ---------------------------------------------------------------------
@dataclass
class Partition:
    """Per-client index arrays into the training set: what each client trains on and holds out."""

    train: list[np.ndarray]
    holdout: list[np.ndarray]

    @property
    def num_clients(self) -> int:
        return len(self.train)

    def stats(self, labels: np.ndarray, num_classes: int) -> dict[str, Any]:
        """Sizes and label histograms of the clients' training data, as JSON-ready Python types.

        ``summary`` holds min/median/max training samples per client and the mean number of
        distinct classes in a client's training data (the usual label-skew measure).
        """
        labels = _check_labels(labels)
        num_classes = check_int("num_classes", num_classes, 1)
        if labels.max() >= num_classes:
            raise DataError(f"label {labels.max()} is outside 0..{num_classes - 1}; "
                            "pass the dataset's num_classes")
        train_sizes = np.array([len(t) for t in self.train], np.int64)
        holdout_sizes = np.array([len(h) for h in self.holdout], np.int64)
        client = np.repeat(np.arange(self.num_clients), train_sizes)
        flat = labels[np.concatenate(self.train)] if self.train else np.zeros(0, np.int64)
        hist = np.bincount(client * num_classes + flat, minlength=self.num_clients * num_classes)
        hist = hist.reshape(self.num_clients, num_classes)
        return {
            "num_clients": self.num_clients,
            "num_classes": num_classes,
            "train_sizes": train_sizes.tolist(),
            "holdout_sizes": holdout_sizes.tolist(),
            "label_histograms": hist.tolist(),
            "summary": {
                "train_total": int(train_sizes.sum()),
                "holdout_total": int(holdout_sizes.sum()),
                "min_size": int(train_sizes.min()),
                "median_size": float(np.median(train_sizes)),
                "max_size": int(train_sizes.max()),
                "mean_classes_per_client": float((hist > 0).sum(axis=1).mean()),
            },
        }


def _split_holdout(parts: list[np.ndarray], fraction: float, rng: np.random.Generator) -> Partition:
    sizes = np.array([len(p) for p in parts], np.int64)
    client = np.repeat(np.arange(len(parts)), sizes)
    flat = np.concatenate(parts)
    # The epsilon keeps e.g. 0.29 * 100 = 28.999999999999996 from flooring to 28.
    held = np.minimum(np.floor(fraction * sizes + 1e-9).astype(np.int64), sizes - 1)
    order = _grouped_order(client, rng)
    rank = np.arange(len(flat)) - np.repeat(np.cumsum(sizes) - sizes, sizes)
    is_held = np.empty(len(flat), bool)
    is_held[order] = rank < np.repeat(held, sizes)

    def pick(mask: np.ndarray, counts: np.ndarray) -> list[np.ndarray]:
        sel = np.lexsort((flat[mask], client[mask]))  # by client, then ascending index
        return np.split(flat[mask][sel], np.cumsum(counts)[:-1])

    return Partition(train=pick(~is_held, sizes - held), holdout=pick(is_held, held))


def _check_is_partition(parts: list[np.ndarray], n: int, name: str) -> None:
    """Guard against a (custom) partitioner that drops, repeats or invents samples."""
    flat = np.concatenate(parts) if parts else np.zeros(0, np.int64)
    ok = (flat.size == n and np.issubdtype(flat.dtype, np.integer)
          and flat.min() >= 0 and flat.max() < n)
    if not ok or np.bincount(flat, minlength=n).max(initial=0) != 1 or min(map(len, parts)) < 1:
        raise DataError(f"partitioner {name!r} did not assign each of the {n} samples to exactly one "
                        "client with every client non-empty; this is a bug in that partitioner")


def make_partition(name: str, labels: np.ndarray, num_clients: int, *, seed: int,
                   holdout_fraction: float = 0.2, **params: Any) -> Partition:
    """Partition with the registered partitioner ``name``, then hold out part of each client.

    Each client holds out ``min(floor(f * n), n - 1)`` of its ``n`` samples, so it always keeps at
    least one training sample. ``params`` go to the partitioner (e.g. ``alpha``).
    """
    from fedsqueeze.registry import PARTITIONERS  # lazy: the registry points back at this module

    if not isinstance(name, str) or name not in PARTITIONERS:
        hint = difflib.get_close_matches(str(name), PARTITIONERS.names(), n=1)
        raise DataError(f"unknown partitioner {name!r}" + (f" (did you mean {hint[0]!r}?)" if hint else "")
                        + f"; available: {', '.join(PARTITIONERS.names())}")
    if isinstance(holdout_fraction, bool) or not isinstance(holdout_fraction, (int, float, np.number)) \
            or not 0.0 <= holdout_fraction < 1.0:
        raise DataError(f"holdout_fraction must be a number in [0, 1), got {holdout_fraction!r} "
                        "(0 disables personalised evaluation; 0.2 is typical)")
    labels = _check_labels(labels)
    check_int("seed", seed, -(2**63))
    parts = PARTITIONERS.get(name)(labels, num_clients, seed=seed, **params)
    _check_is_partition(parts, len(labels), name)
    return _split_holdout(parts, float(holdout_fraction), numpy_rng(seed, "partition", "holdout"))


def describe(stats: dict[str, Any]) -> str:
    """Two short lines summarising :meth:`Partition.stats` for a terminal."""
    s = stats["summary"]
    return (f"{stats['num_clients']:,} clients; training samples per client min {s['min_size']:,}, "
            f"median {s['median_size']:,.0f}, max {s['max_size']:,} "
            f"({s['train_total']:,} in total, {s['holdout_total']:,} held out)\n"
            f"label skew: {s['mean_classes_per_client']:.1f} of {stats['num_classes']} classes "
            "per client on average")
