"""Shared helpers for the DRIVE / EDEN / Hadamard tests: dense references and error statistics."""
from __future__ import annotations

import math
from collections.abc import Callable

import torch

from fedsqueeze.codecs.hadamard import ChunkLayout, random_signs


def seed_with_signs(pattern: list[float]) -> int:
    """The first per-tensor seed whose sign diagonal starts with ``pattern``."""
    return next(s for s in range(10_000) if random_signs(len(pattern), s).tolist() == pattern)


def sylvester(w: int) -> torch.Tensor:
    """The dense w x w Walsh–Hadamard matrix (float64), by Sylvester's recursion."""
    h = torch.ones(1, 1, dtype=torch.float64)
    while h.shape[0] < w:
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)], 0)
    return h


RowQuantizer = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def dense_rotated(x: torch.Tensor, seed: int, chunk: int, quantize: RowQuantizer) -> torch.Tensor:
    """A rotate-quantize-unrotate codec row by row with explicit float64 matrices.

    ``quantize(u, rot)`` gets a padded row ``u`` and ``rot = R u`` and returns ``(S, X)``; the row
    estimate is ``Rᵀ (S X)``.
    """
    x = x.reshape(-1).double()
    signs = random_signs(x.numel(), seed).double()
    out = torch.zeros(x.numel(), dtype=torch.float64)
    for r, w in enumerate(ChunkLayout(x.numel(), chunk).widths().tolist()):
        seg = slice(r * chunk, min(r * chunk + w, x.numel()))
        u = torch.zeros(w, dtype=torch.float64)
        u[:seg.stop - seg.start] = (signs * x)[seg]
        h = sylvester(w) / math.sqrt(w)
        s, q = quantize(u, h @ u)
        out[seg] = (h @ (s * q))[:seg.stop - seg.start] * signs[seg]
    return out


def vnmse(codec, x: torch.Tensor, seed: int = 0) -> float:
    """‖x̂ − x‖² / ‖x‖² through the full payload."""
    y = codec.decode(codec.encode({"x": x}, seed=seed))["x"]
    return float(((y.double() - x.double()) ** 2).sum() / (x.double() ** 2).sum())


def bias_over_seeds(codec, x: torch.Tensor, trials: int) -> tuple[float, float]:
    """(‖mean x̂ − x‖² / ‖x‖², the value that variance alone would give) over ``trials`` seeds."""
    total = torch.zeros(x.numel(), dtype=torch.float64)
    err = 0.0
    for s in range(trials):
        y = codec.decode_tensor(memoryview(codec.encode_tensor(x, s)), tuple(x.shape), s).double()
        total += y
        err += float(((y - x.double()) ** 2).sum())
    norm2 = float((x.double() ** 2).sum())
    return float(((total / trials - x.double()) ** 2).sum()) / norm2, err / trials / norm2 / trials
