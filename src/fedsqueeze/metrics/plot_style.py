"""What the run plots (``fedsqueeze plot``) and the suite plots (``fedsqueeze compare``) share.

- **Log-axis ticks** that never crowd: major ticks on a 1-2-3-5 / 1-2-5 / 1-3 / decade grid, the
  richest one that keeps at most ``max_ticks`` labels, written as plain numbers (``0.5``, ``20``,
  ``1,000``); minor ticks unlabelled. Matplotlib's default labels minor ticks on a short log axis
  (``2×10^1 3×10^1 ...``), which overlap.
- **Legend labels** that name the algorithm and both codecs (``fedavg · up topk(fraction=0.01) ·
  down fp32``; a delta downlink says so) and tell runs apart whose labels would coincide: the config
  keys in which they differ (``seed=1``), or the run folder when the configs are the same.
- **Titles** naming the data set, partition, model(s), clients and rounds of the runs shown.
"""
from __future__ import annotations

import math
from typing import Any

from fedsqueeze.metrics.results import _spec_text

SEP = " · "


# ---- log-axis ticks -------------------------------------------------------------------------------------
_GRIDS = ((1, 1.5, 2, 3, 4, 5, 6, 7, 8), (1, 2, 3, 5), (1, 2, 5), (1, 3), (1,))


def _grid(lo: float, hi: float, mantissas: tuple[float, ...], every: int = 1) -> list[float]:
    out = []
    for e in range(math.floor(math.log10(lo)) - 1, math.ceil(math.log10(hi)) + 1):
        if e % every:
            continue
        for m in mantissas:
            v = float(f"{m}e{e}")  # exact decimal values: 0.3, not 0.30000000000000004
            if lo * (1 - 1e-9) <= v <= hi * (1 + 1e-9):
                out.append(v)
    return out


def log_ticks(lo: float, hi: float, max_ticks: int = 7) -> list[float]:
    """Major tick positions for a log axis over [lo, hi]: the richest 1-2-3-5 style grid with at most
    ``max_ticks`` ticks in range; decades (every k-th one) on long axes; evenly spaced round numbers
    on an axis too short to hold two grid values."""
    lo, hi = sorted((float(lo), float(hi)))
    if not (lo > 0 and math.isfinite(hi)):
        raise ValueError(f"a log axis needs 0 < lo <= hi < inf, got [{lo}, {hi}]")
    for mant in _GRIDS:
        ticks = _grid(lo, hi, mant)
        if len(ticks) <= max_ticks:
            break
    else:
        every = 2
        while len(ticks := _grid(lo, hi, (1,), every)) > max_ticks:
            every += 1
    if len(ticks) < 2:  # less than one grid step in range: plain round numbers
        from matplotlib.ticker import MaxNLocator
        ticks = [float(v) for v in MaxNLocator(nbins=max(max_ticks - 1, 1), steps=[1, 2, 2.5, 5, 10]).tick_values(lo, hi)
                 if lo * (1 - 1e-9) <= v <= hi * (1 + 1e-9)]
    return ticks


def tick_text(v: float) -> str:
    """A tick label: plain numbers from 0.001 to below a million (``0.02``, ``1.5``, ``300``, ``2,000``),
    powers of ten outside that."""
    if v <= 0:
        return f"{v:g}"
    if 1e-3 <= v < 1e6:
        if v >= 1000:
            return f"{v:,.0f}" if float(v).is_integer() else f"{v:,.1f}"
        return f"{float(f'{v:.6g}'):g}"
    e = math.floor(math.log10(v) + 1e-9)
    m = v / 10 ** e
    return f"$10^{{{e}}}$" if abs(m - 1) < 1e-6 else f"${m:g}\\times10^{{{e}}}$"


def log_x(ax: Any, max_ticks: int = 7) -> None:
    """Make ``ax``'s x axis logarithmic with readable ticks; call after everything is drawn on it."""
    from matplotlib.ticker import FixedLocator, FuncFormatter, LogLocator, NullFormatter

    ax.set_xscale("log")
    lo, hi = ax.get_xlim()
    ax.xaxis.set_major_locator(FixedLocator(log_ticks(lo, hi, max_ticks)))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _pos: tick_text(v)))
    ax.xaxis.set_minor_locator(LogLocator(subs="auto"))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlim(lo, hi)


# ---- legend labels --------------------------------------------------------------------------------------
def codec_text(spec: Any, limit: int = 40) -> str:
    """A codec spec as a short legend text: quotes, ``inner=`` and spaces dropped, at most ``limit``
    characters (``…`` marks a cut; the full spec is in the table and config.json)."""
    text = _spec_text(spec) if not isinstance(spec, str) else spec
    text = text.replace("'", "").replace('"', "").replace("inner=", "").replace(" | ", "|").replace(", ", ",")
    return text if len(text) <= limit else text[:limit - 1] + "…"


def wrap(text: str, width: int) -> str:
    """``text`` on lines of at most ``width`` characters (broken at spaces), continuation lines indented."""
    import textwrap

    return "\n".join(textwrap.wrap(text, width, subsequent_indent="    ", break_on_hyphens=False)) or text


def codecs_text(cfg: dict, limit: int = 40) -> str:
    """``up X · down Y`` from a run's saved config (``down Y (delta)`` for a per-client delta downlink)."""
    codec = cfg.get("codec", {})
    down = "down " + codec_text(codec.get("down", "fp32"), limit)
    if codec.get("downlink") == "delta":
        down += " (delta)"
    return f"up {codec_text(codec.get('up', 'fp32'), limit)}{SEP}{down}"


def run_label(cfg: dict, *, model: bool = False) -> str:
    """``algorithm [· model] · up X · down Y`` from a run's saved config."""
    parts = [str(cfg.get("algorithm", {}).get("name", "?"))]
    if model:
        parts.append(str(cfg.get("model", {}).get("name", "?")))
    return SEP.join(parts) + SEP + codecs_text(cfg)


def _flat(d: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(d, dict):
        return {prefix: d}
    out: dict[str, Any] = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}.{k}" if prefix else str(k)))
    return out


# keys that never tell runs apart in a legend (names, paths, how a run was executed)
_IGNORED = ("name", "output_dir", "engine.")


def differences(configs: list[dict], limit: int = 2) -> list[str]:
    """For each config, ``key=value`` for (at most ``limit``) keys whose values differ among them,
    seed first; empty strings when the configs coincide."""
    flats = [_flat(c) for c in configs]
    keys = sorted({k for f in flats for k in f}, key=lambda k: (k != "seed", k))
    varying = [k for k in keys if not k.startswith(_IGNORED)
               and len({repr(f.get(k)) for f in flats}) > 1][:limit]
    return [", ".join(f"{k.rsplit('.', 1)[-1] if k != 'seed' else 'seed'}={f.get(k)}" for k in varying)
            for f in flats]


def distinct(labels: list[str], configs: list[dict], names: list[str]) -> list[str]:
    """``labels`` with every group of equal ones told apart: by the config keys in which the group's
    runs differ (``seed=1``), else by their names (run folders)."""
    out = list(labels)
    for label in set(labels):
        idx = [i for i, lab in enumerate(labels) if lab == label]
        if len(idx) < 2:
            continue
        diffs = differences([configs[i] for i in idx])
        for i, d in zip(idx, diffs):
            out[i] = f"{label} [{d or names[i]}]"
        if len({out[i] for i in idx}) < len(idx):  # the differences alone did not separate them
            for i, d in zip(idx, diffs):
                out[i] = f"{label} [{', '.join(x for x in (d, names[i]) if x)}]"
    return out


# ---- titles ---------------------------------------------------------------------------------------------
def _partition(data: dict) -> str:
    p = data.get("partition", "?")
    if p == "dirichlet":
        return f"Dirichlet α={data.get('alpha')}"
    if p == "shards":
        return f"{data.get('shards_per_client')} shards/client"
    return str(p)


def _per_round(train: dict) -> str:
    frac = train.get("client_fraction") or 0
    return f"{100 * frac:g}%" if frac else str(train.get("clients_per_round", "?"))


def _one_or_many(values: list[str], what: str, most: int = 3) -> str:
    uniq = list(dict.fromkeys(values))
    return uniq[0] if len(uniq) == 1 else (", ".join(uniq) if len(uniq) <= most else f"{len(uniq)} {what}")


def federation_text(configs: list[dict]) -> str:
    """``fashion_mnist · Dirichlet α=0.5 · 100 clients, 10/round · 100 rounds · model mlp`` for the
    runs' configs (several values listed, or counted when there are many)."""
    if not configs:
        return ""
    data = [c.get("data", {}) for c in configs]
    parts = [_one_or_many([str(d.get("source", "?")) for d in data], "data sets"),
             _one_or_many([_partition(d) for d in data], "partitions")]
    clients = _one_or_many([str(d.get("num_clients", "?")) for d in data], "sizes")
    per = _one_or_many([_per_round(c.get("train", {})) for c in configs], "values")
    parts.append(f"{clients} clients, {per}/round")
    parts.append(_one_or_many([str(c.get("rounds", "?")) for c in configs], "lengths") + " rounds")
    parts.append("model " + _one_or_many([str(c.get("model", {}).get("name", "?")) for c in configs], "models"))
    return SEP.join(parts)
