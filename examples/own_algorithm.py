"""Your own algorithm: FedAvg with server momentum (FedAvgM; Hsu, Qi, Brown, "Measuring the Effects of
Non-Identical Data Distribution for Federated Visual Classification", 2019), registered by name and
compared with FedAvg on the same federation and codec. Runs in seconds.

The clients are FedAvg's (they train and send Δ_i = w_i − w); only the server differs:
v ← β·v + Σ n_i Δ_i / Σ n_i, then w ← w + η_s·v. With β = 0 it is FedAvg.

    python examples/own_algorithm.py [RUNS_DIR]
"""
import sys
from dataclasses import dataclass

import torch
from torch.utils.data import TensorDataset

import fedsqueeze
from fedsqueeze.algorithms.base import add, weighted_mean
from fedsqueeze.algorithms.fedavg import FedAvg, FedAvgParams


@dataclass(frozen=True)
class FedAvgMParams(FedAvgParams):
    momentum: float = 0.9  # β

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0 <= self.momentum < 1:
            raise fedsqueeze.ConfigError(f"algorithm.momentum = {self.momentum!r} must be in [0, 1)")


@fedsqueeze.register_algorithm("fedavgm")
class FedAvgM(FedAvg):
    """FedAvg with a momentum buffer on the server (its state travels in checkpoints like the weights)."""

    name = "fedavgm"
    Params = FedAvgMParams

    def init_server(self, model):
        state = super().init_server(model)
        return {**state, "velocity": {k: torch.zeros_like(v) for k, v in state["weights"].items()}}

    def aggregate(self, state, rnd, step, replies):
        mean = weighted_mean([r.up["update"] for r in replies], [float(r.num_samples) for r in replies])
        velocity = add(mean, state["velocity"], self.p.momentum)  # Δ̄ + β·v
        return {**state, "velocity": velocity, "weights": add(state["weights"], velocity, self.p.server_lr)}


g = torch.Generator().manual_seed(0)
x = torch.randn(1500, 16, generator=g)
y = (x[:, 0] + x[:, 1] > 0).long() + (x[:, 2] > 0.5).long()
data = fedsqueeze.FederatedData(TensorDataset(x[:1200], y[:1200]), test=(x[1200:], y[1200:]),
                                partitioner="dirichlet", alpha=0.5, num_clients=8)
out = sys.argv[1] if len(sys.argv) > 1 else "runs"
for algorithm in ({"name": "fedavg"}, {"name": "fedavgm", "momentum": 0.0}, {"name": "fedavgm", "momentum": 0.7}):
    cfg = {"name": "own-algorithm", "rounds": 10, "output_dir": out, "algorithm": algorithm,
           "model": {"name": "mlp", "options": {"hidden": 32}}, "codec": {"up": "fp16"},
           "train": {"clients_per_round": 4, "local_epochs": 1, "batch_size": 32, "lr": 0.1}}
    s = fedsqueeze.run(cfg, data=data, plot=False).summary()
    beta = algorithm.get("momentum", "-")
    print(f"{algorithm['name']:>8} (momentum {beta}): accuracy {s['final_acc']:.3f}, up {s['mb_up']:.3f} MB")
