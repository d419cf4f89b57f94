"""QuPeD, its local-only variant and FedAvg + fine-tuning: exact pieces and digits runs."""
from __future__ import annotations

import math

import pytest
import torch

import fedsqueeze
import fedsqueeze.registry
from conftest import digits_config
from fedsqueeze.algorithms.base import Setup
from fedsqueeze.algorithms.quped import QuPeD, QuPeDParams, kd_loss
from fedsqueeze.errors import ConfigError
from fedsqueeze.metrics.results import TIMING_FIELDS

MIXED = [{"bits": 1}, {"bits": 2, "model": "small_cnn", "options": {"width": 8, "hidden": 32}}, {"bits": 4}]


def _strip(history):
    return [{k: v for k, v in r.items() if k not in TIMING_FIELDS and k != "client_metrics"} for r in history]


def test_kd_temperature_on_both_logits_and_the_quirk():
    s, t = torch.tensor([[2.0, 0.0]]), torch.tensor([[math.log(3.0), 0.0]])
    # T = 1: KL([3/4, 1/4] || softmax([2, 0]))
    ps = [math.exp(2) / (math.exp(2) + 1), 1 / (math.exp(2) + 1)]
    want = 0.75 * math.log(0.75 / ps[0]) + 0.25 * math.log(0.25 / ps[1])
    assert abs(kd_loss(s, t, 1.0).item() - want) < 1e-6
    # T = 2: teacher softmax([ln 3 / 2, 0]) = [√3, 1] / (1 + √3); student softmax([1, 0]); times T² = 4
    r3 = math.sqrt(3.0)
    pt = [r3 / (1 + r3), 1 / (1 + r3)]
    ps2 = [math.e / (math.e + 1), 1 / (math.e + 1)]
    want2 = 4 * sum(a * math.log(a / b) for a, b in zip(pt, ps2))
    assert abs(kd_loss(s, t, 2.0).item() - want2) < 1e-6
    # the released code's quirk: the student logits are not divided by T
    want3 = 4 * sum(a * math.log(a / b) for a, b in zip(pt, ps))
    assert abs(kd_loss(s, t, 2.0, teacher_only=True).item() - want3) < 1e-6


def test_personal_slots_and_bits_per_client():
    algo = QuPeD(QuPeDParams(personal=MIXED), Setup("mlp", {"hidden": 32}, (1, 8, 8), 10, rounds=3))
    specs = algo.model_specs()
    assert specs == {"model": ("mlp", {"hidden": 32}), "personal0": ("mlp", {"hidden": 32}),
                     "personal1": ("small_cnn", {"width": 8, "hidden": 32})}
    assert [algo.personal_spec(c) for c in range(4)] == [("personal0", 1), ("personal1", 2),
                                                          ("personal0", 4), ("personal0", 1)]
    default = QuPeD(QuPeDParams(bits=3), Setup("mlp", {}, (4,), 2, rounds=1))
    assert default.personal_spec(7) == ("personal0", 3)


@pytest.mark.parametrize("raw, key", [({"personal": [{"bits": 9}]}, "personal[0].bits"),
                                      ({"personal": [{"bits": 2, "model": "resnet99"}]}, "personal[0].model"),
                                      ({"personal": [{"bit": 2}]}, "unknown keys"),
                                      ({"lambda_p": 1.5}, "lambda_p"), ({"reg": "l0"}, "algorithm.reg"),
                                      ({"freeze_from": 2.0}, "freeze_from")])
def test_config_validation(raw, key):
    with pytest.raises(ConfigError, match=key.replace("[", r"\[").replace("]", r"\]")):
        QuPeD.from_config(raw, Setup("mlp", {}, (4,), 2, rounds=1))


def test_local_quant_cannot_be_made_federated():
    from fedsqueeze.registry import ALGORITHMS
    with pytest.raises(ConfigError, match="never communicates"):
        ALGORITHMS.get("local_quant").from_config({"federated": True}, Setup("mlp", {}, (4,), 2, rounds=1))


def test_without_kd_into_w_the_global_model_is_fedavg(tmp_path, digits):
    q = fedsqueeze.run(digits_config(rounds=2, algorithm={"name": "quped", "personal": MIXED, "lambda_w": 0.0}),
                       run_dir=tmp_path / "q", dataset=digits, plot=False)
    f = fedsqueeze.run(digits_config(rounds=2), run_dir=tmp_path / "f", dataset=digits, plot=False)
    assert [r["global_acc"] for r in q.history] == [r["global_acc"] for r in f.history]
    assert q.ledger.total() == f.ledger.total()  # w down, w_i - w up: FedAvg's bytes


def test_quped_mixed_bits_learns_on_digits(tmp_path, digits):
    """1-bit MLP, 2-bit small CNN and 4-bit MLP personal models; 10 rounds of 2 local epochs."""
    cfg = digits_config(rounds=10, algorithm={"name": "quped", "personal": MIXED},
                        train={"clients_per_round": 5, "local_epochs": 2, "batch_size": 16, "lr": 0.1},
                        eval={"every": 5, "personal_every": 5})
    res = fedsqueeze.run(cfg, run_dir=tmp_path, dataset=digits, plot=False)
    last = res.history[-1]
    assert last["personal_acc"] > 0.7 and last["global_acc"] > 0.7, last  # chance is 0.1
    # deployed sizes: 1/2/4-bit MLP (hidden 32) and 2-bit CNN, well below the fp32 MLP's 4·3466 bytes
    assert 0 < last["client_metrics"]["model_bytes"] < 4 * 3466
    from fedsqueeze.engine.state import ClientStateStore
    store = ClientStateStore(tmp_path / "clients", res_index(tmp_path))
    algo = QuPeD(QuPeDParams(personal=MIXED), Setup("mlp", {"hidden": 32}, (1, 8, 8), 10, rounds=10))
    for c in store.index:
        slot, weights = algo.personal_model({}, store.get(c)["algo"])
        bits = algo.personal_spec(c)[1]
        assert slot == algo.personal_spec(c)[0]
        for name in store.get(c)["algo"]["quantizer"]["centers"]:
            assert torch.unique(weights[name]).numel() <= 2 ** bits


def res_index(run_dir):
    from fedsqueeze.engine.checkpoint import load_checkpoint
    ckpt, _ = load_checkpoint(run_dir)
    return ckpt["client_index"]


def test_local_quant_sends_nothing_and_learns(tmp_path, digits):
    cfg = digits_config(rounds=6, algorithm={"name": "local_quant", "personal": MIXED},
                        train={"clients_per_round": 5, "local_epochs": 2, "batch_size": 16, "lr": 0.1},
                        eval={"every": 3, "personal_every": 3})
    res = fedsqueeze.run(cfg, run_dir=tmp_path, dataset=digits, plot=False)
    assert res.ledger.total() == 0 and res.history[-1]["global_acc"] is None
    assert res.history[-1]["personal_acc"] > 0.6


def test_fedavg_ft_trains_like_fedavg_and_keeps_a_fine_tuned_copy(tmp_path, digits):
    f = fedsqueeze.run(digits_config(rounds=2), run_dir=tmp_path / "f", dataset=digits, plot=False)
    same = fedsqueeze.run(digits_config(rounds=2, algorithm={"name": "fedavg_ft"}), run_dir=tmp_path / "a",
                          dataset=digits, plot=False)
    more = fedsqueeze.run(digits_config(rounds=2, algorithm={"name": "fedavg_ft", "ft_epochs": 3}),
                          run_dir=tmp_path / "b", dataset=digits, plot=False)
    assert [r["global_acc"] for r in same.history] == [r["global_acc"] for r in f.history]
    assert [r["global_acc"] for r in more.history] == [r["global_acc"] for r in f.history]
    assert same.history[-1]["personal_acc"] != f.history[-1]["personal_acc"]
    assert more.history[-1]["personal_acc"] != same.history[-1]["personal_acc"]


def test_personal_model_falls_back_to_the_global_model_before_a_client_trains():
    algo = QuPeD(QuPeDParams(), Setup("mlp", {}, (4,), 2, rounds=1))
    w = {"head.weight": torch.zeros(2, 4)}
    assert algo.personal_model({"weights": w}, None) == ("model", w)
    local = fedsqueeze.registry.ALGORITHMS.get("local_quant")(
        fedsqueeze.registry.ALGORITHMS.get("local_quant").Params(), Setup("mlp", {}, (4,), 2, rounds=1))
    assert local.global_model({"weights": w}) is None and local.broadcast({"weights": w}, 1, 0) == {}


def test_personal_report_groups_by_bit_width(tmp_path, digits):
    """`fedsqueeze personal`: per-bit-width accuracy and deployed sizes that grow with the bits."""
    from fedsqueeze.metrics.personal import client_rows, group_rows

    personal = [{"bits": 1}, {"bits": 2}, {"bits": 4}]
    cfg = digits_config(rounds=2, algorithm={"name": "quped", "personal": personal, "quantize_first_last": True},
                        train={"clients_per_round": 10, "local_epochs": 1, "batch_size": 16, "lr": 0.1},
                        eval={"every": 2, "personal_every": 2})
    res = fedsqueeze.run(cfg, run_dir=tmp_path, dataset=digits, plot=False)
    rows = client_rows(tmp_path)
    assert {r["client"] % 3 for r in rows if r["group"] == "2-bit mlp"} == {1}
    groups = {g["group"]: g for g in group_rows(rows)}
    assert list(groups) == ["1-bit mlp", "2-bit mlp", "4-bit mlp"]
    assert sum(g["clients"] for g in groups.values()) == len(rows) == 10
    sizes = [groups[g]["model_bytes_median"] for g in groups]
    assert sizes[0] < sizes[1] < sizes[2] < 4 * 3466  # all quantized: below the fp32 MLP (hidden 32)
    pooled = sum(r["correct"] for r in rows) / sum(r["n"] for r in rows)
    assert pooled == pytest.approx(res.history[-1]["personal_acc"])  # the engine's own figure


def test_personal_init_global_starts_from_the_received_w_and_initial_from_the_seed(monkeypatch):
    """``personal_init``: a client's first personal model is w as received ("global", same architecture
    only) or the seeded initial weights ("initial"); training is stubbed out to see the start."""
    from types import SimpleNamespace

    from fedsqueeze.algorithms.base import float_state
    from fedsqueeze.models.zoo import build_model

    setup = Setup("mlp", {"hidden": 8}, (4,), 3, rounds=10)
    torch.manual_seed(0)
    initial = float_state(build_model("mlp", (4,), 3, hidden=8))
    w = {k: torch.full_like(v, 0.5) for k, v in initial.items()}
    ctx = SimpleNamespace(client=0, round=1, data=[0] * 5,
                          model=lambda slot="model": build_model(*specs[slot][:1], (4,), 3, **specs[slot][1]),
                          initial_weights=lambda slot="model": initial)
    starts = {}
    for init, personal in [("global", []), ("initial", []), ("global", [{"bits": 2, "model": "mlp", "options": {"hidden": 6}}])]:
        algo = QuPeD.from_config({"personal_init": init, "personal": personal}, setup)
        specs = algo.model_specs()
        monkeypatch.setattr(algo, "_train", lambda *a: (0.0, 0.0, 0))
        if personal:  # another architecture cannot start from w: it keeps the initial weights
            ctx.initial_weights = lambda slot="model": float_state(ctx.model(slot))
        reply = algo.client_update(ctx, {"model": w}, None)
        starts[(init, bool(personal))] = reply.state["x"]
    assert all(torch.equal(starts[("global", False)][k], w[k]) for k in w)
    assert all(torch.equal(starts[("initial", False)][k], initial[k]) for k in initial)
    assert not any(torch.equal(v, torch.full_like(v, 0.5)) for v in starts[("global", True)].values())
    with pytest.raises(ConfigError, match="personal_init"):
        QuPeD.from_config({"personal_init": "warm"}, setup)


def test_shipped_quped_suite_gives_local_quant_the_same_quantizer_as_quped():
    """configs/suites/fmnist-quped.toml replaces the whole algorithm table for local-quant, so its
    quantizer settings (lam, eta_c, freeze, bits, ...) must be kept in step with the base config by hand:
    the local baseline is only fair with exactly QuPeD's quantized models and schedule."""
    from pathlib import Path

    from fedsqueeze.compare.suite import load_suite

    suite = load_suite(Path(__file__).resolve().parents[1] / "configs" / "suites" / "fmnist-quped.toml")
    reg = fedsqueeze.registry.ALGORITHMS

    def params(name):
        raw = dict(suite.run(name).config.algorithm)
        return reg.get(raw.pop("name")).Params(**raw)

    quped, local = params("quped"), params("local-quant")
    assert not local.federated and quped.personal == local.personal
    assert (quped.freeze_from, quped.personal_lr) == (local.freeze_from, local.personal_lr)
    for entry in quped.personal:
        assert quped.quant_config(entry["bits"]) == local.quant_config(entry["bits"])
