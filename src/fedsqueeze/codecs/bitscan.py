"""Where do the records of a prefix-coded bit stream start? Found without a per-record Python loop.

Finding record boundaries is the only sequential part of decoding γ / Rice codes. With
``nxt[p]`` = the first one bit at or after ``p`` (one reverse ``minimum.accumulate``), the start of
the record that follows a record starting at ``p`` is an array expression ``F[p]`` evaluated for
*every* bit position at once (γ: ``2 nxt[p] - p + 1``; Rice: ``nxt[p] + 1 + k``; fixed: ``p + k``;
a record is the composition of its fields). The true starts are the orbit ``0, F(0), F(F(0)), ...``;
``F(p) = T`` means "ends exactly at the end", ``T + 1`` "runs past the end". Three methods:

1. Walkers (default). ``P`` walkers start at evenly spaced bit offsets and follow ``F`` in
   lockstep, one vectorised step per iteration; the first walker to reach a position owns it, a
   walker that lands on a position owned by another stops there ("merges"). Decoding from a wrong
   offset re-synchronises after a few codes, so each walker runs through its own stretch and a
   little into the next one: about ``count / P`` iterations of O(P) work. The orbit is walker 0's
   positions, then (from its merge point on) the positions of the walker it merged into, and so
   on: one Python step per walker, then one vectorised mask over the owned positions.
2. Image shrinking, if walkers do not merge in time (streams that never re-synchronise, e.g.
   periodic ones): ``Y0`` = all positions, ``Y(j+1) = F(Y(j)) ∩ [F^(j+1)(0), T)``. The orbit beyond
   ``F^j(0)`` always lies in ``Y(j)``; as soon as sorted ``Y(j)`` is a chain (``F`` maps each
   element to the next) it is the orbit. Each round costs O(|Y(j)|).
3. Pointer doubling on the last (closed) ``Y``: ``R <- R ++ g(R)``, ``g <- g∘g`` until ``count``
   starts are known: O(|Y| log count), the guaranteed worst case.

``read_records`` applies this to windows of ``WINDOW`` bits in turn (each window ends where the
last record wholly inside it ends), so the per-bit arrays stay small and are reused, then reads
every field with two 64-bit word gathers.
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np

from fedsqueeze.errors import PayloadError

Step = Callable[[np.ndarray], np.ndarray]  # record starts -> the starts of the records after them

_SHRINK_ROUNDS = 48  # image-shrinking rounds before pointer doubling
MAX_WALKERS = 8192
WINDOW = 1 << 20  # bits scanned per pass: the per-bit arrays stay a few MB and warm


def read_records(data: bytes | memoryview, nbits: int, count: int, spec: list[tuple[str, int]],
                 min_bits: int) -> tuple[list[np.ndarray], int]:
    """``count`` records of ``spec`` from bit 0 of a stream of ``nbits`` bits: (columns, end bit).

    The stream is scanned in windows; each window yields the records that lie wholly inside it
    and the next window starts where the last of them ends (a window without one is doubled).
    """
    words = _words(data)
    raw = np.frombuffer(data, dtype=np.uint8)
    cols = [np.empty(count, dtype=np.int64) for _ in spec]  # filled window by window
    pos, done, window = 0, 0, WINDOW
    while done < count:
        end = min(nbits, pos + window)
        got = _window(raw, words, pos, end, spec, count - done, min_bits)
        if got is None or (end == nbits and got[2] < count - done):
            found = done + (got[2] if got else 0)
            raise PayloadError(f"truncated bit stream: {found} of {count} records present")
        if got[2] == 0:
            window *= 2
            continue
        part, pos, n = got
        for col, values in zip(cols, part):
            col[done:done + n] = values
        done += n
        window = WINDOW
    return cols, pos


def _window(raw: np.ndarray, words: np.ndarray, pos: int, end: int, spec: list[tuple[str, int]],
            left: int, min_bits: int) -> tuple[list[np.ndarray], int, int] | None:
    """The records wholly inside bits [pos, end): (columns, their end bit, how many); None if empty."""
    T = end - pos
    if T <= 0:
        return None
    bits = np.unpackbits(raw[pos >> 3:(end + 7) >> 3])[pos & 7:(pos & 7) + T]
    nxt = next_one(bits)

    def step(p: np.ndarray) -> np.ndarray:
        return advance(p, spec, nxt, T)

    starts = record_starts(step, T, min(left, T // min_bits), min_bits)
    ends = step(starts[-2:])
    if ends[-1] > T:  # the last one runs past the window
        starts, ends = starts[:-1], ends[:-1]
    if not len(starts):
        return [], pos, 0
    return _fields(words, nxt, starts, pos, spec), pos + int(ends[-1]), len(starts)


def _fields(words: np.ndarray, nxt: np.ndarray, p: np.ndarray, base: int,
            spec: list[tuple[str, int]]) -> list[np.ndarray]:
    """Field values of the records starting at window positions ``p`` (window at bit ``base``)."""
    cols = []
    for kind, k in spec:
        if kind == "fixed":
            cols.append(_read(words, p + base, k).astype(np.int64))
            p = p + k
            continue
        a = nxt[p].astype(np.int64)
        zeros = a - p
        if kind == "gamma":
            if zeros.max() > 62:
                raise PayloadError("Elias-gamma code of more than 125 bits (value overflows 63 bits)")
            cols.append(_read(words, a + base, zeros + 1).astype(np.int64))
            p = a + zeros + 1
        else:
            if zeros.max() >= 1 << (63 - k):
                raise PayloadError("Golomb-Rice quotient overflows 63 bits")
            cols.append((zeros << k) | _read(words, a + (base + 1), k).astype(np.int64))
            p = a + 1 + k
    return cols


def _words(data: bytes | memoryview) -> np.ndarray:
    """The stream as big-endian 64-bit words, plus two zero words so any field read stays in range."""
    raw = np.zeros(8 * (((len(data) + 7) >> 3) + 2), dtype=np.uint8)
    raw[:len(data)] = np.frombuffer(data, dtype=np.uint8)
    return raw.view(">u8").astype(np.uint64)


def _read(words: np.ndarray, pos: np.ndarray, width: np.ndarray | int) -> np.ndarray:
    """Fields of 0..63 bits at bit offsets ``pos`` (uint64)."""
    u1, u63 = np.uint64(1), np.uint64(63)
    idx = pos >> 6
    off = (pos & 63).astype(np.uint64)
    hi = (words[idx] << off) | ((words[idx + 1] >> u1) >> (u63 - off))  # off 0: no spill
    return (hi >> u1) >> (63 - np.asarray(width, dtype=np.int64)).astype(np.uint64)


def next_one(bits: np.ndarray) -> np.ndarray:
    """nxt[p] = first one bit at or after p (T + 1 if none), for p in [0, T + 1]; int32 if it fits."""
    nbits = len(bits)
    dtype = np.int32 if 2 * nbits + 140 < 2**31 else np.int64
    none = nbits + 1
    idx = np.where(bits.astype(bool), np.arange(nbits, dtype=dtype), dtype(none))
    nxt = np.empty(nbits + 2, dtype=dtype)
    nxt[:nbits] = np.minimum.accumulate(idx[::-1])[::-1]
    nxt[nbits:] = none
    return nxt


def advance(p: np.ndarray, spec: list[tuple[str, int]], nxt: np.ndarray, nbits: int) -> np.ndarray:
    """Start of the next record for records starting at ``p`` (clipped: T + 1 = does not fit)."""
    stop = nbits + 1
    for kind, k in spec:
        if kind == "fixed":
            p = p + k
        elif kind == "gamma":
            a = nxt[p].astype(np.int64)
            a *= 2
            a -= p
            a += 1
            p = a
        else:
            p = nxt[p] + (1 + k)
        np.minimum(p, stop, out=p)
    return p


def record_starts(step: Step, nbits: int, count: int, min_bits: int = 1) -> np.ndarray:
    """The first ``count`` (>= 1) elements of the orbit 0, F(0), ... below ``nbits`` (fewer if it ends).

    ``step`` maps an array of positions to their successors ``F`` (T + 1 = does not fit).
    """
    if count <= 64:
        out = [0]
        while len(out) < count and (q := int(step(np.array(out[-1:]))[0])) < nbits:
            out.append(q)
        return np.asarray(out, dtype=np.int64)
    found = walk(step, nbits, count, min_bits)
    if found is not None:
        return found[:count]
    return shrink(step(np.arange(nbits, dtype=np.int64)), nbits, count)


FREE, END = -1, -2  # owner codes: not reached yet; past the end of the stream


def walk(step: Step, nbits: int, count: int, min_bits: int = 1,
         walkers: int | None = None) -> np.ndarray | None:
    """Method 1 (see the module docstring); None if the walkers did not all stop in time."""
    P = walkers or min(max(count // 32, 1), MAX_WALKERS, nbits)
    stretch = -(-nbits // P)
    limit = stretch // min_bits + 256  # enough to cross a stretch; beyond it they do not merge
    dtype = np.int16 if P < 2**15 else np.int32
    owner = np.full(nbits + 2, FREE, dtype=dtype)
    owner[nbits:] = END
    ids = np.arange(P, dtype=dtype)
    pos = (np.arange(P, dtype=np.int64) * nbits) // P
    owner[pos] = ids
    merge_to = np.full(P, -1, dtype=np.int64)
    merge_at = np.zeros(P, dtype=np.int64)
    for _ in range(limit):
        nxt = step(pos)
        held = owner[nxt]
        stop = held != FREE
        if stop.any():  # merged into another walker's path, or at the end
            merged = held >= 0
            merge_to[ids[merged]] = held[merged]
            merge_at[ids[merged]] = nxt[merged]
            ids, nxt = ids[~stop], nxt[~stop]
        owner[nxt] = ids
        held = owner[nxt]
        lost = held != ids  # two walkers on one new position: one owns it, the other merges
        if lost.any():
            merge_to[ids[lost]] = held[lost]
            merge_at[ids[lost]] = nxt[lost]
            ids, nxt = ids[~lost], nxt[~lost]
        pos = nxt
        if not len(ids):
            break
    else:
        return None
    # the orbit: walker 0 up to its merge point, then the walker it merged into, and so on
    chain, bounds = [0], [0]
    to, at = merge_to.tolist(), merge_at.tolist()
    while to[chain[-1]] >= 0:
        bounds.append(at[chain[-1]])
        chain.append(to[chain[-1]])
    owned = np.flatnonzero(owner[:nbits] >= 0)
    leg = np.searchsorted(np.asarray(bounds), owned, side="right") - 1
    return owned[owner[owned] == np.asarray(chain, dtype=dtype)[leg]]


def shrink(F: np.ndarray, nbits: int, count: int) -> np.ndarray:
    """Methods 2 and 3 (see the module docstring)."""
    prefix = [0]  # p_0 .. p_j = F^j(0), one per round
    Y = np.arange(nbits, dtype=F.dtype)
    for _ in range(_SHRINK_ROUNDS):
        if len(prefix) >= count:
            return np.asarray(prefix[:count], dtype=np.int64)
        FY = F[Y]
        if np.array_equal(FY[:-1], Y[1:]):  # Y is a chain: the orbit of p_j
            return np.concatenate([np.asarray(prefix[:-1], dtype=np.int64), Y[:count - len(prefix) + 1]])
        size = len(Y)
        X = _unique(FY[FY < nbits], nbits)
        p = int(F[prefix[-1]])
        if p >= nbits:
            return np.asarray(prefix, dtype=np.int64)
        prefix.append(p)
        Y = X[np.searchsorted(X, p):]
        if len(Y) > 0.97 * size and len(prefix) > 8:  # not re-synchronising: stop shrinking
            break
    return _double(F, Y, nbits, prefix, count)


def _double(F: np.ndarray, Y: np.ndarray, nbits: int, prefix: list[int], count: int) -> np.ndarray:
    n = len(Y)  # Y[0] = prefix[-1], and F maps Y into Y or past the end
    g = np.append(np.searchsorted(Y, F[Y]), n)  # F(y) >= T -> sentinel n
    R = np.zeros(1, dtype=np.int64)
    need = count - len(prefix) + 1
    while len(R) < need:
        step = g[R]
        step = step[step < n]
        if not len(step):
            break
        R = np.concatenate([R, step])
        g = g[g]
    return np.concatenate([np.asarray(prefix[:-1], dtype=np.int64), Y[R[:need]]])


def _unique(values: np.ndarray, nbits: int) -> np.ndarray:
    if len(values) > nbits // 16:
        mark = np.zeros(nbits, dtype=bool)
        mark[values] = True
        return np.flatnonzero(mark).astype(values.dtype, copy=False)
    return np.unique(values)
