"""What the codec benchmark writes: a rich table, ``codecs_<label>.csv``, the R–D plot ``codecs_<label>.png``
and the run's metadata (command, versions, machine, date) for ``codecs_<label>.json``."""
from __future__ import annotations

import csv
import datetime as _dt
import math
import os
import platform
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fedsqueeze.bench.codec_limits import Update

COLUMNS = ["label", "codec", "params", "bytes", "bits_per_param", "nmse", "mse", "encode_MBps",
           "decode_MBps", "gauss_rate", "ba_rate", "rate_over_ba", "rate_over_gauss", "ba_nmse_rate",
           "rate_over_ba_nmse", "h0", "h1"]


def metadata(label: str, updates: Sequence[Update], repeats: int) -> dict[str, Any]:
    def version(mod: str) -> str:
        try:
            from importlib.metadata import version as v
            return v(mod)
        except Exception:  # noqa: BLE001 - a missing distribution only blanks one field
            return "?"

    return {
        "label": label, "command": " ".join(sys.argv), "date": _dt.datetime.now().isoformat(timespec="seconds"),
        "updates": len(updates), "params": sum(t.numel() for u in updates for t in u.values()), "repeats": repeats,
        "versions": {"fedsqueeze": version("fedsqueeze"), "torch": torch.__version__, "numpy": np.__version__,
                     "constriction": version("constriction")},
        "machine": {"cpus": os.cpu_count(), "loadavg": list(os.getloadavg()), "platform": platform.platform(),
                    "python": platform.python_version(), "torch_threads": 1},
    }


def _fmt(v: Any, digits: int = 3) -> str:
    if isinstance(v, float):
        return "—" if math.isnan(v) else (f"{v:.{digits}g}" if abs(v) < 1e4 else f"{v:.0f}")
    return str(v)


def print_table(console, rows: Sequence[dict], meta: dict[str, Any]) -> None:
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


def write_csv(path: Path, rows: Sequence[dict]) -> None:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS)
        w.writeheader()
        for r in rows:
            w.writerow({k: (repr(v) if isinstance(v, float) else v) for k, v in r.items()})


def _series(spec: str) -> str:
    """Plot series of a setting: its spec without numeric options (a sweep over them is one line)."""
    args = re.sub(r"\w+=[-+]?[\d.]+(?:e[-+]?\d+)?\s*(,\s*)?", "", spec)
    return re.sub(r"\(\s*,?\s*\)|,\s*\)", lambda m: ")" if m.group(0).startswith(",") else "", args)


def plot(path: Path, rows: Sequence[dict], label: str, frontier: dict[str, np.ndarray]) -> None:
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