"""Regression with a mean-squared-error loss: float targets through FederatedData, train.loss = "mse",
evaluated by loss (MSE) and mean absolute error, plus a metric of your own. Runs in a few seconds on a CPU.

    python examples/regression.py [RUNS_DIR]
"""
import sys

import torch
from torch import nn
from torch.utils.data import TensorDataset

import fedsqueeze


@fedsqueeze.register_model("linear_regressor")
class LinearRegressor(nn.Module):
    """One output per target column (num_classes is 1 for 1-D float targets)."""

    def __init__(self, input_shape, num_classes):
        super().__init__()
        self.fc = nn.Linear(input_shape[0], num_classes)

    def forward(self, x):
        return self.fc(x)


@fedsqueeze.register_metric("max_abs_error_below_1")
def within_one(outputs, targets):
    """Share of samples predicted within 1.0 of the target (a batch mean)."""
    return ((outputs.squeeze(-1) - targets).abs() < 1.0).float().mean()


def make_data(n, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 10, generator=g)
    w = torch.arange(1.0, 11.0) / 5  # y = x·w + 0.5 + noise
    y = x @ w + 0.5 + 0.1 * torch.randn(n, generator=g)
    return TensorDataset(x, y)  # float targets: a regression task


data = fedsqueeze.FederatedData(make_data(2000, 0), test=make_data(500, 1), partitioner="iid",
                                num_clients=8, name="linear", task="regression")
config = {"name": "regression", "rounds": 10,
          "train": {"loss": "mse", "clients_per_round": 4, "local_epochs": 2, "batch_size": 32, "lr": 0.02},
          "eval": {"metrics": ["loss", "mae", "max_abs_error_below_1"]},
          "output_dir": sys.argv[1] if len(sys.argv) > 1 else "runs"}
result = fedsqueeze.run(config, model="linear_regressor", data=data, codec_up="qsgd(levels=16)", plot=False)
first, last = result.history[0], result.history[-1]
print(f"test MSE {first['global_loss']:.3f} -> {last['global_loss']:.4f}, MAE {last['global_mae']:.4f}, "
      f"within 1.0: {100 * last['global_max_abs_error_below_1']:.1f}% after {len(result.history)} rounds")
