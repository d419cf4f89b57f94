"""The randomized Hadamard transform (RHT): the shared random rotation of DRIVE and EDEN.

``R = H D / sqrt(d)`` on a vector zero-padded to ``d = 2**k`` coordinates: ``D`` is a diagonal of
random signs drawn from the seed, ``H`` the (Sylvester) Walsh–Hadamard matrix,
``H[i, j] = (-1) ** popcount(i & j)``. ``R`` is orthogonal, so ``R⁻¹ = Rᵀ = D H / sqrt(d)``.

``fwht_`` applies ``H`` with the radix-2 butterfly: ``log2 d`` stages, each one vectorised pass over
a reshaped view ``(rows, d / 2h, 2, h)`` writing ``(a + b, a - b)`` into a second buffer (ping-pong,
no per-element Python loop): O(d log d). Only additions and subtractions, so the result is
bit-for-bit the same on every IEEE machine (a BLAS matmul with a small dense Hadamard is ~2x faster
here but its summation order, hence its rounding, depends on the library and the CPU; decoders must
be reproducible).

Chunks (``rotate``/``unrotate``): a long vector of ``n`` values is cut into ``n // chunk`` rows of
``chunk`` (a power of two) plus a tail row zero-padded to the next power of two; each row is
rotated on its own (block-diagonal ``H``), with one sign stream over the whole vector. Padding is
then below ``chunk`` values, and the codecs keep one scale per row, so each row is an independent
instance of the paper's estimator with the paper's error. ``chunk >= n`` is the paper's
whole-vector rotation. With ``split = m`` (``ChunkLayout``) the tail is instead cut into
power-of-two rows ``>= m`` (the binary expansion of its length) plus one padded row for the last
``< m`` values: padding below ``m`` values per tensor (issue #20 item 5). Rows are processed in slabs of about ``SLAB`` values through two reused
working buffers, so the working memory beyond input and output is a few MB at any size.

The sign diagonal comes from ``torch.Generator().manual_seed(seed)``: 32 random bits per int64 word
(``random_(0, 2**32)``), bit ``j`` of little-endian byte ``i`` is the sign of coordinate
``8 i + j`` (1 = negative).
"""
from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch

__all__ = ["ChunkLayout", "fwht", "fwht_", "irht", "next_pow2", "random_signs", "rht", "rotate", "sign_bytes",
           "unrotate"]


def next_pow2(n: int) -> int:
    """The smallest power of two >= n (1 for n <= 1)."""
    return 1 << max(0, (n - 1).bit_length())


def fwht_(a: torch.Tensor, scratch: torch.Tensor) -> torch.Tensor:
    """Unnormalised Walsh–Hadamard transform of each row of ``a`` (rows, 2**k), float32.

    ``a`` and ``scratch`` (same shape, contiguous) are both overwritten; the returned tensor is
    whichever of the two holds the result.
    """
    rows, d = a.shape
    if d & (d - 1):
        raise ValueError(f"Hadamard transform length {d} is not a power of two")
    src, dst = a, scratch
    h = 1
    while h < d:
        s, t, k = src, dst, h
        if h in (2, 4):  # strides of 2 or 4 floats are slow; complex64 pairs add lane-wise, same sums
            s, t, k = src.view(torch.complex64), dst.view(torch.complex64), h // 2
        s = s.view(rows, d // (2 * h), 2, k)
        t = t.view(rows, d // (2 * h), 2, k)
        torch.add(s[:, :, 0], s[:, :, 1], out=t[:, :, 0])
        torch.sub(s[:, :, 0], s[:, :, 1], out=t[:, :, 1])
        src, dst = dst, src
        h *= 2
    return src


def fwht(x: torch.Tensor) -> torch.Tensor:
    """Unnormalised Walsh–Hadamard transform along the last dimension (a power of two); new tensor."""
    flat = x.to(torch.float32).reshape(-1, x.shape[-1]).clone()
    return fwht_(flat, torch.empty_like(flat)).reshape(x.shape)


_BIT_SIGNS = np.where((np.arange(256)[:, None] >> np.arange(8)) & 1, -1.0, 1.0)  # (byte, bit j)
SLAB = 1 << 18  # values per working buffer (1 MB): whole rows, reused from slab to slab


def sign_bytes(n: int, seed: int) -> np.ndarray:
    """The sign bits of ``D`` for ``n`` coordinates (``ceil(n / 8)`` bytes, bit j of byte i = 8 i + j)."""
    g = torch.Generator().manual_seed(seed)
    words = torch.empty((n + 31) // 32, dtype=torch.int64).random_(0, 1 << 32, generator=g)
    return words.numpy().astype("<u4").view(np.uint8)[:(n + 7) // 8]


def _signs(bits: np.ndarray, start: int, stop: int, table: np.ndarray) -> torch.Tensor:
    """``table`` values of the signs of coordinates ``[start, stop)`` (``start`` a multiple of 8)."""
    vals = np.take(table, bits[start // 8:(stop + 7) // 8], axis=0).reshape(-1)[:stop - start]
    return torch.from_numpy(vals)


def random_signs(n: int, seed: int, scale: float = 1.0) -> torch.Tensor:
    """The diagonal ``D`` (times ``scale``): ``n`` values ``±scale`` drawn from ``seed`` (float32)."""
    return _signs(sign_bytes(n, seed), 0, n, (_BIT_SIGNS * scale).astype(np.float32))


@dataclass(frozen=True)
class ChunkLayout:
    """How ``n`` values map to rotated rows: ``full`` rows of ``chunk``, then the tail rows.

    ``split = 0`` (the original layout): one tail row, the ``rest = n - full * chunk`` values
    zero-padded to ``next_pow2(rest)``. ``split = m`` (a power of two): the tail is cut into rows of
    the powers of two ``>= m`` in the binary expansion of ``rest`` (largest first), and what is left
    (``rest % m``) becomes one last row zero-padded to its next power of two; where that row is as
    wide as the row before it, the two become one row of twice the width (same padding, one row
    less), repeatedly (so 2000 values with ``m = 1024`` are one row of 2048). Padding is then below
    ``m`` values instead of below ``rest``; each extra row costs one scale. Every row but the last is
    unpadded, so row ``r`` starts at the same coordinate ``start(r)`` in the input and in the padded
    layout.
    """

    n: int
    chunk: int
    split: int = 0

    @property
    def full(self) -> int:
        return self.n // self.chunk

    def tail_widths(self) -> list[int]:
        rest = self.n - self.full * self.chunk
        if not rest:
            return []
        if not self.split or rest < self.split:
            return [next_pow2(rest)]
        rows = [1 << b for b in range(rest.bit_length() - 1, -1, -1) if (rest >> b) & 1 and 1 << b >= self.split]
        left = rest % self.split
        if left:
            rows.append(next_pow2(left))
        while len(rows) > 1 and rows[-1] == rows[-2]:  # the padded row fills up to the row before it:
            rows[-2:] = [2 * rows[-1]]  # one row of twice the width, same padding, one scale less
        return rows

    @property
    def tail(self) -> int:
        """Padded width of the whole tail (one row unless ``split``)."""
        return sum(self.tail_widths())

    @property
    def rows(self) -> int:
        return self.full + len(self.tail_widths())

    @property
    def padded(self) -> int:
        return self.full * self.chunk + self.tail

    def widths(self) -> np.ndarray:
        return np.array([self.chunk] * self.full + self.tail_widths(), dtype=np.int64)

    def start(self, row: int) -> int:
        """First coordinate of ``row`` (in the input and in the padded layout alike)."""
        if row <= self.full:
            return row * self.chunk
        return self.full * self.chunk + sum(self.tail_widths()[:row - self.full])

    def slabs(self) -> Iterator[tuple[int, int, int]]:
        """``(first row, rows, width)`` groups of whole rows of about ``SLAB`` values, in order."""
        per = max(1, SLAB // self.chunk)
        for r in range(0, self.full, per):
            yield r, min(per, self.full - r), self.chunk
        for i, w in enumerate(self.tail_widths()):
            yield self.full + i, 1, w

    def buffer(self) -> torch.Tensor:
        """A flat float32 buffer that fits the largest slab."""
        return torch.empty(max([min(self.full, max(1, SLAB // self.chunk)) * self.chunk] + self.tail_widths()))


def rotate(x: torch.Tensor, seed: int, chunk: int,
           prescale: float = 1.0, split: int = 0) -> Iterator[tuple[int, torch.Tensor]]:
    """Rotated rows, a slab at a time: yields ``(first row, block)``, ``block`` = the rows
    ``H D (prescale · x)`` (unnormalised; divide a row of width ``w`` by ``sqrt(w)`` for ``R x``).

    ``block`` is a view into a working buffer that the next slab overwrites. ``prescale`` (a power
    of two in the codecs, so exact) lets callers keep values in range. ``split``: the tail layout
    (see ``ChunkLayout``).
    """
    flat = x.reshape(-1)
    n = flat.numel()
    lay = ChunkLayout(n, chunk, split)
    bits, table = sign_bytes(n, seed), (_BIT_SIGNS * prescale).astype(np.float32)
    buf, scratch = lay.buffer(), lay.buffer()
    for r, rows, w in lay.slabs():
        start, size = lay.start(r), rows * w
        real = min(size, n - start)
        a = buf[:size]
        torch.mul(flat[start:start + real], _signs(bits, start, start + real, table), out=a[:real])
        a[real:].zero_()
        yield r, fwht_(a.view(rows, w), scratch[:size].view(rows, w))


def unrotate(fill: Callable[[int, int, torch.Tensor], None], seed: int, n: int, chunk: int,
             row_scale: torch.Tensor, split: int = 0) -> torch.Tensor:
    """``D · row_scale · H v`` per row, cropped to ``n`` values: the inverse of ``rotate``.

    ``fill(start, stop, out)`` writes the rotated-domain values of padded coordinates
    ``[start, stop)`` into the float32 tensor ``out``; ``row_scale`` holds one float32 factor per
    row (``1 / w`` inverts ``rotate``; ``1 / sqrt(w)`` inverts the orthonormal ``R``).
    """
    lay = ChunkLayout(n, chunk, split)
    bits, table = sign_bytes(n, seed), _BIT_SIGNS.astype(np.float32)
    buf, scratch = lay.buffer(), lay.buffer()
    out = torch.empty(n)
    for r, rows, w in lay.slabs():
        start, size = lay.start(r), rows * w
        real = min(size, n - start)
        fill(start, start + size, buf[:size])
        y = fwht_(buf[:size].view(rows, w), scratch[:size].view(rows, w))
        y.mul_(row_scale[r:r + rows, None])
        torch.mul(y.reshape(-1)[:real], _signs(bits, start, start + real, table), out=out[start:start + real])
    return out


def rht(x: torch.Tensor, seed: int) -> torch.Tensor:
    """The orthonormal randomized Hadamard transform of flattened ``x`` (padded to a power of two)."""
    d = next_pow2(x.numel())
    (_, block), = rotate(x.to(torch.float32), seed, d)
    return block.reshape(-1).mul(1.0 / math.sqrt(d))


def irht(y: torch.Tensor, seed: int, n: int) -> torch.Tensor:
    """Inverse of ``rht``: ``n`` values from the ``d = next_pow2(n)`` rotated coordinates ``y``."""
    d = next_pow2(n)
    if y.numel() != d:
        raise ValueError(f"inverse RHT of {n} values needs {d} coordinates, got {y.numel()}")
    flat = y.to(torch.float32).reshape(-1)

    def fill(start: int, stop: int, out: torch.Tensor) -> None:
        out.copy_(flat[start:stop])

    return unrotate(fill, seed, n, d, torch.tensor([1.0 / math.sqrt(d)], dtype=torch.float32))
