"""The worker pool's scaling pieces: the broadcast in shared memory, longest-first hand-out, results
reported as they finish — with results identical to the in-process engine."""
from __future__ import annotations

import os

import pytest

from conftest import digits_config
from fedsqueeze.config import from_dict
from fedsqueeze.engine import shared_payloads
from fedsqueeze.engine.pool import WorkerPool
from fedsqueeze.engine.runtime import ClientFailure
from fedsqueeze.engine.shared_payloads import SharedPayloads, SharedRef, broadcast_key
from fedsqueeze.engine.simulation import Simulation
from fedsqueeze.metrics.results import TIMING_FIELDS

pytestmark = pytest.mark.skipif(not shared_payloads.available(), reason="needs /dev/shm (Linux)")


def test_shared_payloads_round_trip_reuse_and_cleanup():
    sp = SharedPayloads()
    a = {"model": b"x" * 1000, "control": b"\x00\x01\x02" * 7}
    ref = sp.put(3, 1, a)
    assert shared_payloads.read(ref) == a
    assert ref.key == broadcast_key(3, 1, a) == (3, 1, (("model", 1000, b"xxxx"), ("control", 21, b"\x02\x00\x01\x02")))
    smaller = sp.put(4, 0, {"model": b"y" * 10})
    assert smaller.name == ref.name and shared_payloads.read(smaller) == {"model": b"y" * 10}  # same segment
    bigger = sp.put(5, 0, {"model": b"z" * 5000})
    assert bigger.name != ref.name and shared_payloads.read(bigger) == {"model": b"z" * 5000}
    path = os.path.join("/dev/shm", bigger.name.lstrip("/"))
    assert os.path.exists(path) and not os.path.exists(os.path.join("/dev/shm", ref.name.lstrip("/")))
    sp.close()
    assert not os.path.exists(path)


def test_pool_shares_a_broadcast_and_hands_out_the_largest_clients_first(tmp_path, digits):
    cfg = from_dict(digits_config(rounds=1, engine={"workers": 1}))
    sim = Simulation(cfg, tmp_path, dataset=digits)
    sim.start()
    pool = WorkerPool(sim.runtime, 1)
    try:
        payloads = sim._encode_down(sim.algo.broadcast(sim.server_state, 1, 0), 1, 0, [0, 1, 2, 3])
        clients = [0, 1, 2, 3, 4, 5]
        tasks = [(c, 1, 0, payloads, None) for c in clients]
        shared = pool._share_broadcast(tasks)
        assert all(isinstance(t[3], SharedRef) for t in shared) and len({id(t[3]) for t in shared}) == 1
        own = [(c, 1, 0, dict(payloads), None) for c in clients]  # per-client dicts (delta): sent as they are
        assert pool._share_broadcast(own) == own
        finished: list[int] = []
        out = pool.map(tasks, on_result=lambda i, r: finished.append(clients[i]))
        sizes = {c: len(sim.partition.train[c]) for c in clients}
        assert finished == sorted(clients, key=lambda c: (-sizes[c], clients.index(c)))  # one worker: in hand-out order
        assert len(set(sizes.values())) > 1 and finished != clients
        assert [r[2] for r in out] == [sizes[c] for c in clients]  # results in task order
        assert not any(isinstance(r, ClientFailure) for r in out)
    finally:
        pool.close()


def test_two_workers_equal_in_process_bit_for_bit_with_scaffold(tmp_path, digits):
    """Two messages per broadcast (model + control) through shared memory, client states across processes."""
    over = dict(rounds=3, algorithm={"name": "scaffold"}, eval={"every": 1, "personal_every": 0})
    a = Simulation(from_dict(digits_config(**over)), tmp_path / "a", dataset=digits).run()
    b = Simulation(from_dict(digits_config(**over, engine={"workers": 2})), tmp_path / "b", dataset=digits).run()
    strip = lambda h: [{k: v for k, v in r.items() if k not in TIMING_FIELDS} for r in h]  # noqa: E731
    assert strip(a.history) == strip(b.history) and a.ledger.to_state() == b.ledger.to_state()
    assert a.history[-1]["global_acc"] > 0.25  # learning (chance: 0.1)


def test_throughput_rows_carry_speedup_and_efficiency_against_the_in_process_engine():
    from fedsqueeze.bench.throughput import measure_speed
    from fedsqueeze.data.sources import load_synthetic

    rows = measure_speed("mlp", workers=(0, 2), rounds=1, k=4, dataset="synthetic", data=load_synthetic())
    plain, inproc, pool = rows
    assert plain["speedup_vs_in_process"] is None and plain["efficiency"] is None
    assert inproc["speedup_vs_in_process"] == 1.0 and inproc["efficiency"] is None
    assert pool["speedup_vs_in_process"] == pytest.approx(inproc["s_per_round"] / pool["s_per_round"])
    assert pool["efficiency"] == pytest.approx(pool["speedup_vs_in_process"] / 2)
    assert pool["max_abs_weight_diff"] == 0.0
