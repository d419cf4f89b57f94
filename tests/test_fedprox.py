"""FedProx: the proximal gradient by hand, μ = 0 equals FedAvg, and a digits run that learns."""
from __future__ import annotations

import pytest
import torch

import fedsqueeze
from conftest import digits_config
from fedsqueeze.algorithms.base import Setup
from fedsqueeze.algorithms.context import ClientContext, ClientData
from fedsqueeze.algorithms.fedavg import FedAvg, FedAvgParams
from fedsqueeze.algorithms.fedprox import FedProx, FedProxParams
from fedsqueeze.config import TrainConfig
from fedsqueeze.errors import ConfigError
from fedsqueeze.models.zoo import LogReg


def _ctx(model, steps):
    x = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    y = torch.tensor([0, 1])
    data = ClientData(x, y, lambda: (x[:0], y[:0]))
    return ClientContext(0, 1, 0, data, TrainConfig(batch_size=2, lr=1.0, local_steps=steps), lambda s: model, 0)


def test_two_steps_by_hand():
    """Step 1 is the FedAvg step (w = w0: no pull); step 2 adds μ(w1 − w0) to the gradient."""
    w0 = {"head.weight": torch.zeros(2, 2), "head.bias": torch.zeros(2)}
    setup = Setup("logreg", {}, (2,), 2, rounds=1)
    one = FedAvg(FedAvgParams(), setup).client_update(_ctx(LogReg((2,), 2), 1), {"model": w0}, None).up["update"]
    w1 = {k: w0[k] + one[k] for k in w0}
    # the FedAvg gradient at w1, computed with autograd on a separate model
    m = LogReg((2,), 2)
    m.load_state_dict(w1)
    x, y = torch.tensor([[1.0, 0.0], [0.0, 2.0]]), torch.tensor([0, 1])
    torch.nn.functional.cross_entropy(m(x), y).backward()
    mu = 0.5
    expect_w = w1["head.weight"] - (m.head.weight.grad + mu * (w1["head.weight"] - w0["head.weight"]))
    expect_b = w1["head.bias"] - (m.head.bias.grad + mu * (w1["head.bias"] - w0["head.bias"]))
    got = FedProx(FedProxParams(mu=mu), setup).client_update(_ctx(LogReg((2,), 2), 2), {"model": w0}, None).up["update"]
    assert torch.allclose(got["head.weight"], expect_w - w0["head.weight"], atol=1e-7)
    assert torch.allclose(got["head.bias"], expect_b - w0["head.bias"], atol=1e-7)
    # and it differs from plain FedAvg's two steps
    avg = FedAvg(FedAvgParams(), setup).client_update(_ctx(LogReg((2,), 2), 2), {"model": w0}, None).up["update"]
    assert not torch.allclose(avg["head.weight"], got["head.weight"])


def test_mu_zero_is_fedavg_bit_for_bit(tmp_path, digits):
    a = fedsqueeze.run(digits_config(rounds=2), run_dir=tmp_path / "a", dataset=digits, plot=False)
    b = fedsqueeze.run(digits_config(rounds=2, algorithm={"name": "fedprox", "mu": 0.0}), run_dir=tmp_path / "b",
                       dataset=digits, plot=False)
    assert [r["global_acc"] for r in a.history] == [r["global_acc"] for r in b.history]
    assert [r["global_loss"] for r in a.history] == [r["global_loss"] for r in b.history]


def test_learns_on_digits(tmp_path, digits):
    cfg = digits_config(rounds=12, algorithm={"name": "fedprox", "mu": 0.1},
                        train={"clients_per_round": 5, "local_epochs": 2, "batch_size": 16, "lr": 0.1},
                        eval={"every": 12, "personal_every": 12})
    res = fedsqueeze.run(cfg, run_dir=tmp_path, dataset=digits, plot=False)
    assert res.final_accuracy > 0.8, res.final_accuracy  # chance is 0.1


@pytest.mark.parametrize("mu", [-1.0, float("inf"), True])
def test_bad_mu(mu):
    with pytest.raises(ConfigError, match="algorithm.mu"):
        FedProxParams(mu=mu)
