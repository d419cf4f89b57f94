"""fedsqueeze compare: suite files, MB/rounds/time to target, network model, budget mode, caching."""
import json
import math
from pathlib import Path

import pytest

from fedsqueeze.compare import table as tbl
from fedsqueeze.compare.network import NetworkProfile, parse_profiles, round_times
from fedsqueeze.compare.suite import load_suite
from fedsqueeze.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]


def _run(name, accs, up_per_round, down_per_round, clients=(0, 1)):
    """A synthetic run: accuracies per round, each client sending/receiving the given bytes."""
    history, ledger, cum = [], [], 0
    for rnd, acc in enumerate(accs, 1):
        for c in clients:
            ledger.append((rnd, c, "down", "model", down_per_round))
            ledger.append((rnd, c, "up", "update", up_per_round))
        cum += len(clients) * (up_per_round + down_per_round)
        history.append({"round": rnd, "global_acc": acc, "cum_bytes": cum, "elapsed_s": 2.0 * rnd,
                        "client_s": {str(c): 1.0 + c for c in clients}})
    cfg = {"name": name, "algorithm": {"name": "fedavg"}, "model": {"name": "mlp"},
           "codec": {"up": "fp32", "down": "fp32"}}
    return tbl.RunData(name, cfg, history, ledger)


def test_mb_to_target_exact():
    runs = {"base": _run("base", [0.5, 0.7, 0.8, 0.85], 1_000_000, 1_000_000),
            "small": _run("small", [0.4, 0.6, 0.84, 0.86], 10_000, 40_000)}
    target = tbl.target_of(runs, ["base"], None)
    assert target == pytest.approx(0.84)
    rows = {r["run"]: r for r in tbl.rows(runs, baseline="base", target=target, networks=[])}
    # base reaches 0.84 at round 4: 4 rounds x 2 clients x 2 MB
    assert rows["base"]["mb_to_target"] == pytest.approx(16.0)
    assert rows["base"]["rounds_to_target"] == 4 and rows["base"]["wall_s_to_target"] == 8.0
    # small reaches it at round 3: 3 x 2 x 50 kB = 0.3 MB -> 16 / 0.3 fewer bytes
    assert rows["small"]["mb_to_target"] == pytest.approx(0.3)
    assert rows["small"]["x_fewer_bytes"] == pytest.approx(16.0 / 0.3)
    assert rows["small"]["mb_total"] == pytest.approx(0.4)
    # a target nobody reaches: no ratios, no crash
    rows = tbl.rows(runs, baseline="base", target=0.99, networks=[])
    assert all(r["mb_to_target"] is None and r["x_fewer_bytes"] is None for r in rows)


def test_network_round_time_by_hand():
    prof = NetworkProfile("t", up_mbps=1, down_mbps=4, latency_ms=100)
    # client 0: 250 kB up (2 s at 1 Mbit/s), 1 MB down (2 s at 4 Mbit/s), 2 messages (0.2 s), 3 s compute
    # client 1: 125 kB up (1 s), 0.5 MB down (1 s), 2 messages (0.2 s), 0.5 s compute
    traffic = {1: {0: [250_000, 1_000_000, 2], 1: [125_000, 500_000, 2]}}
    compute = {1: {0: 3.0, 1: 0.5}}
    assert round_times([1], traffic, compute, prof)[1] == pytest.approx(3.0 + 0.2 + 2.0 + 2.0)
    slow = NetworkProfile("slow", up_mbps=1, down_mbps=4, latency_ms=100, compute_scale=10)
    assert round_times([1], traffic, compute, slow)[1] == pytest.approx(30.0 + 4.2)


def test_heterogeneous_profile_is_deterministic():
    prof = NetworkProfile("h", up_mbps=5, down_mbps=20, latency_ms=50, spread=1.0)
    m = [prof.multiplier(c) for c in range(200)]
    assert m == [prof.multiplier(c) for c in range(200)]
    assert len(set(m)) == 200 and 0.7 < sorted(m)[100] < 1.4   # median near the nominal bandwidth
    assert NetworkProfile("u", 5, 20).multiplier(7) == 1.0


def test_simulated_elapsed_from_run():
    run = _run("r", [0.5, 0.6], 125_000, 500_000)   # per client: 0.2 s up at 5 Mbit/s, 0.2 s down at 20
    lte = parse_profiles("lte")[0]
    per_round = 2.0 + 2 * 0.05 + 0.2 + 0.2       # slowest client (compute 2 s)
    assert tbl.simulated_elapsed(run, lte) == {1: pytest.approx(per_round), 2: pytest.approx(2 * per_round)}


@pytest.mark.parametrize("spec,match", [
    ("nope", "unknown network profile"),
    ({"name": "x", "up_mbps": 0, "down_mbps": 1}, "up_mbps"),
    ({"name": "x", "down_mbps": 1}, "needs up_mbps"),
    ({"name": "x", "up_mbps": 1, "down_mbps": 1, "bogus": 2}, "unknown key"),
])
def test_bad_profiles(spec, match):
    with pytest.raises(ConfigError, match=match):
        parse_profiles(spec)


def _suite(tmp_path, body, base_extra=""):
    base = (ROOT / "configs" / "digits-quick.toml").read_text().replace("rounds = 15", "rounds = 3") + base_extra
    (tmp_path / "base.toml").write_text(base)
    path = tmp_path / "suite.toml"
    path.write_text('name = "tiny"\nbase = "base.toml"\n' + body)
    return path


def test_suite_refuses_federation_changes(tmp_path):
    with pytest.raises(ConfigError, match="would change the federation"):
        load_suite(_suite(tmp_path, '[[run]]\nname = "a"\nset = {"data.alpha" = 0.1}\n'))
    with pytest.raises(ConfigError, match="unique"):
        load_suite(_suite(tmp_path, '[[run]]\nname = "a"\n[[run]]\nname = "a"\n'))
    with pytest.raises(ConfigError, match="baseline 'zz'"):
        load_suite(_suite(tmp_path, 'baseline = "zz"\n[[run]]\nname = "a"\n'))
    with pytest.raises(ConfigError, match="no runs"):
        load_suite(_suite(tmp_path, ""))
    with pytest.raises(ConfigError, match="not found"):
        load_suite(tmp_path / "missing.toml")


def test_shipped_suites_load():
    for path in sorted((ROOT / "configs" / "suites").glob("*.toml")):
        suite = load_suite(path)
        assert suite.runs and suite.baseline in [r.name for r in suite.runs]


def test_budget_mode_never_exceeds_budget(tmp_path, digits):
    import fedsqueeze
    from fedsqueeze.compare.budget import plan_budget
    from fedsqueeze.config import load_config

    cfg = load_config(ROOT / "configs" / "digits-quick.toml",
                      ["rounds=4", 'codec.up="rdq(coder=\'ans\', step=1e-3, normalize=False, dead_zone=0.0, alloc=\'one\')"', "eval.personal_every=0"])
    fp32 = fedsqueeze.run(cfg.__class__(**{**cfg.__dict__, "codec": load_config().codec}), run_dir=tmp_path / "fp32",
                          dataset=digits, plot=False)
    # the fp32 downlink plus a tenth of the fp32 uplink: ~3 bits per uploaded parameter
    budget_mb = (fp32.ledger.total("down") + 0.1 * fp32.ledger.total("up")) / 1e6
    planned, plan = plan_budget(cfg, budget_mb, dataset=digits)
    assert planned.codec.up["target_bytes"] == plan.target_bytes > 0
    res = fedsqueeze.run(planned, run_dir=tmp_path / "budget", dataset=digits, plot=False)
    assert res.total_bytes <= budget_mb * 1e6
    assert res.total_bytes >= 0.9 * budget_mb * 1e6   # and it spends what it was given
    ups = [r for r in res.ledger if r.direction == "up"]
    assert max(r.nbytes for r in ups) <= plan.target_bytes
    with pytest.raises(ConfigError, match="does not cover"):
        plan_budget(cfg, 0.01, dataset=digits)
    with pytest.raises(ConfigError, match="rdq"):
        plan_budget(load_config(ROOT / "configs" / "digits-quick.toml"), 5.0, dataset=digits)


def test_compare_end_to_end_and_cache(tmp_path, capsys):
    from fedsqueeze.cli import main

    path = _suite(tmp_path, 'network = ["lte", {name = "slow", up_mbps = 0.1, down_mbps = 0.5, latency_ms = 200}]\n'
                  'target = 0.5\n'
                  '[[run]]\nname = "fp32"\n'
                  '[[run]]\nname = "fp16"\nset = {"codec.up" = "fp16", "codec.down" = "fp16"}\n')
    out = tmp_path / "out"
    assert main(["compare", str(path), "--out", str(out), "--quiet"]) == 0
    res = out / "tiny"
    rows = {r["run"]: r for r in __import__("csv").DictReader(open(res / "comparison.csv"))}
    assert set(rows) == {"fp32", "fp16"}
    # fp16 sends half the tensor bytes (headers aside): between 1.8x and 2x fewer bytes in total
    assert 1.8 < float(rows["fp16"]["x_fewer_bytes_total"]) <= 2.0
    for png in ("accuracy_vs_mb.png", "accuracy_vs_rounds.png", "accuracy_vs_time_lte.png", "accuracy_vs_time_slow.png"):
        assert (res / png).stat().st_size > 5_000
    md = (res / "comparison.md").read_text()
    assert "| fp16 |" in md and "Target: **50.00%**" in md
    before = (res / "fp32" / "metrics.jsonl").stat().st_mtime_ns
    capsys.readouterr()
    assert main(["compare", str(path), "--out", str(out), "--quiet"]) == 0
    assert "cached" in capsys.readouterr().err
    assert (res / "fp32" / "metrics.jsonl").stat().st_mtime_ns == before
    # a changed entry is refused until --rerun
    path.write_text(path.read_text().replace('"codec.up" = "fp16"', '"codec.up" = "bf16"'))
    assert main(["compare", str(path), "--out", str(out), "--quiet"]) == 2
    assert main(["compare", str(path), "--out", str(out), "--quiet", "--rerun", "fp16"]) == 0
    assert json.loads((res / "fp16" / "config.json").read_text())["codec"]["up"] == "bf16"


@pytest.mark.parametrize("count, inside", [(3, True), (13, False)])
def test_suite_plots_move_a_long_legend_beside_the_axes(tmp_path, count, inside):
    """Up to 12 runs the legend sits in the axes; more would cover the curves, so it goes to the right
    (a wider figure) and the colours come from a 20-colour map, so no two of the first 20 runs match."""
    import matplotlib.image as mpimg

    from fedsqueeze.compare import plots

    runs = {f"r{i}": _run(f"r{i}", [0.5 + 0.01 * i, 0.6 + 0.01 * i], 100 * (i + 1), 200) for i in range(count)}
    paths = plots.plot_suite(runs, tmp_path, target=0.55, title="t", networks=[])
    width = mpimg.imread(paths[0]).shape[1]
    assert width == (8.5 * 110 if inside else 13 * 110)
    colours = {plots._style(i, count)["color"] for i in range(min(count, 20))}
    assert len(colours) == min(count, 20)
