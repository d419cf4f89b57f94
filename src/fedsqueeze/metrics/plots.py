"""PNG plots of runs: accuracy against cumulative megabytes (log x) and against rounds."""
from __future__ import annotations

import json
from pathlib import Path

from fedsqueeze.errors import require_matplotlib

plt = require_matplotlib()  # without the plots extra: MissingExtraError

from fedsqueeze.errors import FedsqueezeError  # noqa: E402
from fedsqueeze.metrics.results import read_history  # noqa: E402


def _label(run_dir: Path) -> str:
    cfg_path = run_dir / "config.json"
    if cfg_path.exists():
        cfg = json.loads(cfg_path.read_text())
        up = cfg["codec"]["up"]
        return f"{cfg['name']} ({cfg['algorithm']['name']}, up={up if isinstance(up, str) else 'custom'})"
    return run_dir.name


def plot_runs(run_dirs: list[Path], out: Path, *, metric: str = "global_acc", title: str | None = None) -> Path:
    """One chart per x-axis (cumulative MB, rounds), every run a line."""
    if not run_dirs:
        raise FedsqueezeError("plot needs at least one run directory")
    fig, (ax_mb, ax_rd) = plt.subplots(1, 2, figsize=(11, 4.2))
    for rd in run_dirs:
        rd = Path(rd)
        if not (rd / "metrics.jsonl").exists():
            raise FedsqueezeError(f"{rd} is not a run directory (no metrics.jsonl); pass folders made by `fedsqueeze run`")
        history = read_history(rd)
        key = metric
        if not any(r.get(key) is not None for r in history) and key == "global_acc":
            key = "personal_acc"  # no global model (local-only, FedPer, SPATL): show the personal one
        hist = [r for r in history if r.get(key) is not None]
        if not hist:
            continue
        mb = [max(r["cum_bytes"], 1) / 1e6 for r in hist]
        acc = [100 * r[key] for r in hist]
        label = _label(rd) + (" [personal]" if key != metric else "")
        ax_mb.plot(mb, acc, marker=".", label=label)
        ax_rd.plot([r["round"] for r in hist], acc, marker=".", label=label)
    ax_mb.set_xscale("log")
    ax_mb.set_xlabel("cumulative communication (MB, up + down, headers included)")
    ax_rd.set_xlabel("round")
    for ax in (ax_mb, ax_rd):
        ax.set_ylabel(f"{metric.replace('_', ' ')} (%)")
        ax.grid(True, alpha=0.3)
    ax_rd.legend(fontsize=8, loc="lower right")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
