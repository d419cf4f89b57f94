"""Codec speed table: encode and decode MB/s of each codec on one large tensor, one thread.

``fedsqueeze bench codecs --speed`` (issue #20 item 4; after the entropy coders' table of
``fedsqueeze.bench.codec_speed``): every codec setting encodes and decodes one
Gaussian tensor of ``numel`` float32 values (σ = 0.01, the scale of a model update; 10^7 values =
40 MB by default) on one torch thread; MB/s = fp32 bytes in (4 · numel / 10^6) per second, the best
of ``repeats`` timed calls after one warm-up (the best, not the median: on a shared machine the
slower repeats measure the neighbours), by the wall clock and by the process's CPU time. Also printed: bits per parameter of the payload and the
machine's 1-minute load average, which the figures depend on.
"""
from __future__ import annotations

import os
import time
from collections.abc import Sequence

import torch

from fedsqueeze.codecs.spec import make_codec

def main(args, console=None) -> int:
    """The every-codec table of ``fedsqueeze bench codecs --speed [--codecs ids] [--speed-params N]
    [--repeats R]``."""
    from rich.console import Console

    from fedsqueeze.errors import ConfigError

    numel = args.speed_params
    if numel < 1:
        raise ConfigError(f"--speed-params must be at least 1, got {numel}")
    wanted = [c.strip() for c in args.codecs.split(",") if c.strip()] if args.codecs else None
    specs = [s for s in DEFAULT_SPECS if wanted is None or s.split("(")[0] in wanted]
    specs += [c for c in wanted or [] if not any(s.split("(")[0] == c for s in DEFAULT_SPECS)]
    print_rows(console or Console(width=160), measure(specs, numel, max(1, args.repeats)), numel)
    return 0


DEFAULT_SPECS = ("fp16", "bf16", "signsgd", "terngrad", "qsgd", "qsgd(levels=4)", "threelc", "topk", "randk",
                 "rowsparse", "drive", "eden", "eden(bits=4)", "rdq")


def gaussian(numel: int, seed: int = 0) -> torch.Tensor:
    """The benchmark input: ``numel`` N(0, 0.01²) values as a (numel / 1000, 1000) matrix when it divides."""
    x = torch.randn(numel, generator=torch.Generator().manual_seed(seed)) * 0.01
    return x.view(-1, 1000) if numel % 1000 == 0 else x


def _best(fn, repeats: int) -> tuple[float, float, object]:
    """(best wall seconds, best CPU seconds of this process, result) over ``repeats`` calls."""
    out = fn()  # warm-up (caches, lazily built tables)
    wall = cpu = float("inf")
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        out = fn()
        wall, cpu = min(wall, time.perf_counter() - t0), min(cpu, time.process_time() - c0)
    return wall, max(cpu, 1e-9), out


def measure(specs: Sequence[str] = DEFAULT_SPECS, numel: int = 10_000_000, repeats: int = 3) -> list[dict]:
    """One row per codec spec: spec, bits/param, encode and decode MB/s by the wall clock and by this
    process's CPU time (one torch thread; on a busy machine the CPU figures are the steadier)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        x = {"x": gaussian(numel)}
        mb = 4 * numel / 1e6
        rows = []
        for spec in specs:
            codec = make_codec(spec)
            t_enc, c_enc, payload = _best(lambda: codec.encode(x, seed=1), repeats)
            t_dec, c_dec, _ = _best(lambda: codec.decode(payload), repeats)
            rows.append({"codec": spec, "bits_per_param": 8 * len(payload) / numel,
                         "encode_mb_s": mb / t_enc, "decode_mb_s": mb / t_dec,
                         "encode_cpu_mb_s": mb / c_enc, "decode_cpu_mb_s": mb / c_dec})
        return rows
    finally:
        torch.set_num_threads(threads)


def print_rows(console, rows: list[dict], numel: int) -> None:
    from rich.table import Table

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    table = Table(title=f"codec speed: {numel:,} fp32 values (N(0, 0.01²)), one thread, best of repeats; "
                        f"load {load:.1f} on {os.cpu_count()} CPUs")
    for col in ("codec", "bits/param", "enc MB/s", "dec MB/s", "enc MB/s (CPU)", "dec MB/s (CPU)"):
        table.add_column(col, justify="left" if col == "codec" else "right")
    for r in rows:
        table.add_row(r["codec"], f"{r['bits_per_param']:.3f}", f"{r['encode_mb_s']:.0f}", f"{r['decode_mb_s']:.0f}",
                      f"{r['encode_cpu_mb_s']:.0f}", f"{r['decode_cpu_mb_s']:.0f}")
    console.print(table)
