"""Context-modelled entropy coding of quantised integer symbols (``rdq(coder="ctx")``).

Real model updates are not i.i.d.: whole rows and columns of a weight matrix share a scale (an
output neuron's error signal, an input feature's activity; dead ReLU features give exactly zero
columns) and a sign (ΔW = −η·Σ δ·xᵀ with non-negative inputs x: a row takes the sign of its δ).
A symbol is predicted by its neighbours, so coding it under a model *conditioned on the
neighbours* needs fewer bits than the order-0 entropy H0 and can go below the i.i.d.
rate–distortion limit of the layer's values.

Context design: a checkerboard/pyramid order (the two-pass idea of He et al., "Checkerboard Context
Model for Efficient Learned Image Compression", CVPR 2021, applied recursively). The tensor is
viewed as a matrix (first dimension = rows, the rest flattened = columns; a vector is one row).
Repeatedly split the current matrix M along its longer side into A = even columns (rows) and
B = odd columns (rows); A is coded first (recursively), then every element of B under the context

    local = s(before) + s(after),   s(q) = clip(q, −2, 2) + 2      (the two neighbours in A: 0 .. 8)
    line  = activity bucket of the element's whole line in A (its row for a column split, its column
            for a row split): mean min(|q|, 2) against ``ACTIVITY`` (integer arithmetic), 0 .. 3
    ctx   = local·4 + line

separately for column and row splits and for the finest level of each versus the coarser ones
(2 × 2 × 36 contexts; a neighbour at distance 1 says more than one at distance 2^k), plus one for the last
≤ 16 symbols (the root). Signed neighbours matter: on captured MLP updates they take ctx from ~0.95
to ~0.85 of the i.i.d. limit. The decoder knows A before B, so it computes every context of a level
at once: the coder is vectorised per level (numpy passes and one range-coder call per context and
level, about 36·log2(numel) calls at most), with no per-symbol Python.

Models are *semi-static* (two-pass): the encoder counts each context's symbols over the whole
tensor and sends the counts, quantised as in ``fedsqueeze.codecs.entropy`` (per-context shift,
Elias-γ counts); the symbols are then coded with ``constriction.stream.queue.RangeEncoder`` under
``Categorical`` models built from those integers on both sides, so encoder and decoder hold
identical models (integer counts in, no adaptive float state that could drift between machines).
Why not a symbol-by-symbol adaptive model: its context of symbol i needs symbol i − 1, a sequential
dependence that costs a Python step per symbol (seconds per 10^6). The per-context tables cost a
few hundred bits per tensor, paid back many times on any tensor above a few thousand elements.

Tensor modes (the first byte; the encoder sends the cheapest that applies, so tiny tensors pay no
model tables)::

    0 constant   zigzag varint of the one value
    1 raw        zigzag varints of the values, in order
    2 gamma      rdq's run-length Elias-γ code (``rdq._gamma_encode``)
    3 order0     ``fedsqueeze.codecs.entropy.encode_symbols`` (one count table + ANS)
    4 ctx        zigzag varint lo, varint K − 1, varint n_esc, ``MASK_BYTES`` used-context bitmap
                 (LE), u8 shift per used context, chunk: Elias-γ(c' + 1) of the K (+1 escape)
                 quantised counts of each used context, n_esc × int32 LE escaped values (coding
                 order), rest: uint32 LE words of the range coder

The core alphabet lo .. lo+K−1 lies in [−m, m], m chosen for the fewest side-information bits
(``_window``); symbols outside it are coded as an escape (index K) and sent raw. Modes 1–2 are
tried for tensors of at most ``SMALL`` elements, mode 3 up to ``MEDIUM`` (and beyond when ctx
needs over 4 bits/symbol), mode 4 above ``SMALL``; the shortest wins.
"""
from __future__ import annotations

import constriction
import numpy as np

from fedsqueeze.codecs.bits import elias_gamma_decode, elias_gamma_encode
from fedsqueeze.codecs.entropy import _I32, MAX_CORE, choose_shift, decode_symbols, encode_symbols, unzigzag, zigzag
from fedsqueeze.errors import CodecError, PayloadError
from fedsqueeze.wire.varint import Reader, encode_varint, write_chunk

CLASS_MAX = 2                    # class(q) = min(|q|, CLASS_MAX)
ACTIVITY = (5, 20, 60)           # line-activity bucket edges: mean class x 100
N_LINE = len(ACTIVITY) + 1
PER_DIR = (4 * CLASS_MAX + 1) * N_LINE  # context values per split direction
N_RANK = 2                       # finest level, coarser levels: contexts of their own
N_CTX = 1 + 2 * N_RANK * PER_DIR  # root, then per (direction, level rank)
MASK_BYTES = (N_CTX + 7) // 8    # the used-context bitmap
ROOT = 16                        # matrices of at most this many elements are coded as the root
SMALL = 256                      # up to here every mode is tried
MEDIUM = 1 << 16                 # up to here order-0 ANS is tried against ctx
MODES = ("constant", "raw", "gamma", "order0", "ctx")


def as_matrix(n: int, shape: tuple[int, ...]) -> tuple[int, int]:
    """(rows, columns) of the matrix view of a tensor: first dimension x the rest; a vector is one row."""
    rows = shape[0] if len(shape) >= 2 and shape[0] > 0 else 1
    return rows, n // rows


def _plan(m: np.ndarray) -> tuple[np.ndarray, list[tuple[np.ndarray, np.ndarray, int]]]:
    """(root view, [(A, B, group)] coarsest first): the pyramid of even/odd splits of matrix view m;
    group = direction (0: columns split, 1: rows) · N_RANK + level rank (0: the finest split of that
    direction, 1: coarser)."""
    steps = []
    while m.size > ROOT:
        r, c = m.shape
        if c >= r:
            a, b, direction = m[:, 0::2], m[:, 1::2], 0
        else:
            a, b, direction = m[0::2], m[1::2], 1
        steps.append((a, b, direction))
        m = a
    seen = [0, 0]
    out = []
    for a, b, direction in steps:  # finest first: the level rank per direction
        out.append((a, b, direction * N_RANK + min(seen[direction], N_RANK - 1)))
        seen[direction] += 1
    return m, out[::-1]


def _contexts(a: np.ndarray, b_shape: tuple[int, int], group: int) -> np.ndarray:
    """Context of every element of B (flat, uint8, in B's order) from what A already holds.

    local = s(left/up neighbour) + s(right/down neighbour), s(q) = clip(q, ±CLASS_MAX) + CLASS_MAX;
    line = the activity bucket of the element's whole line in A (its row for a column split, its
    column for a row split: mean min(|q|, CLASS_MAX), integer thresholds ``ACTIVITY``);
    context = local·4 + line, offset by the (direction, level rank) group.
    """
    direction = group // N_RANK
    clipped = np.minimum(np.maximum(a, -CLASS_MAX), CLASS_MAX).astype(np.int8)
    sgn = (clipped + np.int8(CLASS_MAX)).view(np.uint8)  # 0 .. 2·CLASS_MAX
    cls = np.abs(clipped).view(np.uint8)
    axis = 1 - direction  # the line of B's element that A holds completely
    total = cls.sum(axis=axis, dtype=np.int64) * 100
    length = cls.shape[axis]
    bucket = sum((total >= t * length).astype(np.uint8) for t in ACTIVITY)
    if direction == 0:
        nb = b_shape[1]
        left = sgn[:, :nb]
        right = sgn[:, 1:nb + 1]
        if right.shape[1] < nb:  # an even column count: the last B column has no right neighbour
            right = np.concatenate([right, left[:, -1:]], axis=1)
        line = bucket[:, None]
    else:
        nb = b_shape[0]
        left = sgn[:nb]
        right = sgn[1:nb + 1]
        if right.shape[0] < nb:
            right = np.concatenate([right, left[-1:]], axis=0)
        line = bucket[None, :]
    ctx = (left + right) * np.uint8(N_LINE) + line
    return ctx.reshape(-1) + np.uint8(1 + group * PER_DIR)


def _group(ctx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(stable order grouping equal contexts, counts per context)."""
    order = np.argsort(ctx, kind="stable")  # a radix sort for uint8 keys: linear time
    counts = _bincount(ctx, N_CTX)
    return order, counts


def _bincount(v: np.ndarray, size: int) -> np.ndarray:
    """np.bincount(v, minlength=size) of non-negative ints (torch's: several times faster)."""
    import torch

    t = torch.from_numpy(np.ascontiguousarray(v))
    if t.dtype not in (torch.int32, torch.int64, torch.uint8):
        t = t.to(torch.int64)
    return torch.bincount(t, minlength=size).numpy()


# ---- mode selection ----------------------------------------------------------------------------------
def encode(q: np.ndarray, shape: tuple[int, ...]) -> bytes:
    """The cheapest mode's bytes for int symbols ``q`` (flat, numel of ``shape``), mode byte first."""
    from fedsqueeze.codecs.rdq import _gamma_encode

    q = np.ascontiguousarray(q, dtype=np.int32).reshape(-1)
    n = q.size
    if n == 0:
        return b""
    lo, hi = int(q.min()), int(q.max())
    if lo == hi:
        return bytes([0]) + encode_varint(zigzag(lo))
    options = []
    if n <= SMALL:
        options.append(bytes([1]) + b"".join(encode_varint(zigzag(int(v))) for v in q))
        options.append(bytes([2]) + _gamma_encode(q))
    if n <= MEDIUM:
        options.append(bytes([3]) + encode_symbols(q))
    if n > SMALL:
        body = _encode_ctx(q, shape, give_up=n > MEDIUM)
        if body:
            options.append(bytes([4]) + body)
        if n > MEDIUM and (not body or len(body) > n // 2):  # no gain expected, or over 4 bits/symbol
            options.append(bytes([3]) + encode_symbols(q))
    return min(options, key=len)


def decode(data: bytes | memoryview, shape: tuple[int, ...], n: int) -> np.ndarray:
    """Inverse of ``encode``: ``n`` int32 symbols; PayloadError on malformed bytes."""
    from fedsqueeze.codecs.rdq import _gamma_decode

    if n == 0:
        if len(data):
            raise PayloadError(f"{len(data)} ctx-coded bytes for zero symbols")
        return np.zeros(0, dtype=np.int32)
    r = Reader(data)
    mode = r.u8()
    if mode == 0:
        value = unzigzag(r.varint())
        r.expect_end()
        if not _I32[0] <= value <= _I32[1]:
            raise PayloadError(f"constant symbol {value} outside int32")
        return np.full(n, value, dtype=np.int32)
    if mode == 1:
        if n > SMALL:
            raise PayloadError(f"raw ctx mode for {n} symbols (an encoder sends at most {SMALL} raw)")
        out = np.empty(n, dtype=np.int64)
        for i in range(n):  # at most SMALL values (an encoder never sends more raw)
            out[i] = unzigzag(r.varint(limit=(1 << 32) - 1))
        r.expect_end()
        if out.min() < _I32[0] or out.max() > _I32[1]:
            raise PayloadError("raw symbol outside int32")
        return out.astype(np.int32)
    rest = r.take(r.remaining())
    if mode == 2:
        return _gamma_decode(rest, n)
    if mode == 3:
        return decode_symbols(rest, n)
    if mode == 4:
        return _decode_ctx(rest, shape, n)
    raise PayloadError(f"unknown ctx tensor mode {mode}")


def mode_of(data: bytes | memoryview) -> str:
    """The mode name of one tensor's ctx bytes (for tests and benchmarks)."""
    return MODES[data[0]] if len(data) and data[0] < len(MODES) else "?"


# ---- mode 4: the context model -----------------------------------------------------------------------
def _model(counts: np.ndarray):
    if len(counts) == 1:  # constriction needs two entries; the second is never coded
        counts = np.array([counts[0], 0])
    return constriction.stream.model.Categorical(counts.astype(np.float64), perfect=False)


def _window(q: np.ndarray) -> tuple[int, int, np.ndarray]:
    """(lo, K, indices): the core alphabet lo .. lo+K-1 ⊆ [-m, m] and each symbol's index (K = escape).

    m minimises the side information: about one bit per table entry in each of ~``N_CTX``/2 contexts
    in use, plus 32 bits per escaped (raw) symbol, over m = 0 .. MAX_CORE/2 − 1."""
    half = MAX_CORE // 2
    hist = _bincount(np.abs(np.clip(q, -half, half)), half + 1)
    ms = np.arange(half)
    above = q.size - np.cumsum(hist)[:half]                # symbols with |q| > m
    lo_all, hi_all = int(q.min()), int(q.max())
    width = np.minimum(hi_all, ms) - np.maximum(lo_all, -ms) + 1
    cost = np.where(width > 0, (N_CTX // 2) * width + 32 * above, np.iinfo(np.int64).max)
    m = int(ms[np.argmin(cost)])
    lo, hi = max(lo_all, -m), min(hi_all, m)
    if hi < lo:  # every symbol is far from 0 (not rdq's levels): a window at the minimum
        lo = hi = lo_all
    k = hi - lo + 1
    if lo_all >= lo and hi_all <= hi:  # no escapes: int32 arithmetic cannot overflow
        return lo, k, q - np.int32(lo)
    index = q.astype(np.int64) - lo
    index[(index < 0) | (index >= k)] = k
    return lo, k, index.astype(np.int32)


def _entropy_of_rows(hist: np.ndarray) -> float:
    """Σ over rows of count·entropy of the row (bits): the ideal static code of each row's symbols."""
    h = hist.astype(np.float64)
    tot = h.sum(axis=1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        return float(-np.nansum(np.where(h > 0, h * np.log2(h / tot), 0.0)))


def _encode_ctx(q: np.ndarray, shape: tuple[int, ...], give_up: bool = False) -> bytes:
    """Mode 4's bytes; with ``give_up``, b"" when the context model is not expected to beat order-0
    ANS (the ideal code lengths of both, tables included, from the counts already made)."""
    lo, k, index = _window(q)
    alpha = k + 1  # core symbols and the escape (index k)
    rows, cols = as_matrix(q.size, shape)
    qm = q.reshape(rows, cols)
    im = index.reshape(rows, cols)
    root_q, steps_q = _plan(qm)
    root_i, steps_i = _plan(im)
    # pass 1: the coding order (root, then each level grouped by context) and the per-context counts
    pieces = [(0, root_i.reshape(-1), root_q.reshape(-1))]
    hist = np.zeros((N_CTX, alpha), dtype=np.int64)
    hist[0] += _bincount(root_i.reshape(-1), alpha)
    escapes = lo > int(q.min()) or lo + k - 1 < int(q.max())
    for (a, b, group), (_, bi, _) in zip(steps_q, steps_i):
        ctx = _contexts(a, b.shape, group)
        order, counts = _group(ctx)
        sym = bi.reshape(-1)[order]
        vals = b.reshape(-1)[order] if escapes else sym  # the raw values only matter for escapes
        used_here = np.flatnonzero(counts)
        # one histogram per level: key = context·alpha + symbol over the context-sorted symbols
        key = np.repeat((used_here * alpha).astype(np.int32), counts[used_here]) + sym
        span = (int(used_here[-1]) + 1) * alpha
        hist.reshape(-1)[:span] += _bincount(key, span)
        start = 0
        for c in used_here:
            end = start + int(counts[c])
            pieces.append((int(c), sym[start:end], vals[start:end]))
            start = end
    has_esc = bool(hist[:, k].any())
    width = alpha if has_esc else k
    used = np.flatnonzero(hist.sum(axis=1))
    shifts, tables = [], []
    models = {}
    for c in used:
        shift = choose_shift(hist[c, :width])
        quant = np.where(hist[c, :width] > 0, -((-hist[c, :width]) >> shift), 0)
        shifts.append(shift)
        tables.append(quant)
        models[int(c)] = _model(quant)
    if give_up:
        table_bits = len(elias_gamma_encode(np.concatenate(tables) + 1)[0]) * 8 + 8 * len(used)
        order0 = hist.sum(axis=0, keepdims=True)
        if _entropy_of_rows(hist) + table_bits >= _entropy_of_rows(order0) + 2 * width:
            return b""
    # pass 2: the range coder over the pieces in order; escapes collected in the same order
    enc = constriction.stream.queue.RangeEncoder()
    escaped = []
    for c, sym, vals in pieces:
        enc.encode(sym, models[c])
        if has_esc:
            e = sym == k
            if e.any():
                escaped.append(vals[e])
    esc = np.concatenate(escaped).astype("<i4") if escaped else np.zeros(0, dtype="<i4")
    out = bytearray()
    out += encode_varint(zigzag(lo)) + encode_varint(k - 1) + encode_varint(len(esc))
    out += int(sum(1 << int(c) for c in used)).to_bytes(MASK_BYTES, "little")
    out += bytes(shifts)
    write_chunk(out, elias_gamma_encode(np.concatenate(tables) + 1)[0])
    out += esc.tobytes()
    out += enc.get_compressed().astype("<u4").tobytes()
    return bytes(out)


def _decode_ctx(data: memoryview, shape: tuple[int, ...], n: int) -> np.ndarray:
    r = Reader(data)
    lo = unzigzag(r.varint())
    k = r.varint(limit=MAX_CORE - 1) + 1
    n_esc = r.varint(limit=n)
    mask = int.from_bytes(r.take(MASK_BYTES), "little")
    if not _I32[0] <= lo <= _I32[1] - k + 1:
        raise PayloadError(f"core alphabet starting at {lo} leaves int32")
    used = [c for c in range(N_CTX) if mask >> c & 1]
    if not used:
        raise PayloadError("ctx model uses no context")
    shifts = r.take(len(used))
    width = k + 1 if n_esc else k
    quant = elias_gamma_decode(r.chunk(), width * len(used)) - 1
    models = {}
    for j, c in enumerate(used):
        t = quant[j * width:(j + 1) * width]
        if shifts[j] > 62 or t.max() <= 0:
            raise PayloadError("ctx model has a context without usable counts")
        models[c] = _model(t)
    escaped = np.frombuffer(r.take(4 * n_esc), dtype="<i4").astype(np.int32)
    words = r.take(r.remaining())
    if len(words) % 4:
        raise PayloadError(f"range-coder stream of {len(words)} bytes is not whole 32-bit words")
    try:
        dec = constriction.stream.queue.RangeDecoder(np.frombuffer(words, dtype="<u4").astype(np.uint32))
    except (ValueError, RuntimeError, AssertionError, OverflowError) as e:
        raise PayloadError(f"corrupt range-coder stream ({e})") from e
    state = {"esc": 0}

    def piece(c: int, count: int) -> np.ndarray:
        if c not in models:
            raise PayloadError(f"ctx stream needs context {c}, which the model does not carry")
        try:
            idx = np.asarray(dec.decode(models[c], count), dtype=np.int32)
        except (ValueError, RuntimeError, AssertionError, OverflowError) as e:
            raise PayloadError(f"corrupt range-coder stream ({e})") from e
        vals = idx + np.int32(lo)
        e = idx == k
        m = int(np.count_nonzero(e))
        if m:
            s = state["esc"]
            if s + m > n_esc:
                raise PayloadError("ctx stream decodes more escapes than the header declares")
            vals[e] = escaped[s:s + m]
            state["esc"] = s + m
        return vals

    rows, cols = as_matrix(n, shape)
    out = np.empty((rows, cols), dtype=np.int32)
    root, steps = _plan(out)
    root[...] = piece(0, root.size).reshape(root.shape)
    for a, b, group in steps:
        ctx = _contexts(a, b.shape, group)
        order, counts = _group(ctx)
        vals = np.empty(ctx.size, dtype=np.int32)
        start = 0
        for c in np.flatnonzero(counts):
            end = start + int(counts[c])
            vals[start:end] = piece(int(c), end - start)
            start = end
        flat = np.empty(ctx.size, dtype=np.int32)
        flat[order] = vals
        b[...] = flat.reshape(b.shape)
    if state["esc"] != n_esc:
        raise PayloadError(f"ctx stream decodes {state['esc']} escapes, header says {n_esc}")
    return out.reshape(-1)
