"""FedKD: the mutual-distillation losses by hand, the T(t) schedule, the SVD rank rule as the algorithm
uses it, a client step by hand, and end-to-end runs on digits (both downlink modes)."""
from __future__ import annotations

import math

import pytest
import torch

import fedsqueeze
from conftest import digits_config
from fedsqueeze.algorithms.base import Setup
from fedsqueeze.algorithms.fedkd import FedKD, FedKDParams, energy_threshold, mutual_losses
from fedsqueeze.codecs.floats import Float32
from fedsqueeze.errors import ConfigError

LN = math.log


def _algo(rounds=2, model="mlp", options=None, shape=(1, 8, 8), **params):
    return FedKD(FedKDParams(**params), Setup(model, options or {"hidden": 8}, shape, 10, rounds=rounds))


# ---- the losses on a hand-computed batch ------------------------------------------------------------
def _batch(requires_grad=True):
    z_t = torch.tensor([[0.0, 0.0]], requires_grad=requires_grad)        # p_t = (1/2, 1/2)
    z_s = torch.tensor([[LN(3.0), 0.0]], requires_grad=requires_grad)    # p_s = (3/4, 1/4)
    h_t = torch.tensor([[1.0, 2.0]], requires_grad=requires_grad)
    p = torch.tensor([[0.0, 4.0]], requires_grad=requires_grad)          # W_h·H_s
    return z_t, z_s, torch.tensor([0]), h_t, p


def test_losses_by_hand():
    z_t, z_s, y, h_t, p = _batch()
    out = mutual_losses(z_t, z_s, y, h_t, p)
    w = 1 / LN(8 / 3)                       # 1/(L_t + L_s) = 1/(ln 2 + ln 4/3)
    kl_s = 0.5 * LN(4 / 3)                  # KL(p_t ‖ p_s) = ½ln(2/3) + ½ln 2
    kl_t = 0.75 * LN(1.5) - 0.25 * LN(2)    # KL(p_s ‖ p_t)
    mse = (1 + 4) / 2
    assert out["task_t"].item() == pytest.approx(LN(2), abs=1e-6)
    assert out["task_s"].item() == pytest.approx(LN(4 / 3), abs=1e-6)
    assert out["weight"].item() == pytest.approx(w, abs=1e-6)
    assert out["kl_s"].item() == pytest.approx(kl_s, abs=1e-6) and out["kl_t"].item() == pytest.approx(kl_t, abs=1e-6)
    assert out["mse"].item() == mse
    assert out["student"].item() == pytest.approx(LN(4 / 3) + w * (kl_s + mse), abs=1e-6)
    assert out["teacher"].item() == pytest.approx(LN(2) + w * (kl_t + mse), abs=1e-6)

    # each loss trains only its own model (the other side is a constant target), w is a scalar
    out["student"].backward(retain_graph=True)
    assert torch.allclose(p.grad, w * torch.tensor([[-1.0, 2.0]]))          # w·2(P − H_t)/2
    # CE: p_s − e_y = (−¼, ¼); KL(p_t ‖ p_s): p_s − p_t = (¼, −¼)
    assert torch.allclose(z_s.grad, (1 - w) * torch.tensor([[-0.25, 0.25]]))
    assert z_t.grad is None and h_t.grad is None
    out["teacher"].backward()
    assert torch.allclose(h_t.grad, w * torch.tensor([[1.0, -2.0]]))
    # CE: p_t − e_y = (−½, ½); KL(p_s ‖ p_t): p_t − p_s = (−¼, ¼)
    assert torch.allclose(z_t.grad, torch.tensor([[-0.5, 0.5]]) + w * torch.tensor([[-0.25, 0.25]]))
    assert torch.allclose(p.grad, w * torch.tensor([[-1.0, 2.0]]))          # unchanged by the teacher loss


def test_undetached_weight_sends_gradient_through_w():
    z_t, z_s, y, h_t, p = _batch()
    out = mutual_losses(z_t, z_s, y, h_t, p, detach_weight=False)
    out["student"].backward()
    w = 1 / LN(8 / 3)
    # d/dz_t of w·(KL_s + MSE) = (KL_s + MSE)·(−w²)·(p_t − e_y)
    expect = (0.5 * LN(4 / 3) + 2.5) * w * w * torch.tensor([[0.5, -0.5]])
    assert torch.allclose(z_t.grad, expect, atol=1e-6)


def test_temperature_scales_by_tau_squared_and_no_hidden_term():
    z_t, z_s, y, _, _ = _batch(requires_grad=False)
    out = mutual_losses(z_t, z_s, y, temperature=2.0)
    r = math.sqrt(3)                        # softmax(z_s/2) = (√3, 1)/(√3 + 1)
    q0, q1 = r / (r + 1), 1 / (r + 1)
    assert out["kl_s"].item() == pytest.approx(4 * (0.5 * LN(0.5 / q0) + 0.5 * LN(0.5 / q1)), abs=1e-6)
    assert out["kl_t"].item() == pytest.approx(4 * (q0 * LN(q0 / 0.5) + q1 * LN(q1 / 0.5)), abs=1e-6)
    assert out["mse"].item() == 0.0
    w = out["weight"].item()
    assert out["student"].item() == pytest.approx(LN(4 / 3) + w * out["kl_s"].item(), abs=1e-6)


# ---- T(t) and the rank rule as the algorithm uses them ---------------------------------------------
def test_threshold_schedule():
    assert [energy_threshold(t, 4, 0.5, 1.0) for t in range(6)] == [0.5, 0.625, 0.75, 0.875, 1.0, 1.0]
    algo = _algo(rounds=3)                   # defaults 0.95 → 0.98
    assert [algo.threshold(t) for t in (1, 2, 3)] == pytest.approx([0.96, 0.97, 0.98], abs=1e-12)
    assert algo.codec("update", "up", 3).threshold == algo.threshold(3)
    assert algo.codec("update", "down", 3).threshold == algo.threshold(2)  # last round's aggregate
    assert algo.codec("model", "down", 3).codec_id == "fp32"                 # weights: configured codec
    assert _algo(svd=False).codec("update", "up", 1).codec_id == "fp32"


def test_rank_rule_through_the_algorithm():
    algo = _algo(rounds=2, T_start=0.75, T_end=0.875)   # T(1) = 0.8125, T(2) = 0.875
    d = torch.diag(torch.tensor([3.0, 2.0, 1.0, 1.0, 1.0]))  # energies 9, 4, 1, 1, 1 of 16

    def rank(direction, rnd, x):
        return algo.codec("update", direction, rnd).encode_tensor(x, 0)[0]  # the body's leading varint K
    assert rank("up", 1, d) == 2                  # 13/16 = 0.8125 exactly: the threshold counts as met
    assert rank("up", 2, d) == 3                  # 14/16 = 0.875 exactly
    assert rank("down", 2, d) == 2 and rank("down", 3, d) == 3
    codec = algo.codec("update", "up", 1)
    out = codec.decode(codec.encode({"w": d, "b": torch.tensor([1.5, -2.0])}))
    assert torch.equal(out["w"], torch.diag(torch.tensor([3.0, 2.0, 0.0, 0.0, 0.0])))
    assert torch.equal(out["b"], torch.tensor([1.5, -2.0]))
    one = torch.outer(torch.tensor([1.0, 2.0]), torch.tensor([3.0, 4.0, 5.0]))  # all energy in σ_1
    assert rank("up", 2, one) == 1 and _algo(T_start=1.0, T_end=1.0).codec("update", "up", 1).encode_tensor(one, 0)[0] == 1
    zero = torch.zeros(3, 4)                      # K is never 0
    assert rank("up", 1, zero) == 1
    assert torch.equal(codec.decode(codec.encode({"z": zero}))["z"], zero)


# ---- one client step by hand --------------------------------------------------------------------------
def test_client_update_trains_both_models_on_the_batch():
    """logreg teacher and student at zero weights, W_h = I: p_t = p_s, H_t = W_h·H_s, so the KL and hidden
    terms and their gradients vanish and each model takes FedAvg's hand-computed CE step."""
    from fedsqueeze.algorithms.context import ClientContext, ClientData
    from fedsqueeze.config import TrainConfig
    from fedsqueeze.models.zoo import LogReg

    models = {"model": LogReg((2,), 2), "teacher": LogReg((2,), 2)}
    zero = {"head.weight": torch.zeros(2, 2), "head.bias": torch.zeros(2)}
    x, y = torch.tensor([[1.0, 0.0], [0.0, 2.0]]), torch.tensor([0, 1])
    ctx = ClientContext(3, 1, 0, ClientData(x, y, lambda: (x[:0], y[:0])), TrainConfig(batch_size=2, lr=1.0),
                        models.__getitem__, 0, lambda slot: zero)
    algo = FedKD(FedKDParams(teacher="logreg"), Setup("logreg", {}, (2,), 2, rounds=1))
    reply = algo.client_update(ctx, {"model": zero}, {"W_h": torch.eye(2)})
    step = torch.tensor([[0.25, -0.5], [-0.25, 0.5]])
    assert torch.allclose(reply.up["update"]["head.weight"], step) and torch.allclose(reply.up["update"]["head.bias"], torch.zeros(2))
    assert torch.allclose(reply.state["teacher"]["head.weight"], step)
    assert torch.equal(reply.state["W_h"], torch.eye(2))
    assert reply.metrics["train_loss"] == pytest.approx(LN(2)) and reply.metrics["kd_weight"] == pytest.approx(1 / LN(4))


def test_config_errors_name_the_key():
    for bad, key in [({"teacher": "nope"}, "teacher"), ({"T_start": 0.0}, "T_start"), ({"T_end": 1.5}, "T_end"),
                     ({"downlink": "weights"}, "downlink"), ({"hidden": "all"}, "hidden"),
                     ({"temperature": 0}, "temperature"), ({"teacher_options": 3}, "teacher_options")]:
        with pytest.raises(ConfigError, match=f"algorithm.{key}"):
            FedKDParams(**bad)
    with pytest.raises(ConfigError):   # the McMahan CNN needs image input
        _algo(shape=(20,), model="logreg", options={}, teacher="cnn")


# ---- end to end on digits ------------------------------------------------------------------------------
def test_learns_on_digits_with_fewer_bytes_than_fedavg_of_the_teacher(tmp_path, digits):
    """Default (downlink = model): 10 rounds, 4 of 10 clients, teacher cnn, student mlp(32).
    Bound: global student ≥ 50% and the teachers ≥ 50% on their held-out splits (chance 10%)."""
    from fedsqueeze.config import from_dict
    from fedsqueeze.engine.simulation import Simulation

    cfg = from_dict(digits_config(rounds=10, algorithm={"name": "fedkd", "teacher": "cnn"}))
    sim = Simulation(cfg, tmp_path, dataset=digits)
    res = sim.run()
    last = res.history[-1]
    assert last["global_acc"] >= 0.5 and last["personal_acc"] >= 0.5
    uploads = [r for r in res.ledger if r.direction == "up"]
    assert len(uploads) == 40 and {r.kind for r in res.ledger} == {"model", "update"}
    teacher0 = sim.algo.personal_model(sim.server_state, None)[1]
    fedavg_teacher_up = 40 * len(Float32().encode(teacher0))
    fp32_student = len(Float32().encode(sim.server_state["weights"]))
    assert res.ledger.total("up") < fedavg_teacher_up / 40    # ~0.15 MB vs FedAvg(cnn) 7.6 MB
    assert res.ledger.total("up") < 40 * fp32_student / 2      # SVD at least halves the student's update
    downs = [r.nbytes for r in res.ledger if r.direction == "down"]
    assert len(downs) == 40 and all(0 <= n - fp32_student < 16 for n in downs)  # the student, fp32 (+ seed in header)
    # a never-sampled client's teacher is the run's seeded initial teacher; a sampled one's is its own
    init = sim.runtime.initial_weights("teacher")
    assert all(torch.equal(teacher0[k], init[k]) for k in init)
    sampled = next(iter(sim.store.index))
    own = sim.algo.personal_model(sim.server_state, sim.store.get(sampled)["algo"])
    assert own[0] == "teacher" and not torch.equal(own[1]["head.weight"], init["head.weight"])


def test_update_downlink_keeps_server_and_clients_identical(tmp_path, digits):
    """downlink = update with every client every round: each client rebuilds exactly the server's student
    from the compressed aggregates; with partial participation the mode refuses to run."""
    from fedsqueeze.config import from_dict
    from fedsqueeze.engine.simulation import Simulation

    cfg = from_dict(digits_config(rounds=3, algorithm={"name": "fedkd", "teacher": "mlp", "downlink": "update",
                                                        "teacher_options": {"hidden": 64}},
                                  train__clients_per_round=10))
    sim = Simulation(cfg, tmp_path / "full", dataset=digits)
    sim.start()
    sim.run_round(1)
    assert sim.ledger.total("down", round=1) == 0        # round 1: the seeded initial student, nothing sent
    sim.run_round(2)
    w2 = sim.server_state["weights"]
    sim.run_round(3)
    for c in range(10):
        st = sim.store.get(c)["algo"]
        assert st["seen"] == 3 and all(torch.equal(st["student"][k], w2[k]) for k in w2)
    fp32_student = len(Float32().encode(w2))
    assert 0 < sim.ledger.total("down", round=3) < 10 * fp32_student

    partial = from_dict(digits_config(rounds=3, algorithm={"name": "fedkd", "teacher": "mlp", "downlink": "update"}))
    with pytest.raises(ConfigError, match="downlink"):
        fedsqueeze.run(partial, run_dir=tmp_path / "partial", dataset=digits, plot=False)


@pytest.mark.parametrize("down, tol", [("fp32", 1e-6), ("svd", 0.05)])
def test_delta_downlink_under_partial_participation(tmp_path, digits, down, tol):
    """downlink = delta, 4 of 10 clients per round: each sampled client receives the difference between the
    server's student and the student it holds (its last one, or the run's seeded initial student if it was
    never sampled), so it rebuilds the server's student — up to fp32 rounding of m + (w − m) with an fp32
    delta, within the SVD's energy residual with the paper's dynamic-threshold SVD — and its copy equals
    the server's copy of it bit for bit. The SVD downlink costs well under the fp32 student."""
    from fedsqueeze.config import from_dict
    from fedsqueeze.engine.sampling import sample_clients
    from fedsqueeze.engine.simulation import Simulation

    algo = {"name": "fedkd", "teacher": "mlp", "downlink": "delta", "svd": down == "svd"}
    cfg = from_dict(digits_config(rounds=5, algorithm=algo, codec={"up": "fp32", "down": "fp32", "downlink": "delta"}))
    sim = Simulation(cfg, tmp_path / down, dataset=digits)
    sim.start()
    seen: dict[int, int] = {}
    stale = 0
    for rnd in range(1, 6):
        w = {k: v.clone() for k, v in sim.server_state["weights"].items()}
        clients = [int(c) for c in sample_clients(10, 4, seed=0, rnd=rnd)]
        stale += sum(1 for c in clients if seen.get(c, 0) < rnd - 1)  # missed the last round (or never came)
        sim.run_round(rnd)
        for c in clients:
            mine, theirs = sim.store.get(c)["mirror"]["model"], sim.mirrors.store.get(c)["model"]
            assert all(torch.equal(mine[k], theirs[k]) for k in w)
            err = math.sqrt(sum(float((mine[k] - w[k]).square().sum()) for k in w))
            norm = math.sqrt(sum(float(w[k].square().sum()) for k in w))
            assert err <= tol * norm, (rnd, c, err / norm)
            seen[c] = rnd
    assert stale >= 5  # clients that missed rounds got a correct student too
    fp32_student = len(Float32().encode(sim.server_state["weights"]))
    downs = [r.nbytes for r in sim.ledger if r.direction == "down"]
    assert len(downs) == 20
    if down == "svd":
        assert sum(downs) < 0.6 * 20 * fp32_student
    else:
        assert all(0 <= n - fp32_student < 16 for n in downs)


def test_delta_mode_needs_the_engine_delta(tmp_path, digits):
    cfg = digits_config(rounds=1, algorithm={"name": "fedkd", "teacher": "mlp", "downlink": "delta"})
    with pytest.raises(ConfigError, match="codec.downlink = 'delta'"):
        fedsqueeze.run(cfg, run_dir=tmp_path / "x", dataset=digits, plot=False)
