"""compare with several seeds: the t interval, the seeds table, suite seeds, and a 2-seed suite end to end."""
import csv
import json
import math
from pathlib import Path

import pytest

from fedsqueeze.compare import table as tbl
from fedsqueeze.compare.stats import mean_ci95, t975
from fedsqueeze.compare.suite import load_suite, parse_seeds
from fedsqueeze.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]


def test_t_half_interval_exact():
    assert t975(2) == 4.302652730 and t975(1) == 12.706204736 and t975(30) == 2.042272456
    mean, half = mean_ci95([1, 2, 3])                 # s = 1: t(0.975, 2) / sqrt(3)
    assert mean == 2.0 and half == pytest.approx(4.302652730 / math.sqrt(3)) and round(half, 3) == 2.484
    assert mean_ci95([0.8, 0.9]) == (pytest.approx(0.85), pytest.approx(12.706204736 * 0.05))
    assert mean_ci95([5.0]) == (5.0, None) and mean_ci95([]) == (None, None)
    # beyond the table: Cornish-Fisher, continuous with it and falling towards 1.96
    assert 1.96 < t975(1000) < t975(60) < t975(31) < t975(30)
    assert t975(31) == pytest.approx(2.039513446, abs=1e-6) and t975(120) == pytest.approx(1.979930405, abs=1e-6)
    with pytest.raises(ValueError):
        t975(0)


def test_t_quantile_matches_scipy():
    stats = pytest.importorskip("scipy.stats")
    for dof in list(range(1, 40)) + [50, 100, 1000]:
        assert t975(dof) == pytest.approx(stats.t.ppf(0.975, dof), abs=1e-6)


def _run(name, accs, up_per_round, clients=(0, 1), personal=None):
    history, ledger, cum = [], [], 0
    for rnd, acc in enumerate(accs, 1):
        for c in clients:
            ledger.append((rnd, c, "down", "model", 1_000_000))
            ledger.append((rnd, c, "up", "update", up_per_round))
        cum += len(clients) * (up_per_round + 1_000_000)
        history.append({"round": rnd, "global_acc": acc, "personal_acc": personal, "cum_bytes": cum,
                        "elapsed_s": 2.0 * rnd})
    cfg = {"name": name, "algorithm": {"name": "fedavg"}, "model": {"name": "mlp"},
           "codec": {"up": "fp32" if up_per_round == 1_000_000 else "fp16", "down": "fp32"}}
    return tbl.RunData(name, cfg, history, [tuple(x) for x in ledger])


def test_seed_rows_and_table_cells():
    groups = {"base": {0: _run("b0", [0.5, 0.8, 0.85], 1_000_000), 1: _run("b1", [0.6, 0.82, 0.83], 1_000_000)},
              "half": {0: _run("h0", [0.7, 0.84, 0.86], 500_000, personal=0.9),
                       1: _run("h1", [0.5, 0.7, 0.75], 500_000, personal=0.8)}}
    target = tbl.target_of_seeds(groups, ["base"], None)
    assert target == pytest.approx((0.85 + 0.83) / 2 - 0.01)               # 0.83
    per_seed, rows = tbl.seed_rows(groups, baseline="base", target=target, networks=[])
    assert [r["run"] for r in per_seed] == ["base/seed0", "base/seed1", "half/seed0", "half/seed1"]
    base, half = rows
    assert base["n_seeds"] == 2 and base["seeds"] == "0 1" and base["reached_target"] == 2
    assert base["final_acc_mean"] == pytest.approx(0.84)
    assert base["final_acc_ci95"] == pytest.approx(12.706204736 * 0.01)   # |0.85 - 0.83| / 2 * t(0.975, 1)
    # base reaches 0.83 at round 3 (seed 0: 6 MB per round... 3 rounds x 2 clients x 2 MB = 12 MB) in both seeds
    assert base["mb_to_target_mean"] == pytest.approx(12.0) and base["mb_to_target_ci95"] == pytest.approx(0.0)
    # half: seed 0 reaches it at round 2 (2 x 2 x 1.5 MB = 6 MB), seed 1 never
    assert half["reached_target"] == 1 and half["mb_to_target_mean"] == pytest.approx(6.0)
    assert half["mb_to_target_ci95"] is None
    assert half["x_fewer_bytes_mean"] == pytest.approx(12.0 / 6.0)           # same-seed pair only
    assert half["personal_acc_mean"] == pytest.approx(0.85) and base["personal_acc_mean"] is None
    head, body = tbl.seed_display_rows(rows, [])
    assert head[:10] == ["run", "codec up / down", "seeds", "final acc", "personal acc", "MB total", "MB to target",
                         "reached", "× fewer bytes", "rounds to target"]
    assert body[0] == ["base", "fp32 / fp32", "2", "84.00 ± 12.71%", "—", "12.0 ± 0.0", "12.0 ± 0.0", "2/2",
                       "1.0 ± 0.0×", "3.0 ± 0.0"]
    assert body[1] == ["half", "fp16 / fp32", "2", "80.50 ± 69.88%", "85.00 ± 63.53%", "9.000 ± 0.000", "6.000",
                       "1/2", "2.0×", "2.0"]
    assert (tbl._pm_time(5.2, 3.1), tbl._pm_time(300, 60), tbl._pm_time(9000, None), tbl._pm_time(None, None)) == \
        ("5 ± 3 s", "5.0 ± 1.0 min", "2.5 h", "—")
    md = tbl.markdown(rows, [])
    assert "| half | fp16 / fp32 | 2 | 80.50 ± 69.88% |" in md


def _suite(tmp_path, extra=""):
    base = (ROOT / "configs" / "digits-quick.toml").read_text().replace("rounds = 15", "rounds = 3")
    (tmp_path / "base.toml").write_text(base)
    path = tmp_path / "suite.toml"
    path.write_text('name = "tiny"\nbase = "base.toml"\ntarget = 0.32\nnetwork = ["lte"]\n' + extra
                    + '[[run]]\nname = "fp32"\n[[run]]\nname = "fp16"\nset = {"codec.up" = "fp16", "codec.down" = "fp16"}\n')
    return path


def test_suite_seeds_key_and_jobs(tmp_path):
    suite = load_suite(_suite(tmp_path, "seeds = [3, 1]\n"))
    assert suite.seeds == [3, 1]
    jobs = suite.jobs()
    assert [(k, f) for k, _, f in jobs] == [("fp32/seed3", "fp32/seed3"), ("fp32/seed1", "fp32/seed1"),
                                          ("fp16/seed3", "fp16/seed3"), ("fp16/seed1", "fp16/seed1")]
    assert [s.config.seed for _, s, _ in jobs] == [3, 1, 3, 1]
    assert jobs[0][1].config.name == "tiny-fp32-seed3" and jobs[0][1].name == "fp32"
    plain = load_suite(_suite(tmp_path))
    assert plain.seeds == [] and [(k, f) for k, _, f in plain.jobs()] == [("fp32", "fp32"), ("fp16", "fp16")]
    assert plain.with_seeds([0]).jobs()[0][2] == "fp32/seed0"
    for bad, match in [("[]", "non-empty"), ("[0, 0]", "distinct"), ("[-1]", "integer >= 0"), ('"a"', "comma-separated"),
                       ("[1.5]", "integer >= 0")]:
        with pytest.raises(ConfigError, match=match):
            load_suite(_suite(tmp_path, f"seeds = {bad}\n"))
    assert parse_seeds("0, 1,2") == [0, 1, 2]


def test_two_seed_suite_end_to_end(tmp_path, capsys):
    from fedsqueeze.cli import main

    path, out = _suite(tmp_path), tmp_path / "out"
    assert main(["compare", str(path), "--out", str(out), "--quiet", "--seeds", "0,1"]) == 0
    res = out / "tiny"
    assert sorted(p.name for p in res.iterdir() if p.is_dir()) == ["fp16", "fp32"]
    assert sorted(p.name for p in (res / "fp32").iterdir()) == ["seed0", "seed1"]
    finals = {}
    for entry in ("fp32", "fp16"):
        for seed in (0, 1):
            run = res / entry / f"seed{seed}"
            assert json.loads((run / "config.json").read_text())["seed"] == seed
            hist = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
            finals[entry, seed] = hist[-1]["global_acc"]
    assert finals["fp32", 0] != finals["fp32", 1]                           # two draws of the federation
    rows = {r["run"]: r for r in csv.DictReader(open(res / "comparison.csv"))}
    for entry in ("fp32", "fp16"):
        mean, half = mean_ci95([finals[entry, 0], finals[entry, 1]])
        assert float(rows[entry]["final_acc_mean"]) == pytest.approx(mean)
        assert float(rows[entry]["final_acc_ci95"]) == pytest.approx(half)
        assert rows[entry]["n_seeds"] == "2"
        reached = sum(finals[entry, s] >= 0.32 for s in (0, 1))  # accuracy rises over these 3 rounds
        assert int(rows[entry]["reached_target"]) >= reached
    per_seed = list(csv.DictReader(open(res / "comparison_seeds.csv")))
    assert [r["run"] for r in per_seed] == ["fp32/seed0", "fp32/seed1", "fp16/seed0", "fp16/seed1"]
    # fp16 both ways: half the tensor bytes in every seed
    assert all(1.8 < float(r["x_fewer_bytes_total"]) <= 2.0 for r in per_seed if r["entry"] == "fp16")
    md = (res / "comparison.md").read_text()
    assert "Seeds: 0, 1." in md and "95% Student-t" in md and "| fp16 | fp16 / fp16 | 2 |" in md
    assert (res / "accuracy_vs_mb.png").stat().st_size > 5_000
    # cached per seed; one seed rerun alone
    before = {s: (res / "fp16" / f"seed{s}" / "metrics.jsonl").stat().st_mtime_ns for s in (0, 1)}
    capsys.readouterr()
    assert main(["compare", str(path), "--out", str(out), "--quiet", "--seeds", "0,1", "--rerun", "fp16/seed1"]) == 0
    err = capsys.readouterr().err
    assert err.count("cached") == 3 and "fp16/seed1: running" in err
    assert (res / "fp16" / "seed0" / "metrics.jsonl").stat().st_mtime_ns == before[0]
    assert (res / "fp16" / "seed1" / "metrics.jsonl").stat().st_mtime_ns != before[1]
    # the report alone, for one of the seeds; bad seeds are one-line errors
    assert main(["compare", str(path), "--out", str(out), "--report-only", "--seeds", "1"]) == 0
    assert list(csv.DictReader(open(res / "comparison.csv")))[0]["final_acc_ci95"] == ""
    assert main(["compare", str(path), "--out", str(out), "--seeds", "0,x"]) == 2
    assert main(["compare", str(path), "--out", str(out), "--seeds", "0,1", "--rerun", "fp16/seed7"]) == 2
    assert "not one of the suite's seeds" in capsys.readouterr().err


def test_parallel_jobs_give_the_runs_of_one_at_a_time(tmp_path, capsys):
    """compare --jobs 2: every run in its own spawned process; each run's metrics and ledger are byte for byte
    those of the same suite run one at a time."""
    from fedsqueeze.cli import main

    path = _suite(tmp_path)
    assert main(["compare", str(path), "--out", str(tmp_path / "serial"), "--quiet", "--seeds", "1"]) == 0
    capsys.readouterr()
    assert main(["compare", str(path), "--out", str(tmp_path / "par"), "--quiet", "--seeds", "1", "--jobs", "2"]) == 0
    err = capsys.readouterr().err
    assert "running 2 runs, 2 at a time" in err and err.count(": done in ") == 2
    for entry in ("fp32", "fp16"):
        for seed in (1,):
            a, b = (tmp_path / o / "tiny" / entry / f"seed{seed}" for o in ("serial", "par"))
            for f in ("metrics.jsonl", "ledger.csv"):
                assert _strip_time(a / f) == _strip_time(b / f), (entry, seed, f)
    assert main(["compare", str(path), "--out", str(tmp_path / "par"), "--jobs", "0"]) == 2


def _strip_time(path):
    """A run file without its wall-clock fields (they differ between any two runs)."""
    if path.suffix == ".jsonl":
        rows = [json.loads(x) for x in path.read_text().splitlines()]
        return [{k: v for k, v in r.items() if "time" not in k and not k.endswith("_s")} for r in rows]
    rows = list(csv.DictReader(open(path)))
    return [{k: v for k, v in r.items() if "time" not in k and not k.endswith("_s")} for r in rows]
