"""Client faults in the engine: rejected replies (NaN, raise, wrong shape, norm bound, undecodable),
too few replies (skip / fail), simulated dropouts and stragglers, a dying worker — nothing poisons
the global model and every fault is reproducible from the seed."""
from __future__ import annotations

import json
import os

import pytest
import torch

from conftest import digits_config
from fedsqueeze.bench.kill import same
from fedsqueeze.config import from_dict
from fedsqueeze.engine import faults
from fedsqueeze.engine.runtime import Runtime
from fedsqueeze.engine.sampling import clients_per_round, sample_clients
from fedsqueeze.engine.simulation import Simulation, build_partition
from fedsqueeze.engine.validation import TooFewReplies, check_spec, check_values
from fedsqueeze.errors import ConfigError, FedsqueezeError
from fedsqueeze.metrics.results import TIMING_FIELDS


def logreg(**over) -> dict:
    over.setdefault("model", {"name": "logreg"})
    return digits_config(**over)


def sampled(cfg, rnd: int) -> list[int]:
    k = clients_per_round(cfg.data.num_clients, cfg.train.clients_per_round, cfg.train.client_fraction)
    return [int(c) for c in sample_clients(cfg.data.num_clients, k, seed=cfg.seed, rnd=rnd)]


def faulty(cfg, rnd: int, kind: str, step: int = 0) -> list[int]:
    return [c for c in sampled(cfg, rnd) if faults.client_fault(cfg, rnd, step, c) == kind]


def first_seed(make, rnd: int, kind: str, lo: int = 1, hi: int | None = None):
    """The first seed whose round ``rnd`` has between lo and hi faulty clients of ``kind``."""
    for seed in range(200):
        cfg = from_dict(make(seed))
        n = len(faulty(cfg, rnd, kind))
        if lo <= n <= (hi if hi is not None else cfg.train.clients_per_round - 1):
            return cfg
    raise AssertionError("no seed found")


def rejections(run_dir) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "rejections.jsonl").read_text().splitlines()]


def client_update(cfg, dataset, client: int, weights: dict) -> tuple[dict, int]:
    """An honest client's decoded FedAvg update from ``weights`` in round 1 (a fault-free runtime)."""
    clean = from_dict({**cfg.to_dict(), "engine": {}})
    rt = Runtime(clean, dataset, build_partition(clean, dataset))
    ups, _, n, _ = rt.run_client(client, 1, 0, {"model": weights}, None)
    return rt.algo.codec("update", "up", 1).decode(ups["update"]), n


# ---- rejected replies ------------------------------------------------------------------------------

def test_nan_clients_are_rejected_and_the_aggregate_is_fedavg_of_the_rest_bit_for_bit(tmp_path, digits):
    cfg = first_seed(lambda s: logreg(seed=s, rounds=1, engine={"faults": {"nan": 0.3}}), 1, "nan")
    sim = Simulation(cfg, tmp_path, dataset=digits)
    w0 = {k: v.clone() for k, v in sim.runtime.initial_weights("model").items()}
    res = sim.run()
    bad = faulty(cfg, 1, "nan")
    got = rejections(tmp_path)
    assert [(r["round"], r["client"], r["check"]) for r in got] == [(1, c, "nonfinite") for c in bad]
    assert "contains NaN" in got[0]["reason"]
    assert res.history[0]["rejected"] == len(bad) and res.history[0]["no_reply"] == 0
    # the rejected uploads crossed the wire: they are in the ledger
    assert {r.client for r in res.ledger if r.direction == "up"} == set(sampled(cfg, 1))

    good = [c for c in sampled(cfg, 1) if c not in bad]
    updates = [client_update(cfg, digits, c, w0) for c in good]
    total = float(sum(n for _, n in updates))
    expected = {}
    for name, w in w0.items():
        acc = torch.zeros_like(w, dtype=torch.float64)
        for delta, n in updates:
            acc += delta[name].to(torch.float64) * (n / total)
        expected[name] = w + acc.to(torch.float32)
    assert same(sim.server_state["weights"], expected)
    assert all(bool(torch.isfinite(v).all()) for v in sim.server_state["weights"].values())


def test_wrong_shapes_are_rejected(tmp_path, digits):
    cfg = first_seed(lambda s: logreg(seed=s, rounds=1, engine={"faults": {"shape": 0.3}}), 1, "shape")
    Simulation(cfg, tmp_path, dataset=digits).run()
    got = rejections(tmp_path)
    assert [(r["client"], r["check"]) for r in got] == [(c, "spec") for c in faulty(cfg, 1, "shape")]
    assert got[0]["reason"] == ("message 'update': tensor 'head.weight' is (639,) torch.float32, expected (10, 64) "
                                "torch.float32")


def test_spec_check_names_missing_and_unexpected_tensors():
    want = {"update": {"a": ((2, 3), torch.float32), "b": ((3,), torch.float32)}}
    ok = {"a": torch.zeros(2, 3), "b": torch.zeros(3)}
    assert check_spec("update", ok, want) is None
    assert check_spec("update", {"a": torch.zeros(2, 3)}, want) == "message 'update': missing tensors ['b']"
    assert check_spec("update", {**ok, "c": torch.zeros(1)}, want) == "message 'update': unexpected tensors ['c']"
    assert "torch.float64" in check_spec("update", {**ok, "b": torch.zeros(3, dtype=torch.float64)}, want)
    assert check_values("update", {"a": torch.tensor([3.0, 4.0])}, 5.0) is None  # ||(3, 4)|| = 5: on the bound
    assert check_values("update", {"a": torch.tensor([3.0]), "b": torch.tensor([4.0001])}, 5.0)[0] == "norm"
    assert check_values("update", {"a": torch.tensor([1.0, float("inf")])}, 0.0)[0] == "nonfinite"


def test_norm_bound_rejects_only_the_scaled_clients(tmp_path, digits):
    cfg = first_seed(lambda s: logreg(seed=s, rounds=1, engine={"faults": {"scale": 0.3}}), 1, "scale")
    w0 = Simulation(cfg, tmp_path / "probe", dataset=digits).runtime.initial_weights("model")
    honest = {c: torch.cat([t.reshape(-1) for t in client_update(cfg, digits, c, w0)[0].values()]).norm().item()
              for c in sampled(cfg, 1)}
    bound = 10 * max(honest.values())
    assert min(honest.values()) * faults.SCALE > bound  # every scaled update is beyond the bound
    cfg = from_dict({**cfg.to_dict(), "engine": {"faults": {"scale": 0.3}, "max_update_norm": bound}})
    res = Simulation(cfg, tmp_path / "run", dataset=digits).run()
    got = rejections(tmp_path / "run")
    assert [(r["client"], r["check"]) for r in got] == [(c, "norm") for c in faulty(cfg, 1, "scale")]
    assert "exceeds engine.max_update_norm" in got[0]["reason"]
    assert res.history[0]["rejected"] == len(faulty(cfg, 1, "scale"))
    # without the bound the scaled updates go through (finite, right shapes) and blow the model up
    cfg = from_dict({**cfg.to_dict(), "engine": {"faults": {"scale": 0.3}}})
    unbounded = Simulation(cfg, tmp_path / "open", dataset=digits).run()
    assert rejections(tmp_path / "open") == []
    assert unbounded.history[0]["global_loss"] > 10 * res.history[0]["global_loss"]


def test_raising_client_is_rejected_and_keeps_its_previous_state(tmp_path, digits):
    # SCAFFOLD: every client keeps a control variate c_i; a client that raised must keep the old one
    cfg = from_dict(logreg(rounds=4, algorithm={"name": "scaffold"}, engine={"faults": {"raise": 0.3}},
                           train={"clients_per_round": 6}))
    sim = Simulation(cfg, tmp_path, dataset=digits)
    sim.start()
    raised_total, records = 0, []
    for rnd in range(1, 5):
        before = {c: sim.store.get(c) for c in range(10)}
        rec = sim.run_round(rnd)
        records.append({k: v for k, v in rec.items() if k not in TIMING_FIELDS and not k.startswith("cum_")})
        raised = faulty(cfg, rnd, "raise")
        raised_total += len(raised)
        assert rec["rejected"] == len(raised)
        for c in range(10):
            changed = not same(sim.store.get(c), before[c])
            assert changed == (c in sampled(cfg, rnd) and c not in raised), (rnd, c)
    assert raised_total >= 2
    got = rejections(tmp_path)
    assert {r["check"] for r in got} == {"raised"} and len(got) == raised_total
    assert "InjectedFault: injected fault (engine.faults.raise)" in got[0]["reason"]
    # in the worker pool: the workers survive their clients' exceptions, and nothing differs
    pooled = from_dict({**cfg.to_dict(), "engine": {**cfg.to_dict()["engine"], "workers": 2}})
    res = Simulation(pooled, tmp_path / "pool", dataset=digits).run()
    assert rejections(tmp_path / "pool") == got
    assert [{k: v for k, v in r.items() if k in records[0]} for r in res.history] == records


def test_a_real_exception_is_rejected_with_its_traceback_unless_every_client_raises(tmp_path, digits):
    cfg = from_dict(logreg(rounds=1))
    sim = Simulation(cfg, tmp_path / "one", dataset=digits)
    victim = sampled(cfg, 1)[1]
    honest = sim.algo.client_update

    def update(ctx, down, state):
        if ctx.client == victim:
            raise ValueError("Expected more than 1 value per channel")
        return honest(ctx, down, state)

    sim.algo.client_update = update
    res = sim.run()
    (r,) = rejections(tmp_path / "one")
    assert (r["client"], r["check"]) == (victim, "raised") and "ValueError" in r["reason"]
    assert "in update" in r["traceback"] and res.history[0]["rejected"] == 1

    sim = Simulation(cfg, tmp_path / "all", dataset=digits)
    sim.algo.client_update = lambda ctx, down, state: 1 / 0
    with pytest.raises(FedsqueezeError, match="every client failed .* raised ZeroDivisionError.*not a client fault"):
        sim.run()


def test_an_undecodable_upload_is_rejected(tmp_path, digits):
    class Mangler(Simulation):  # a transport that cuts one client's payload short
        def _execute(self, clients, rnd, step, payloads):
            out = super()._execute(clients, rnd, step, payloads)
            return [(c, {k: p[:-7] for k, p in ups.items()} if c == clients[0] else ups, n, m)
                    for c, ups, n, m in out]

    cfg = from_dict(logreg(rounds=1))
    Mangler(cfg, tmp_path, dataset=digits).run()
    (r,) = rejections(tmp_path)
    assert (r["client"], r["check"]) == (sampled(cfg, 1)[0], "decode")
    assert r["reason"].startswith("message 'update' does not decode:")


# ---- too few replies ---------------------------------------------------------------------------------

def test_too_few_valid_replies_skips_the_round_and_changes_nothing(tmp_path, digits):
    for seed in range(100):  # a run in which some rounds but not all have a NaN client
        cfg = from_dict(logreg(seed=seed, rounds=4, algorithm={"name": "scaffold"},
                               engine={"faults": {"nan": 0.2}, "min_replies": 4}))
        short = [r for r in range(1, 5) if faulty(cfg, r, "nan")]
        if 1 <= len(short) <= 2:
            break
    sim = Simulation(cfg, tmp_path, dataset=digits)
    sim.start()
    for rnd in range(1, 5):
        server = {k: {n: t.clone() for n, t in v.items()} for k, v in sim.server_state.items()}
        clients = {c: sim.store.get(c) for c in range(10)}
        rec = sim.run_round(rnd)
        assert rec["skipped"] == (rnd in short)
        unchanged = same(sim.server_state, server) and all(same(sim.store.get(c), clients[c]) for c in range(10))
        assert unchanged == (rnd in short), rnd
        if rnd in short:
            assert rec["clients"] == 0 and rec["rejected"] == len(faulty(cfg, rnd, "nan"))
            assert rec["bytes_up"] > 0  # what was sent was sent
    fail = from_dict({**cfg.to_dict(), "engine": {**cfg.to_dict()["engine"], "too_few": "fail"}})
    with pytest.raises(TooFewReplies, match=rf"round {short[0]} step 0: \d valid replies from 4 clients "
                                            r"\(\d rejected, 0 without reply\), engine.min_replies = 4; lower"):
        Simulation(fail, tmp_path / "fail", dataset=digits).run()


def test_min_replies_above_the_sampled_clients_is_a_config_error(tmp_path, digits):
    with pytest.raises(ConfigError, match="engine.min_replies = 5 exceeds the 4 clients sampled"):
        Simulation(from_dict(logreg(engine={"min_replies": 5})), tmp_path, dataset=digits)


def test_fault_config_is_validated():
    with pytest.raises(ConfigError, match="unknown fault 'engine.faults.nans' .did you mean 'nan'"):
        from_dict(logreg(engine={"faults": {"nans": 0.1}}))
    with pytest.raises(ConfigError, match="sum to 1.2 > 1"):
        from_dict(logreg(engine={"faults": {"nan": 0.6, "raise": 0.6}}))
    with pytest.raises(ConfigError, match="engine.dropout"):
        from_dict(logreg(engine={"dropout": 1.5}))


# ---- simulated dropouts and stragglers --------------------------------------------------------------

def expected_no_reply(cfg, rnd: int) -> tuple[set[int], set[int], dict[int, int]]:
    """(clients without reply, of which stragglers, broadcasts sent per client) by replaying the
    engine's draws and its retry rule: re-send to dropouts, keep waiting for stragglers."""
    pending, replied, why = sampled(cfg, rnd), 0, {}
    sent = {c: 1 for c in pending}
    for attempt in range(cfg.engine.retries + 1):
        for c in pending:
            sent[c] += attempt > 0 and why[c] == "dropout"
        why = {c: faults.no_reply(cfg, rnd, 0, c, attempt) for c in pending}
        replied += sum(w is None for w in why.values())
        pending = [c for c in pending if why[c]]
        if replied >= cfg.engine.min_replies or not pending:
            break
    return set(pending), {c for c in pending if why[c] == "straggler"}, sent


def test_dropouts_and_stragglers_are_deterministic_and_counted(tmp_path, digits):
    eng = {"dropout": 0.25, "straggler": 0.25, "min_replies": 3, "retries": 2}
    for seed in range(100):  # a run with a straggler left at the end of a step and a re-sent broadcast
        cfg = from_dict(logreg(seed=seed, rounds=4, engine=eng))
        predicted = [expected_no_reply(cfg, r) for r in range(1, 5)]
        if any(late for _, late, _ in predicted) and any(max(sent.values()) > 1 for _, _, sent in predicted):
            break
    a = Simulation(cfg, tmp_path / "a", dataset=digits).run()
    b = Simulation(from_dict(logreg(seed=seed, rounds=4, engine={**eng, "workers": 2})), tmp_path / "b",
                   dataset=digits).run()
    strip = lambda h: [{k: v for k, v in r.items() if k not in TIMING_FIELDS} for r in h]  # noqa: E731
    assert strip(a.history) == strip(b.history)  # in process = worker pool
    resent = 0
    for rec in a.history:
        missing, late, sent = expected_no_reply(cfg, rec["round"])
        assert (rec["no_reply"], rec["stragglers"]) == (len(missing), len(late))
        # no upload from a client without reply; a dropout is sent the broadcast again at each retry
        ups = {r.client for r in a.ledger if r.round == rec["round"] and r.direction == "up"}
        assert ups == set(sampled(cfg, rec["round"])) - missing
        downs = [r.client for r in a.ledger if r.round == rec["round"] and r.direction == "down"]
        assert {c: downs.count(c) for c in set(downs)} == sent
        resent += sum(sent.values()) - len(sent)
    assert sum(r["no_reply"] for r in a.history) >= 2 and sum(r["stragglers"] for r in a.history) >= 1
    assert resent >= 1


def test_a_worker_that_dies_is_a_client_without_reply_and_the_pool_recovers(tmp_path, digits):
    cfg = from_dict(logreg(rounds=2, engine={"workers": 2, "round_timeout": 2.0}))
    sim = Simulation(cfg, tmp_path, dataset=digits)
    victim = sampled(cfg, 1)[0]
    honest = sim.algo.client_update

    def update(ctx, down, state):
        if ctx.client == victim and ctx.round == 1:
            os._exit(3)  # the worker process vanishes mid-task
        return honest(ctx, down, state)

    sim.algo.client_update = update
    res = sim.run()
    assert [(r["no_reply"], r["stragglers"], r["rejected"]) for r in res.history] == [(1, 1, 0), (0, 0, 0)]
    assert res.history[1]["clients"] == 4 and res.history[1]["global_acc"] is not None


# ---- learning goes on ------------------------------------------------------------------------------

def test_fedavg_still_learns_with_a_fifth_of_the_clients_sending_nan(tmp_path, digits):
    cfg = digits_config(rounds=12, model={"name": "mlp", "options": {"hidden": 32}},
                        train={"clients_per_round": 5, "local_epochs": 2, "batch_size": 16, "lr": 0.1},
                        eval={"every": 4, "personal_every": 0}, engine={"faults": {"nan": 0.2}})
    res = Simulation(from_dict(cfg), tmp_path, dataset=digits).run()
    assert sum(r["rejected"] for r in res.history) >= 6  # ~ 0.2 x 60 replies
    assert not any(r["skipped"] for r in res.history)
    assert res.final_accuracy > 0.85, res.final_accuracy
