"""Real Flower deployments on 127.0.0.1: a SuperLink and SuperNodes as processes, `flwr run`.

Parity with the simulation engine (identical bytes in the ledger, identical parameters), TLS (and
refusal of plaintext or untrusted clients), SuperNode authentication (refusal of unregistered keys), a
SuperNode killed mid-round. Every process is bounded by
a timeout and stopped by the fixture's finalizer, checked gone. SuperNodes run long-lived ClientApp
processes (``clientapp_worker``); the module takes a few minutes on a loaded 2-core machine.
"""
from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import pytest
import torch

pytest.importorskip("flwr")

from conftest import digits_config  # noqa: E402
from flower_kit import FakeGrid, flat_state, set_task_identity, strip  # noqa: E402
from fedsqueeze.config import from_dict  # noqa: E402
from fedsqueeze.engine.checkpoint import load_checkpoint  # noqa: E402
from fedsqueeze.engine.simulation import Simulation  # noqa: E402
from fedsqueeze.flower.app_template import write_app  # noqa: E402
from fedsqueeze.flower.local import LocalFederation, processes_with, tail  # noqa: E402
from fedsqueeze.flower.tls import make_certificates  # noqa: E402
from fedsqueeze.flower.server_app import FlowerServer  # noqa: E402
from fedsqueeze.metrics.results import read_history  # noqa: E402
from fedsqueeze.registry import CODECS  # noqa: E402

pytestmark = pytest.mark.flower

LOSSY_UP = "topk(fraction=0.1)" if "topk" in CODECS.names() else "fp16"
RUN_TIMEOUT = 300.0


@pytest.fixture
def federation(tmp_path):
    """Start federations; the finalizer stops them and checks that no process they started survives."""
    started: list[LocalFederation] = []

    def start(nodes: int, **kw) -> LocalFederation:
        fed = LocalFederation(tmp_path / f"fed{len(started)}", nodes, log=lambda m: None, **kw)
        started.append(fed)
        fed.start()
        return fed

    yield start
    for fed in started:
        fed.stop()
    assert not [p for fed in started for p in fed.pids()], "processes survived the federation's stop()"


def config(**over) -> dict:
    base = dict(rounds=2, data={"source": "digits", "num_clients": 2, "partition": "dirichlet", "alpha": 0.5},
                train={"clients_per_round": 2, "local_epochs": 1, "batch_size": 16, "lr": 0.1},
                codec={"up": LOSSY_UP, "down": "fp16"}, eval={"every": 1, "personal_every": 0},
                engine={"round_timeout": RUN_TIMEOUT})
    base.update(over)
    return digits_config(**base)


def run(fed: LocalFederation, cfg: dict, out: Path) -> list[str]:
    app = write_app(from_dict(cfg), fed.dir / "app", run_dir=str(out), insecure=fed.insecure)
    lines: list[str] = []
    rc = fed.run(app, timeout=RUN_TIMEOUT, on_line=lines.append)
    assert rc == 0 and (out / "summary.csv").exists(), diagnose(fed, lines)
    return lines


def diagnose(fed: LocalFederation, lines: list[str]) -> str:
    logs = "\n".join(f"--- {p.name}\n{tail(p, 15)}" for p in sorted(fed.logs.glob("*.log")))
    return "flwr run output:\n" + "\n".join(lines[-30:]) + "\n" + logs


def test_flower_deployment_sends_the_simulations_bytes_and_ends_with_its_parameters(tmp_path, digits, capsys):
    """Two FedAvg rounds with a lossy codec, simulated and with `fedsqueeze flower local --nodes 2`: the same
    ledger (every payload's length per round, client, direction, kind), bitwise the same parameters and
    metrics. Bitwise, not only close: both engines train each client with one torch thread on the same data
    and seeds, move the same payload bytes, and the server aggregates the replies in sampling order,
    whatever order they arrive in."""
    from fedsqueeze.cli import main
    from fedsqueeze.config import to_toml

    cfg = config()
    sim = Simulation(from_dict(cfg), tmp_path / "sim", dataset=digits)
    ref = sim.run()
    (tmp_path / "exp.toml").write_text(to_toml(from_dict(cfg).to_dict()))
    work = tmp_path / "work"
    try:
        rc = main(["flower", "local", str(tmp_path / "exp.toml"), "--nodes", "2", "--insecure",
                   "--out", str(tmp_path / "flower"), "--workdir", str(work), "--timeout", str(RUN_TIMEOUT)])
    finally:
        leftover = processes_with(f"FLWR_HOME={work / 'flwr-home'}".encode())
        for pid in leftover:
            os.kill(pid, signal.SIGKILL)
    out = capsys.readouterr().out
    assert rc == 0 and not leftover, out + "\n".join(tail(p) for p in (work / "logs").glob("*.log"))
    assert "[fedsqueeze] round 2/2" in out  # progress is streamed
    ckpt, _ = load_checkpoint(tmp_path / "flower")
    assert ckpt["ledger"] == ref.ledger.to_state()
    a, b = flat_state(sim.server_state), flat_state(ckpt["server_state"])
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert strip(read_history(tmp_path / "flower")) == strip(read_history(tmp_path / "sim"))


def test_tls_federation_runs_and_refuses_plaintext_and_untrusted_clients(tmp_path, federation):
    fed = federation(2)  # TLS: a throw-away CA, the SuperLink's certificate for 127.0.0.1
    give_up = ["--max-retries", "2", "--max-wait-time", "20"]
    other = make_certificates(tmp_path / "other-ca")
    # both claim partition 1: had the SuperLink let one in, the run would stop on a duplicate partition
    plain = fed.start_supernode(1, name="plaintext", tls_args=["--insecure"], extra=give_up)
    untrusted = fed.start_supernode(1, name="untrusted", tls_args=["--root-certificates", str(other.ca)],
                                    extra=give_up)
    lines = run(fed, config(rounds=1), tmp_path / "out")
    assert len(read_history(tmp_path / "out")) == 1
    for proc, name in ((plain, "plaintext"), (untrusted, "untrusted")):
        assert proc.wait(timeout=60) != 0, diagnose(fed, lines)
        log = (fed.logs / f"{name}.log").read_text()
        assert "could not establish a connection" in log and "SuperNode ID" not in log
    assert "https://127.0.0.1" in (fed.logs / "superlink.log").read_text()


def test_supernode_authentication_admits_registered_keys_only(tmp_path, federation):
    """`--enable-supernode-auth`: SuperNode 0, whose key LocalFederation registered with `flwr supernode
    register`, joins; a SuperNode with an unregistered key and one without a key are refused and exit."""
    from fedsqueeze.flower.auth import make_supernode_key

    fed = federation(1, auth=True)
    give_up = ["--max-retries", "2", "--max-wait-time", "20"]
    stranger = make_supernode_key(tmp_path / "stranger.key")
    unregistered = fed.start_supernode(0, name="unregistered", key=stranger.private, extra=give_up)
    keyless = fed.start_supernode(1, name="keyless", extra=give_up)  # no key exists for index 1
    for proc, name, why in ((unregistered, "unregistered", "Failed to activate SuperNode"),
                            (keyless, "keyless", "must be registered via the CLI")):
        assert proc.wait(timeout=60) != 0, diagnose(fed, [])
        log = (fed.logs / f"{name}.log").read_text()
        assert why in log and "SuperNode ID" not in log, log[-2000:]
    registered = fed.logs / "supernode-0.log"
    deadline = time.monotonic() + 60
    while "SuperNode ID" not in registered.read_text() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert "SuperNode ID" in registered.read_text(), diagnose(fed, [])
    assert fed.supernodes["supernode-0"].poll() is None
    assert "No SuperNode found with the given public key" in (fed.logs / "superlink.log").read_text()


def test_a_supernode_killed_mid_round_does_not_stop_the_run(tmp_path, federation, digits, monkeypatch):
    """Three clients; the SuperNode of client 2 dies as soon as it receives its first train message. Round 1
    completes with the two replies that arrived, round 2 goes on without it, and what was aggregated is kept:
    the final parameters are those of the same run with client 2 silent (in process, same server code)."""
    cfg = config(data={"source": "digits", "num_clients": 3, "partition": "dirichlet", "alpha": 0.5},
                 train={"clients_per_round": 3, "local_epochs": 1, "batch_size": 16, "lr": 0.1},
                 engine={"round_timeout": 20.0, "retries": 3, "min_replies": 2, "too_few": "fail"})
    fed = federation(3, insecure=True)
    killed = threading.Event()

    def kill_on_first_train() -> None:
        log = fed.logs / "supernode-2.log"
        deadline = time.monotonic() + RUN_TIMEOUT
        while time.monotonic() < deadline and not killed.is_set():
            if log.exists() and "Receiving: train message" in log.read_text(errors="replace"):
                fed.kill_node(2)
                killed.set()
            time.sleep(0.05)

    watcher = threading.Thread(target=kill_on_first_train, daemon=True)
    watcher.start()
    lines = run(fed, cfg, tmp_path / "flower")
    killed.set()
    watcher.join(timeout=5)
    assert fed.supernodes["supernode-2"].poll() is not None, diagnose(fed, lines)

    history = read_history(tmp_path / "flower")
    assert [r["round"] for r in history] == [1, 2] and history[-1]["global_acc"] is not None
    ckpt, _ = load_checkpoint(tmp_path / "flower")
    ups = {(rnd, c) for rnd, c, d, _, _ in ckpt["ledger"] if d == "up"}
    assert ups == {(1, 0), (1, 1), (2, 0), (2, 1)}, diagnose(fed, lines)
    assert any("no reply from client(s) [2]" in line or "client(s) [2] have no connected" in line
               for line in lines), diagnose(fed, lines)

    set_task_identity(monkeypatch)
    cfg["engine"] = {"round_timeout": 0.3, "retries": 0, "min_replies": 2}
    grid = FakeGrid(cfg, 3)
    ref = FlowerServer(from_dict(cfg), tmp_path / "ref", grid, dataset=digits)
    ref.start()
    grid.silent.add(102)
    for rnd in (1, 2):
        ref.run_round(rnd)
    a, b = flat_state(ref.server_state), flat_state(ckpt["server_state"])
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
