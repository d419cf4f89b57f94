"""Shared machinery of the rotate-then-quantize codecs (DRIVE, EDEN): one body format, one pipeline.

Encoding a tensor of ``n`` values: flatten; multiply by a power of two ``2**-e`` so that
``max |x| < 1`` (exact but for values 2**126 below the largest; keeps every intermediate in float32
range for inputs from 1e-45 to 3e38);
rotate with ``fedsqueeze.codecs.hadamard.rotate`` (rows of ``chunk`` values plus the tail rows of
the ``layout``, signs from the per-tensor seed); the subclass maps each rotated row to
``b``-bit indices and one scale ``S`` (the paper's: the receiver's estimate of the rotated row is
``S * levels[index]``, and ``x̂ = Rᵀ(S · levels[index])``).

Tail layouts (the ``layout`` option; issue #20 item 5):

- ``"split"`` (default): the ``rest = n mod chunk`` values after the full rows become rows of the
  powers of two ``>= SPLIT_MIN`` (1024) in the binary expansion of ``rest``, plus one row for the
  last ``rest mod 1024`` values zero-padded to a power of two. Padding stays below 1024 values per
  tensor (below 512 bits at 1 bit per coordinate) at one extra fp32 scale per extra row: the MLP
  784-200-200-10 costs 1.010 bits/parameter with 1-bit DRIVE instead of 1.166. A tail shorter
  than 1024 values is laid out exactly as in ``"pow2"``.
- ``"pow2"``: the original layout, one tail row zero-padded to the next power of two (up to half
  of the tail wasted: 40000 values become 65536 coordinates).

Every row is still an independent instance of the paper's estimator (its own scale ``S``), so
unbiasedness and the per-row error are those of a row of its width. Payloads from before the
option carry no ``layout`` in their header config: they are decoded as ``"pow2"``
(``from_payload_config``), so old payloads decode exactly as they always did.

Body of one tensor (``ChunkLayout(n, chunk, split)`` gives ``rows`` and the padded length ``L``)::

    scales    rows x float32 little-endian        S of each rotated row, in row order
    indices   ceil(L * b / 8) bytes               the b-bit index of every rotated coordinate, in
                                                  padded-layout order, as one MSB-first bit stream
                                                  (the ``fedsqueeze.codecs.bits`` convention),
                                                  zero padding bits at the end

Nothing else: ``rows`` and ``L`` follow from the shape and ``chunk``, so the decoder knows the exact
body length before it allocates anything. Decoding is table look-ups, the butterfly, and
multiplications by per-row scales and by ±1: bit-for-bit reproducible on any IEEE machine.
"""
from __future__ import annotations

import dataclasses
import functools
import math
from typing import ClassVar

import numpy as np
import torch

from fedsqueeze.codecs.base import Codec
from fedsqueeze.codecs.hadamard import ChunkLayout, rotate, unrotate
from fedsqueeze.errors import CodecError, PayloadError

_F32_MAX = float(np.finfo(np.float32).max)
SPLIT_MIN = 1024  # "split" layout: the smallest unpadded tail row
LAYOUTS = {"split": SPLIT_MIN, "pow2": 0}  # layout -> ChunkLayout's ``split``


def pack_indices(idx: np.ndarray, bits: int) -> bytes:
    """``bits``-bit indices (uint8, 1 <= bits <= 4) -> MSB-first bit stream, zero-padded bytes.

    Whole groups of 8 indices are combined in 64-bit words (``bits`` bytes per group), with
    shifts and masks: no per-value loop.
    """
    if bits == 1:
        return np.packbits(idx).tobytes()
    n = len(idx)
    groups = np.zeros((n + 7) // 8 * 8, dtype=np.uint8)
    groups[:n] = idx
    w = groups.view("<u8")  # byte j of a word = index j of its group
    v = np.zeros(len(w), dtype=np.uint64)
    for j in range(8):  # index j -> bits [8b - b(j+1), 8b - bj) of a (8b)-bit big-endian field
        shift = 8 * j - (8 * bits - bits * (j + 1))
        part = w >> np.uint64(shift) if shift >= 0 else w << np.uint64(-shift)
        v |= part & np.uint64(((1 << bits) - 1) << (8 * bits - bits * (j + 1)))
    out = v.astype(">u8").view(np.uint8).reshape(-1, 8)[:, 8 - bits:]
    return out.tobytes()[:(n * bits + 7) // 8]


@functools.lru_cache(maxsize=None)
def _value_table(levels: tuple[float, ...], bits: int) -> np.ndarray:
    """Row ``g`` = the values of the indices packed in a ``group``-bit chunk ``g`` of the stream
    (``group`` = 8 bits, or 12 for 3-bit indices)."""
    group = 12 if bits == 3 else 8
    per = group // bits
    g = np.arange(1 << group)[:, None]
    idx = (g >> (group - bits * (np.arange(per) + 1))) & ((1 << bits) - 1)
    table = np.asarray(levels, dtype=np.float32)[idx]
    table.flags.writeable = False
    return table


def index_values(stream: np.ndarray, start: int, stop: int, bits: int, levels: tuple[float, ...]) -> np.ndarray:
    """``levels[index]`` (float32) for indices ``[start, stop)`` of a ``pack_indices`` stream.

    ``start`` must be a multiple of 8. Each stream byte (each 12 bits for ``bits = 3``) is looked up
    in a table of the values it holds.
    """
    table = _value_table(levels, bits)
    raw = stream[start * bits // 8:(stop * bits + 7) // 8]
    if bits == 3:
        trip = np.zeros((len(raw) + 2) // 3 * 3, dtype=np.uint16)
        trip[:len(raw)] = raw
        trip = trip.reshape(-1, 3)
        raw = np.empty((len(trip), 2), dtype=np.uint16)
        raw[:, 0] = (trip[:, 0] << 4) | (trip[:, 1] >> 4)
        raw[:, 1] = ((trip[:, 1] & 15) << 8) | trip[:, 2]
    return np.take(table, raw.reshape(-1), axis=0).reshape(-1)[:stop - start]


@dataclasses.dataclass(frozen=True)
class RotatedCodec(Codec):
    """Base of DRIVE and EDEN: subclasses set ``bits`` and implement ``levels`` and ``quantize``."""

    chunk: int = 1 << 16
    layout: str = "split"

    bits: ClassVar[int] = 1

    def __post_init__(self) -> None:
        c = self.chunk
        if isinstance(c, bool) or not isinstance(c, int) or c < 16 or c > 1 << 30 or c & (c - 1):
            raise CodecError(f"{self.codec_id}: chunk must be a power of two from 16 to 2**30, got {c!r}")
        if self.layout not in LAYOUTS:
            raise CodecError(f"{self.codec_id}: layout must be 'split' or 'pow2', got {self.layout!r}")

    @classmethod
    def from_payload_config(cls, config):
        """A header without ``layout`` predates the option: its body has the ``"pow2"`` layout."""
        return super().from_payload_config({"layout": "pow2", **config})

    def chunk_layout(self, n: int) -> ChunkLayout:
        """The rows of a tensor of ``n`` values under this codec's ``chunk`` and ``layout``."""
        return ChunkLayout(n, self.chunk, LAYOUTS[self.layout])

    # ---- hooks ----------------------------------------------------------------------------------
    def levels(self) -> np.ndarray:
        """float32 value of each index, in the units of the row scale."""
        raise NotImplementedError

    def quantize(self, y: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """Rows ``y = H D u`` (unnormalised, width ``w``; ``R u = y / sqrt(w)``) -> (indices as uint8,
        one per coordinate in row order; float64 scale ``S`` per row for the vector ``u``)."""
        raise NotImplementedError

    # ---- the body ---------------------------------------------------------------------------------
    def encode_tensor(self, x: torch.Tensor, seed: int) -> bytes:
        flat = x.reshape(-1)
        lay = self.chunk_layout(flat.numel())
        lo, hi = torch.aminmax(flat)
        top = max(-float(lo), float(hi))
        if top == 0.0:
            return bytes(4 * lay.rows) + bytes((lay.padded * self.bits + 7) // 8)
        e = max(math.frexp(top)[1], -125)  # 2**-e <= 2**125 stays a normal float32
        scales = np.empty(lay.rows)
        parts = []
        for r, y in rotate(flat, seed, self.chunk, prescale=2.0 ** -e, split=lay.split):
            idx, s = self.quantize(y)
            scales[r:r + len(s)] = s
            parts.append(pack_indices(idx, self.bits))
        scales = np.clip(np.nan_to_num(scales * 2.0 ** e), -_F32_MAX, _F32_MAX)
        return scales.astype("<f4").tobytes() + b"".join(parts)

    def decode_tensor(self, data: memoryview, shape: tuple[int, ...], seed: int) -> torch.Tensor:
        n = math.prod(shape)
        lay = self.chunk_layout(n)
        nbits = lay.padded * self.bits
        if len(data) != 4 * lay.rows + (nbits + 7) // 8:
            raise PayloadError(f"{self.codec_id}: {len(data)} body bytes for {n} values "
                               f"(expected {4 * lay.rows} + {(nbits + 7) // 8})")
        raw = np.frombuffer(data, dtype="<u4", count=lay.rows)
        if ((raw & 0x7F800000) == 0x7F800000).any():  # exponent all ones: NaN or Inf (checked on the bits)
            raise PayloadError(f"{self.codec_id}: a row scale is NaN or Inf")
        scales = raw.view("<f4").astype(np.float64)
        stream = np.frombuffer(data, dtype=np.uint8, offset=4 * lay.rows)
        if nbits % 8 and stream[-1] & (0xFF >> (nbits % 8)):
            raise PayloadError(f"{self.codec_id}: non-zero padding bits after the indices")
        row_scale = torch.from_numpy((scales / np.sqrt(lay.widths())).astype(np.float32))
        levels = tuple(float(v) for v in self.levels())

        def fill(start: int, stop: int, out: torch.Tensor) -> None:
            out.copy_(torch.from_numpy(index_values(stream, start, stop, self.bits, levels)))

        return unrotate(fill, seed, n, self.chunk, row_scale, lay.split)


def row_norms(y: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Per-row L2 norm and L1 norm of ``y`` as float64 arrays."""
    l2 = torch.linalg.vector_norm(y, 2, dim=1).double().numpy()
    l1 = torch.linalg.vector_norm(y, 1, dim=1).double().numpy()
    return l2, l1
