"""The round loop: determinism, kill-and-resume equality, worker-pool parity, byte accounting."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

import fedsqueeze
from conftest import digits_config
from fedsqueeze.metrics.results import TIMING_FIELDS, read_history


def strip(history):
    return [{k: v for k, v in rec.items() if k not in TIMING_FIELDS} for rec in history]


def test_same_config_same_metrics(tmp_path, digits):
    a = fedsqueeze.run(digits_config(), run_dir=tmp_path / "a", dataset=digits, plot=False)
    b = fedsqueeze.run(digits_config(), run_dir=tmp_path / "b", dataset=digits, plot=False)
    assert strip(a.history) == strip(b.history)
    assert a.ledger.to_state() == b.ledger.to_state()
    c = fedsqueeze.run(digits_config(seed=1), run_dir=tmp_path / "c", dataset=digits, plot=False)
    assert strip(c.history) != strip(a.history)


def test_bytes_are_payload_lengths(tmp_path, digits):
    res = fedsqueeze.run(digits_config(rounds=2), run_dir=tmp_path, dataset=digits, plot=False)
    n_params = 64 * 32 + 32 + 32 * 32 + 32 + 32 * 10 + 10
    per_payload = res.ledger.total(round=1, client=int(next(iter(res.ledger)).client), direction="up")
    assert n_params * 4 < per_payload < n_params * 4 + 200  # fp32 values + header and framing
    rec = res.history[0]
    assert rec["bytes_up"] == 4 * per_payload and rec["bytes_down"] == 4 * per_payload
    assert res.history[-1]["cum_bytes"] == res.total_bytes == res.ledger.total()
    assert {r.kind for r in res.ledger} == {"model", "update"}


def test_fp16_uplink_halves_upload(tmp_path, digits):
    a = fedsqueeze.run(digits_config(rounds=1), run_dir=tmp_path / "a", dataset=digits, plot=False)
    b = fedsqueeze.run(digits_config(rounds=1, codec={"up": "fp16", "down": "fp32"}), run_dir=tmp_path / "b",
                       dataset=digits, plot=False)
    ratio = b.ledger.total("up") / a.ledger.total("up")
    assert 0.5 < ratio < 0.52 and b.ledger.total("down") == a.ledger.total("down")


class Crash(Exception):
    pass


def test_crash_and_resume_gives_the_uninterrupted_metrics(tmp_path, digits):
    from fedsqueeze.engine.simulation import Simulation
    from fedsqueeze.config import from_dict

    cfg = from_dict(digits_config(rounds=6, algorithm={"name": "local"}))  # local-only: client state matters
    full = Simulation(cfg, tmp_path / "full", dataset=digits).run()

    def die(rec):
        if rec["round"] == 3:
            raise Crash()
    with pytest.raises(Crash):
        Simulation(cfg, tmp_path / "cut", dataset=digits, callbacks=[die]).run()
    resumed = Simulation(cfg, tmp_path / "cut", dataset=digits).run(resume=True)
    assert strip(resumed.history) == strip(full.history)
    assert strip(read_history(tmp_path / "cut")) == strip(read_history(tmp_path / "full"))
    assert resumed.ledger.to_state() == full.ledger.to_state()


def test_resume_falls_back_when_latest_checkpoint_is_corrupt(tmp_path, digits):
    from fedsqueeze.config import from_dict
    from fedsqueeze.engine.simulation import Simulation

    cfg = from_dict(digits_config(rounds=4))
    full = Simulation(cfg, tmp_path / "full", dataset=digits).run()
    cut = from_dict(digits_config(rounds=3))
    Simulation(cut, tmp_path / "cut", dataset=digits).run()
    ck = tmp_path / "cut" / "checkpoint.pt"
    ck.write_bytes(ck.read_bytes()[:-10])  # half-written
    sim = Simulation(cfg, tmp_path / "cut", dataset=digits)
    resumed = sim.run(resume=True)
    assert any("corrupt" in w for w in sim.warnings)
    assert strip(resumed.history) == strip(full.history)


def test_resume_refuses_a_different_config(tmp_path, digits):
    from fedsqueeze.config import from_dict
    from fedsqueeze.engine.simulation import Simulation
    from fedsqueeze.errors import ConfigError

    Simulation(from_dict(digits_config(rounds=2)), tmp_path, dataset=digits).run()
    with pytest.raises(ConfigError, match="different configuration"):
        Simulation(from_dict(digits_config(rounds=3, train={"lr": 0.5})), tmp_path, dataset=digits).run(resume=True)


def test_sigkill_and_resume_from_the_command_line(tmp_path):
    """A real kill -9 of the CLI mid-run; resuming ends with the uninterrupted run's metrics."""
    cfg = tmp_path / "c.toml"
    from fedsqueeze.config import from_dict, to_toml
    cfg.write_text(to_toml(from_dict(digits_config(rounds=8, algorithm={"name": "local"})).to_dict()))
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "fedsqueeze", "run", str(cfg), "--quiet"]
    subprocess.run(cmd + ["--out", str(tmp_path / "full")], check=True, env=env, capture_output=True)
    proc = subprocess.Popen(cmd + ["--out", str(tmp_path / "cut")], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    metrics = tmp_path / "cut" / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline:
        if metrics.exists() and len(metrics.read_text().splitlines()) >= 3:
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = len(read_history(tmp_path / "cut"))
    assert done < 8, "the run finished before it could be killed"
    subprocess.run([sys.executable, "-m", "fedsqueeze", "run", "--resume", str(tmp_path / "cut"), "--quiet"],
                   check=True, env=env, capture_output=True)
    assert strip(read_history(tmp_path / "cut")) == strip(read_history(tmp_path / "full"))


def test_worker_pool_gives_identical_metrics(tmp_path, digits):
    a = fedsqueeze.run(digits_config(rounds=3), run_dir=tmp_path / "a", dataset=digits, plot=False)
    b = fedsqueeze.run(digits_config(rounds=3, engine={"workers": 2}), run_dir=tmp_path / "b", dataset=digits,
                       plot=False)
    assert strip(a.history) == strip(b.history)


def test_client_state_spills_to_disk_and_only_sampled_clients_are_in_memory(tmp_path, digits):
    from fedsqueeze.config import from_dict
    from fedsqueeze.engine.simulation import Simulation

    sim = Simulation(from_dict(digits_config(rounds=3, algorithm={"name": "local"})), tmp_path, dataset=digits)
    sim.run()
    assert not sim.store._dirty  # nothing held in memory between rounds
    files = {p.name for p in (tmp_path / "clients").iterdir()}
    # on disk: each client's current file (named after the round it last trained in) plus the files
    # of the previous checkpoint, kept as the fallback should the latest checkpoint be corrupt
    from fedsqueeze.engine.checkpoint import load_checkpoint
    ckpt, _ = load_checkpoint(tmp_path)
    current = {f"{c}.r{r}.pt" for c, r in ckpt["client_index"].items()}
    previous = {f"{c}.r{r}.pt" for c, r in ckpt["prev_index"].items()}
    assert current <= files and files == current | previous
    assert ckpt["client_index"] == sim.store.index


def test_run_folder_contents(tmp_path, digits):
    res = fedsqueeze.run(digits_config(rounds=2), run_dir=tmp_path, dataset=digits)
    for name in ("metrics.jsonl", "rounds.csv", "summary.csv", "ledger.csv", "config.toml", "config.json",
                 "partition.json", "accuracy_vs_mb.png", "checkpoint.pt"):
        assert (tmp_path / name).exists(), name
    assert (tmp_path / "accuracy_vs_mb.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summary = (tmp_path / "summary.csv").read_text().splitlines()
    assert summary[0].startswith("name,algorithm") and len(summary) == 2
    assert json.loads((tmp_path / "partition.json").read_text())["summary"]["min_size"] >= 1
    assert res.final_accuracy == res.history[-1]["global_acc"]


def test_fedavg_learns_digits(tmp_path, digits):
    """End to end: 20 clients with Dirichlet(0.5) label skew; FedAvg must clear 85% test accuracy."""
    cfg = digits_config(rounds=20, data={"source": "digits", "num_clients": 20, "partition": "dirichlet",
                                         "alpha": 0.5},
                        model={"name": "mlp", "options": {"hidden": 64}},
                        train={"clients_per_round": 10, "local_epochs": 2, "batch_size": 16, "lr": 0.05},
                        eval={"every": 5, "personal_every": 20})
    res = fedsqueeze.run(cfg, run_dir=tmp_path, dataset=digits, plot=False)
    assert res.final_accuracy > 0.85, res.final_accuracy
    assert res.personal_accuracy > 0.85


def test_local_only_sends_nothing_and_personalises(tmp_path, digits):
    cfg = digits_config(rounds=6, algorithm={"name": "local"}, data={"source": "digits", "num_clients": 10,
                                                                     "partition": "shards",
                                                                     "shards_per_client": 2},
                        train={"clients_per_round": 10, "local_epochs": 2, "batch_size": 16, "lr": 0.1})
    res = fedsqueeze.run(cfg, run_dir=tmp_path, dataset=digits, plot=False)
    assert res.total_bytes == 0 and len(res.ledger) == 0
    assert res.final_accuracy is None  # no global model
    assert res.personal_accuracy > 0.8  # two classes per client: easy locally
