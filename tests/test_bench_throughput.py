"""``fedsqueeze bench throughput``: interleaved timing, engine == plain loop, memory runs in subprocesses."""
from __future__ import annotations

import pytest

from fedsqueeze.bench.engine import interleaved
from fedsqueeze.bench.throughput import measure_memory, measure_speed, memory_run
from fedsqueeze.cli import main
from fedsqueeze.data.sources import load_synthetic
from fedsqueeze.engine.sampling import sample_clients


def test_interleaved_rotates_the_order_and_drops_the_warm_up():
    calls = []
    sides = {name: (lambda rnd, name=name: calls.append((rnd, name))) for name in "abc"}
    times = interleaved(sides, rounds=2)
    assert calls == [(1, "a"), (1, "b"), (1, "c"), (2, "b"), (2, "c"), (2, "a"), (3, "c"), (3, "a"), (3, "b")]
    assert {k: len(v) for k, v in times.items()} == {"a": 2, "b": 2, "c": 2}
    assert all(t >= 0 for v in times.values() for t in v)


def test_speed_rows_are_positive_and_engine_matches_plain_loop_exactly():
    rows = measure_speed("mlp", workers=(0, 1), rounds=1, k=3, dataset="synthetic", data=load_synthetic())
    assert [r["mode"] for r in rows] == ["plain loop", "engine, in process", "engine, 1 worker"]
    assert [r["workers"] for r in rows] == ["", 0, 1]
    for r in rows:
        assert r["updates_per_s"] > 0 and r["updates_per_s"] == pytest.approx(3 / r["s_per_round"])
        assert r["max_abs_weight_diff"] == 0.0  # identical SGD steps, in process and in a worker
    assert rows[0]["ratio_vs_plain"] == 1.0
    assert rows[1]["ratio_vs_plain"] == pytest.approx(rows[0]["s_per_round"] / rows[1]["s_per_round"])


def test_memory_subprocess_10k_clients_keeps_only_sampled_states_in_memory():
    r = measure_memory(10_000, clients_per_round=10, rounds=2, num_samples=12_500, prefill=False)
    assert 100 < r["peak_rss_mb"] < 4000  # torch alone is > 100 MB; the child's own peak, not the parent's
    assert 0 < r["rounds_peak_rss_mb"] <= r["peak_rss_mb"] and r["start_rss_mb"] < r["peak_rss_mb"]
    assert r["max_states_in_memory"] == 10  # one round's clients, never the 10,000
    sampled = {int(c) for rnd in (1, 2) for c in sample_clients(10_000, 10, seed=0, rnd=rnd)}
    assert r["states_on_disk"] == len(sampled)


def test_memory_run_prefills_every_client_through_the_store():
    r = memory_run(100, 10, 1, num_samples=2000, prefill=True)
    head_floats = 200 * 10 + 10  # the MLP's head: Linear(200, 10)
    assert r["states_on_disk"] == 100 and r["max_states_in_memory"] == 10
    assert r["state_kb_per_client"] == head_floats * 4 / 1024
    assert r["all_states_in_memory_mb"] == 100 * head_floats * 4 / 2**20


@pytest.mark.parametrize("args, message", [
    (["--skip-speed", "--skip-memory"], "leave nothing to measure"),
    (["--skip-memory", "--workers", "one"], "--workers 'one' must be comma-separated integers >= 0"),
    (["--skip-speed", "--memory-clients", "0"], "--memory-clients '0' must be comma-separated integers >= 1"),
])
def test_bad_options_are_one_line_errors(tmp_path, capsys, args, message):
    assert main(["bench", "throughput", "--out", str(tmp_path), *args]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and message in err and len(err.splitlines()) == 1
