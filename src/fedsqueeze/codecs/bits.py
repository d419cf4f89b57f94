"""Bit-level coding shared by the codecs: bit packing, Elias-γ, Golomb–Rice, interleaved records, trits.

Bit order
    A bit stream is MSB-first within each byte, exactly as ``np.packbits``: stream bit ``i`` is bit
    ``7 - i % 8`` of byte ``i // 8``. A multi-bit field is written most significant bit first. The
    last byte is padded with zero bits; decoders insist on that padding (so encodings are canonical).

Codes (all self-delimiting; both variable-length codes end their prefix with a *one* bit)
    Elias-γ of ``v >= 1``: ``N = floor(log2 v)`` zeros, then ``v`` in ``N + 1`` bits (its top bit
    is the terminating one). Equivalently ``v`` written in ``2N + 1`` bits:
    1 -> ``1``, 2 -> ``010``, 3 -> ``011``, 4 -> ``00100``, 5 -> ``00101``.
    Values up to ``2**63 - 1`` are accepted; a stream announcing ``N > 62`` is an overflow.

    Golomb–Rice with parameter ``k`` of ``n >= 0``: ``q = n >> k`` zeros, a one, then the ``k`` low
    bits of ``n`` (so, like γ, the value is "``2**k + n % 2**k`` written in ``q + 1 + k`` bits").
    With ``k = 2``: 0 -> ``100``, 5 -> ``0101``, 9 -> ``00101``.

    Trits: 5 base-3 digits per byte, ``byte = 81 t0 + 27 t1 + 9 t2 + 3 t3 + t4`` (the first trit is
    the most significant), so bytes 0..242 are used and 243..255 stay free for escape codes; a
    short last group is padded (with trit 0 unless the caller says otherwise).

Records
    ``encode_records``/``decode_records`` interleave several fields per item, e.g. QSGD's and the
    RDQ universal code's "γ(gap), 1 sign bit, γ(level)" per non-zero, in one stream without padding
    between items. A field is ``"gamma"``, ``("rice", k)`` or ``("fixed", k)`` (a plain int ``k`` is
    short for ``("fixed", k)``).

Vectorised decoding (no per-value Python loop)
    Record boundaries are found by ``fedsqueeze.codecs.bitscan`` (a "next one-bit" array gives the
    successor of every bit position at once; lockstep walkers that re-synchronise, with image
    shrinking and pointer doubling as the guaranteed fallback). Field values are then read with two
    64-bit word gathers per field. Every decoder validates counts against the bits available before
    allocating and raises ``PayloadError`` on truncation, overflow or non-zero padding.

Vectorised encoding
    Every field is "a value of ``w <= 64`` bits at bit offset ``o``" (the zeros of a γ or Rice
    prefix need no writing: the buffer starts zeroed). It touches at most two 64-bit words; the
    fields landing in one word are OR-ed together with ``np.bitwise_or.reduceat``.
"""
from __future__ import annotations

import math
import struct
from collections.abc import Sequence

import numpy as np

from fedsqueeze.codecs.bitscan import read_records
from fedsqueeze.errors import CodecError, PayloadError

Field = str | int | tuple[str, int]  # "gamma", ("rice", k), ("fixed", k) or k
MAX_VALUE = (1 << 63) - 1
_U64 = np.uint64


# ---- plain bits ----------------------------------------------------------------------------------
def pack_bits(bits: np.ndarray) -> bytes:
    """Bits (bool or 0/1 uint8) -> bytes, MSB first, last byte zero-padded."""
    return np.packbits(np.asarray(bits).astype(bool, copy=False)).tobytes()


_BITS = np.unpackbits(np.arange(256, dtype=np.uint8)[:, None], axis=1)  # byte -> its 8 bits


def unpack_bits(data: bytes | memoryview, nbits: int, values: np.ndarray | None = None) -> np.ndarray:
    """The first ``nbits`` bits of ``data`` (exactly ``ceil(nbits / 8)`` bytes, zero padding) as uint8.

    With ``values`` (two entries) the result is ``values[bit]``, looked up in one pass.
    """
    buf = np.frombuffer(data, dtype=np.uint8)
    if nbits < 0 or len(buf) != (nbits + 7) // 8:
        raise PayloadError(f"bit field of {nbits} bits needs {(max(nbits, 0) + 7) // 8} bytes, got {len(buf)}")
    if nbits % 8 and buf[-1] & (0xFF >> (nbits % 8)):
        raise PayloadError("non-zero padding bits after a bit field")
    table = _BITS if values is None else np.asarray(values)[_BITS]
    return table[buf].reshape(-1)[:nbits]


def bit_length(values: np.ndarray) -> np.ndarray:
    """``int.bit_length`` for each element of a non-negative integer array (int64 result)."""
    v = np.asarray(values)
    _, e = np.frexp(v.astype(np.float64))  # v = m * 2**e with m in [0.5, 1): e = bit_length ...
    e = e.astype(np.int64)
    if len(v) and v.max() >= 1 << 53:  # ... unless rounding to float pushed v up to a power of two
        e -= (v.astype(_U64) >> np.maximum(e - 1, 0).astype(_U64)) == 0
    return e


# ---- writing fields (64-bit big-endian words) ------------------------------------------------------
def _scatter(first: int, end: int, fields: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]]) -> np.ndarray:
    """Words ``first >> 6 ..`` of a zeroed stream covering bits [first, end), fields OR-ed in.

    Each entry of ``fields`` is (bit offsets, widths <= 64, values) with increasing offsets.
    A field touches at most two words: its left-aligned value shifted right by the in-word
    offset, and (if it crosses) a spill into the next word, at most one per word.
    """
    w0 = first >> 6
    out = np.zeros(((end + 63) >> 6) - w0 + 1, dtype=_U64)
    for pos, width, value in fields:
        width = np.broadcast_to(np.asarray(width, dtype=np.int64), pos.shape)
        keep = width > 0
        if not keep.all():
            pos, width, value = pos[keep], width[keep], value[keep]
        if not len(pos):
            continue
        left = value << (64 - width).astype(_U64)
        off = pos & 63
        word = (pos >> 6) - w0
        head = np.flatnonzero(np.concatenate([[True], word[1:] != word[:-1]]))
        out[word[head]] |= np.bitwise_or.reduceat(left >> off.astype(_U64), head)
        cross = np.flatnonzero(off + width > 64)
        if len(cross):
            out[word[cross] + 1] |= left[cross] << (64 - off[cross]).astype(_U64)
    return out


# ---- records: interleaved fields ------------------------------------------------------------------
def _norm_fields(fields: Sequence[Field]) -> list[tuple[str, int]]:
    out = []
    for f in fields:
        if isinstance(f, (int, np.integer)) and not isinstance(f, bool):
            f = ("fixed", int(f))
        if f == "gamma":
            out.append(("gamma", 0))
        elif isinstance(f, tuple) and len(f) == 2 and f[0] in ("rice", "fixed") and isinstance(f[1], int):
            lo = 1 if f[0] == "fixed" else 0
            if not lo <= f[1] <= (63 if f[0] == "fixed" else 62):
                raise CodecError(f"{f[0]} field width {f[1]} out of range")
            out.append(f)
        else:
            raise CodecError(f"unknown field {f!r}: use 'gamma', ('rice', k) or ('fixed', k)")
    if not out:
        raise CodecError("a record needs at least one field")
    return out


def _check_columns(spec: list[tuple[str, int]], cols: list[np.ndarray]) -> int:
    n = len(cols[0])
    for (kind, k), col in zip(spec, cols):
        if len(col) != n:
            raise CodecError("all record columns must have the same length")
        if n and (col.min() < (1 if kind == "gamma" else 0) or (kind != "fixed" and col.max() > MAX_VALUE)):
            raise CodecError(f"{kind} coding needs values in [{1 if kind == 'gamma' else 0}, 2**63)")
        if n and kind == "fixed" and int(col.max()) >> k:
            raise CodecError(f"value {int(col.max())} does not fit in {k} bits")
    return n


def _layout(spec: list[tuple[str, int]], cols: list[np.ndarray], start: int) -> tuple[list, int]:
    """The fields of records ``cols`` placed from bit ``start``: ([(offsets, widths, values)], end)."""
    widths, writes = [], []  # per field: its width per record; (offset in record, width, value)
    for (kind, k), col in zip(spec, cols):
        v = col.astype(_U64)
        if kind == "gamma":
            nb = bit_length(v) - 1
            widths.append(2 * nb + 1)
            writes.append((nb, nb + 1, v))
        elif kind == "rice":
            q = (v >> _U64(k)).astype(np.int64)
            widths.append(q + (1 + k))
            writes.append((q, k + 1, (v & _U64((1 << k) - 1)) | _U64(1 << k)))
        else:
            widths.append(k)
            writes.append((0, k, v))
    total = sum(widths) + np.zeros(len(cols[0]), dtype=np.int64)
    base = np.cumsum(total) - total + start
    end = start + int(total.sum())
    placed = []
    for (rel, w, v), width in zip(writes, widths):
        placed.append((base + rel, w, v))
        base = base + width
    return placed, end


_CHUNK = 1 << 18  # records laid out per pass: the temporaries stay a few MB


def encode_records(columns: Sequence[np.ndarray], fields: Sequence[Field]) -> tuple[bytes, int]:
    """Interleave ``columns[j][i]`` coded as ``fields[j]`` for each item ``i``; returns (bytes, nbits)."""
    spec = _norm_fields(fields)
    if len(columns) != len(spec):
        raise CodecError(f"{len(columns)} columns for {len(spec)} fields")
    cols = [np.asarray(c).reshape(-1) for c in columns]
    n = _check_columns(spec, cols)
    pieces, nbits = [], 0
    for lo in range(0, n, _CHUNK):
        placed, end = _layout(spec, [c[lo:lo + _CHUNK] for c in cols], nbits)
        if end > 1 << 40:
            raise CodecError(f"a {end}-bit stream is too long (Rice parameter too small for the values?)")
        pieces.append((nbits >> 6, _scatter(nbits, end, placed)))
        nbits = end
    out = np.zeros(((nbits + 63) >> 6) + 1, dtype=_U64)
    for w0, words in pieces:
        out[w0:w0 + len(words)] |= words
    return out.astype(">u8").tobytes()[:(nbits + 7) >> 3], nbits


def decode_records(data: bytes | memoryview, count: int, fields: Sequence[Field],
                   nbits: int | None = None, *, strict: bool = False) -> tuple[list[np.ndarray], int]:
    """Read ``count`` records of ``fields`` from the start of a stream; returns (columns, bits used).

    ``nbits`` (default ``8 * len(data)``) bounds the stream; ``data`` must hold at least that many
    bits. Values come back as int64. Raises ``PayloadError`` if the stream ends early or a value
    overflows 63 bits; with ``strict`` also unless the records use the stream up (exactly
    ``nbits`` bits, or with no ``nbits`` all of ``data`` but the zero padding of its last byte).
    """
    cols, end = _decode_records(data, count, fields, nbits)
    if strict:
        check_end(data, end, nbits)
    return cols, end


def _decode_records(data: bytes | memoryview, count: int, fields: Sequence[Field],
                    nbits: int | None) -> tuple[list[np.ndarray], int]:
    spec = _norm_fields(fields)
    total = 8 * len(data)
    nbits = total if nbits is None else nbits
    if not 0 <= nbits <= total:
        raise PayloadError(f"bit stream of {nbits} bits declared in {len(data)} bytes")
    min_bits = sum(1 if kind != "fixed" else k for kind, k in spec)
    if count < 0 or count * min_bits > nbits:
        raise PayloadError(f"{count} records cannot fit in {nbits} bits")
    if count == 0:
        return [np.zeros(0, np.int64) for _ in spec], 0
    return read_records(data, nbits, count, spec, min_bits)


def check_end(data: bytes | memoryview, end: int, nbits: int | None) -> None:
    """The stream must be used up: exactly ``nbits`` bits, or (no ``nbits``) only zero padding left."""
    if nbits is not None:
        if end != nbits:
            raise PayloadError(f"bit stream of {nbits} bits has {nbits - end} unused bits")
        if len(data) != (nbits + 7) // 8:
            raise PayloadError(f"{nbits} bits stored in {len(data)} bytes")
    elif 8 * len(data) - end >= 8:
        raise PayloadError(f"{(8 * len(data) - end) // 8} unused trailing bytes after the bit stream")
    if end % 8 and np.frombuffer(data, np.uint8)[end // 8] & (0xFF >> (end % 8)):
        raise PayloadError("non-zero padding bits after the bit stream")


# ---- the codes, one column each ----------------------------------------------------------------------
def elias_gamma_encode(values: np.ndarray) -> tuple[bytes, int]:
    """Elias-γ codes of ``values >= 1`` back to back; returns (bytes, number of bits)."""
    return encode_records([values], ["gamma"])


def elias_gamma_decode(data: bytes | memoryview, count: int, nbits: int | None = None) -> np.ndarray:
    """Exactly ``count`` Elias-γ values (int64); the stream must end there (then zero padding)."""
    return decode_records(data, count, ["gamma"], nbits, strict=True)[0][0]


def rice_encode(values: np.ndarray, k: int) -> tuple[bytes, int]:
    """Golomb–Rice codes (parameter ``k``) of ``values >= 0``; returns (bytes, number of bits)."""
    return encode_records([values], [("rice", k)])


def rice_decode(data: bytes | memoryview, count: int, k: int, nbits: int | None = None) -> np.ndarray:
    """Exactly ``count`` Golomb–Rice values (int64); the stream must end there (then zero padding)."""
    return decode_records(data, count, [("rice", k)], nbits, strict=True)[0][0]


def rice_bits(values: np.ndarray, k: int) -> int:
    """Length in bits of the Rice code of ``values`` with parameter ``k``."""
    v = np.asarray(values).astype(_U64)
    return int((v >> _U64(k)).sum(dtype=np.float64)) + len(v) * (k + 1)


def optimal_rice_k(values: np.ndarray) -> int:
    """The smallest ``k`` in 0..62 minimising the Rice-coded length of ``values`` (exact).

    The length is convex in ``k`` (its increments ``n - sum ceil(floor(v / 2**k) / 2)`` never
    decrease), so a descent from ``log2(mean)`` finds the minimum in a few evaluations.
    """
    v = np.asarray(values).reshape(-1)
    if not len(v):
        return 0
    k = min(max(int(np.log2(float(v.astype(np.float64).mean()) + 1.0)), 0), 62)
    cost = rice_bits(v, k)
    while k > 0 and (lower := rice_bits(v, k - 1)) <= cost:
        k, cost = k - 1, lower
    while k < 62 and (higher := rice_bits(v, k + 1)) < cost:
        k, cost = k + 1, higher
    return k


# ---- fp32 scales --------------------------------------------------------------------------------------
def pack_scale(value: float) -> bytes:
    """One little-endian fp32 (rounded to nearest)."""
    return struct.pack("<f", value)


def read_scale(data: bytes | memoryview) -> float:
    """The leading fp32 of ``data``: a scale, so it must be finite and >= 0."""
    if len(data) < 4:
        raise PayloadError("chunk too short for its fp32 scale")
    (scale,) = struct.unpack_from("<f", data, 0)
    if not math.isfinite(scale) or scale < 0:
        raise PayloadError(f"scale {scale} is negative or not finite")
    return scale


# ---- trits -------------------------------------------------------------------------------------------
_POW3 = np.array([81, 27, 9, 3, 1], dtype=np.uint8)
_DIGITS = ((np.arange(243)[:, None] // _POW3) % 3).astype(np.uint8)  # byte -> its 5 trits


def pack_trits(trits: np.ndarray, *, sliced: bool = False, pad: int = 0) -> bytes:
    """Trits (0, 1, 2) -> ``m = ceil(n / 5)`` bytes ``81 t0 + 27 t1 + 9 t2 + 3 t3 + t4`` (< 243).

    Groups are 5 consecutive trits, or with ``sliced`` the trits ``i, m + i, ..., 4m + i`` (the
    3LC layout: five equal slices combined element-wise). The tail is padded with ``pad``.
    """
    t = np.asarray(trits, dtype=np.uint8).reshape(-1)
    if len(t) and t.max() > 2:
        raise CodecError("trits must be 0, 1 or 2")
    m = (len(t) + 4) // 5
    groups = np.full(5 * m, pad, dtype=np.uint8)
    groups[:len(t)] = t
    g = groups.reshape(5, m) if sliced else groups.reshape(m, 5).T
    out = g[0] * np.uint8(81)
    for j in range(1, 5):
        out += g[j] * _POW3[j]
    return out.tobytes()


def unpack_trits(data: bytes | memoryview, count: int, *, sliced: bool = False, pad: int = 0,
                 values: np.ndarray | None = None) -> np.ndarray:
    """``count`` trits from exactly ``ceil(count / 5)`` bytes (each < 243; padding trits == ``pad``).

    With ``values`` (three entries) the result is ``values[trit]``, looked up in one pass.
    """
    b = np.frombuffer(data, dtype=np.uint8)
    m = (count + 4) // 5
    if count < 0 or len(b) != m:
        raise PayloadError(f"{count} trits need {max(m, 0)} bytes, got {len(b)}")
    if m and b.max() >= 243:
        raise PayloadError(f"byte {int(b.max())} is not a group of 5 trits")
    tail = np.arange(count, 5 * m)  # padding positions: digit j of byte i
    byte, digit = (tail % m, tail // m) if sliced else (tail // 5, tail % 5)
    if (_DIGITS[b[byte], digit] != pad).any():
        raise PayloadError("bad padding trits")
    table = _DIGITS if values is None else np.asarray(values)[_DIGITS]
    if not sliced:
        return table[b].reshape(-1)[:count]
    out = np.empty((5, m), dtype=table.dtype)
    for j in range(5):  # slice j holds digit j of every byte
        np.take(np.ascontiguousarray(table[:, j]), b, out=out[j])
    return out.reshape(-1)[:count]
