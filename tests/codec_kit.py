"""Shared inputs for the codec conformance kit and golden fixtures."""
from __future__ import annotations

import torch

from fedsqueeze.codecs.spec import make_codec
from fedsqueeze.registry import CODECS


def all_codec_ids() -> list[str]:
    return CODECS.names()


def default_codec(codec_id: str):
    """The codec with its default configuration (every codec must have defaults)."""
    return make_codec(codec_id)


def sample_update(seed: int = 0) -> dict[str, torch.Tensor]:
    """A small model-update-like dict: conv kernel, matrix, bias, and an int buffer."""
    g = torch.Generator().manual_seed(seed)
    return {
        "conv.weight": torch.randn(8, 3, 3, 3, generator=g) * 0.01,
        "fc.weight": torch.randn(16, 40, generator=g) * 0.02,
        "fc.bias": torch.randn(16, generator=g) * 0.001,
        "steps": torch.tensor([7], dtype=torch.int64),
    }


def long_tail_update(seed: int = 0) -> dict[str, torch.Tensor]:
    """Tensors whose length is far from a power of two (11000 = 8192 + 2048 + 760, and 40): the
    inputs of the DRIVE/EDEN ``layout='split'`` fixtures."""
    g = torch.Generator().manual_seed(seed)
    return {"fc.weight": torch.randn(100, 110, generator=g) * 0.02, "fc.bias": torch.randn(40, generator=g) * 0.001}


def nmse(x: dict[str, torch.Tensor], y: dict[str, torch.Tensor]) -> float:
    num = sum(float(((x[k].double() - y[k].double()) ** 2).sum()) for k in x if x[k].is_floating_point())
    den = sum(float((x[k].double() ** 2).sum()) for k in x if x[k].is_floating_point())
    return num / max(den, 1e-300)
