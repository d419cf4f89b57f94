"""Your own data as a federation: :class:`FederatedData`.

``FederatedData`` is a :class:`~fedsqueeze.data.sources.Dataset` (so everything that takes a dataset takes
it) that also knows how its training samples are divided among clients: either by a registered
partitioner (``partitioner="dirichlet", alpha=0.3``) or by explicit per-client index arrays
(``clients=[idx0, idx1, ...]``). Pass it as ``fedsqueeze.run(cfg, data=fed)``.

Rules, each checked with a one-line :class:`~fedsqueeze.errors.DataError`:

- inputs and labels have the same length; labels are integer class ids ``>= 0`` (1-D), or with
  ``task="regression"`` float targets ((N,) or (N, k); ``train.loss = "mse"``; the model gets
  ``num_classes`` = k outputs, 1 for 1-D targets). Float targets are split with ``partitioner="iid"``, explicit ``clients=`` or your own
  partitioner (the label-based ones have no classes to split by); ``metrics.losses.check_task`` refuses a
  loss or metric that does not fit the targets;
- explicit client index arrays are 1-D integer arrays, non-empty, inside ``0..len(train)-1``, and
  **disjoint**: a sample shared by two clients is an error, because per-client sample counts weight the
  aggregation and the label statistics, and a duplicated sample would silently count twice. Samples in
  no client are allowed (they are simply not used for training);
- explicit per-client held-out splits (``holdout=[...]``, one per client) follow the same rules and may
  not overlap any client's training indices; without them each client holds out
  ``holdout_fraction`` of its samples (as with built-in sources);
- without a test set the run reports no global accuracy (``final_acc`` is None), only personal
  accuracy on the clients' held-out splits.
"""
from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from fedsqueeze.data.partition import Partition, make_partition
from fedsqueeze.data.sources import Dataset
from fedsqueeze.errors import DataError


def _as_tensor(value: Any, what: str) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    try:
        return torch.as_tensor(np.asarray(value))
    except (TypeError, ValueError, RuntimeError) as e:
        raise DataError(f"{what} must be a tensor or array, got {type(value).__name__}: {e}") from None


def _xy(data: Any, what: str, regression: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """(inputs, labels) from a TensorDataset, an (x, y) pair, or any map-style torch Dataset of (x, y)."""
    from torch.utils.data import Dataset as TorchDataset, TensorDataset

    if isinstance(data, TensorDataset):
        if len(data.tensors) != 2:
            raise DataError(f"{what}: a TensorDataset must hold exactly two tensors (inputs, labels), "
                            f"it holds {len(data.tensors)}")
        x, y = data.tensors
    elif isinstance(data, (tuple, list)) and len(data) == 2 and not isinstance(data, TorchDataset):
        x, y = data
    elif hasattr(data, "__getitem__") and hasattr(data, "__len__"):
        n = len(data)
        if n == 0:
            raise DataError(f"{what} is empty")
        items = [data[i] for i in range(n)]
        if not all(isinstance(it, (tuple, list)) and len(it) == 2 for it in items[:1]):
            raise DataError(f"{what}: dataset items must be (input, label) pairs, got {type(items[0]).__name__}")
        try:
            x = torch.stack([_as_tensor(it[0], what) for it in items])
            y = (torch.stack([_as_tensor(it[1], what).to(torch.float32) for it in items]) if regression
                 else torch.as_tensor([int(it[1]) if not isinstance(it[1], float) else it[1] for it in items]))
        except (TypeError, RuntimeError) as e:
            raise DataError(f"{what}: cannot stack the dataset's items into tensors: {e}") from None
    else:
        raise DataError(f"{what} must be a torch Dataset (e.g. TensorDataset) or an (x, y) pair of "
                        f"tensors/arrays, got {type(data).__name__}")
    x, y = _as_tensor(x, f"{what} inputs"), _as_tensor(y, f"{what} labels")
    if x.ndim < 2:
        raise DataError(f"{what} inputs must have shape (N, ...) with one row per sample, got shape {tuple(x.shape)}")
    if y.dtype.is_complex or y.dtype == torch.bool:
        raise DataError(f"{what} labels must be integer class ids, got dtype {y.dtype}")
    if len(x) != len(y):
        raise DataError(f"{what}: {len(x)} inputs but {len(y)} labels; they must have the same length")
    if len(y) == 0:
        raise DataError(f"{what} is empty")
    if x.dtype.is_floating_point:
        x = x.to(torch.float32)
    if regression:  # float targets, (N,) or (N, k)
        if y.ndim not in (1, 2):
            raise DataError(f"{what} float targets must have shape (N,) or (N, k), got {tuple(y.shape)}")
        if not bool(torch.isfinite(y).all()):
            raise DataError(f"{what} targets hold NaN or Inf; clean them first")
        return x.contiguous(), y.to(torch.float32).contiguous()
    if y.dtype.is_floating_point:
        raise DataError(f"{what} labels must be integer class ids, got dtype {y.dtype}; for float regression "
                        "targets pass task=\"regression\" (and train.loss = \"mse\")")
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1:
        raise DataError(f"{what} labels must be 1-D class ids, got shape {tuple(y.shape)} "
                        "(one-hot targets: pass y.argmax(1); regression targets: task=\"regression\")")
    if int(y.min()) < 0:
        raise DataError(f"{what} labels must be non-negative class ids, found {int(y.min())}")
    return x.contiguous(), y.to(torch.int64).contiguous()


LABEL_PARTITIONERS = ("dirichlet", "shards", "natural")  # built-ins that split by class label


def partition_labels(dataset: Dataset) -> tuple[np.ndarray, int]:
    """(labels, num_classes) for partitioners and partition statistics: the class ids, or for float
    (regression) targets one class 0 for every sample."""
    y = dataset.y_train
    if y.dtype.is_floating_point:
        return np.zeros(len(y), np.int64), 1
    return y.numpy(), dataset.num_classes


def _index_lists(parts: Any, n: int, what: str) -> list[np.ndarray]:
    if isinstance(parts, (str, bytes)) or not isinstance(parts, Sequence) and not hasattr(parts, "__iter__"):
        raise DataError(f"{what} must be a list of per-client index arrays, got {type(parts).__name__}")
    out = []
    for c, p in enumerate(parts):
        a = np.asarray(p.cpu() if isinstance(p, torch.Tensor) else p)
        if a.ndim != 1 or (a.size and not np.issubdtype(a.dtype, np.integer)):
            raise DataError(f"{what}[{c}] must be a 1-D array of integer sample indices, got "
                            f"shape {a.shape}, dtype {a.dtype}")
        a = a.astype(np.int64)
        if a.size and (a.min() < 0 or a.max() >= n):
            bad = int(a.min()) if a.min() < 0 else int(a.max())
            raise DataError(f"{what}[{c}] holds index {bad}, outside the training set's 0..{n - 1}")
        if np.unique(a).size != a.size:
            raise DataError(f"{what}[{c}] lists a sample more than once")
        out.append(np.sort(a))
    return out


def _is_array(value: Any) -> bool:
    return isinstance(value, (np.ndarray, torch.Tensor, list, tuple))


def _check_disjoint(groups: list[list[np.ndarray]], n: int, what: str) -> None:
    counts = np.zeros(n, np.int64)
    for parts in groups:
        for a in parts:
            counts[a] += 1
    if counts.size and counts.max() > 1:
        i = int(np.argmax(counts > 1))
        raise DataError(f"{what}: training sample {i} is assigned more than once (clients' training and "
                        "held-out indices must be disjoint)")


class FederatedData(Dataset):
    """A dataset plus its division among clients; pass it as ``fedsqueeze.run(cfg, data=...)``.

    ``train``/``test``: a torch ``Dataset`` of (input, label) pairs (a ``TensorDataset`` is fastest) or an
    ``(x, y)`` pair of tensors/arrays. Then either ``clients`` (explicit per-client index arrays into
    ``train``; ``holdout`` optionally gives each client's held-out indices) or ``partitioner`` (a registered
    name, default ``"iid"``) with ``num_clients`` and the partitioner's options (``alpha=0.3``,
    ``shards_per_client=2``, ...). ``holdout_fraction`` (default: the config's ``data.holdout_fraction``)
    applies when ``holdout`` is not given. ``num_classes`` defaults to the largest label + 1.
    ``task="regression"``: the targets are float values (``train.loss = "mse"``), not class labels.
    """

    def __init__(self, train: Any, *, test: Any = None, clients: Sequence[Any] | None = None,
                 holdout: Sequence[Any] | None = None, partitioner: str | None = None,
                 num_clients: int | None = None, holdout_fraction: float | None = None,
                 num_classes: int | None = None, name: str = "own", task: str = "classification",
                 **partition_options: Any) -> None:
        if task not in ("classification", "regression"):
            raise DataError(f"task must be \"classification\" (integer class labels) or \"regression\" (float "
                            f"targets), got {task!r}")
        x, y = _xy(train, "train", task == "regression")
        if test is not None:
            xt, yt = _xy(test, "test", task == "regression")
            if tuple(xt.shape[1:]) != tuple(x.shape[1:]):
                raise DataError(f"test inputs have shape {tuple(xt.shape[1:])} per sample, train inputs "
                                f"{tuple(x.shape[1:])}; they must match")
            if yt.dtype != y.dtype or tuple(yt.shape[1:]) != tuple(y.shape[1:]):
                raise DataError(f"test targets are {yt.dtype} {tuple(yt.shape[1:])} per sample, train targets "
                                f"{y.dtype} {tuple(y.shape[1:])}; they must match (both class ids or both floats)")
        else:
            xt, yt = x[:0], y[:0]
        if y.dtype.is_floating_point:  # regression: num_classes = the model's output width
            top = 1 if y.ndim == 1 else int(y.shape[1])
            if num_classes is not None and num_classes != top:
                raise DataError(f"num_classes = {num_classes!r} but the float targets have {top} column(s); "
                                "leave num_classes out for regression targets")
            num_classes = top
            if partitioner in LABEL_PARTITIONERS:
                raise DataError(f"partitioner {partitioner!r} splits by class label, but the targets are floats "
                                "(regression); use partitioner=\"iid\", explicit clients=, or your own partitioner")
        top = int(max(y.max(), yt.max() if len(yt) else 0)) + 1 if not y.dtype.is_floating_point else num_classes
        if num_classes is None:
            num_classes = top
        elif isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < top:
            raise DataError(f"num_classes = {num_classes!r} but labels go up to {top - 1}; "
                            f"pass an integer >= {top} (or leave it out)")
        if not isinstance(name, str) or not name:
            raise DataError(f"name must be a non-empty string, got {name!r}")
        super().__init__(name=name, x_train=x, y_train=y, x_test=xt, y_test=yt, num_classes=num_classes)
        n = len(y)
        self.clients: list[np.ndarray] | None = None
        self.holdout: list[np.ndarray] | None = None
        if clients is not None:
            if partitioner is not None or partition_options:
                raise DataError("pass either clients= (explicit index arrays) or partitioner= (+ its options), "
                                "not both")
            self.clients = _index_lists(clients, n, "clients")
            if not self.clients:
                raise DataError("clients must list at least one client")
            if any(a.size == 0 for a in self.clients):
                raise DataError(f"clients[{[a.size for a in self.clients].index(0)}] is empty; every client "
                                "needs at least one training sample")
            if num_clients is not None and num_clients != len(self.clients):
                raise DataError(f"num_clients = {num_clients} but clients lists {len(self.clients)} clients")
            num_clients = len(self.clients)
            if holdout is not None:
                self.holdout = _index_lists(holdout, n, "holdout")
                if len(self.holdout) != len(self.clients):
                    raise DataError(f"holdout lists {len(self.holdout)} clients, clients lists "
                                    f"{len(self.clients)}; give one (possibly empty) array per client")
            _check_disjoint([self.clients, self.holdout or []], n, "clients/holdout")
        else:
            if holdout is not None:
                raise DataError("holdout= needs explicit clients=; with a partitioner use holdout_fraction")
            partitioner = partitioner or "iid"
            if not isinstance(partitioner, str):
                raise DataError(f"partitioner must be a registered partitioner's name, got {partitioner!r}; "
                                "register a function with fedsqueeze.register_partitioner first")
            if num_clients is not None and (isinstance(num_clients, bool) or not isinstance(num_clients, int)
                                            or not 1 <= num_clients <= n):
                raise DataError(f"num_clients must be an integer in 1..{n} (the training samples), "
                                f"got {num_clients!r}")
        if holdout_fraction is not None and (isinstance(holdout_fraction, bool)
                                             or not isinstance(holdout_fraction, (int, float))
                                             or not 0 <= holdout_fraction < 1):
            raise DataError(f"holdout_fraction must be a number in [0, 1), got {holdout_fraction!r}")
        self.partitioner = partitioner
        self.partition_options = dict(partition_options)
        self.num_clients = num_clients
        self.holdout_fraction = holdout_fraction

    def __repr__(self) -> str:
        how = "explicit clients" if self.clients is not None else f"partitioner {self.partitioner!r}"
        return (f"FederatedData({self.name!r}: {len(self.y_train)} train, {len(self.y_test)} test, "
                f"input {self.input_shape}, {self.num_classes} classes, {self.num_clients or '?'} clients by {how})")

    __eq__ = object.__eq__
    __hash__ = object.__hash__

    def fingerprint(self) -> str:
        """A short hash of the samples and the split (recorded in config.json; a resume must match it)."""
        h = hashlib.sha256()
        for t in (self.x_train, self.y_train, self.x_test, self.y_test):
            h.update(str((tuple(t.shape), str(t.dtype))).encode())
            h.update(t.contiguous().view(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
        for parts in (self.clients or [], self.holdout or []):
            for a in parts:
                h.update(a.tobytes() + b"|")
        h.update(repr((self.partitioner, self.num_clients, self.holdout_fraction)).encode())
        for key, value in sorted(self.partition_options.items()):
            h.update(key.encode() + (np.asarray(value).tobytes() if _is_array(value) else repr(value).encode()))
        return h.hexdigest()[:16]

    def config_entries(self) -> dict[str, Any]:
        """What this data sets in the ``[data]`` table of the run's config."""
        out: dict[str, Any] = {"source": f"object:{self.name}",
                               "partition": "explicit" if self.clients is not None else self.partitioner,
                               "options": {"fingerprint": self.fingerprint()}}
        if self.num_clients is not None:
            out["num_clients"] = self.num_clients
        if self.holdout_fraction is not None:
            out["holdout_fraction"] = float(self.holdout_fraction)
        if self.partition_options:
            out["options"]["partition_options"] = {
                k: f"array({len(v)})" if _is_array(v) else v for k, v in self.partition_options.items()}
        return out

    def partition(self, num_clients: int, *, seed: int, holdout_fraction: float) -> Partition:
        """The clients' training and held-out index arrays (what the engine trains and evaluates on)."""
        if self.clients is not None:
            if num_clients != len(self.clients):
                raise DataError(f"data.num_clients = {num_clients} but the FederatedData {self.name!r} has "
                                f"{len(self.clients)} explicit clients; set data.num_clients = {len(self.clients)}")
            if self.holdout is not None:
                return Partition(train=list(self.clients), holdout=list(self.holdout))
            # each client's own samples, held out as a built-in source would be
            from fedsqueeze.data.partition import _split_holdout
            from fedsqueeze.seeding import numpy_rng
            frac = self.holdout_fraction if self.holdout_fraction is not None else holdout_fraction
            return _split_holdout(list(self.clients), float(frac), numpy_rng(seed, "partition", "holdout"))
        frac = self.holdout_fraction if self.holdout_fraction is not None else holdout_fraction
        n = self.num_clients if self.num_clients is not None else num_clients
        labels, _ = partition_labels(self)
        return make_partition(self.partitioner, labels, n, seed=seed, holdout_fraction=frac,
                              **self.partition_options)
