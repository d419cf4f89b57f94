"""QSGD: the §3.2 bitstream by hand, unbiasedness, and the variance bound of Lemma 3.1."""
from __future__ import annotations

import math
import struct

import numpy as np
import pytest
import torch

from chunk_kit import only_chunk, with_chunk
from fedsqueeze.codecs.qsgd import QSGD
from fedsqueeze.errors import CodecError, PayloadError


def test_bitstream_hand_computed():
    # ||v|| = 5 and s = 5: the levels 3 and 4 are exact, so no randomness is involved
    codec = QSGD(levels=5, bucket=4)
    payload = codec.encode({"v": torch.tensor([0.0, 3.0, 0.0, -4.0])})
    # gap 2, +, level 3: "010" "0" "011"; gap 2, -, level 4: "010" "1" "00100"
    assert only_chunk(payload) == b"\x02" + struct.pack("<f", 5.0) + bytes([0b01000110, 0b10100100])
    assert torch.equal(codec.decode(payload)["v"], torch.tensor([0.0, 3.0, 0.0, -4.0]))


def test_buckets_have_their_own_norms():
    codec = QSGD(levels=1, bucket=2, norm="max")
    v = torch.tensor([2.0, -2.0, 0.0, 0.5, 0.25])  # three buckets: max 2, 0.5, 0.25
    chunk = only_chunk(codec.encode({"v": v}))
    assert chunk[1:13] == struct.pack("<3f", 2.0, 0.5, 0.25)
    assert torch.equal(codec.decode(codec.encode({"v": v}))["v"], v)  # every |v_i| is its bucket's max


def predicted_variance(v: torch.Tensor, s: int, bucket: int, norm: str = "l2") -> float:
    total = 0.0
    for b in v.double().split(bucket):
        n = float(b.norm()) if norm == "l2" else float(b.abs().max())
        r = b.abs() / n * s
        p = r - r.floor()
        total += float(((n / s) ** 2 * p * (1 - p)).sum())
    return total


@pytest.mark.parametrize("norm", ["l2", "max"])
def test_unbiased_with_predicted_variance(norm):
    g = torch.Generator().manual_seed(1)
    v = torch.randn(48, generator=g)
    codec = QSGD(levels=2, bucket=16, norm=norm)
    n = 1000
    draws = torch.stack([codec.decode(codec.encode({"v": v}, seed=s))["v"].double() for s in range(n)])
    mean = draws.mean(0)
    per_entry = torch.zeros(48, dtype=torch.float64)
    for i, b in enumerate(v.double().split(16)):
        nb = float(b.norm()) if norm == "l2" else float(b.abs().max())
        r = b.abs() / nb * 2
        p = r - r.floor()
        per_entry[16 * i:16 * (i + 1)] = (nb / 2) ** 2 * p * (1 - p)
    assert torch.all((mean - v.double()).abs() <= 5 * (per_entry / n).sqrt() + 1e-6)
    err = float(((draws - v.double()) ** 2).sum(1).mean())
    assert err == pytest.approx(predicted_variance(v, 2, 16, norm), rel=0.1)


def test_variance_bound_lemma_3_1_nearly_tight():
    # equal entries and s = 1: E||Q(v) - v||^2 = (sqrt(n) - 1) ||v||^2 against the bound sqrt(n) ||v||^2
    n, s = 256, 1
    v = torch.full((n,), -0.3)
    codec = QSGD(levels=s, bucket=n)
    trials = 400
    err = sum(float(((codec.decode(codec.encode({"v": v}, seed=t))["v"] - v).double() ** 2).sum())
              for t in range(trials)) / trials
    norm2 = float((v.double() ** 2).sum())
    assert err <= min(n / s**2, math.sqrt(n) / s) * norm2
    assert err == pytest.approx((math.sqrt(n) - 1) * norm2, rel=0.05)


def test_default_bound_on_gaussian_buckets():
    v = torch.randn(4096, generator=torch.Generator().manual_seed(2))
    codec = QSGD()
    err = np.mean([float(((codec.decode(codec.encode({"v": v}, seed=t))["v"] - v).double() ** 2).sum())
                   for t in range(20)])
    bound = sum(min(512 / 16**2, math.sqrt(512) / 16) * float((b.double() ** 2).sum()) for b in v.split(512))
    assert err <= bound and err == pytest.approx(predicted_variance(v, 16, 512), rel=0.05)


@pytest.mark.parametrize("config", [{"levels": 0}, {"bucket": 0}, {"levels": 2.5}, {"norm": "l1"}])
def test_bad_config(config):
    with pytest.raises(CodecError):
        QSGD(**config)


def test_malformed_chunks_raise_payload_error():
    codec = QSGD(levels=5, bucket=4)
    good = codec.encode({"v": torch.tensor([0.0, 3.0, 0.0, -4.0])})
    norm = struct.pack("<f", 5.0)
    for chunk in [b"\x02" + norm + bytes([0b01000110, 0b10000110]),  # level 6 > s = 5
                  b"\x02" + norm + bytes([0b00100001, 0b10100100]),  # position beyond d = 4
                  b"\x03" + norm + bytes([0b01000110, 0b10100100]),  # one record too many
                  b"\x02" + struct.pack("<f", -5.0) + bytes([0b01000110, 0b10100100]),  # negative norm
                  b"\x02" + norm + bytes([0b01000110, 0b10100100, 0])]:  # trailing byte
        with pytest.raises(PayloadError):
            codec.decode(with_chunk(good, chunk))
