"""``fedsqueeze bench codecs --speed``: encode and decode MB/s of the entropy coders on one big tensor.

One update-like tensor (default 10^7 parameters, RMS 0.01, a 2500 x 4000 matrix, ``update_like``), coded by
``rdq`` with a normalised step of 1 (about 2 bits/parameter) and each coder (``ans``, ``ctx``,
``gamma``), on one torch thread. Speeds are fp32 MB/s (4 bytes per parameter over the median time
of ``repeats`` runs, codecs alternating inside each repeat); the machine's load average is printed
beside them, since other processes on the same cores slow every figure.
"""
from __future__ import annotations

import os
import statistics
import time

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


def measure(params: int = 10_000_000, repeats: int = 3, specs: list[str] | None = None) -> list[dict]:
    """Rows of (codec, bits/param, encode MB/s, decode MB/s) on one update-like tensor of ``params`` values."""
    x = {"w": update_like(params)}
    n = x["w"].numel()
    codecs = [(s, make_codec(s)) for s in (specs or SPECS)]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
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
    finally:
        torch.set_num_threads(threads)
    mb = 4 * n / 1e6
    return [{"codec": s, "params": n, "bits_per_param": 8 * len(payloads[s]) / n,
             "encode_MBps": mb / statistics.median(enc[s]), "decode_MBps": mb / statistics.median(dec[s])}
            for s, _ in codecs]


def main(console, params: int, repeats: int) -> int:
    from rich.table import Table

    load0 = os.getloadavg()[0]
    rows = measure(params, repeats)
    t = Table(title=f"entropy coders on {rows[0]['params']:,} update-like parameters (one thread, fp32 MB/s)")
    for col in ("codec", "bits/param", "encode MB/s", "decode MB/s"):
        t.add_column(col, justify="right")
    for r in rows:
        t.add_row(r["codec"], f"{r['bits_per_param']:.3f}", f"{r['encode_MBps']:.0f}", f"{r['decode_MBps']:.0f}")
    console.print(t)
    console.print(f"load average {load0:.2f} before, {os.getloadavg()[0]:.2f} after, on {os.cpu_count()} cpus; "
                  f"median of {repeats}")
    return 0
