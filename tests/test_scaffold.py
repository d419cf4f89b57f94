"""SCAFFOLD (option II control variates) and FedPer on hand-computable tiny inputs, then on digits."""
from __future__ import annotations

import pytest
import torch

import fedsqueeze
from conftest import digits_config
from fedsqueeze.algorithms.base import Reply, Setup
from fedsqueeze.algorithms.context import ClientContext, ClientData
from fedsqueeze.algorithms.scaffold import Scaffold, ScaffoldParams, masked_mean, update_control
from fedsqueeze.config import TrainConfig
from fedsqueeze.errors import ConfigError
from fedsqueeze.models.zoo import LogReg, SmallCNN

T = torch.tensor


def _ctx(model, lr=1.0):
    x = T([[1.0, 0.0], [0.0, 2.0]])
    y = T([0, 1])
    data = ClientData(x, y, lambda: (x[:0], y[:0]))
    return ClientContext(0, 1, 0, data, TrainConfig(batch_size=2, lr=lr, local_epochs=1), lambda s: model, 0)


def test_client_step_is_corrected_and_option_ii_control_is_the_gradient():
    """Logreg at zero weights, one batch, lr 1. grad W = [[-.25, .5], [.25, -.5]], grad b = 0 (see
    test_fedavg). With c - c_i = ([[1, 0], [0, -1]], [.5, -.5]) the step is y = -(grad + c - c_i);
    option II gives c_i+ = c_i - c + (x - y)/(K lr) = grad (one step)."""
    model = LogReg((2,), 2)
    algo = Scaffold(ScaffoldParams(), Setup("logreg", {}, (2,), 2, rounds=1))
    x = {"head.weight": torch.zeros(2, 2), "head.bias": torch.zeros(2)}
    c = {"head.weight": T([[1.0, 0.0], [0.0, 0.0]]), "head.bias": T([0.5, 0.0])}
    c_i = {"head.weight": T([[0.0, 0.0], [0.0, 1.0]]), "head.bias": T([0.0, 0.5])}
    reply = algo.client_update(_ctx(model), {"model": x, "control": c}, {"c": c_i})
    up = reply.up["update"]
    assert torch.allclose(up["head.weight"], T([[-0.75, -0.5], [-0.25, 1.5]]))
    assert torch.allclose(up["head.bias"], T([-0.5, 0.5]))
    assert torch.allclose(reply.state["c"]["head.weight"], T([[-0.25, 0.5], [0.25, -0.5]]))
    assert torch.allclose(reply.state["c"]["head.bias"], T([0.0, 0.0]))
    assert torch.allclose(reply.up["control"]["head.weight"], T([[-0.25, 0.5], [0.25, -1.5]]))
    assert torch.allclose(reply.up["control"]["head.bias"], T([0.0, -0.5]))


def test_first_round_control_starts_at_zero_and_two_steps_average_the_gradients():
    """A fresh client (c_i = 0), c = 0, lr 0.5, batch 1: two steps, so c_i+ = (x - y) / (2 * 0.5)."""
    model = LogReg((2,), 2)
    algo = Scaffold(ScaffoldParams(), Setup("logreg", {}, (2,), 2, rounds=1))
    x = {"head.weight": torch.zeros(2, 2), "head.bias": torch.zeros(2)}
    zero = {k: torch.zeros_like(v) for k, v in x.items()}
    ctx = _ctx(model, lr=0.5)
    ctx.train = TrainConfig(batch_size=1, lr=0.5, local_epochs=1)
    reply = algo.client_update(ctx, {"model": x, "control": zero}, None)
    expect = {k: -reply.up["update"][k] / (2 * 0.5) for k in x}
    for k in x:
        assert torch.allclose(reply.state["c"][k], expect[k]) and torch.allclose(reply.up["control"][k], expect[k])


def test_server_update_of_model_and_control():
    state = {"weights": {"w": T([1.0, 1.0])}, "c": {"w": T([0.0, 2.0])}}
    replies = [Reply(0, 10, {"update": {"w": T([1.0, -1.0])}, "control": {"w": T([2.0, 0.0])}}, None),
               Reply(1, 30, {"update": {"w": T([-3.0, 3.0])}, "control": {"w": T([0.0, 4.0])}}, None)]
    setup = Setup("mlp", {}, (4,), 2, rounds=1)
    # uniform mean Δy = [-1, 1]; mean Δc = [1, 2]; N = 4 -> c += (2/4) [1, 2]
    out = Scaffold(ScaffoldParams(num_clients=4), setup).aggregate(state, 1, 0, replies)
    assert torch.equal(out["weights"]["w"], T([0.0, 2.0])) and torch.equal(out["c"]["w"], T([0.5, 3.0]))
    # N = 0: plain mean; samples weighting: Δy = (10 [1, -1] + 30 [-3, 3]) / 40 = [-2, 2]; η_g = 0.5
    out = Scaffold(ScaffoldParams(weighting="samples", server_lr=0.5), setup).aggregate(state, 1, 0, replies)
    assert torch.equal(out["weights"]["w"], T([0.0, 2.0])) and torch.equal(out["c"]["w"], T([1.0, 4.0]))


def test_masked_mean_and_masked_control_update():
    msgs = [{"w": T([1.0, 2.0, 3.0])}, {"w": T([5.0, 6.0, 7.0])}]
    masks = [{"w": T([True, True, False])}, {"w": T([False, True, False])}]
    mean, count = masked_mean(msgs, [1.0, 3.0], masks)
    assert torch.equal(mean["w"], T([1.0, 5.0, 0.0])) and torch.equal(count["w"], T([1, 2, 0]))
    c = {"w": T([1.0, 1.0, 1.0])}
    assert torch.equal(update_control(c, msgs, 0, masks)["w"], T([2.0, 5.0, 1.0]))    # mean over senders
    assert torch.equal(update_control(c, msgs, 10, masks)["w"], T([1.1, 1.8, 1.0]))  # (sum over senders)/N


def test_params_are_validated():
    with pytest.raises(ConfigError, match="num_clients"):
        ScaffoldParams(num_clients=-1)
    with pytest.raises(ConfigError, match="control_codec"):
        ScaffoldParams(control_codec="nonsense")
    with pytest.raises(ConfigError, match="weighting"):
        ScaffoldParams(weighting="median")


def _cfg(algo, **over):
    return digits_config(rounds=6, algorithm={"name": algo, **over}, model={"name": "small_cnn", "options": {}},
                         train={"clients_per_round": 4, "local_epochs": 2, "batch_size": 16, "lr": 0.1},
                         eval={"every": 0, "personal_every": 0})


def test_scaffold_learns_digits_and_pays_for_its_control_variates(tmp_path, digits):
    res = fedsqueeze.run(_cfg("scaffold", num_clients=10), run_dir=tmp_path / "s", dataset=digits, plot=False)
    assert res.history[-1]["global_acc"] > 0.7
    by_kind = {k: res.ledger.total("up", kind=k) for k in ("update", "control")}
    # the control delta covers the parameters (all of them here): as many bytes as the update, give or take headers
    assert abs(by_kind["control"] - by_kind["update"]) < 0.01 * by_kind["update"]
    assert res.ledger.total("down", kind="control") > 0


def test_fedper_learns_with_a_private_head(tmp_path, digits):
    res = fedsqueeze.run(_cfg("fedper"), run_dir=tmp_path, dataset=digits, plot=False)
    last = res.history[-1]
    assert last["global_acc"] is None and last["personal_acc"] > 0.7
    head_values = 64 * 10 + 10
    model_values = sum(p.numel() for p in SmallCNN((1, 8, 8), 10).parameters())
    per_upload = res.ledger.total("up") / (6 * 4)
    assert (model_values - head_values) * 4 < per_upload < (model_values - head_values) * 4 + 300
