"""Plot readability: log-axis ticks, legend texts naming both codecs, same-config runs told apart,
titles — checked on the matplotlib objects (Agg backend), not on pixels."""
import json

import pytest

from fedsqueeze.metrics import plot_style as ps

plt = pytest.importorskip("matplotlib.pyplot")


@pytest.mark.parametrize("lo, hi, ticks", [
    (0.45, 14, [0.5, 1, 2, 3, 5, 10]),                  # 1-2-3-5 grid
    (100, 2000, [100, 200, 300, 500, 1000, 2000]),
    (20, 80, [20, 30, 40, 50, 60, 70, 80]),             # under a decade: a finer grid, never minor labels
    (0.01, 5000, [0.01, 0.1, 1, 10, 100, 1000]),        # long axis: decades
    (1e-3, 1e9, [0.01, 1, 100, 1e4, 1e6, 1e8]),         # very long: every other decade
    (20, 25, [20, 21, 22, 23, 24, 25]),                 # shorter than one grid step: round numbers
])
def test_log_ticks(lo, hi, ticks):
    assert ps.log_ticks(lo, hi, max_ticks=7) == pytest.approx(ticks)


def test_tick_text_is_plain():
    assert [ps.tick_text(v) for v in (0.001, 0.3, 1, 1.5, 20, 300, 2000, 15000, 1e6, 3e-5)] == \
        ["0.001", "0.3", "1", "1.5", "20", "300", "2,000", "15,000", "$10^{6}$", "$3\\times10^{-5}$"]


def test_codec_texts_and_labels():
    cfg = {"algorithm": {"name": "fedavg"}, "model": {"name": "mlp"},
           "codec": {"up": "ef(inner='topk(fraction=0.01)')", "down": "rdq(coder='ans', step=1.0)", "downlink": "delta"}}
    assert ps.run_label(cfg) == "fedavg · up ef(topk(fraction=0.01)) · down rdq(coder=ans,step=1.0) (delta)"
    assert ps.run_label(cfg, model=True).startswith("fedavg · mlp · up ")
    assert ps.codec_text("x" * 50, limit=10) == "x" * 9 + "…"
    assert ps.codec_text({"name": "qsgd", "levels": 4}) == "qsgd(levels=4)"


def test_distinct_by_seed_then_by_name():
    a = {"seed": 0, "name": "r", "train": {"lr": 0.1}}
    b = {"seed": 1, "name": "r", "train": {"lr": 0.1}}
    assert ps.distinct(["x", "x", "y"], [a, b, a], ["r0", "r1", "r2"]) == ["x [seed=0]", "x [seed=1]", "y"]
    c = {"seed": 0, "name": "other", "train": {"lr": 0.05}}
    assert ps.distinct(["x", "x"], [a, c], ["p", "q"]) == ["x [lr=0.1]", "x [lr=0.05]"]
    # the same config twice (a repeated run): told apart by folder
    assert ps.distinct(["x", "x"], [a, dict(a)], ["run-a", "run-b"]) == ["x [run-a]", "x [run-b]"]


def test_federation_text():
    cfg = {"data": {"source": "fashion_mnist", "partition": "dirichlet", "alpha": 0.1, "num_clients": 100},
           "train": {"clients_per_round": 10}, "rounds": 50, "model": {"name": "cnn"}}
    other = json.loads(json.dumps(cfg))
    other["model"]["name"] = "mlp"
    assert ps.federation_text([cfg]) == "fashion_mnist · Dirichlet α=0.1 · 100 clients, 10/round · 50 rounds · model cnn"
    assert ps.federation_text([cfg, other]).endswith("model cnn, mlp")


def _fake_run(path, seed, up="fp32", down="fp32", accs=(0.3, 0.5, 0.6), per_round=2_000_000):
    path.mkdir(parents=True)
    cfg = {"name": "digits-quick", "seed": seed, "rounds": len(accs),
           "data": {"source": "digits", "partition": "dirichlet", "alpha": 0.5, "num_clients": 20},
           "train": {"clients_per_round": 5}, "model": {"name": "mlp"}, "algorithm": {"name": "fedavg"},
           "codec": {"up": up, "down": down, "downlink": "broadcast"}}
    (path / "config.json").write_text(json.dumps(cfg))
    (path / "metrics.jsonl").write_text("".join(
        json.dumps({"round": i + 1, "global_acc": a, "cum_bytes": (i + 1) * per_round}) + "\n"
        for i, a in enumerate(accs)))
    return path


def _capture(monkeypatch, module):
    figs = []
    monkeypatch.setattr(module.plt, "close", figs.append)
    return figs


def test_run_plot_legend_title_ticks(tmp_path, monkeypatch):
    from fedsqueeze.metrics import plots

    runs = [_fake_run(tmp_path / "s0", 0), _fake_run(tmp_path / "s1", 1, accs=(0.2, 0.4, 0.7)),
            _fake_run(tmp_path / "topk", 0, up="topk(fraction=0.05)", down="fp16", per_round=300_000)]
    figs = _capture(monkeypatch, plots)
    plots.plot_runs(runs, tmp_path / "p.png")
    fig = figs[0]
    texts = [t.get_text() for t in fig.legends[0].get_texts()]
    assert texts == ["fedavg · up fp32 · down fp32 [seed=0]", "fedavg · up fp32 · down fp32 [seed=1]",
                     "fedavg · up topk(fraction=0.05) · down fp16"]
    assert fig.get_suptitle() == "digits · Dirichlet α=0.5 · 20 clients, 5/round · 3 rounds · model mlp"
    ax_mb = fig.axes[0]
    fig.canvas.draw()
    labels = [t for t in ax_mb.get_xticklabels() if t.get_text()]
    assert [t.get_text() for t in labels] == ["0.3", "0.5", "1", "2", "3", "5"]
    boxes = [t.get_window_extent() for t in labels]
    assert all(a.x1 < b.x0 for a, b in zip(boxes, boxes[1:]))          # no two labels overlap
    assert all(not t.get_text() for t in ax_mb.xaxis.get_minorticklabels())
    # a given title stays, the federation goes under it
    figs.clear()
    plots.plot_runs(runs[:1], tmp_path / "q.png", title="my run")
    assert figs[0].get_suptitle().startswith("my run\ndigits · ")
    plt.close("all")


def test_suite_plot_bands_and_legend(tmp_path, monkeypatch):
    from fedsqueeze.compare import plots
    from fedsqueeze.compare.table import RunData

    def run(name, accs, per_round, up="fp32"):
        hist = [{"round": i + 1, "global_acc": a, "cum_bytes": (i + 1) * per_round} for i, a in enumerate(accs)]
        cfg = {"algorithm": {"name": "fedavg"}, "model": {"name": "mlp"}, "rounds": len(accs),
               "data": {"source": "digits", "partition": "iid", "num_clients": 4}, "train": {"clients_per_round": 2},
               "codec": {"up": up, "down": "fp32", "downlink": "broadcast"}}
        return RunData(name, cfg, hist, [], label="FedAvg" if up == "fp32" else "")

    groups = {"fp32": [run("fp32/seed0", [0.5, 0.7], 1_000_000), run("fp32/seed1", [0.6, 0.9], 1_200_000)],
              "fp16": [run("fp16/seed0", [0.5, 0.8], 500_000, up="fp16")]}
    figs = _capture(monkeypatch, plots)
    plots.plot_suite(groups, tmp_path, target=0.75, title="tiny", networks=[])
    fig = figs[0]                                            # accuracy_vs_mb
    legend = fig.legends[0]
    assert [t.get_text() for t in legend.get_texts()] == ["FedAvg · up fp32 · down fp32", "fp16 · up fp16 · down fp32"]
    assert legend.get_title().get_text() == "line: mean of 1–2 seeds; band: min–max over seeds"
    ax = fig.axes[0]
    assert ax.get_title() == "tiny\ndigits · iid · 4 clients, 2/round · 2 rounds · model mlp"
    mean = ax.lines[0]
    assert list(mean.get_xdata()) == pytest.approx([1.1, 2.2]) and list(mean.get_ydata()) == pytest.approx([55, 80])
    assert len(ax.collections) == 1                          # one band: the entry with two seeds
    band = ax.collections[0].get_paths()[0].vertices
    assert band[:, 1].min() == pytest.approx(50) and band[:, 1].max() == pytest.approx(90)
    plt.close("all")


def test_run_plot_reads_config_toml_and_falls_back_to_folder(tmp_path, monkeypatch):
    from fedsqueeze.metrics import plots

    toml_run = _fake_run(tmp_path / "old", 0)
    (toml_run / "config.json").unlink()            # result folders copied with config.toml only
    (toml_run / "config.toml").write_text('name = "x"\n[algorithm]\nname = "scaffold"\n[codec]\nup = "fp16"\n')
    bare = _fake_run(tmp_path / "bare", 0)
    (bare / "config.json").unlink()
    figs = _capture(monkeypatch, plots)
    plots.plot_runs([toml_run, bare], tmp_path / "p.png")
    assert [t.get_text() for t in figs[0].legends[0].get_texts()] == ["scaffold · up fp16 · down fp32", "bare"]
    plt.close("all")
