"""DRIVE: hand-computed bodies, a dense reference, the paper's error constants, unbiasedness."""
from __future__ import annotations

import math
import struct

import pytest
import torch

from fedsqueeze.codecs.drive import Drive
from fedsqueeze.codecs.spec import make_codec
from fedsqueeze.errors import CodecError, PayloadError
from rotation_kit import bias_over_seeds, dense_rotated, seed_with_signs, vnmse


def dense_drive(x: torch.Tensor, seed: int, chunk: int, scale: str) -> torch.Tensor:
    def quantize(u, rot):
        s = (u @ u) / rot.abs().sum() if scale == "unbiased" else rot.abs().sum() / rot.numel()
        return s, torch.where(rot < 0, -1.0, 1.0).double()
    return dense_rotated(x, seed, chunk, quantize)


# ---- exact numbers on tiny inputs ---------------------------------------------------------------
def test_two_values_by_hand():
    # x = (1, 3), signs (+, +): R x = (4, -2) / sqrt(2), bits 0 1 -> byte 0b0100_0000
    seed = seed_with_signs([1.0, 1.0])
    x = torch.tensor([1.0, 3.0])
    body = Drive().encode_tensor(x, seed)
    assert len(body) == 5 and body[4] == 0x40
    (s,) = struct.unpack("<f", body[:4])
    assert math.isclose(s, 10 / (6 / math.sqrt(2)), rel_tol=1e-6)  # ‖x‖² / ‖R x‖₁
    y = Drive().decode_tensor(memoryview(body), (2,), seed)
    assert torch.allclose(y, torch.tensor([0.0, 10 / 3]), atol=1e-6)  # Rᵀ(S sign): ⟨x̂, x⟩ = 10
    biased = Drive(scale="biased")
    body = biased.encode_tensor(x, seed)
    assert body[4] == 0x40 and math.isclose(struct.unpack("<f", body[:4])[0], 3 / math.sqrt(2), rel_tol=1e-6)
    assert torch.allclose(biased.decode_tensor(memoryview(body), (2,), seed), torch.tensor([0.0, 3.0]), atol=1e-6)


def test_one_value_is_exact_and_zero_is_zero():
    for scale in ("unbiased", "biased"):
        c = Drive(scale=scale)
        body = c.encode_tensor(torch.tensor([-3.0]), 5)
        assert struct.unpack("<f", body[:4])[0] == 3.0 and len(body) == 5
        assert c.decode_tensor(memoryview(body), (1,), 5).tolist() == [-3.0]
    body = Drive().encode_tensor(torch.zeros(40), 1)
    assert body == bytes(len(body))
    assert Drive().decode_tensor(memoryview(body), (40,), 1).abs().max() == 0


def test_body_layout_scales_per_row_then_bits():
    c = Drive(chunk=16)
    x = torch.randn(20, generator=torch.Generator().manual_seed(0))
    body = c.encode_tensor(x, 3)
    assert len(body) == 4 * 2 + 3  # rows (16, tail 4): 2 scales, 20 bits -> 3 bytes
    assert body[-1] & 0x0F == 0  # zero padding bits


@pytest.mark.parametrize("scale", ["unbiased", "biased"])
@pytest.mark.parametrize("n,chunk", [(8, 16), (40, 16), (100, 32), (1000, 1024)])
def test_matches_dense_reference(scale, n, chunk):
    x = torch.randn(n, generator=torch.Generator().manual_seed(n)) ** 3
    c = Drive(scale=scale, chunk=chunk)
    y = c.decode_tensor(memoryview(c.encode_tensor(x, 11)), (n,), 11)
    ref = dense_drive(x, 11, chunk, scale)
    assert torch.allclose(y.double(), ref, rtol=1e-4, atol=1e-5 * float(x.abs().max()))


def test_unbiased_scale_keeps_the_projection_exact():
    x = torch.randn(3000, generator=torch.Generator().manual_seed(2)) ** 5  # heavy-tailed
    y = Drive(chunk=1024).decode(Drive(chunk=1024).encode({"x": x}, seed=4))["x"]
    assert math.isclose(float(y.double() @ x.double()), float(x.double() @ x.double()), rel_tol=1e-5)


# ---- the paper's numbers --------------------------------------------------------------------------
@pytest.mark.parametrize("chunk", [1 << 16, 1 << 20])
def test_vnmse_matches_theory_on_gaussian_d_2_20(chunk):
    x = torch.randn(1 << 20, generator=torch.Generator().manual_seed(7))
    assert vnmse(Drive(chunk=chunk), x) == pytest.approx(math.pi / 2 - 1, rel=0.02)
    assert vnmse(Drive(scale="biased", chunk=chunk), x) == pytest.approx(1 - 2 / math.pi, rel=0.02)


def test_unbiased_over_seeds_biased_variant_is_not():
    x = torch.randn(256, generator=torch.Generator().manual_seed(3))
    bias2, noise = bias_over_seeds(Drive(), x, 500)
    assert bias2 < 2.0 * noise  # what is left of the mean error is the variance's share
    bias2, noise = bias_over_seeds(Drive(scale="biased"), x, 100)
    assert bias2 > 0.1  # E[x̂] ≈ (2/π) x


def test_bits_per_coordinate():
    x = torch.randn(1 << 20, generator=torch.Generator().manual_seed(1))
    payload = Drive().encode({"x": x}, seed=0)
    assert 8 * len(payload) / x.numel() == pytest.approx(1 + 32 / (1 << 16), abs=1e-3)


# ---- config and hostile input ---------------------------------------------------------------------
@pytest.mark.parametrize("bad", [{"scale": "median"}, {"chunk": 1000}, {"chunk": 8}, {"chunk": True},
                                 {"chunk": 1 << 31}])
def test_bad_config_is_a_codec_error(bad):
    with pytest.raises(CodecError):
        Drive(**bad)


def test_spec_string():
    assert make_codec("drive(scale='biased', chunk=1024)") == Drive(scale="biased", chunk=1024)


def test_decoder_rejects_bad_bodies():
    c = Drive(chunk=16)  # 20 values: rows of 16 and 4 -> 20 bits, 4 padding bits
    good = c.encode_tensor(torch.randn(20), 1)
    for bad in (good[:-1], good + b"\0", struct.pack("<f", math.nan) + good[4:],
                good[:-1] + bytes([good[-1] | 0x01])):
        with pytest.raises(PayloadError):
            c.decode_tensor(memoryview(bad), (20,), 1)
