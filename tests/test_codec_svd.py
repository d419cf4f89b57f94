"""FedKD's dynamic SVD: the energy rule, the error bound, the body, the transform protocol."""
from __future__ import annotations

import math
import struct

import pytest
import torch

from fedsqueeze.codecs.spec import make_codec
from fedsqueeze.codecs.svd import SVD, energy_rank, factorize
from fedsqueeze.errors import CodecError, PayloadError
from fedsqueeze.wire.payload import TensorSpec


# ---- the rank rule --------------------------------------------------------------------------------
@pytest.mark.parametrize("threshold,k", [(0.25, 1), (0.5, 2), (0.75, 3), (0.7500001, 4), (1.0, 4), (1e-9, 1)])
def test_energy_exactly_at_the_threshold_counts(threshold, k):
    assert energy_rank(torch.ones(4), threshold) == k  # energies 1,1,1,1: cumulative 1/4, 2/4, 3/4, 1


def test_rank_rule_by_hand():
    sigma = torch.tensor([3.0, 2.0, 1.0])  # energies 9, 4, 1 of 14
    assert energy_rank(sigma, 9 / 14) == 1
    assert energy_rank(sigma, 0.65) == 2
    assert energy_rank(sigma, 13 / 14) == 2
    assert energy_rank(sigma, 0.93) == 3


def test_all_energy_in_one_value_zero_matrix_and_never_zero():
    assert energy_rank(torch.tensor([5.0, 0.0, 0.0]), 1.0) == 1
    assert energy_rank(torch.tensor([5.0, 0.0, 0.0]), 0.999) == 1
    assert energy_rank(torch.zeros(3), 0.95) == 1
    assert energy_rank(torch.tensor([1e-30]), 0.5) == 1
    for bad in (0.0, -0.1, 1.5, math.nan):
        with pytest.raises(CodecError):
            energy_rank(torch.ones(3), bad)


# ---- the codec ------------------------------------------------------------------------------------
def test_diagonal_matrix_body_by_hand():
    w = torch.diag(torch.tensor([3.0, 2.0, 1.0]))
    body = SVD(threshold=0.9).encode_tensor(w, 0)  # 13/14 >= 0.9: K = 2
    assert body[0] == 2 and len(body) == 1 + 4 * 2 * (3 + 1 + 3)
    vals = struct.unpack("<14f", body[1:])
    u, s, v = vals[:6], vals[6:8], vals[8:]
    assert s == (3.0, 2.0)
    assert sorted(abs(a) for a in u) == [0, 0, 0, 0, 1, 1] and sorted(abs(a) for a in v) == [0, 0, 0, 0, 1, 1]
    y = SVD(threshold=0.9).decode_tensor(memoryview(body), (3, 3), 0)
    assert torch.equal(y, torch.diag(torch.tensor([3.0, 2.0, 0.0])))  # diag(σ) is in the product


def test_vectors_go_raw_and_conv_kernels_as_out_by_rest():
    x = {"conv": torch.randn(8, 3, 3, 3), "bias": torch.randn(8), "s": torch.tensor(2.5)}
    codec = SVD(threshold=1.0)
    y = codec.decode(codec.encode(x, seed=0))
    assert torch.equal(y["bias"], x["bias"]) and torch.equal(y["s"], x["s"])
    assert torch.allclose(y["conv"], x["conv"], atol=1e-5)
    assert codec.forward(x)["conv/U"].shape == (8, 8) and codec.forward(x)["conv/V"].shape == (27, 8)


@pytest.mark.parametrize("threshold", [0.3, 0.6, 0.9, 0.95, 0.99])
def test_error_bound_and_minimal_rank(threshold):
    g = torch.Generator().manual_seed(int(threshold * 100))
    w = torch.randn(20, 30, generator=g) @ torch.diag(torch.linspace(3, 0.1, 30)) @ torch.randn(30, 30, generator=g)
    body = SVD(threshold=threshold).encode_tensor(w, 0)
    k = body[0]
    y = SVD(threshold=threshold).decode_tensor(memoryview(body), (20, 30), 0)
    err, total = float(((w.double() - y.double()) ** 2).sum()), float((w.double() ** 2).sum())
    assert err <= (1 - threshold) * total * (1 + 1e-5) + 1e-6
    sigma = torch.linalg.svdvals(w.double())
    assert float((sigma[:k - 1] ** 2).sum()) < threshold * total  # K - 1 would not have been enough
    assert err == pytest.approx(float((sigma[k:] ** 2).sum()), rel=1e-4)


def test_rank_one_and_zero_matrices():
    w = torch.outer(torch.arange(1.0, 5.0), torch.tensor([1.0, -2.0, 0.5]))
    body = SVD().encode_tensor(w, 0)
    assert body[0] == 1 and torch.allclose(SVD().decode_tensor(memoryview(body), (4, 3), 0), w, atol=1e-6)
    body = SVD().encode_tensor(torch.zeros(4, 3), 0)
    assert body[0] == 1 and torch.equal(SVD().decode_tensor(memoryview(body), (4, 3), 0), torch.zeros(4, 3))


def test_config():
    assert make_codec("svd(threshold=0.98)") == SVD(threshold=0.98)
    assert SVD(threshold=1).threshold == 1
    for bad in (0, 0.0, 1.01, -1, "0.95", True):
        with pytest.raises(CodecError):
            SVD(threshold=bad)


def test_decoder_validates_rank_and_length():
    codec = SVD()
    good = codec.encode_tensor(torch.randn(4, 3), 0)
    k = good[0]
    for bad in (bytes([0]) + good[1:], bytes([4]) + good[1:], good[:-1], good + b"\0",
                bytes([k]) + struct.pack("<f", math.nan) + good[5:]):
        with pytest.raises(PayloadError):
            codec.decode_tensor(memoryview(bad), (4, 3), 0)
    with pytest.raises(PayloadError):
        codec.decode_tensor(memoryview(b"\0\0\0"), (1,), 0)


# ---- the transform protocol -------------------------------------------------------------------------
def sample():
    g = torch.Generator().manual_seed(0)
    return {"conv.weight": torch.randn(8, 3, 3, 3, generator=g), "fc.weight": torch.randn(16, 40, generator=g),
            "fc.bias": torch.randn(16, generator=g), "steps": torch.tensor([7])}


def test_forward_names_shapes_and_inverse_matches_decode():
    x = sample()
    codec = SVD(threshold=0.9)
    f = codec.forward(x, seed=3)
    k = f["fc.weight/S"].numel()
    assert list(f) == ["conv.weight/U", "conv.weight/S", "conv.weight/V", "fc.weight/U", "fc.weight/S",
                       "fc.weight/V", "fc.bias", "steps"]
    assert f["fc.weight/U"].shape == (16, k) and f["fc.weight/V"].shape == (40, k)
    assert f["fc.bias"] is x["fc.bias"] and f["steps"] is x["steps"]
    specs = [TensorSpec.of(n, t) for n, t in x.items()]
    back = codec.inverse(f, specs)
    decoded = codec.decode(codec.encode(x, seed=3))
    for name in x:
        assert torch.equal(back[name], decoded[name]) and back[name].dtype == x[name].dtype


def test_factors_match_torch_svd():
    w = torch.randn(6, 5, generator=torch.Generator().manual_seed(1))
    u, s, v = factorize(w, 1.0)
    assert torch.allclose(s, torch.linalg.svdvals(w), atol=1e-5)
    assert torch.allclose(u.T @ u, torch.eye(5), atol=1e-5) and torch.allclose(v.T @ v, torch.eye(5), atol=1e-5)


def test_inverse_rejects_missing_extra_and_misshapen_factors():
    x = sample()
    codec = SVD()
    specs = [TensorSpec.of(n, t) for n, t in x.items()]
    f = codec.forward(x)
    k = f["fc.weight/S"].numel()
    cases = [
        {n: t for n, t in f.items() if n != "fc.weight/V"},
        {**f, "extra": torch.zeros(1)},
        {**f, "fc.weight/U": torch.zeros(16, k + 1)},
        {**f, "fc.weight/S": torch.zeros(0), "fc.weight/U": torch.zeros(16, 0), "fc.weight/V": torch.zeros(40, 0)},
        {**f, "fc.bias": torch.zeros(15)},
    ]
    for bad in cases:
        with pytest.raises(PayloadError):
            codec.inverse(bad, specs)


def test_forward_rejects_name_collisions_and_nan():
    with pytest.raises(CodecError, match="collides"):
        SVD().forward({"a": torch.randn(3, 3), "a/U": torch.randn(3)})
    with pytest.raises(CodecError, match="NaN"):
        SVD().forward({"a": torch.tensor([[1.0, math.inf], [0.0, 1.0]])})
