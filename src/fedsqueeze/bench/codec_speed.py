"""``fedsqueeze bench codecs --speed``: encode and decode MB/s of the entropy coders on one big tensor.

One update-like tensor (default 10^7 parameters, RMS 0.01, a 2500 x 4000 matrix, ``update_like``), coded by
``rdq`` with a normalised step of 1 (about 2 bits/parameter) and each coder (``ans``, ``ctx``,
``gamma``), on one torch thread. Speeds are fp32 MB/s (4 bytes per parameter over the median time
of ``repeats`` runs, codecs alternating inside each repeat); the machine's load average is printed
beside them, since other processes on the same cores slow every figure. Two last rows time
``constriction`` alone on the same symbols (``constriction_only``): the ceiling of the ANS and ctx
figures, whatever the code around it does.
"""
from __future__ import annotations

import os
import statistics
import time
from contextlib import contextmanager

import torch

from fedsqueeze.codecs.spec import make_codec

SPECS = ["rdq(step=1.0, normalize=True, coder='ans', dead_zone=0.0, alloc='one')",
         "rdq(step=1.0, normalize=True, coder='ctx', dead_zone=0.0, alloc='one')",
         "rdq(step=1.0, normalize=True, coder='ctx', dead_zone=0.1, alloc='one')",
         "rdq(step=1.0, normalize=True, coder='gamma', dead_zone=0.0, alloc='one')",  # the γ code
         "rdq"]  # the default: ctx, dead zone 0.1, alloc='rd'


def update_like(params: int, seed: int = 0) -> torch.Tensor:
    """A matrix shaped like a fully connected layer's update (``params`` values, 4000 columns):
    −η·δ·xᵀ-like rows with their own sign and scale, columns with their own scale (inputs x >= 0),
    times Gaussian noise of RMS 1; scaled to RMS 0.01. The context coder finds structure here, as
    in real updates (an i.i.d. tensor would make it fall back to order-0 ANS)."""
    g = torch.Generator().manual_seed(seed)
    cols = 4000 if params >= 4000 else params
    rows = max(params // cols, 1)
    noise = 1 + torch.randn(rows, cols, generator=g)
    w = torch.randn(rows, 1, generator=g) * torch.rand(1, cols, generator=g) * noise
    return w * (0.01 / float(w.double().square().mean().sqrt()))


@contextmanager
def _one_thread():
    """torch on one thread inside, the thread count as it was after."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _row(codec: str, params: int, bits_per_param: float, enc: list[float], dec: list[float]) -> dict:
    """A table row: fp32 MB/s (4 bytes a parameter) over the median encode and decode times."""
    mb = 4 * params / 1e6
    return {"codec": codec, "params": params, "bits_per_param": bits_per_param,
            "encode_MBps": mb / statistics.median(enc), "decode_MBps": mb / statistics.median(dec)}


def measure(params: int = 10_000_000, repeats: int = 3, specs: list[str] | None = None) -> list[dict]:
    """Rows of (codec, bits/param, encode MB/s, decode MB/s) on one update-like tensor of ``params`` values."""
    x = {"w": update_like(params)}
    n = x["w"].numel()
    codecs = [(s, make_codec(s)) for s in (specs or SPECS)]
    with _one_thread():
        payloads = {s: c.encode(x, seed=0) for s, c in codecs}
        for s, c in codecs:
            if not torch.equal(c.decode(payloads[s])["w"], c.decode(c.encode(x, seed=0))["w"]):
                raise AssertionError(f"{s}: decoding is not deterministic")
        enc: dict[str, list[float]] = {s: [] for s, _ in codecs}
        dec: dict[str, list[float]] = {s: [] for s, _ in codecs}
        for _ in range(repeats):
            for s, c in codecs:
                t0 = time.perf_counter()
                p = c.encode(x, seed=0)
                t1 = time.perf_counter()
                c.decode(p)
                t2 = time.perf_counter()
                enc[s].append(t1 - t0)
                dec[s].append(t2 - t1)
    return [_row(s, n, 8 * len(payloads[s]) / n, enc[s], dec[s]) for s, _ in codecs]


def constriction_only(params: int = 10_000_000, repeats: int = 3) -> list[dict]:
    """The floor under rdq's ANS and ctx figures: ``constriction`` alone (ANS stack, range queue) coding
    the symbols of ``rdq(step=1.0, normalize=True, coder='ans')`` on the same tensor under one
    categorical model, with no table, packing or context work around it."""
    import constriction
    import numpy as np

    from fedsqueeze.codecs.entropy import _model

    x = update_like(params).reshape(-1)
    codec = make_codec("rdq(step=1.0, normalize=True, coder='ans', dead_zone=0.0, alloc='one')")
    q = codec.quantize(x.clone(), codec._unit(x), 0).numpy()
    index = (q - q.min()).astype(np.int32)
    model = _model(np.bincount(index))
    stack, queue = constriction.stream.stack, constriction.stream.queue

    def round_trip(encoder, encode: str, decoder) -> float:
        """Encode the symbols (``encode``: the encoder's method) and decode them; the time in between."""
        coder = encoder()
        getattr(coder, encode)(index, model)
        words = coder.get_compressed()
        t = time.perf_counter()
        decoder(words).decode(model, len(index))
        return t

    coders = (("constriction AnsCoder only", (stack.AnsCoder, "encode_reverse", stack.AnsCoder)),
              ("constriction Range coder only", (queue.RangeEncoder, "encode", queue.RangeDecoder)))
    rows = []
    with _one_thread():
        for label, coder in coders:
            enc, dec = [], []
            for _ in range(repeats):
                t0 = time.perf_counter()
                t1 = round_trip(*coder)
                t2 = time.perf_counter()
                enc.append(t1 - t0)
                dec.append(t2 - t1)
            rows.append(_row(label, len(index), float("nan"), enc, dec))
    return rows


def main(console, params: int, repeats: int) -> int:
    from rich.table import Table

    load0 = os.getloadavg()[0]
    rows = measure(params, repeats) + constriction_only(params, repeats)
    t = Table(title=f"entropy coders on {rows[0]['params']:,} update-like parameters (one thread, fp32 MB/s)")
    for col in ("codec", "bits/param", "encode MB/s", "decode MB/s"):
        t.add_column(col, justify="right")
    for r in rows:
        bits = "-" if r["bits_per_param"] != r["bits_per_param"] else f"{r['bits_per_param']:.3f}"
        t.add_row(r["codec"], bits, f"{r['encode_MBps']:.0f}", f"{r['decode_MBps']:.0f}")
    console.print(t)
    console.print(f"load average {load0:.2f} before, {os.getloadavg()[0]:.2f} after, on {os.cpu_count()} cpus; "
                  f"median of {repeats}")
    return 0
