"""FedAvg and local-only on hand-computable tiny inputs."""
from __future__ import annotations

import torch

from fedsqueeze.algorithms.base import Reply, Setup, weighted_mean
from fedsqueeze.algorithms.fedavg import FedAvg, FedAvgParams


def _algo(**params):
    return FedAvg(FedAvgParams(**params), Setup("mlp", {}, (4,), 2, rounds=1))


def test_weighted_mean_exact():
    a = {"w": torch.tensor([1.0, 2.0])}
    b = {"w": torch.tensor([3.0, 6.0])}
    assert torch.equal(weighted_mean([a, b], [1, 3])["w"], torch.tensor([2.5, 5.0]))


def test_aggregate_weights_by_samples_and_server_lr():
    state = {"weights": {"w": torch.tensor([1.0, 1.0]), "b": torch.tensor([0.0])}}
    replies = [Reply(0, 10, {"update": {"w": torch.tensor([1.0, -1.0]), "b": torch.tensor([2.0])}}, None),
               Reply(1, 30, {"update": {"w": torch.tensor([-1.0, 3.0]), "b": torch.tensor([-2.0])}}, None)]
    # mean update = (10*[1,-1] + 30*[-1,3]) / 40 = [-0.5, 2.0]; b: (20 - 60)/40 = -1
    out = _algo().aggregate(state, 1, 0, replies)["weights"]
    assert torch.equal(out["w"], torch.tensor([0.5, 3.0])) and torch.equal(out["b"], torch.tensor([-1.0]))
    out = _algo(server_lr=0.5).aggregate(state, 1, 0, replies)["weights"]
    assert torch.equal(out["w"], torch.tensor([0.75, 2.0]))
    out = _algo(weighting="uniform").aggregate(state, 1, 0, replies)["weights"]  # mean = [0, 1], b 0
    assert torch.equal(out["w"], torch.tensor([1.0, 2.0])) and torch.equal(out["b"], torch.tensor([0.0]))


def test_client_update_is_one_sgd_step_on_a_linear_model():
    """One batch, logreg, lr 1: the update equals -grad of the mean cross-entropy, computed by hand."""
    from fedsqueeze.algorithms.context import ClientContext, ClientData
    from fedsqueeze.config import TrainConfig
    from fedsqueeze.models.zoo import LogReg

    model = LogReg((2,), 2)
    w0 = {"head.weight": torch.zeros(2, 2), "head.bias": torch.zeros(2)}
    x = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    y = torch.tensor([0, 1])
    data = ClientData(x, y, lambda: (x[:0], y[:0]))
    ctx = ClientContext(0, 1, 0, data, TrainConfig(batch_size=2, lr=1.0, local_epochs=1), lambda s: model, 0)
    reply = FedAvg(FedAvgParams(), Setup("logreg", {}, (2,), 2, rounds=1)).client_update(ctx, {"model": w0}, None)
    # softmax at zero weights = [0.5, 0.5]; dL/dlogits = (p - onehot)/2 per sample
    # grad W = sum_i (p_i - e_i) x_i^T / 2 = [[-0.25, 0.5], [0.25, -0.5]]; grad b = [0, 0]
    assert torch.allclose(reply.up["update"]["head.weight"], torch.tensor([[0.25, -0.5], [-0.25, 0.5]]))
    assert torch.allclose(reply.up["update"]["head.bias"], torch.zeros(2))
    assert reply.num_samples == 2 and abs(reply.metrics["train_loss"] - float(torch.log(torch.tensor(2.0)))) < 1e-6
