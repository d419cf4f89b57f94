"""Server work overlapped with client training (engine/overlap.py): replies admitted on a background
thread as they arrive, and (on accelerators) uploads encoded there while the next client trains —
with every byte, verdict and weight what the serial engine gives."""
from __future__ import annotations

import json
import threading

import pytest
import torch

from conftest import digits_config
from fedsqueeze.bench.kill import same
from fedsqueeze.config import from_dict
from fedsqueeze.engine.overlap import Admission, without
from fedsqueeze.engine.simulation import Simulation
from fedsqueeze.metrics.results import TIMING_FIELDS


def _strip(history):
    return [{k: v for k, v in r.items() if k not in TIMING_FIELDS} for r in history]


def _run(tmp_path, name, *, admit_behind=True, encode_behind=False, **over):
    sim = Simulation(from_dict(digits_config(**over)), tmp_path / name, dataset=_run.digits)
    sim._encode_behind = encode_behind  # the accelerator path, exercised on the CPU
    sim._admission.enabled = admit_behind  # on whatever the machine's load (spare_core)
    if not admit_behind:  # the serial engine: no reply is ever submitted, each is admitted on the spot
        sim._admission.submit = lambda *a, **k: None  # type: ignore[method-assign]
    res = sim.run()
    rej = (tmp_path / name / "rejections.jsonl")
    rows = [json.loads(x) for x in rej.read_text().splitlines()] if rej.exists() else []
    return sim, res, [(r["round"], r["step"], r["client"], r["check"]) for r in rows]


@pytest.mark.parametrize("encode_behind", [False, True])
def test_overlapped_engine_equals_the_serial_one_with_faults(tmp_path, digits, encode_behind):
    _run.digits = digits
    over = dict(seed=3, rounds=3, train={"clients_per_round": 6, "local_epochs": 1, "batch_size": 16, "lr": 0.1},
                engine={"faults": {"nan": 0.2, "raise": 0.15, "shape": 0.1}, "max_update_norm": 0.0})
    a_sim, a, a_rej = _run(tmp_path, "serial", admit_behind=False, **over)
    b_sim, b, b_rej = _run(tmp_path, "overlap", encode_behind=encode_behind, **over)
    assert _strip(a.history) == _strip(b.history) and a.ledger.to_state() == b.ledger.to_state()
    assert a_rej == b_rej and {c for *_, c in a_rej} >= {"nonfinite", "raised"}  # the faults did happen
    assert same(a_sim.server_state["weights"], b_sim.server_state["weights"])
    assert all(set(r["client_s"]) for r in b.history)  # measured client seconds still reported


def test_overlap_with_a_norm_bound_and_scaffold_states(tmp_path, digits):
    _run.digits = digits
    over = dict(rounds=2, algorithm={"name": "scaffold"}, engine={"max_update_norm": 1.0, "faults": {"scale": 0.3}})
    a_sim, a, a_rej = _run(tmp_path, "serial", admit_behind=False, **over)
    b_sim, b, b_rej = _run(tmp_path, "overlap", encode_behind=True, **over)
    assert _strip(a.history) == _strip(b.history) and a_rej == b_rej
    assert any(c == "norm" for *_, c in a_rej)
    assert same(a_sim.server_state["weights"], b_sim.server_state["weights"])


def test_admission_runs_each_submitted_check_once_in_the_background_and_in_order():
    calls = []
    adm = Admission()
    main = threading.get_ident()

    def check(c, ups, n, metrics):
        calls.append((c, threading.get_ident() != main))
        if c == 3:
            raise ValueError("boom")
        return (c, n, metrics)

    adm.start(check)
    ups = {1: {"u": b"a"}, 2: {"u": b"b"}, 3: {"u": b"c"}}
    for c in (1, 2, 3):
        adm.submit(c, ups[c], 10 * c, {"m": c})
    assert adm.result(2, ups[2], 20, {"m": 2}) == (2, 20, {"m": 2})
    assert adm.result(1, ups[1], 10, {"m": 1}) == (1, 10, {"m": 1})
    with pytest.raises(ValueError, match="boom"):  # raised where a serial admission would raise it
        adm.result(3, ups[3], 30, {"m": 3})
    assert calls == [(1, True), (2, True), (3, True)]
    # a reply never submitted (or a different one for the same client) is checked on the spot
    assert adm.result(4, {"u": b"d"}, 40, {}) == (4, 40, {}) and calls[-1] == (4, False)
    adm.submit(5, {"u": b"e"}, 1, {})
    assert adm.result(5, {"u": b"other"}, 2, {}) == (5, 2, {})
    adm.close()


def test_without_drops_only_the_named_key():
    m = {"train_loss": 0.5, "_compute_s": 1.0}
    assert without(m, "_compute_s") == {"train_loss": 0.5} and m == {"train_loss": 0.5, "_compute_s": 1.0}
    assert without(None, "x") is None
    assert without(m, "absent") is m


def test_weighted_mean_in_place_equals_the_textbook_sum():
    from fedsqueeze.algorithms.base import weighted_mean

    g = torch.Generator().manual_seed(0)
    msgs = [{"w": torch.randn(257, generator=g), "b": torch.randn(3, 4, generator=g)} for _ in range(7)]
    weights = [3.0, 1.0, 7.0, 2.0, 5.0, 11.0, 1.0]
    total = sum(weights)
    for name in ("w", "b"):
        acc = torch.zeros_like(msgs[0][name], dtype=torch.float64)
        for m, w in zip(msgs, weights):
            acc += m[name].to(torch.float64) * (w / total)
        assert torch.equal(weighted_mean(msgs, weights)[name], acc.to(torch.float32))


def test_weighted_mean_with_more_threads_is_bit_for_bit_the_single_threaded_one(monkeypatch):
    from fedsqueeze.algorithms import base

    g = torch.Generator().manual_seed(1)
    msgs = [{"w": torch.randn(1 << 19, generator=g), "b": torch.randn(1000, 7, generator=g)} for _ in range(5)]
    weights = [5.0, 3.0, 2.0, 9.0, 1.0]
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        monkeypatch.setattr(base.os, "cpu_count", lambda: 1)  # the single-threaded reference
        one = base.weighted_mean(msgs, weights)
        monkeypatch.setattr(base.os, "cpu_count", lambda: 8)
        seen = []
        real = torch.set_num_threads
        monkeypatch.setattr(torch, "set_num_threads", lambda n: (seen.append(n), real(n)))
        many = base.weighted_mean(msgs, weights)
        assert seen == [4, 1]  # raised for the job, then restored
    finally:
        torch.set_num_threads(before)
    assert all(torch.equal(one[k], many[k]) for k in one)


def test_inline_admission_keeps_the_verdict_and_its_exception():
    adm = Admission(enabled=False)
    calls = []

    def check(c, ups, n, metrics):
        calls.append(c)
        if c == 2:
            raise KeyError("bad")
        return c * 10

    adm.start(check)
    ups = {1: {"u": b"a"}, 2: {"u": b"b"}}
    adm.submit(1, ups[1], 1, {})  # disabled: nothing happens in the background
    assert calls == []
    adm.submit(1, ups[1], 1, {}, inline=True)
    adm.submit(2, ups[2], 1, {}, inline=True)
    assert calls == [1, 2]
    assert adm.result(1, ups[1], 1, {}) == 10 and calls == [1, 2]  # not checked twice
    with pytest.raises(KeyError):
        adm.result(2, ups[2], 1, {})
    adm.close()


def test_spare_core_follows_the_load(monkeypatch):
    from fedsqueeze.engine import overlap

    monkeypatch.setattr(overlap.os, "cpu_count", lambda: 4)
    monkeypatch.setattr(overlap.os, "getloadavg", lambda: (2.5, 0.0, 0.0))
    assert overlap.spare_core()
    monkeypatch.setattr(overlap.os, "getloadavg", lambda: (3.5, 0.0, 0.0))
    assert not overlap.spare_core()
