"""``engine.deadline_s``: a client whose compute plus simulated transfer time exceeds the deadline misses
the step — its reply dropped, counted as a straggler, only the upload bytes sent in time in the ledger."""
from __future__ import annotations

import math

import pytest
import torch

from conftest import digits_config
from fedsqueeze.bench.kill import same
from fedsqueeze.compare.network import NetworkProfile
from fedsqueeze.config import from_dict
from fedsqueeze.engine.deadline import Deadline
from fedsqueeze.engine.runtime import Runtime
from fedsqueeze.engine.sampling import clients_per_round, sample_clients
from fedsqueeze.engine.simulation import Simulation, build_partition
from fedsqueeze.errors import ConfigError
from fedsqueeze.metrics.results import TIMING_FIELDS

SPS = 0.001  # modelled seconds per training sample


def logreg(**over) -> dict:
    over.setdefault("model", {"name": "logreg"})
    return digits_config(**over)


def sampled(cfg, rnd: int) -> list[int]:
    k = clients_per_round(cfg.data.num_clients, cfg.train.clients_per_round, cfg.train.client_fraction)
    return [int(c) for c in sample_clients(cfg.data.num_clients, k, seed=cfg.seed, rnd=rnd)]


def test_verdict_exact_times_and_bytes_sent_before_the_deadline():
    net = NetworkProfile("t", up_mbps=1, down_mbps=2, latency_ms=100)
    d = Deadline(3.0, net)
    # down: 0.1 + 8·250000/2e6 = 1.1 s; compute 0.5 s; up: 0.1 + 8·125000/1e6 = 1.1 s  -> 2.7 s
    t, sent = d.verdict(0, [250_000], [125_000], 0.5)
    assert t == pytest.approx(2.7) and sent is None
    t, sent = Deadline(2.2, net).verdict(0, [250_000], [125_000], 0.5)
    assert t == pytest.approx(2.7) and sent == [62_500]  # 0.5 s of the 1 Mbit/s uplink after its latency
    # the second upload never starts; one that ends past the deadline is cut where the deadline falls
    # (first upload 2.1 s; the second's latency to 2.2 s, then 0.1 s at 125,000 bytes/s before 2.3 s)
    first, second = Deadline(2.3, net).verdict(0, [250_000], [50_000, 100_000], 0.5)[1]
    assert first == 50_000 and abs(second - 12_500) <= 1  # floor of a float product: 12,499 or 12,500
    assert Deadline(2.2, net).verdict(0, [250_000], [50_000, 100_000], 0.5)[1] == [50_000, 0]
    assert Deadline(1.5, net).verdict(0, [250_000], [125_000], 0.5)[1] == [0]  # still computing
    # no network: compute alone decides, and a late client has sent nothing
    assert Deadline(1.0).verdict(0, [10**9], [10**9], 1.0) == (1.0, None)
    assert Deadline(1.0).verdict(0, [10**9], [10**9], 1.5) == (1.5, [0])
    # compute_scale of the profile scales the compute term
    slow = NetworkProfile("s", up_mbps=1, down_mbps=1, latency_ms=0, compute_scale=3)
    assert Deadline(10.0, slow).verdict(0, [], [], 2.0)[0] == 6.0


def test_modelled_compute_is_samples_times_epochs_or_steps_times_batch():
    d = Deadline(1.0, None, seconds_per_sample=0.5, epochs=3)
    assert d.compute_s(10, measured=99.0) == 15.0
    assert Deadline(1.0, None, 0.5, epochs=3, local_steps=4, batch_size=8).compute_s(10, 99.0) == 16.0
    assert Deadline(1.0).compute_s(10, measured=0.25) == 0.25  # default: the measured wall time


NET = {"name": "slowup", "up_mbps": 0.5, "down_mbps": 1000, "latency_ms": 0}


def _deadline_cfg(seed: int = 0, deadline: float = 0.3, **engine) -> dict:
    return logreg(seed=seed, rounds=2, eval={"every": 1, "personal_every": 0},
                  engine={"deadline_s": deadline, "seconds_per_sample": SPS, **engine})


def _splitting_deadline(digits, extra: float = 0.0) -> float:
    """Halfway between the 2nd and 3rd fastest of round 1's clients (modelled compute), plus ``extra``."""
    cfg = from_dict(_deadline_cfg())
    part = build_partition(cfg, digits)
    times = sorted(SPS * len(part.train[c]) for c in sampled(cfg, 1))
    return (times[1] + times[2]) / 2 + extra


def test_clients_over_the_deadline_miss_the_round_exactly(tmp_path, digits):
    probe = Simulation(from_dict(logreg(rounds=1)), tmp_path / "probe", dataset=digits).run()
    full_up = next(r.nbytes for r in probe.ledger if r.direction == "up")  # every logreg update: same length
    down = next(r.nbytes for r in probe.ledger if r.direction == "down")
    deadline = _splitting_deadline(digits, extra=8.0 * down / 1e9 + 8.0 * full_up / 0.5e6)
    cfg = from_dict(_deadline_cfg(deadline=deadline, network=NET))
    sim = Simulation(cfg, tmp_path / "a", dataset=digits)
    part = sim.partition
    w0 = {k: v.clone() for k, v in sim.runtime.initial_weights("model").items()}
    res = sim.run()
    ontime_1: list[int] = []
    seen_late = 0
    for rec in res.history:
        rnd = rec["round"]
        late, ontime, expect_up = [], [], {}
        for c in sampled(cfg, rnd):
            before_up = 8.0 * down / 1e9 + SPS * len(part.train[c])
            if before_up + 8.0 * full_up / 0.5e6 <= deadline:
                ontime.append(c)
                expect_up[c] = full_up
            else:
                late.append(c)
                sent = min(full_up, max(0, math.floor((deadline - before_up) * 0.5e6 / 8.0)))
                if sent:
                    expect_up[c] = sent
        assert (rec["stragglers"], rec["no_reply"], rec["rejected"]) == (len(late), len(late), 0)
        assert {r.client: r.nbytes for r in res.ledger if r.round == rnd and r.direction == "up"} == expect_up
        assert sorted(r.client for r in res.ledger if r.round == rnd and r.direction == "down") == sorted(
            sampled(cfg, rnd))  # the broadcast went to every sampled client, in full
        seen_late += len(late)
        if rnd == 1:
            ontime_1 = ontime
    assert seen_late >= 2 and ontime_1
    # round 1's aggregate is FedAvg of the clients on time, bit for bit
    rt = Runtime(from_dict(logreg()), digits, build_partition(cfg, digits))
    ups = []
    for c in ontime_1:
        payloads, _, n, _ = rt.run_client(c, 1, 0, {"model": w0}, None)
        ups.append((rt.algo.codec("update", "up", 1).decode(payloads["update"]), n))
    total = float(sum(n for _, n in ups))
    expected = {}
    for name, w in w0.items():
        acc = torch.zeros_like(w, dtype=torch.float64)
        for delta, n in ups:
            acc += delta[name].to(torch.float64) * (n / total)
        expected[name] = w + acc.to(torch.float32)
    one = Simulation(from_dict({**_deadline_cfg(deadline=deadline, network=NET), "rounds": 1}), tmp_path / "one",
                     dataset=digits)
    one.run()
    assert same(one.server_state["weights"], expected)


def test_a_partial_upload_is_counted_to_the_byte(tmp_path, digits):
    # pick a deadline that falls inside one client's upload
    net = NET
    cfg = from_dict(_deadline_cfg(network=net))
    part = build_partition(cfg, digits)
    c = sampled(cfg, 1)[0]
    probe = Simulation(from_dict(logreg(rounds=1)), tmp_path / "probe", dataset=digits).run()
    up = next(r.nbytes for r in probe.ledger if r.direction == "up")
    down = next(r.nbytes for r in probe.ledger if r.direction == "down")
    start = 8.0 * down / 1e9 + SPS * len(part.train[c])
    deadline = start + 0.5 * (8.0 * up / 0.5e6)  # half of its upload
    res = Simulation(from_dict(logreg(rounds=1, eval={"every": 1, "personal_every": 0},
                                      engine={"deadline_s": deadline, "seconds_per_sample": SPS, "network": net})),
                     tmp_path / "run", dataset=digits).run()
    mine = [r.nbytes for r in res.ledger if r.client == c and r.direction == "up"]
    assert mine == [math.floor((deadline - start) * 0.5e6 / 8.0)] and 0 < mine[0] < up


def test_worker_pool_gives_the_same_stragglers_and_bytes(tmp_path, digits):
    deadline = _splitting_deadline(digits)
    a = Simulation(from_dict(_deadline_cfg(deadline=deadline)), tmp_path / "a", dataset=digits).run()
    b = Simulation(from_dict(_deadline_cfg(deadline=deadline, workers=2)), tmp_path / "b", dataset=digits).run()
    strip = lambda h: [{k: v for k, v in r.items() if k not in TIMING_FIELDS} for r in h]  # noqa: E731
    assert strip(a.history) == strip(b.history) and a.ledger.to_state() == b.ledger.to_state()
    assert sum(r["stragglers"] for r in a.history) >= 1


def test_deadline_config_errors():
    with pytest.raises(ConfigError, match="engine.deadline_s"):
        from_dict(logreg(engine={"deadline_s": -1}))
    with pytest.raises(ConfigError, match="engine.seconds_per_sample"):
        from_dict(logreg(engine={"deadline_s": 1, "seconds_per_sample": float("nan")}))
    with pytest.raises(ConfigError, match="set engine.deadline_s"):
        Deadline.from_config(from_dict(logreg(engine={"network": "lte"})))
    with pytest.raises(ConfigError, match="unknown network profile 'dialup'"):
        Deadline.from_config(from_dict(logreg(engine={"deadline_s": 1, "network": "dialup"})))
    assert Deadline.from_config(from_dict(logreg())) is None
