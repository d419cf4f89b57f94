"""Your own model and your own data, in Python: a registered nn.Module trained on a TensorDataset
split among 8 clients by a Dirichlet label skew. Runs in a few seconds on a CPU.

    python examples/own_model_and_data.py [RUNS_DIR]
"""
import sys

import torch
from torch import nn
from torch.utils.data import TensorDataset

import fedsqueeze


@fedsqueeze.register_model("tiny_mlp")
class TinyMLP(nn.Module):
    """Built as TinyMLP(input_shape, num_classes, **options), like every fedsqueeze model."""

    def __init__(self, input_shape, num_classes, hidden=32):
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(input_shape[0], hidden), nn.ReLU(),
                                 nn.Linear(hidden, num_classes))

    def forward(self, x):
        return self.net(x)


def make_data(n, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 20, generator=g)
    y = (x[:, :4].sum(1) > 0).long() + 2 * (x[:, 4:8].sum(1) > 0).long()  # 4 classes
    return TensorDataset(x, y)


data = fedsqueeze.FederatedData(make_data(2000, 0), test=make_data(500, 1), partitioner="dirichlet",
                                num_clients=8, alpha=0.5, name="toy")
config = {"name": "own-model-and-data", "rounds": 8, "model": {"options": {"hidden": 32}},
          "train": {"clients_per_round": 4, "local_epochs": 3, "batch_size": 32, "lr": 0.2},
          "output_dir": sys.argv[1] if len(sys.argv) > 1 else "runs"}
result = fedsqueeze.run(config, model="tiny_mlp", data=data, codec_up="topk(fraction=0.1)", plot=False)
print(f"global accuracy {result.final_accuracy:.3f} after {len(result.history)} rounds, "
      f"{result.total_bytes / 1e6:.2f} MB on the wire")
