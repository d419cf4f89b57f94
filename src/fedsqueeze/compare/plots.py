"""The suite's pictures: global accuracy against cumulative MB (log x), rounds, and simulated time."""
from __future__ import annotations

from pathlib import Path

from fedsqueeze.errors import require_matplotlib

plt = require_matplotlib()  # without the plots extra: MissingExtraError

from fedsqueeze.compare.network import NetworkProfile  # noqa: E402
from fedsqueeze.compare.table import RunData, simulated_elapsed  # noqa: E402


def _series(run: RunData) -> list[dict]:
    return [r for r in run.history if r.get("global_acc") is not None]


def _style(i: int, n: int) -> dict:
    """Distinct colours first (tab10 up to 10 runs, tab20 beyond), then line styles."""
    cmap, k = (plt.get_cmap("tab10"), 10) if n <= 10 else (plt.get_cmap("tab20"), 20)
    styles = ("-", "--", ":", "-.")
    return {"color": cmap(i % k), "linestyle": styles[(i // k) % 4], "linewidth": 1.4}


# more runs than this: the legend goes beside the axes instead of over the curves
_LEGEND_INSIDE = 12


def plot_suite(runs: dict[str, RunData], out_dir: Path, *, target: float, title: str,
               networks: list[NetworkProfile]) -> list[Path]:
    out_dir = Path(out_dir)
    written = []
    panels = [("accuracy_vs_mb.png", "cumulative communication (MB, up + down, headers included)", True, None),
              ("accuracy_vs_rounds.png", "round", False, None)]
    panels += [(f"accuracy_vs_time_{p.name}.png", f"simulated time on '{p.describe()}' (s)", True, p) for p in networks]
    outside = len(runs) > _LEGEND_INSIDE
    for filename, xlabel, logx, prof in panels:
        fig, ax = plt.subplots(figsize=(13, 6) if outside else (8.5, 5))
        for i, (name, run) in enumerate(runs.items()):
            hist = _series(run)
            if not hist:
                continue
            if filename == "accuracy_vs_mb.png":
                xs = [max(r["cum_bytes"], 1) / 1e6 for r in hist]
            elif prof is None:
                xs = [r["round"] for r in hist]
            else:
                elapsed = simulated_elapsed(run, prof)
                xs = [max(elapsed[r["round"]], 1e-3) for r in hist]
            ax.plot(xs, [100 * r["global_acc"] for r in hist], label=run.label or name, **_style(i, len(runs)))
        ax.axhline(100 * target, color="grey", linestyle=":", linewidth=1)
        if logx:
            ax.set_xscale("log")
        ax.text(ax.get_xlim()[0], 100 * target, f" target {100 * target:.1f}%", va="bottom", fontsize=8, color="grey")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("global test accuracy (%)")
        lo = min((100 * r["global_acc"] for run in runs.values() for r in _series(run)), default=0)
        ax.set_ylim(max(lo, 100 * target - 25), None)
        ax.grid(True, alpha=0.3)
        if outside:
            ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
        else:
            ax.legend(fontsize=7, loc="lower right", ncol=2)
        ax.set_title(title)
        fig.tight_layout()
        path = out_dir / filename
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written
