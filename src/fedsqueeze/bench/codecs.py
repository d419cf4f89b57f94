"""Codec benchmark: rate, distortion and speed of every codec on given updates, against the R–D limit.

For each codec setting, over the updates: bits per parameter = 8·len(payload)/d (real payload
bytes, headers included; d = elements of all tensors), NMSE = Σ‖Δ − Δ̂‖²/Σ‖Δ‖², encode and decode
MB/s (fp32 bytes in, median of ``repeats``; codecs alternate inside each repeat after a warm-up, on
one torch thread), and the limits at the codec's distortion D (MSE per float parameter):

- ``gauss_rate``: independent Gaussian layers of the same variances, reverse water-filling;
- ``ba_rate``: the empirical distribution of each layer, Blahut–Arimoto, layers combined at equal
  slope (``fedsqueeze.bench.rd``); NaN where D is beyond what its grid resolves (near-lossless).

- ``ba_nmse_rate``: the same per-layer Blahut–Arimoto curves, every layer held at the codec's NMSE
  (distortion NMSE·mean square of the layer): the limit for codecs that give every layer the same
  relative error (``rdq(normalize=True)``), above the free (equal-slope) allocation of ``ba_rate``.

Both are *i.i.d.* limits: each layer's values treated as independent draws from its histogram. A
coder that models dependence between symbols (``rdq(coder="ctx")``) can go below them; for rdq
rows the columns ``h0`` (order-0 entropy of the quantised symbols, bits per parameter) and ``h1``
(first-order conditional entropy given the previous symbol in memory order, plug-in estimate) show
how much dependence there is to use.

``rate_over_ba`` = bits per parameter / ``ba_rate`` (equal slope), ``rate_over_ba_nmse`` = bits per
parameter / ``ba_nmse_rate`` (equal NMSE): how far the codec is from each limit. Outputs:
a rich table, ``codecs_<label>.csv``, ``codecs_<label>.png`` (R–D plot) and ``codecs_<label>.json``
(command, versions, machine, date) in ``out_dir``.

The limits are computed in ``codec_limits``, ``h0``/``h1`` in ``codec_symbols``, the table, CSV, JSON and
plot written by ``codec_report``; this module holds the settings swept, the measurement and the rows.
"""
from __future__ import annotations

import json
import math
import statistics
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from fedsqueeze.bench.codec_limits import Limits, Update, floats, weighted
from fedsqueeze.bench.codec_report import COLUMNS, metadata, plot, print_table, write_csv
from fedsqueeze.bench.codec_symbols import conditional_entropy_bits, symbol_entropies
from fedsqueeze.codecs.spec import make_codec
from fedsqueeze.errors import FedsqueezeError
from fedsqueeze.registry import CODECS

__all__ = ["COLUMNS", "DEFAULT_SWEEP", "PIPELINES", "Update", "conditional_entropy_bits", "default_settings", "run",
           "symbol_entropies", "synthetic_laplace"]

# A few settings per known codec; any other registered codec runs with its defaults.
DEFAULT_SWEEP: dict[str, list[str]] = {
    "fp32": ["fp32"],
    "fp16": ["fp16"],
    "bf16": ["bf16"],
    "rdq": [f"rdq(step={s}, normalize=True, coder='ans', dead_zone=0.0, alloc='one')" for s in (0.5, 1.0, 2.0, 4.0, 8.0)]
    + [f"rdq(step={s}, normalize=True, coder='ctx', dead_zone=0.1, alloc='one')" for s in (0.5, 1.0, 2.0, 4.0)]
    + [f"rdq(step={s}, normalize=True, coder='ctx', dead_zone=0.1, alloc='rd')" for s in (1.0, 2.0, 4.0)]
    + ["rdq(step=2.0, normalize=True, coder='ans', dead_zone=0.25, alloc='one')",
       "rdq(step=2.0, normalize=True, coder='ans', rounding='dither', alloc='one')",
       "rdq(step=2.0, normalize=True, coder='gamma', dead_zone=0.0, alloc='one')",
       "rdq"],  # the default (ctx, step 1·RMS, dead zone 0.1, alloc='rd')
    "pipeline": [],  # needs stages; see default_settings
}
PIPELINES = {"svd": ["svd | rdq(step=0.25, normalize=True, coder='ans', dead_zone=0.0, alloc='one')"]}


def synthetic_laplace(d: int, seed: int = 0, scale: float = 1e-3) -> list[Update]:
    """One update of ``d`` i.i.d. Laplace(0, ``scale``) values in two tensors (a matrix and a vector)."""
    g = torch.Generator().manual_seed(seed)
    u = torch.rand(d, generator=g, dtype=torch.float64) - 0.5  # inverse CDF of Laplace
    values = (-scale * torch.sign(u) * torch.log1p(-2 * u.abs())).to(torch.float32)
    rows = max(int(math.isqrt(3 * d // 4)), 1)
    cols = (3 * d // 4) // rows
    return [{"layer.weight": values[:rows * cols].reshape(rows, cols), "layer.bias": values[rows * cols:].clone()}]


def default_settings(updates: Sequence[Update] | None = None) -> dict[str, list[str]]:
    """Every registered codec: its sweep from DEFAULT_SWEEP, else its default configuration.

    Given the updates, ``rdq`` also sweeps absolute step sizes (multiples of the first update's
    RMS, with and without a dead zone): one step for every layer gives every layer the same MSE,
    which is the optimal (reverse water-filling) allocation at high rate — the paper's setting.
    The three allocations side by side: one absolute step, normalised steps (equal NMSE per layer)
    and ``alloc='rd'`` (steps at one R–D slope)."""
    out = {cid: list(DEFAULT_SWEEP.get(cid, [cid])) for cid in CODECS.names()}
    out["pipeline"] = [p for cid, specs in PIPELINES.items() if cid in CODECS for p in specs]
    if updates and "rdq" in out:
        floats = floats(updates[0])
        n = sum(len(v) for v in floats.values())
        rms = math.sqrt(sum(float((v ** 2).sum()) for v in floats.values()) / n) if n else 0.0
        if rms > 0:
            for coder, dz in (("ans", 0.0), ("ans", 0.25), ("ctx", 0.1), ("ctx", 0.25)):
                out["rdq"] += [f"rdq(step={f * rms:.3g}, coder='{coder}', dead_zone={dz}, normalize=False, alloc='one')"
                               for f in (0.5, 1, 2, 4)]
    return {cid: specs for cid, specs in out.items() if specs}


def _numel(update: Mapping[str, torch.Tensor]) -> int:
    return sum(t.numel() for t in update.values())


def _measure(codec, updates: Sequence[Update], repeats: int) -> dict[str, Any]:
    """Warm-up pass: payloads, errors; timing is added by ``_time`` (alternating with other codecs)."""
    payload_bytes, sq_err, per_update_d, per_update_nmse = 0, 0.0, [], []
    for i, up in enumerate(updates):
        data = codec.encode(up, seed=i)
        back = codec.decode(data)
        payload_bytes += len(data)
        err = sum(float(((back[k].double() - v.double()) ** 2).sum()) for k, v in up.items() if v.is_floating_point())
        energy = sum(float((v.double() ** 2).sum()) for v in up.values() if v.is_floating_point())
        sq_err += err
        nf = sum(v.numel() for v in up.values() if v.is_floating_point())
        per_update_d.append(err / max(nf, 1))
        per_update_nmse.append(err / energy if energy else 0.0)
    h0, h1 = symbol_entropies(codec, updates)
    return {"bytes": payload_bytes, "sq_err": sq_err, "update_mse": per_update_d, "update_nmse": per_update_nmse,
            "enc": [], "dec": [], "h0": h0, "h1": h1}


def _time(codec, updates: Sequence[Update], rec: dict[str, Any]) -> None:
    enc = dec = 0.0
    for i, up in enumerate(updates):
        t0 = time.perf_counter()
        data = codec.encode(up, seed=i)
        t1 = time.perf_counter()
        codec.decode(data)
        t2 = time.perf_counter()
        enc += t1 - t0
        dec += t2 - t1
    rec["enc"].append(enc)
    rec["dec"].append(dec)


def run(updates: list[Update], label: str, out_dir: Path, settings: dict[str, list[str]] | None = None,
        repeats: int = 5, console=None) -> list[dict]:
    """Benchmark codecs on ``updates``; print a table, write CSV/PNG/JSON to ``out_dir``; return the rows."""
    from rich.console import Console

    console = console or Console(width=None if sys.stdout.isatty() else 150)
    if not updates or not any(_numel(u) for u in updates):
        raise FedsqueezeError("the codec benchmark needs at least one non-empty update")
    explicit = settings is not None
    settings = default_settings(updates) if settings is None else settings
    codecs = []
    for cid, specs in settings.items():
        if cid not in CODECS:
            if explicit:
                raise FedsqueezeError(f"codec {cid!r} is not registered; available: {', '.join(CODECS.names())}")
            continue
        codecs += [(spec, make_codec(spec)) for spec in specs]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        recs = [_measure(codec, updates, repeats) for _, codec in codecs]
        # alternate codecs inside each repeat (docs/methods.md, "The limit a codec is measured against")
        for _ in range(repeats):
            for (_, codec), rec in zip(codecs, recs):
                _time(codec, updates, rec)
    finally:
        torch.set_num_threads(threads)
    limits = Limits(updates, [m for rec in recs for m in rec["update_mse"]],
                    [m for rec in recs for m in rec["update_nmse"]])
    rows = _rows(updates, label, codecs, recs, limits)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    meta = metadata(label, updates, repeats)
    print_table(console, rows, meta)
    write_csv(out_dir / f"codecs_{label}.csv", rows)
    (out_dir / f"codecs_{label}.json").write_text(json.dumps(meta, indent=2))
    plot(out_dir / f"codecs_{label}.png", rows, label, limits.frontier())
    return rows


def _rows(updates: Sequence[Update], label: str, codecs, recs, limits: Limits) -> list[dict]:
    d = sum(_numel(u) for u in updates)
    nf = [sum(v.numel() for v in u.values() if v.is_floating_point()) for u in updates]
    energy = sum(float((v.double() ** 2).sum()) for u in updates for v in u.values() if v.is_floating_point())
    fp32_bytes = 4 * sum(nf)
    rows = []
    for (spec, _), rec in zip(codecs, recs):
        bpp = 8 * rec["bytes"] / d
        lim = [limits.rates(i, m) for i, m in enumerate(rec["update_mse"])]
        gauss = weighted([g for g, _ in lim], nf)
        ba = weighted([b for _, b in lim], nf)
        ba_nmse = weighted([limits.equal_nmse_rate(i, m) for i, m in enumerate(rec["update_nmse"])], nf)
        rows.append({
            "label": label, "codec": spec, "params": d, "bytes": rec["bytes"], "bits_per_param": bpp,
            "nmse": rec["sq_err"] / energy if energy else 0.0, "mse": rec["sq_err"] / max(sum(nf), 1),
            "encode_MBps": fp32_bytes / 1e6 / statistics.median(rec["enc"]) if rec["enc"] else math.nan,
            "decode_MBps": fp32_bytes / 1e6 / statistics.median(rec["dec"]) if rec["dec"] else math.nan,
            "gauss_rate": gauss, "ba_rate": ba,
            "rate_over_ba": bpp / ba if ba > 0 else math.nan,
            "rate_over_gauss": bpp / gauss if gauss > 0 else math.nan,
            "ba_nmse_rate": ba_nmse, "rate_over_ba_nmse": bpp / ba_nmse if ba_nmse > 0 else math.nan,
            "h0": rec["h0"], "h1": rec["h1"],
        })
    return rows

