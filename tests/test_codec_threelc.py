"""3LC: quartic bytes and zero-run encoding by hand, the sparsity multiplier, malformed runs."""
from __future__ import annotations

import struct

import numpy as np
import pytest
import torch

from chunk_kit import only_chunk, with_chunk
from fedsqueeze.codecs.threelc import ThreeLC, zero_run_decode, zero_run_encode
from fedsqueeze.errors import CodecError, PayloadError


@pytest.mark.parametrize("runs,expect", [
    ([1, 2, 16], [121, 5, 243, 7, 255, 243]),
    ([15, 0, 28], [255, 121, 5, 7, 255, 255]),
    ([0, 14, 3], [5, 255, 7, 244]),
])
def test_zero_run_encoding_hand_computed(runs, expect):
    quartic = np.array([121] * runs[0] + [5] + [121] * runs[1] + [7] + [121] * runs[2], dtype=np.uint8)
    assert list(zero_run_encode(quartic)) == expect
    assert np.array_equal(zero_run_decode(bytes(expect), len(quartic)), quartic)


def test_full_chunk_hand_computed():
    # d = 20: 4 quartic bytes, byte i packs entries i, 4+i, 8+i, 12+i, 16+i
    x = torch.zeros(20)
    x[16] = 0.8
    payload = ThreeLC().encode({"x": x})
    # byte 0 = 121 + 1 (entry 16 is +1), bytes 1..3 = 121 -> one run of 3 -> 244
    assert only_chunk(payload) == struct.pack("<f", np.float32(0.8)) + bytes([122, 244])
    assert torch.equal(ThreeLC().decode(payload)["x"], x)


def test_sparsity_multiplier():
    x = torch.tensor([1.0, 0.7, 0.8, -0.76])
    out = ThreeLC(multiplier=1.5).decode(ThreeLC(multiplier=1.5).encode({"x": x}))["x"]
    assert torch.equal(out, torch.tensor([1.5, 0.0, 1.5, -1.5]))
    g = torch.randn(10_000, generator=torch.Generator().manual_seed(8))
    dense = len(ThreeLC().encode({"g": g}))
    sparse = len(ThreeLC(multiplier=1.9).encode({"g": g}))
    plain = len(ThreeLC(multiplier=1.9, zero_run=False).encode({"g": g}))
    assert sparse < dense < plain  # a larger m zeroes more entries; runs of 121 fold away
    assert plain == len(ThreeLC(zero_run=False).encode({"g": g}))  # quartic bytes: always ceil(d/5)


def test_error_bounded_by_input():
    g = torch.randn(5000, generator=torch.Generator().manual_seed(9))
    for m in [1.0, 1.3, 1.99]:
        out = ThreeLC(multiplier=m).decode(ThreeLC(multiplier=m).encode({"g": g}))["g"]
        assert float(((out - g) ** 2).sum()) <= float((g**2).sum())
        scale = float(np.float32(float(g.abs().max()) * m))
        assert set(torch.unique(out).tolist()) <= {-scale, 0.0, scale}


def test_malformed_runs_raise_payload_error():
    good = ThreeLC().encode({"x": torch.zeros(20)})
    for chunk in [struct.pack("<f", 0.0) + bytes([255]),  # expands to 14 bytes, 4 expected
                  struct.pack("<f", 0.0) + bytes([121, 121, 121]),  # 3 bytes, 4 expected
                  struct.pack("<f", float("nan")) + bytes([245])]:
        with pytest.raises(PayloadError):
            ThreeLC().decode(with_chunk(good, chunk))
    with pytest.raises(CodecError):
        ThreeLC(multiplier=2.0)
