"""TernGrad: 5 trits per byte by hand, unbiasedness without clipping, and the clipping switch."""
from __future__ import annotations

import struct

import pytest
import torch

from chunk_kit import only_chunk
from fedsqueeze.codecs.terngrad import TernGrad
from fedsqueeze.errors import CodecError


def test_trits_hand_computed():
    # every |x_i| is 0 or max|x|, so the Bernoulli draws are certain
    x = torch.tensor([1.0, -1.0, 0.0, 1.0, 1.0, -1.0, 0.0])
    payload = TernGrad(clip=0).encode({"x": x}, seed=3)
    # trits 2 0 1 2 2 | 0 1 (1 1 1 padding): 162 + 0 + 9 + 6 + 2, 0 + 27 + 9 + 3 + 1
    assert only_chunk(payload) == struct.pack("<f", 1.0) + bytes([179, 40])
    assert torch.equal(TernGrad(clip=0).decode(payload)["x"], x)


def test_unbiased_without_clipping():
    x = torch.randn(40, generator=torch.Generator().manual_seed(4))
    codec = TernGrad(clip=0)
    n = 1500
    draws = torch.stack([codec.decode(codec.encode({"x": x}, seed=s))["x"].double() for s in range(n)])
    s = float(x.abs().max())
    var = s * x.double().abs() - x.double() ** 2
    assert torch.all((draws.mean(0) - x.double()).abs() <= 5 * (var / n).sqrt() + 1e-7)
    err = float(((draws - x.double()) ** 2).sum(1).mean())
    assert err == pytest.approx(float(var.sum()), rel=0.05)
    assert set(torch.unique(draws).tolist()) <= {-s, 0.0, s}


def test_default_clips_at_2_5_rms():
    x = torch.cat([torch.ones(99) * 0.1, torch.tensor([10.0])])
    bound = 2.5 * float(x.double().square().mean().sqrt())
    out = TernGrad().decode(TernGrad().encode({"x": x}))["x"]
    assert float(out.abs().max()) == pytest.approx(bound, rel=1e-6)
    const = torch.full((10,), -3.0)  # clipping about zero never removes a constant tensor
    assert torch.equal(TernGrad().decode(TernGrad().encode({"c": const}))["c"], const)


def test_bytes_per_entry():
    x = torch.randn(1000)
    assert len(only_chunk(TernGrad().encode({"x": x}))) == 4 + 200


@pytest.mark.parametrize("clip", [-1, "2.5", True])
def test_bad_config(clip):
    with pytest.raises(CodecError):
        TernGrad(clip=clip)
