"""Custom parts for the resume tests, importable as ``custom_parts:...`` (tests/ on the path): a model,
a data loader returning FederatedData, a codec and a loss, none registered by name — a config names
each by module:qualname."""
from __future__ import annotations

import dataclasses

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

import fedsqueeze


class Net(nn.Module):
    """A small MLP: flatten, hidden ReLU layer, linear head."""

    def __init__(self, input_shape, num_classes, hidden: int = 16):
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(int(np.prod(input_shape)), hidden), nn.ReLU(),
                                 nn.Linear(hidden, num_classes))

    def forward(self, x):
        return self.net(x)


def load_data(**unused) -> fedsqueeze.FederatedData:
    """600 samples of 3 Gaussian classes in 12 dimensions; 6 clients by explicit index arrays."""
    g = torch.Generator().manual_seed(11)
    y = torch.arange(720) % 3
    x = torch.randn(720, 12, generator=g) + 3.0 * F.one_hot(y, 12).float()
    clients = [np.arange(c, 600, 6) for c in range(6)]
    return fedsqueeze.FederatedData((x[:600], y[:600]), test=(x[600:], y[600:]), clients=clients, name="gauss3")


@dataclasses.dataclass(frozen=True)
class Half(fedsqueeze.Codec):
    """Every value as fp16 times a fixed scale (a stand-in for a user's codec)."""

    codec_id = "custom_half"
    scale: float = 1.0

    def encode_tensor(self, x, seed):
        return (x.reshape(-1) * self.scale).to(torch.float16).numpy().tobytes()

    def decode_tensor(self, data, shape, seed):
        numel = int(np.prod(shape)) if len(shape) else 1
        if len(data) != 2 * numel:
            raise fedsqueeze.PayloadError(f"custom_half chunk holds {len(data)} bytes, expected {2 * numel}")
        return (torch.frombuffer(bytearray(data), dtype=torch.float16).to(torch.float32) / self.scale).reshape(shape)


def smooth_ce(outputs, targets):
    """Cross-entropy with label smoothing 0.1."""
    return F.cross_entropy(outputs, targets, label_smoothing=0.1)
