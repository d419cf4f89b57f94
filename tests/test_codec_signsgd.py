"""signSGD: sign bits and the ||p||_1/d scale by hand."""
from __future__ import annotations

import struct

import numpy as np
import pytest
import torch

from chunk_kit import only_chunk, with_chunk
from fedsqueeze.codecs.signsgd import SignSGD
from fedsqueeze.errors import CodecError, PayloadError


def test_hand_computed():
    x = torch.tensor([1.0, -2.0, 0.0, 3.0, -0.5])
    payload = SignSGD().encode({"x": x})
    scale = np.float32(6.5 / 5)
    assert only_chunk(payload) == struct.pack("<f", scale) + bytes([0b01001000])
    assert torch.equal(SignSGD().decode(payload)["x"], torch.tensor([1, -1, 1, 1, -1.0]) * float(scale))
    bare = SignSGD(scale="none").encode({"x": x})
    assert only_chunk(bare) == bytes([0b01001000])
    assert torch.equal(SignSGD(scale="none").decode(bare)["x"], torch.tensor([1, -1, 1, 1, -1.0]))


def test_scaled_sign_minimises_error_among_scales():
    x = torch.randn(300, generator=torch.Generator().manual_seed(5))
    out = SignSGD().decode(SignSGD().encode({"x": x}))["x"]
    err = float(((x - out) ** 2).sum())
    assert err == pytest.approx(float((x**2).sum()) - float(x.abs().sum()) ** 2 / 300, rel=1e-5)


def test_bad_padding_and_config():
    x = torch.tensor([1.0, -2.0, 0.0])
    good = SignSGD(scale="none").encode({"x": x})
    with pytest.raises(PayloadError):
        SignSGD(scale="none").decode(with_chunk(good, bytes([0b01000001])))
    with pytest.raises(CodecError):
        SignSGD(scale="l2")
