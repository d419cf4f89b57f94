"""Top-K sparsification: keep the ``k`` entries of largest magnitude of each tensor.

Aji & Heafield, "Sparse Communication for Distributed Gradient Descent", EMNLP 2017; analysed
with error feedback by Stich, Cordonnier & Jaggi, "Sparsified SGD with Memory", NeurIPS 2018.
Top-K is biased but contractive, ``||a - C(a)||^2 <= (1 - k/d) ||a||^2``; wrap it in ``ef`` for
error feedback (``"ef(inner='topk(fraction=0.01)')"``).

``k = max(1, round(fraction * d))`` per tensor of ``d`` entries, or ``min(k, d)`` if ``k`` is set;
the receiver derives it from the header's config, so it is not sent. Per tensor the chunk is::

    positions   sorted kept positions: Rice-coded gaps or a bitmap (see ``codecs.sparse``)
    values      k x fp32 (or fp16), little-endian, in position order

Selection: exact, magnitude ties to the lower position. A quantile of a strided sample of
``|a|`` gives a threshold a few standard deviations below the ``k``-th largest; only the entries
above it are partitioned (all of them if the sample misled it).
"""
from __future__ import annotations

import dataclasses

import numpy as np
import torch

from fedsqueeze.codecs import sparse
from fedsqueeze.errors import PayloadError


def largest(a: np.ndarray, k: int) -> np.ndarray:
    """Sorted positions of the ``k`` largest entries of ``a`` (ties: lower position first)."""
    d = len(a)
    if k >= d:
        return np.arange(d)
    sample = np.sort(a[::max(1, d // 65536)])
    p = k / d
    below = int(len(sample) * (1 - p) - 6 * np.sqrt(len(sample) * p * (1 - p)) - 8)
    cand = np.flatnonzero(a >= sample[below]) if below > 0 else np.arange(d)
    if len(cand) < k:
        cand = np.arange(d)
    vals = a[cand]
    kth = np.partition(vals, len(cand) - k)[len(cand) - k]
    keep = vals > kth
    keep[np.flatnonzero(vals == kth)[:k - int(keep.sum())]] = True
    return cand[keep]


@dataclasses.dataclass(frozen=True)
class TopK(sparse.KeepCodec):
    """Top-K sparsification: the k largest-magnitude entries, positions Rice-coded or as a bitmap."""

    codec_id = "topk"

    def encode_tensor(self, x: torch.Tensor, seed: int) -> bytes:
        flat = x.reshape(-1)
        d = flat.numel()
        k = self.keep(d)
        idx = largest(flat.abs().numpy(), k)
        return sparse.encode_positions(idx, d) + sparse.encode_values(flat.numpy()[idx], self.values)

    def decode_tensor(self, data: memoryview, shape: tuple[int, ...], seed: int) -> torch.Tensor:
        d = sparse.numel(shape)
        k = self.keep(d)
        split = len(data) - sparse.values_size(k, self.values)
        if split < 1:
            raise PayloadError(f"topk: {len(data)} bytes cannot hold {k} values and their positions")
        idx = sparse.decode_positions(data[:split], k, d)
        out = np.zeros(d, dtype=np.float32)
        out[idx] = sparse.decode_values(data[split:], k, self.values)
        return torch.from_numpy(out)
