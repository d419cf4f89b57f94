"""Shared pieces of the sparsifying codecs (``topk``, ``randk``): how many entries to keep, and how
their positions and values are written.

Positions (sorted, ``k`` of ``d``) take whichever is shorter in bytes:
    Rice-coded gaps: one byte ``r`` (0..62, the Rice parameter minimising the length), then the
    Golomb–Rice codes (``fedsqueeze.codecs.bits``) of ``gap_j = i_j - i_(j-1) - 1`` (``i_(-1) = -1``),
    zero-padded to a byte;
    or a bitmap: one byte ``255``, then ``ceil(d / 8)`` bytes, bit ``i`` set iff position ``i`` is
    kept (MSB first).
    Rice with ``r = 0`` is the bitmap cut after the last kept position, so the bitmap never wins
    by a byte; it takes the ties (same size, and decoding a bitmap is cheaper), i.e. dense sets.
Values: ``k`` little-endian fp32 or fp16 (fp16 saturates at ±65504), in position order.
"""
from __future__ import annotations

import dataclasses
import math

import numpy as np

from fedsqueeze.codecs.base import Codec
from fedsqueeze.codecs.bits import optimal_rice_k, pack_bits, rice_bits, rice_decode, rice_encode, unpack_bits
from fedsqueeze.errors import CodecError, PayloadError

VALUE_DTYPES = {"fp32": np.dtype("<f4"), "fp16": np.dtype("<f2")}
BITMAP = 255


def check_config(codec_id: str, fraction: float, k: int, values: str) -> None:
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 < fraction <= 1:
        raise CodecError(f"{codec_id}: fraction must be a number in (0, 1], got {fraction!r}")
    if isinstance(k, bool) or not isinstance(k, int) or k < 0:
        raise CodecError(f"{codec_id}: k must be an integer >= 0 (0 = use fraction), got {k!r}")
    if values not in VALUE_DTYPES:
        raise CodecError(f"{codec_id}: values must be one of {sorted(VALUE_DTYPES)}, got {values!r}")


def keep_count(d: int, fraction: float, k: int) -> int:
    """``min(k, d)`` if ``k`` is set, else ``max(1, round(fraction * d))`` (at most ``d``)."""
    return min(k, d) if k else min(d, max(1, round(fraction * d)))


def numel(shape: tuple[int, ...]) -> int:
    return math.prod(shape)


def encode_values(v: np.ndarray, values: str) -> bytes:
    if values == "fp16":
        v = np.clip(v, -65504.0, 65504.0)
    return v.astype(VALUE_DTYPES[values]).tobytes()


def values_size(count: int, values: str) -> int:
    return count * VALUE_DTYPES[values].itemsize


def decode_values(data: memoryview | bytes, count: int, values: str) -> np.ndarray:
    if len(data) != values_size(count, values):
        raise PayloadError(f"{count} {values} values need {values_size(count, values)} bytes, got {len(data)}")
    out = np.frombuffer(data, dtype=VALUE_DTYPES[values]).astype(np.float32)
    if not np.isfinite(out).all():
        raise PayloadError("non-finite value in a sparse payload")
    return out


def encode_positions(idx: np.ndarray, d: int) -> bytes:
    """Sorted distinct positions in [0, d) -> Rice-coded gaps or a bitmap, whichever is shorter."""
    gaps = np.diff(idx, prepend=-1) - 1
    r = optimal_rice_k(gaps)
    if (rice_bits(gaps, r) + 7) // 8 < (d + 7) // 8:
        return bytes([r]) + rice_encode(gaps, r)[0]
    bitmap = np.zeros(d, dtype=bool)
    bitmap[idx] = True
    return bytes([BITMAP]) + pack_bits(bitmap)


def decode_positions(data: memoryview | bytes, count: int, d: int) -> np.ndarray:
    """Inverse of ``encode_positions``: exactly ``count`` sorted distinct positions below ``d``."""
    if not len(data):
        raise PayloadError("missing position coding byte")
    mode, body = data[0], data[1:]
    if mode == BITMAP:
        idx = np.flatnonzero(unpack_bits(body, d))
        if len(idx) != count:
            raise PayloadError(f"bitmap marks {len(idx)} positions, expected {count}")
        return idx
    if mode > 62:
        raise PayloadError(f"unknown position coding {mode}")
    gaps = rice_decode(body, count, mode)
    if count and gaps.max() >= d:
        raise PayloadError("position gap beyond the tensor")
    idx = np.cumsum(gaps + 1) - 1
    if count and idx[-1] >= d:
        raise PayloadError(f"position {int(idx[-1])} beyond a tensor of {d}")
    return idx


@dataclasses.dataclass(frozen=True)
class KeepCodec(Codec):
    """The configuration top-k and rand-k share: how many entries to keep and how values travel."""

    fraction: float = 0.01
    k: int = 0
    values: str = "fp32"

    def __post_init__(self) -> None:
        check_config(self.codec_id, self.fraction, self.k, self.values)

    def keep(self, d: int) -> int:
        return keep_count(d, self.fraction, self.k)
