"""Codec speed table: encode and decode MB/s of each codec on one large tensor, one thread.

``fedsqueeze bench codecs --speed`` (issue #20 item 4): every codec setting encodes and decodes one
Gaussian tensor of ``numel`` float32 values (σ = 0.01, the scale of a model update; 10^7 values =
40 MB by default) on one torch thread; MB/s = fp32 bytes in (4 · numel / 10^6) per second, the best
of ``repeats`` timed calls after one warm-up (the best, not the median: on a shared machine the
slower repeats measure the neighbours). Also printed: bits per parameter of the payload and the
machine's 1-minute load average, which the figures depend on.
"""
from __future__ import annotations

import os
import time
from collections.abc import Sequence

import torch

from fedsqueeze.codecs.spec import make_codec

DEFAULT_SPECS = ("fp16", "bf16", "signsgd", "terngrad", "qsgd", "qsgd(levels=4)", "threelc", "topk", "randk",
                 "rowsparse", "drive", "eden", "eden(bits=4)", "rdq")


def gaussian(numel: int, seed: int = 0) -> torch.Tensor:
    """The benchmark input: ``numel`` N(0, 0.01²) values as a (numel / 1000, 1000) matrix when it divides."""
    x = torch.randn(numel, generator=torch.Generator().manual_seed(seed)) * 0.01
    return x.view(-1, 1000) if numel % 1000 == 0 else x


def _best(fn, repeats: int) -> tuple[float, object]:
    out = fn()  # warm-up (caches, lazily built tables)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def measure(specs: Sequence[str] = DEFAULT_SPECS, numel: int = 10_000_000, repeats: int = 3) -> list[dict]:
    """One row per codec spec: spec, bits/param, encode MB/s, decode MB/s (one torch thread)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        x = {"x": gaussian(numel)}
        mb = 4 * numel / 1e6
        rows = []
        for spec in specs:
            codec = make_codec(spec)
            t_enc, payload = _best(lambda: codec.encode(x, seed=1), repeats)
            t_dec, _ = _best(lambda: codec.decode(payload), repeats)
            rows.append({"codec": spec, "bits_per_param": 8 * len(payload) / numel,
                         "encode_mb_s": mb / t_enc, "decode_mb_s": mb / t_dec})
        return rows
    finally:
        torch.set_num_threads(threads)


def print_rows(console, rows: list[dict], numel: int) -> None:
    from rich.table import Table

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    table = Table(title=f"codec speed: {numel:,} fp32 values (N(0, 0.01²)), one thread, best of repeats; "
                        f"load {load:.1f} on {os.cpu_count()} CPUs")
    for col in ("codec", "bits/param", "enc MB/s", "dec MB/s"):
        table.add_column(col, justify="left" if col == "codec" else "right")
    for r in rows:
        table.add_row(r["codec"], f"{r['bits_per_param']:.3f}", f"{r['encode_mb_s']:.0f}", f"{r['decode_mb_s']:.0f}")
    console.print(table)
