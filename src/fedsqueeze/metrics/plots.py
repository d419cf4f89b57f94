"""PNG plots of runs (``fedsqueeze plot``): accuracy against cumulative megabytes (log x) and rounds.

Labels, ticks and titles follow ``fedsqueeze.metrics.plot_style``."""
from __future__ import annotations

import json
from pathlib import Path

from fedsqueeze.errors import require_matplotlib

plt = require_matplotlib()  # without the plots extra: MissingExtraError

from fedsqueeze.errors import FedsqueezeError  # noqa: E402
from fedsqueeze.metrics.plot_style import distinct, federation_text, log_x, run_label, wrap  # noqa: E402
from fedsqueeze.metrics.results import read_history  # noqa: E402


_YLABEL = {"global_acc": "global test accuracy (%)", "personal_acc": "personal accuracy (%)"}


def _config(run_dir: Path) -> dict | None:
    """The run's saved config: config.json, else config.toml (folders copied without the JSON), else None."""
    path = run_dir / "config.json"
    if path.exists():
        return json.loads(path.read_text())
    if (run_dir / "config.toml").exists():
        import tomllib
        try:
            return tomllib.loads((run_dir / "config.toml").read_text())
        except tomllib.TOMLDecodeError:
            return None
    return None


def labels(configs: list[dict | None], names: list[str]) -> list[str]:
    """Legend text per run: ``algorithm [· model] · up X · down Y`` (the model when the runs' models
    differ), runs whose texts coincide told apart by config differences or folder name; a run
    without config.json is its folder name."""
    known = [c for c in configs if c is not None]
    with_model = len({c.get("model", {}).get("name") for c in known}) > 1
    out = [run_label(c, model=with_model) if c is not None else n for c, n in zip(configs, names)]
    return [wrap(t, 80) for t in distinct(out, [c or {} for c in configs], names)]


def plot_runs(run_dirs: list[Path], out: Path, *, metric: str = "global_acc", title: str | None = None) -> Path:
    """One panel per x-axis (cumulative MB, log; rounds), every run a line; the legend below both
    panels, the title naming the data, partition and model unless ``title`` is given."""
    if not run_dirs:
        raise FedsqueezeError("plot needs at least one run directory")
    runs = []
    for rd in map(Path, run_dirs):
        if not (rd / "metrics.jsonl").exists():
            raise FedsqueezeError(f"{rd} is not a run directory (no metrics.jsonl); pass folders made by `fedsqueeze run`")
        runs.append((rd, _config(rd), read_history(rd)))
    names = [str(rd) if [r[0].name for r in runs].count(rd.name) > 1 else rd.name for rd, _, _ in runs]
    texts = labels([c for _, c, _ in runs], names)
    fig, (ax_mb, ax_rd) = plt.subplots(1, 2, figsize=(11, 4.6), layout="constrained")
    personal_fallback = False
    for (_rd, _cfg, history), label in zip(runs, texts):
        key = metric
        if not any(r.get(key) is not None for r in history) and key == "global_acc":
            key = "personal_acc"  # no global model (local-only, FedPer, SPATL): show the personal one
        hist = [r for r in history if r.get(key) is not None]
        if not hist:
            continue
        if key != metric:
            label += " [personal acc]"
            personal_fallback = True
        mb = [max(r["cum_bytes"], 1) / 1e6 for r in hist]
        acc = [100 * r[key] for r in hist]
        line, = ax_mb.plot(mb, acc, marker=".", markersize=4, linewidth=1.4, label=label)
        ax_rd.plot([r["round"] for r in hist], acc, marker=".", markersize=4, linewidth=1.4, color=line.get_color())
    ax_mb.set_xlabel("cumulative communication (MB, up + down, headers included)")
    ax_rd.set_xlabel("round")
    ylabel = "test accuracy (%)" if personal_fallback else _YLABEL[metric]  # the legend marks the personal ones
    for ax in (ax_mb, ax_rd):
        ax.set_ylabel(ylabel)
        ax.grid(True, alpha=0.3)
    if ax_mb.lines:
        log_x(ax_mb, max_ticks=6)
        fig.legend(loc="outside lower center", ncol=1 if len(ax_mb.lines) < 4 else 2, fontsize=8, frameon=False)
    fed = federation_text([c for _, c, _ in runs if c is not None])
    fig.suptitle("\n".join(t for t in (title, fed) if t) or "fedsqueeze runs", fontsize=10)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
