"""`fedsqueeze flower sim`: the ServerApp/ClientApp on Flower's Simulation Engine (Ray backend).

The parity run starts a simulation-mode SuperLink, Flower's `flwr-simulation` and a private Ray cluster
(Ray's start dominates: ~40-80 s on a loaded 2-core machine); it must move the embedded engine's payload
bytes (ledger.csv byte for byte) and report its metrics. Skipped, with the reason, where Ray is missing.
"""
from __future__ import annotations

import sys

import pytest

pytest.importorskip("flwr")

from conftest import digits_config  # noqa: E402
from fedsqueeze.config import from_dict, to_toml  # noqa: E402
from fedsqueeze.errors import MissingExtraError  # noqa: E402
from fedsqueeze.flower.sim import federation_config, require_ray  # noqa: E402


def test_federation_config_items():
    assert federation_config(3) == ["num-supernodes=3", 'backend="ray"', 'init-args-logging-level="error"']
    assert federation_config(2, num_cpus=1, num_gpus=0.5, ray_address="10.0.0.1:6379") == [
        "num-supernodes=2", 'backend="ray"', "client-resources-num-cpus=1", "client-resources-num-gpus=0.5"]


def test_private_cluster_never_joins_a_stale_ray_current_cluster(tmp_path, monkeypatch):
    """Without --ray-address, RAY_ADDRESS=local: ray.init() would otherwise join the cluster named in
    /tmp/ray/ray_current_cluster, which outlives an uncleanly stopped `ray start` and then hangs forever."""
    from fedsqueeze.flower.sim import SimFederation

    monkeypatch.setenv("RAY_ADDRESS", "10.9.9.9:6379")  # the user's shell must not leak into a private run
    assert SimFederation(tmp_path, 2, log=lambda *a: None).env()["RAY_ADDRESS"] == "local"
    joined = SimFederation(tmp_path, 2, ray_address="10.0.0.1:6379", log=lambda *a: None).env()
    assert joined["RAY_ADDRESS"] == "10.0.0.1:6379"


def test_missing_ray_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    with pytest.raises(MissingExtraError, match=r"pip install 'fedsqueeze\[sim\]'"):
        require_ray()


@pytest.mark.parametrize("args, message", [
    (["--supernodes", "2"], "--supernodes 2 but data.num_clients = 3"),
    (["--num-cpus", "0"], "--num-cpus must be a whole number >= 1"),
    (["--num-gpus", "-1"], "--num-gpus must be >= 0"),
])
def test_bad_arguments_are_one_line_errors_before_anything_starts(tmp_path, capsys, args, message):
    from fedsqueeze.cli import main

    pytest.importorskip("ray", reason="Flower's Simulation Engine needs Ray (pip install 'fedsqueeze[sim]')")
    (tmp_path / "exp.toml").write_text(to_toml(from_dict(digits_config(data__num_clients=3, train__clients_per_round=2)).to_dict()))
    rc = main(["flower", "sim", str(tmp_path / "exp.toml"), *args, "--workdir", str(tmp_path / "work")])
    err = capsys.readouterr().err
    assert rc == 2 and message in err
    assert not (tmp_path / "work").exists()  # nothing was started


@pytest.mark.slow
@pytest.mark.flower
def test_flower_simulation_engine_moves_the_embedded_engines_bytes(tmp_path, digits, capsys):
    """Two FedAvg rounds, top-k up and fp16 down, 3 clients: embedded engine vs `fedsqueeze flower sim` on
    Ray. ledger.csv is equal byte for byte; the metrics of every round are equal (both engines train each
    client with one torch thread on the same data and seeds and aggregate in sampling order); no process
    the run started survives it."""
    pytest.importorskip("ray", reason="Flower's Simulation Engine needs Ray (pip install 'fedsqueeze[sim]')")
    from flower_kit import strip

    from fedsqueeze.cli import main
    from fedsqueeze.engine.simulation import Simulation
    from fedsqueeze.flower.local import processes_with, tail
    from fedsqueeze.metrics.results import read_history

    cfg = digits_config(rounds=2, data={"source": "digits", "num_clients": 3, "partition": "dirichlet",
                                        "alpha": 0.5},
                        train={"clients_per_round": 2, "local_epochs": 1, "batch_size": 16, "lr": 0.1},
                        codec={"up": "topk(fraction=0.1)", "down": "fp16"}, eval={"every": 1, "personal_every": 0})
    Simulation(from_dict(cfg), tmp_path / "sim", dataset=digits).run()
    (tmp_path / "exp.toml").write_text(to_toml(from_dict(cfg).to_dict()))
    work = tmp_path / "work"
    try:
        rc = main(["flower", "sim", str(tmp_path / "exp.toml"), "--num-cpus", "1", "--out", str(tmp_path / "fsim"),
                   "--workdir", str(work), "--timeout", "300"])
    finally:
        leftover = processes_with(f"FLWR_HOME={work / 'flwr-home'}".encode())
        for pid in leftover:
            import os
            import signal
            os.kill(pid, signal.SIGKILL)
    out = capsys.readouterr().out
    assert rc == 0 and not leftover, out + "\n".join(tail(p) for p in (work / "logs").glob("*.log"))
    assert "[fedsqueeze] round 2/2" in out
    ledger = (tmp_path / "fsim" / "ledger.csv").read_bytes()
    assert ledger == (tmp_path / "sim" / "ledger.csv").read_bytes()
    assert ledger.count(b",up,") == 2 * 2  # 2 rounds x 2 sampled clients, each one upload payload
    history = read_history(tmp_path / "fsim")
    assert len(history) == 2 and strip(history) == strip(read_history(tmp_path / "sim"))
