"""Top-K: hand-computed chunks, the contraction property, and malformed chunks."""
from __future__ import annotations

import struct

import numpy as np
import pytest
import torch

from chunk_kit import only_chunk, with_chunk
from fedsqueeze.codecs.topk import TopK
from fedsqueeze.errors import CodecError, PayloadError


def test_rice_coded_positions_hand_computed():
    x = torch.zeros(32)
    x[[0, 1, 3, 7, 9]] = torch.tensor([0.5, -3.0, 2.0, 1.0, 0.25])
    payload = TopK(k=3).encode({"w": x})
    # positions 1, 3, 7 -> gaps 1, 1, 3; best Rice parameter 1: "1 1" "1 1" "01 1" = 0b1111011(0)
    assert only_chunk(payload) == bytes([1, 0b11110110]) + struct.pack("<3f", -3.0, 2.0, 1.0)
    expect = torch.zeros(32)
    expect[[1, 3, 7]] = torch.tensor([-3.0, 2.0, 1.0])
    assert torch.equal(TopK(k=3).decode(payload)["w"], expect)


def test_bitmap_takes_ties_hand_computed():
    x = torch.tensor([0.5, -3.0, 0.0, 2.0, 0.25, 0.0, 0.0, 1.0])
    payload = TopK(k=3).encode({"w": x})
    assert only_chunk(payload) == bytes([255, 0b01010001]) + struct.pack("<3f", -3.0, 2.0, 1.0)
    assert torch.equal(TopK(k=3).decode(payload)["w"], torch.tensor([0, -3.0, 0, 2.0, 0, 0, 0, 1.0]))


@pytest.mark.parametrize("fraction", [0.001, 0.01, 0.1, 0.5, 1.0])
def test_contraction(fraction):
    g = torch.Generator().manual_seed(7)
    for shape in [(1000,), (33, 17), (5, 4, 3)]:
        a = torch.randn(shape, generator=g) * torch.rand(shape, generator=g) ** 3
        codec = TopK(fraction=fraction)
        out = codec.decode(codec.encode({"a": a}))["a"]
        d = a.numel()
        k = max(1, round(fraction * d))
        assert int((out != 0).sum()) == min(k, d)
        err = float(((a.double() - out.double()) ** 2).sum())
        assert err <= (1 - k / d) * float((a.double() ** 2).sum()) + 1e-12


def test_k_option_and_fp16_values():
    a = torch.linspace(-1, 1, 101)
    out = TopK(k=5, values="fp16").decode(TopK(k=5, values="fp16").encode({"a": a}))["a"]
    kept = torch.topk(a.abs(), 5).indices
    assert torch.equal(out[kept], a[kept].half().float()) and int((out != 0).sum()) == 5
    assert torch.equal(TopK(k=500).decode(TopK(k=500).encode({"a": a}))["a"], a)  # k > d keeps all


@pytest.mark.parametrize("config", [{"fraction": 0}, {"fraction": 1.5}, {"k": -1}, {"values": "fp8"},
                                    {"fraction": "0.1"}])
def test_bad_config(config):
    with pytest.raises(CodecError):
        TopK(**config)


def test_malformed_positions_raise_payload_error():
    x = torch.tensor([0.5, -3.0, 0.0, 2.0, 0.25, 0.0, 0.0, 1.0])
    good = TopK(k=3).encode({"w": x})
    values = struct.pack("<3f", -3.0, 2.0, 1.0)
    for chunk in [bytes([255, 0b01010011]) + values,  # bitmap with 4 positions for k = 3
                  bytes([0, 0b00000000]) + values,  # Rice stream that never ends
                  bytes([0, 0b00010001, 0b00010000]) + values,  # gaps 3, 3, 3: positions 3, 7, 11 >= 8
                  bytes([77, 0]) + values,  # unknown position coding
                  bytes([255, 0b01010001]) + values[:-1]]:  # short values
        with pytest.raises(PayloadError):
            TopK(k=3).decode(with_chunk(good, chunk))


def test_ties_go_to_the_lower_position():
    from fedsqueeze.codecs.topk import largest

    assert largest(np.array([1.0, 1.0, 1.0, 0.5], dtype=np.float32), 2).tolist() == [0, 1]
    rng = np.random.default_rng(12)
    for d, k in [(1000, 10), (100_000, 3000), (70_000, 69_000)]:
        a = rng.integers(0, 50, d).astype(np.float32)  # many ties
        expect = np.sort(np.argsort(-a, kind="stable")[:k])
        assert np.array_equal(largest(a, k), expect)
