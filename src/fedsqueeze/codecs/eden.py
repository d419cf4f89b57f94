"""EDEN: randomized Hadamard rotation, b-bit Lloyd–Max quantization for N(0,1), unbiased scale.

Vargaftik, Ben-Basat, Portnoy, Mendelson, Ben-Itzhak, Mitzenmacher. "EDEN: Communication-Efficient
and Robust Distributed Mean Estimation for Federated Learning". ICML 2022. arXiv 2108.08842.

After the rotation ``R`` (seeded; the receiver regenerates it), the coordinates of
``z = R x · sqrt(d) / ‖x‖`` are close to N(0,1) for any ``x``. Each is rounded deterministically to
the nearest of the ``2**b`` Lloyd–Max levels ``c`` of N(0,1) (``X = c[index]``), and the scale is
the paper's unbiased one

    S = ‖x‖² / ⟨R x, X⟩,        x̂ = Rᵀ (S · X),

so ``⟨x̂, x⟩ = ‖x‖²`` exactly and, with a uniform random rotation, ``E[x̂] = x``. With ``D_b`` the
Lloyd–Max distortion of N(0,1), vNMSE ``≈ D_b / (1 − D_b)`` = 0.571, 0.133, 0.036, 0.0096 for
b = 1..4 (b = 1 is DRIVE with its unbiased scale).

The levels are computed here (``lloyd_max_gaussian``: Lloyd iterations with the exact Gaussian
conditional means, erfc-based, in float64, to convergence) on first use; the tests compare them
with Max (1960). Quantizing ``z``: with ``t`` the positive thresholds (midpoints of consecutive
positive levels), ``k = #{t_j < |z|}``; the index is ``2**(b-1) + k`` for ``z >= 0`` and
``2**(b-1) − 1 − k`` for ``z < 0`` (levels in increasing order), i.e. nearest level, ties to the
smaller magnitude. ``|z|`` and the thresholds are float32, so the indices are exactly defined.
As in DRIVE, the Hadamard rotation makes ``E[x̂] = x`` approximate (``⟨x̂, x⟩ = ‖x‖²`` is exact).

``chunk`` (default 2**16): long tensors are rotated in rows of ``chunk`` values plus a tail row
zero-padded to a power of two, each row with its own ``S`` (and its own ``d`` and ``‖x‖``): each row
is an independent EDEN instance with the same error. ``chunk >= numel`` is the paper's
whole-tensor rotation. ``layout`` (default ``"split"``) cuts the tail into power-of-two rows of at
least 1024 values plus one padded row, instead of padding it whole (``"pow2"``, the original
format); see ``fedsqueeze.codecs.rotated``.

Released code (``amitport/EDEN-Distributed-Mean-Estimation``, ``torch/eden.py``): the same
estimator on the whole vector padded to a power of two (our ``chunk >= numel``), with the
assignments kept as integer tensors (no bit packing). It also offers fractional bit rates (a
random mix of ``b`` and ``b + 1`` bits) and ``b < 1`` (random sub-sampling first), not
implemented here.

Body: ``rows`` float32 scales ``S``, then the ``b``-bit indices of all padded coordinates as one
MSB-first bit stream (see ``fedsqueeze.codecs.rotated``): ``b + 32 / chunk`` bits per coordinate
plus padding.
"""
from __future__ import annotations

import dataclasses
import functools
import math

import numpy as np
import torch

from fedsqueeze.codecs.rotated import RotatedCodec
from fedsqueeze.errors import CodecError

_SQRT2 = math.sqrt(2.0)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)


def _pdf(t: float) -> float:
    return 0.0 if math.isinf(t) else _INV_SQRT_2PI * math.exp(-0.5 * t * t)


def _upper_tail(t: float) -> float:
    """P(Z > t) for Z ~ N(0, 1), accurate in the tail."""
    return 0.5 * math.erfc(t / _SQRT2)


@functools.lru_cache(maxsize=None)
def lloyd_max_gaussian(bits: int, tol: float = 1e-15, max_iter: int = 200_000) -> tuple[float, ...]:
    """The ``2**bits`` Lloyd–Max (MSE-optimal) levels for N(0, 1), increasing, float64.

    Symmetric, so only the positive half is iterated: thresholds are midpoints of consecutive
    levels, each level is the conditional mean ``(φ(a) − φ(b)) / (Q(a) − Q(b))`` of its cell
    ``(a, b]`` (``Q`` the upper tail), until no level moves by more than ``tol``.
    """
    if not 1 <= bits <= 8:
        raise ValueError("bits must be 1..8")
    m = 1 << (bits - 1)
    c = [3.0 * (k + 0.5) / m for k in range(m)]
    for _ in range(max_iter):
        t = [0.0] + [(c[k] + c[k + 1]) / 2 for k in range(m - 1)] + [math.inf]
        new = [(_pdf(t[k]) - _pdf(t[k + 1])) / (_upper_tail(t[k]) - _upper_tail(t[k + 1])) for k in range(m)]
        moved = max(abs(a - b) for a, b in zip(new, c))
        c = new
        if moved <= tol:
            break
    return tuple([-v for v in reversed(c)] + c)


def lloyd_max_distortion(levels: tuple[float, ...]) -> float:
    """E[(Z − Q(Z))²] for Z ~ N(0, 1) and nearest-level quantization to sorted ``levels``."""
    t = [-math.inf] + [(a + b) / 2 for a, b in zip(levels, levels[1:])] + [math.inf]
    # E[Z²] − Σ P(cell) c² holds at the centroid fixed point; compute it directly instead:
    # E[(Z − c)²; a < Z ≤ b] = P(1 + c²) − 2 c (φ(a) − φ(b)) + (a φ(a) − b φ(b))
    total = 0.0
    for c, a, b in zip(levels, t, t[1:]):
        p = _upper_tail(a) - _upper_tail(b)
        aphi = 0.0 if math.isinf(a) else a * _pdf(a)
        bphi = 0.0 if math.isinf(b) else b * _pdf(b)
        total += p * (1 + c * c) - 2 * c * (_pdf(a) - _pdf(b)) + (aphi - bphi)
    return total


@functools.lru_cache(maxsize=None)
def _levels32(bits: int) -> np.ndarray:
    out = np.array(lloyd_max_gaussian(bits), dtype=np.float32)
    out.flags.writeable = False
    return out


@dataclasses.dataclass(frozen=True)
class Eden(RotatedCodec):
    """EDEN: Hadamard rotation, b-bit Lloyd–Max levels for N(0,1), unbiased scale (Vargaftik et al. 2022)."""

    codec_id = "eden"
    unbiased = True

    bits: int = 2  # type: ignore[misc]  # a config field here, a class constant in RotatedCodec

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.bits, bool) or not isinstance(self.bits, int) or not 1 <= self.bits <= 4:
            raise CodecError(f"eden: bits must be an integer from 1 to 4, got {self.bits!r}")

    def levels(self) -> np.ndarray:
        return _levels32(self.bits)

    def quantize(self, y: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        rows, w = y.shape
        half = 1 << (self.bits - 1)
        nrm = torch.linalg.vector_norm(y, 2, dim=1).double()
        inv = torch.where(nrm > 0, CELLS * math.sqrt(w) / nrm, torch.zeros_like(nrm)).float()
        k = count_below(torch.abs(y).mul_(inv[:, None]), self.bits)  # 32 |z|, z = y · sqrt(w) / ‖y‖
        ones = torch.lt(y, 0).view(torch.uint8).mul_(2 * half - 1)  # z < 0: all b bits set
        idx = k.bitwise_or_(half).bitwise_xor_(ones).numpy().reshape(-1)  # half + k, or half - 1 - k
        x_lev = torch.from_numpy(np.take(self.levels(), idx)).view(rows, w)
        inner = x_lev.mul_(y).sum(1).double()  # ⟨y, X⟩ per row
        norm2 = nrm * nrm  # ‖u‖² / ⟨R u, X⟩ = (‖y‖² / w) / (⟨y, X⟩ / sqrt(w))
        s = torch.where(inner > 0, norm2 / (math.sqrt(w) * inner), torch.zeros_like(inner))
        return idx, s.numpy()


@functools.lru_cache(maxsize=None)
def thresholds32(bits: int) -> np.ndarray:
    """The positive decision thresholds (midpoints of consecutive positive levels) as float32."""
    lv = lloyd_max_gaussian(bits)[1 << (bits - 1):]
    return np.array([(a + b) / 2 for a, b in zip(lv, lv[1:])], dtype=np.float32)


CELLS = 32  # cells per unit of |z|; a power of two, so 32 |z| is exact


@functools.lru_cache(maxsize=None)
def _cell_tables(bits: int) -> tuple[np.ndarray, np.ndarray]:
    """For cell ``c = floor(32 |z|)`` (clamped to 255): #thresholds in lower cells, and 32 times
    the threshold inside cell ``c`` (``inf`` if none). At most one threshold per cell."""
    th = thresholds32(bits).astype(np.float64) * CELLS  # exact
    cell = np.floor(th).astype(np.int64)
    if len(set(cell.tolist())) != len(cell) or cell.max(initial=0) >= 255:
        raise RuntimeError("EDEN thresholds too close for the cell table")
    below = np.searchsorted(cell, np.arange(256), side="left").astype(np.uint8)
    inside = np.full(256, np.inf, dtype=np.float32)
    inside[cell] = th
    return below, inside


def count_below(scaled: torch.Tensor, bits: int, cells: bool | None = None) -> torch.Tensor:
    """``#{t in thresholds32(bits) : t < |z|}`` per element, from ``scaled = 32 |z|`` (float32,
    consumed); uint8 of the same shape.

    One comparison per threshold for b <= 3; for more thresholds a 256-cell look-up (the cell
    ``floor(32 |z|)`` gives the thresholds below it, then one comparison with the threshold inside
    the cell, if any). Both give the same counts (``cells`` forces a method, for tests).
    """
    th = thresholds32(bits)
    if not (len(th) > 3 if cells is None else cells):
        if not len(th):
            return torch.zeros(scaled.shape, dtype=torch.uint8)
        k = torch.gt(scaled, float(th[0]) * CELLS).view(torch.uint8)
        above = torch.empty(scaled.shape, dtype=torch.bool)
        for t in th[1:].tolist():
            k.add_(torch.gt(scaled, t * CELLS, out=above).view(torch.uint8))
        return k
    below, inside = _cell_tables(bits)
    scaled = scaled.clamp_(max=255.0)
    cell = scaled.to(torch.uint8).numpy().reshape(-1)
    k = torch.from_numpy(np.take(below, cell)).view(scaled.shape)
    t = torch.from_numpy(np.take(inside, cell)).view(scaled.shape)
    return k.add_(torch.gt(scaled, t).view(torch.uint8))
