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
"""
from __future__ import annotations

import csv
import datetime as _dt
import json
import math
import os
import platform
import re
import statistics
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fedsqueeze.bench import rd
from fedsqueeze.codecs.spec import make_codec
from fedsqueeze.errors import FedsqueezeError
from fedsqueeze.registry import CODECS

Update = dict[str, torch.Tensor]
COLUMNS = ["label", "codec", "params", "bytes", "bits_per_param", "nmse", "mse", "encode_MBps",
           "decode_MBps", "gauss_rate", "ba_rate", "rate_over_ba", "rate_over_gauss", "ba_nmse_rate",
           "rate_over_ba_nmse", "h0", "h1"]

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
        floats = _floats(updates[0])
        n = sum(len(v) for v in floats.values())
        rms = math.sqrt(sum(float((v ** 2).sum()) for v in floats.values()) / n) if n else 0.0
        if rms > 0:
            for coder, dz in (("ans", 0.0), ("ans", 0.25), ("ctx", 0.1), ("ctx", 0.25)):
                out["rdq"] += [f"rdq(step={f * rms:.3g}, coder='{coder}', dead_zone={dz}, normalize=False, alloc='one')"
                               for f in (0.5, 1, 2, 4)]
    return {cid: specs for cid, specs in out.items() if specs}


def _numel(update: Mapping[str, torch.Tensor]) -> int:
    return sum(t.numel() for t in update.values())


def _floats(update: Mapping[str, torch.Tensor]) -> dict[str, np.ndarray]:
    return {k: v.detach().double().reshape(-1).numpy() for k, v in update.items()
            if v.is_floating_point() and v.numel()}


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


def symbol_entropies(codec, updates: Sequence[Update]) -> tuple[float, float]:
    """(order-0 entropy, first-order conditional entropy given the previous symbol) of an rdq codec's
    quantised symbols, bits per parameter over all float tensors; NaN for other codecs.

    The previous symbol (clipped to ±16) is the one before in memory order; the first symbol of a
    tensor has "no previous" as its own context. Plug-in estimates from the joint histogram."""
    from fedsqueeze.codecs.entropy import entropy_bits
    from fedsqueeze.codecs.rdq import RDQ

    if not isinstance(codec, RDQ):
        return math.nan, math.nan
    h0 = h1 = 0.0
    n = 0
    for up in updates:
        for t in up.values():
            if not t.is_floating_point() or not t.numel():
                continue
            x = t.detach().to(torch.float32).reshape(-1).clone()
            q = codec.quantize(x, codec._unit(x), 0).numpy().astype(np.int64)
            h0 += entropy_bits(q)
            h1 += conditional_entropy_bits(q)
            n += q.size
    return (h0 / n, h1 / n) if n else (math.nan, math.nan)


def conditional_entropy_bits(q: np.ndarray, clip: int = 16) -> float:
    """n·H(Q_i | Q_{i-1}) of an int sequence (plug-in, previous symbol clipped to ±``clip``)."""
    from fedsqueeze.codecs.entropy import entropy_bits

    q = np.asarray(q, dtype=np.int64).reshape(-1)
    if q.size == 0:
        return 0.0
    prev = np.concatenate([[clip + 1], np.clip(q[:-1], -clip, clip)])  # clip + 1: "no previous"
    _, sym = np.unique(q, return_inverse=True)
    joint = (prev + clip) * (int(sym.max()) + 1) + sym
    return entropy_bits(joint) - entropy_bits(prev)


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


class _Limits:
    """Per-update R–D limits (Gaussian and Blahut–Arimoto), the BA curves computed once per update."""

    layer_curves: list[list[rd.RDCurve]]

    def __init__(self, updates: Sequence[Update], distortions: Sequence[float],
                 nmses: Sequence[float] = ()) -> None:
        self.layers = [_floats(up) for up in updates]
        var_max = max((float(np.var(v)) for lay in self.layers for v in lay.values()), default=0.0)
        # the slope sweep must reach the distortions the codecs hit on the *big* layers, whose variance
        # can be orders of magnitude below the largest layer variance (real CNN updates: a small
        # high-variance bias vs a 1.6 M-weight fully connected layer): bound it by the mean power
        sizes = [len(v) for lay in self.layers for v in lay.values()]
        power = (sum(float((v ** 2).sum()) for lay in self.layers for v in lay.values()) / sum(sizes)
                 if sizes else 0.0)
        pos = [d for d in distortions if d > 0]
        # equal-NMSE points put the quiet layers at NMSE x their (small) power: the sweep must reach them
        low = min((m for m in nmses if m > 0), default=0.0)
        pos += [low * float(np.mean(v ** 2)) for lay in self.layers for v in lay.values()
                if low > 0 and float(np.mean(v ** 2)) > 0]
        d_lo = max(min(pos, default=power) / 4, power * 2.0 ** -20)
        count = max(40, math.ceil(2 * math.log2(max(2 * var_max / d_lo, 2.0)))) if var_max > 0 else 0
        self.betas = rd.betas_for(d_lo, 2 * var_max, count) if var_max > 0 else np.zeros(0)
        self.layer_curves = [[rd.rd_curve(v, self.betas) for v in lay.values()] if len(self.betas) else []
                             for lay in self.layers]
        self.curves = [rd.combine(cs, [len(v) for v in lay.values()]) if cs else None
                       for cs, lay in zip(self.layer_curves, self.layers)]

    def frontier(self) -> dict[str, np.ndarray]:
        """The first update's limits as (rate, NMSE) curves, for the plot."""
        layers = self.layers[0] if self.layers else {}
        if not layers or self.curves[0] is None:
            return {}
        n = sum(len(v) for v in layers.values())
        power = sum(float((v ** 2).sum()) for v in layers.values()) / n
        if power <= 0:
            return {}
        c = self.curves[0]
        ok = np.isfinite(c.rate) & (c.distortion > 0)
        sizes = [len(v) for v in layers.values()]
        var = [float(np.var(v)) for v in layers.values()]
        d = c.distortion[ok]
        return {"ba_rate": c.rate[ok], "ba_nmse": d / power, "gauss_nmse": d / power,
                "gauss_rate": np.array([rd.gaussian_rate_layers(var, sizes, x) for x in d])}

    def rates(self, i: int, distortion: float) -> tuple[float, float]:
        layers = self.layers[i]
        if not layers:
            return math.nan, math.nan
        sizes = [len(v) for v in layers.values()]
        gauss = rd.gaussian_rate_layers([float(np.var(v)) for v in layers.values()], sizes, distortion)
        ba = rd.rate_at(self.curves[i], distortion) if self.curves[i] is not None else math.nan
        return gauss, ba

    def equal_nmse_rate(self, i: int, nmse: float) -> float:
        """BA bits/parameter with every layer of update ``i`` at the same NMSE (equal relative error)."""
        layers = self.layers[i]
        if not layers or not self.layer_curves[i]:
            return math.nan
        total, n = 0.0, 0
        for v, curve in zip(layers.values(), self.layer_curves[i]):
            power = float(np.mean(v ** 2))
            r = 0.0 if power == 0 or nmse >= 1 else rd.rate_at(curve, nmse * power)
            total += len(v) * r
            n += len(v)
        return total / n if n else math.nan


def _weighted(values: Sequence[float], weights: Sequence[int]) -> float:
    w = np.asarray(weights, dtype=np.float64)
    v = np.asarray(values, dtype=np.float64)
    return float((v * w).sum() / w.sum()) if w.sum() else math.nan


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
    limits = _Limits(updates, [m for rec in recs for m in rec["update_mse"]],
                     [m for rec in recs for m in rec["update_nmse"]])
    rows = _rows(updates, label, codecs, recs, limits)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    meta = _meta(label, updates, repeats)
    _print(console, rows, meta)
    _write_csv(out_dir / f"codecs_{label}.csv", rows)
    (out_dir / f"codecs_{label}.json").write_text(json.dumps(meta, indent=2))
    _plot(out_dir / f"codecs_{label}.png", rows, label, limits.frontier())
    return rows


def _rows(updates: Sequence[Update], label: str, codecs, recs, limits: _Limits) -> list[dict]:
    d = sum(_numel(u) for u in updates)
    nf = [sum(v.numel() for v in u.values() if v.is_floating_point()) for u in updates]
    energy = sum(float((v.double() ** 2).sum()) for u in updates for v in u.values() if v.is_floating_point())
    fp32_bytes = 4 * sum(nf)
    rows = []
    for (spec, _), rec in zip(codecs, recs):
        bpp = 8 * rec["bytes"] / d
        lim = [limits.rates(i, m) for i, m in enumerate(rec["update_mse"])]
        gauss = _weighted([g for g, _ in lim], nf)
        ba = _weighted([b for _, b in lim], nf)
        ba_nmse = _weighted([limits.equal_nmse_rate(i, m) for i, m in enumerate(rec["update_nmse"])], nf)
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


def _meta(label: str, updates: Sequence[Update], repeats: int) -> dict[str, Any]:
    def version(mod: str) -> str:
        try:
            from importlib.metadata import version as v
            return v(mod)
        except Exception:  # noqa: BLE001 - a missing distribution only blanks one field
            return "?"

    return {
        "label": label, "command": " ".join(sys.argv), "date": _dt.datetime.now().isoformat(timespec="seconds"),
        "updates": len(updates), "params": sum(_numel(u) for u in updates), "repeats": repeats,
        "versions": {"fedsqueeze": version("fedsqueeze"), "torch": torch.__version__, "numpy": np.__version__,
                     "constriction": version("constriction")},
        "machine": {"cpus": os.cpu_count(), "loadavg": list(os.getloadavg()), "platform": platform.platform(),
                    "python": platform.python_version(), "torch_threads": 1},
    }


def _fmt(v: Any, digits: int = 3) -> str:
    if isinstance(v, float):
        return "—" if math.isnan(v) else (f"{v:.{digits}g}" if abs(v) < 1e4 else f"{v:.0f}")
    return str(v)


def _print(console, rows: Sequence[dict], meta: dict[str, Any]) -> None:
    from rich.table import Table

    table = Table(title=f"codecs on {meta['label']}: {meta['params']} parameters, {meta['updates']} update(s)")
    table.add_column("codec", no_wrap=True)
    for col in ("bits/param", "NMSE", "enc MB/s", "dec MB/s", "R gauss", "R BA slope", "rate/BA slope",
                "R BA nmse", "rate/BA nmse", "H0 sym", "H1|prev"):
        table.add_column(col, justify="right")
    for r in rows:
        table.add_row(r["codec"], _fmt(r["bits_per_param"], 4), _fmt(r["nmse"]), _fmt(r["encode_MBps"]),
                      _fmt(r["decode_MBps"]), _fmt(r["gauss_rate"]), _fmt(r["ba_rate"]), _fmt(r["rate_over_ba"]),
                      _fmt(r["ba_nmse_rate"]), _fmt(r["rate_over_ba_nmse"]), _fmt(r["h0"]), _fmt(r["h1"]))
    console.print(table)
    console.print("[dim]limits (i.i.d. per layer, Blahut–Arimoto at the codec's distortion): 'BA slope' = layers at "
                  "equal R–D slope (free allocation, the lowest); 'BA nmse' = every layer at the codec's NMSE. "
                  "H0 sym / H1|prev: order-0 and first-order conditional entropy of rdq's symbols (bits/param); "
                  "a context coder (coder='ctx') can go below the i.i.d. limits when H1 < H0.[/dim]")
    m = meta["machine"]
    console.print(f"[dim]{meta['date']}  `{meta['command']}`  torch {meta['versions']['torch']}, numpy "
                  f"{meta['versions']['numpy']}, constriction {meta['versions']['constriction']}; {m['cpus']} cpus, "
                  f"load {m['loadavg'][0]:.2f}, 1 torch thread, median of {meta['repeats']}[/dim]")


def _write_csv(path: Path, rows: Sequence[dict]) -> None:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS)
        w.writeheader()
        for r in rows:
            w.writerow({k: (repr(v) if isinstance(v, float) else v) for k, v in r.items()})


def _series(spec: str) -> str:
    """Plot series of a setting: its spec without numeric options (a sweep over them is one line)."""
    args = re.sub(r"\w+=[-+]?[\d.]+(?:e[-+]?\d+)?\s*(,\s*)?", "", spec)
    return re.sub(r"\(\s*,?\s*\)|,\s*\)", lambda m: ")" if m.group(0).startswith(",") else "", args)


def _plot(path: Path, rows: Sequence[dict], label: str, frontier: dict[str, np.ndarray]) -> None:
    from fedsqueeze.errors import require_matplotlib

    plt = require_matplotlib()

    fig, ax = plt.subplots(figsize=(10, 5.5))
    ax.set_prop_cycle(color=plt.get_cmap("tab20").colors)
    groups: dict[str, list[dict]] = {}
    for r in rows:
        if r["nmse"] > 0:
            groups.setdefault(_series(r["codec"]), []).append(r)
    markers = "osD^v<>pXh*"
    for i, (name, rs) in enumerate(groups.items()):
        rs = sorted(rs, key=lambda r: r["bits_per_param"])
        ax.plot([r["bits_per_param"] for r in rs], [r["nmse"] for r in rs], marker=markers[i % len(markers)],
                ms=5, lw=1.2, label=name)
    if frontier:
        ax.plot(frontier["ba_rate"], frontier["ba_nmse"], "k--", lw=1.5, label="limit: Blahut–Arimoto R(D)")
        ax.plot(frontier["gauss_rate"], frontier["gauss_nmse"], ":", color="grey", lw=1.5,
                label="Gaussian layers, same variances")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlim(left=0.02)  # below ~0.02 bits/parameter the limit curves only approach NMSE 1
    ax.set_ylim(top=2.0)
    ax.set_xlabel("bits per parameter (payload bytes, headers included)")
    ax.set_ylabel("NMSE")
    ax.set_title(f"rate–distortion: {label}")
    ax.grid(True, which="both", alpha=0.25)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
