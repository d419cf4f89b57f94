"""The suite's pictures: global accuracy against cumulative MB (log x), rounds, and simulated time.

An entry run with several seeds is drawn as its mean curve with a band from the lowest to the
highest seed at each evaluated round (min–max, not a confidence interval: with 3 seeds a 95%
t-interval is ±4.3 standard errors wide; the table gives the t-intervals). On the MB and time axes
the mean curve's x is the mean over seeds of the cumulative MB / simulated seconds at that round.
Legends name each entry's codecs up and down; the title names the suite, data, partition and model.
"""
from __future__ import annotations

from pathlib import Path

from fedsqueeze.errors import require_matplotlib

plt = require_matplotlib()  # without the plots extra: MissingExtraError

from fedsqueeze.compare.network import NetworkProfile  # noqa: E402
from fedsqueeze.compare.table import RunData, simulated_elapsed  # noqa: E402
from fedsqueeze.metrics.plot_style import SEP, codecs_text, distinct, federation_text, log_x, wrap  # noqa: E402


def _series(run: RunData) -> list[dict]:
    return [r for r in run.history if r.get("global_acc") is not None]


def _style(i: int, n: int) -> dict:
    """Distinct colours first, then line styles: tab10 for up to 10 runs; beyond, tab10's colours
    solid, then the same hues darkened and dashed (20 colours that all read on white — tab20's pale
    halves do not), then dotted and dash-dotted."""
    base = plt.get_cmap("tab10")(i % 10)
    if n <= 10:
        return {"color": base, "linestyle": ("-", "--", ":", "-.")[(i // 10) % 4], "linewidth": 1.4}
    dark = (i // 10) % 2 == 1
    color = tuple(0.6 * c for c in base[:3]) + (1.0,) if dark else base
    styles = ("-", "--", ":", "-.")
    return {"color": color, "linestyle": styles[(i // 10) % 4], "linewidth": 1.4}


# more runs than this: the legend goes beside the axes instead of below them
_LEGEND_INSIDE = 12
_WRAP = 62  # legend text per line: two columns of it fit under an 8.5-inch figure at 7 points


def _curve(group: list[RunData], x_of) -> tuple[list[float], list[float], list[float], list[float]]:
    """x (mean over seeds), mean, min and max accuracy (%) at the rounds every seed evaluated."""
    per = [{r["round"]: r for r in _series(run)} for run in group]
    rounds = sorted(set.intersection(*(set(p) for p in per))) if per else []
    xs, mean, lo, hi = [], [], [], []
    for rnd in rounds:
        accs = [100 * p[rnd]["global_acc"] for p in per]
        xs.append(sum(x_of(run, p[rnd]) for run, p in zip(group, per)) / len(group))
        mean.append(sum(accs) / len(accs))
        lo.append(min(accs))
        hi.append(max(accs))
    return xs, mean, lo, hi


def legend_labels(runs: dict[str, list[RunData]], width: int = _WRAP) -> list[str]:
    """``label (or entry name) · up X · down Y`` per entry, wrapped at ``width`` characters; equal
    texts told apart by entry name."""
    firsts = [group[0] for group in runs.values()]
    texts = [f"{run.label or name}{SEP}{codecs_text(run.config, limit=44)}" for name, run in zip(runs, firsts)]
    return [wrap(t, width) for t in distinct(texts, [{} for _ in firsts], list(runs))]


def suite_title(title: str, runs: dict[str, list[RunData]]) -> str:
    return "\n".join(t for t in (title, federation_text([g[0].config for g in runs.values()])) if t)


def seeds_note(runs: dict[str, list[RunData]]) -> str:
    """The legend's title when an entry has several seeds: what the line and the band are."""
    counts = sorted({len(g) for g in runs.values()})
    if counts[-1] < 2:
        return ""
    n = str(counts[0]) if len(counts) == 1 else f"{counts[0]}–{counts[-1]}"
    return f"line: mean of {n} seeds; band: min–max over seeds"


def plot_suite(runs: dict[str, RunData | list[RunData]], out_dir: Path, *, target: float, title: str,
               networks: list[NetworkProfile]) -> list[Path]:
    """One PNG per x axis. ``runs`` maps an entry to its run, or to its runs over several seeds."""
    out_dir = Path(out_dir)
    groups = {name: (list(r) if isinstance(r, (list, tuple)) else [r]) for name, r in runs.items()}
    groups = {name: g for name, g in groups.items() if g}
    labels = legend_labels(groups)
    head = suite_title(title, groups)
    note = seeds_note(groups)
    written = []
    panels = [("accuracy_vs_mb.png", "cumulative communication (MB, up + down, headers included)", True, None),
              ("accuracy_vs_rounds.png", "round", False, None)]
    panels += [(f"accuracy_vs_time_{p.name}.png", f"simulated time on '{p.describe()}' (s)", True, p) for p in networks]
    outside = len(groups) > _LEGEND_INSIDE
    lines = [lab.count("\n") + 1 for lab in labels]
    below = max(sum(lines[0::2]), sum(lines[1::2]))  # the taller of the two columns under the axes
    size = (13, max(6.0, 0.14 * sum(lines) + 1.5)) if outside else (8.5, 5 + 0.14 * below)
    for filename, xlabel, logx, prof in panels:
        fig, ax = plt.subplots(figsize=size, layout="constrained")
        if filename == "accuracy_vs_mb.png":
            def x_of(run, rec):
                return max(rec["cum_bytes"], 1) / 1e6
        elif prof is None:
            def x_of(run, rec):
                return rec["round"]
        else:
            def x_of(run, rec, prof=prof, cache={}):  # noqa: B006 - one elapsed table per run and panel
                key = id(run)
                if key not in cache:
                    cache[key] = simulated_elapsed(run, prof)
                return max(cache[key][rec["round"]], 1e-3)
        lows = []
        for i, ((name, group), label) in enumerate(zip(groups.items(), labels)):
            xs, mean, lo, hi = _curve(group, x_of)
            if not xs:
                continue
            style = _style(i, len(groups))
            ax.plot(xs, mean, label=label, **style)
            if len(group) > 1:
                ax.fill_between(xs, lo, hi, color=style["color"], alpha=0.15, linewidth=0)
            lows.append(min(lo))
        ax.axhline(100 * target, color="grey", linestyle=":", linewidth=1)
        ax.text(0.005, 100 * target, f"target {100 * target:.1f}%", transform=ax.get_yaxis_transform(),
                va="bottom", ha="left", fontsize=8, color="grey")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("global test accuracy (%)")
        ax.set_ylim(max(min(lows, default=0), 100 * target - 25), None)
        ax.grid(True, alpha=0.3)
        if logx and ax.lines[:-1]:
            log_x(ax, max_ticks=9)
        if outside:
            fig.legend(fontsize=7, loc="outside right upper", title=note or None, title_fontsize=7, frameon=False)
        else:
            fig.legend(fontsize=7, loc="outside lower center", ncol=2, title=note or None, title_fontsize=7,
                       frameon=False)
        ax.set_title(head, fontsize=9.5)
        path = out_dir / filename
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written
