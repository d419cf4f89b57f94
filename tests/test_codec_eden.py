"""EDEN: Lloyd–Max levels, bit packing, hand-computed bodies, a dense reference, the paper's errors."""
from __future__ import annotations

import math
import struct

import numpy as np
import pytest
import torch

from fedsqueeze.codecs.drive import Drive
from fedsqueeze.codecs.eden import CELLS, Eden, count_below, lloyd_max_distortion, lloyd_max_gaussian, thresholds32
from fedsqueeze.codecs.rotated import index_values, pack_indices
from fedsqueeze.errors import CodecError, PayloadError
from rotation_kit import bias_over_seeds, dense_rotated, seed_with_signs, vnmse

# Max (1960), "Quantizing for minimum distortion", Table I: positive levels and mean squared error.
MAX_1960 = {
    1: ((0.7979,), 0.3634),
    2: ((0.4528, 1.510), 0.1175),
    3: ((0.2451, 0.7560, 1.344, 2.152), 0.03455),
    4: ((0.1284, 0.3881, 0.6568, 0.9424, 1.256, 1.618, 2.069, 2.733), 0.009497),
}
PAPER_VNMSE = {1: 0.571, 2: 0.133, 3: 0.036, 4: 0.0096}


def dense_eden(x: torch.Tensor, seed: int, chunk: int, bits: int) -> torch.Tensor:
    levels = torch.tensor(lloyd_max_gaussian(bits), dtype=torch.float64)

    def quantize(u, rot):
        z = rot * math.sqrt(rot.numel()) / u.norm()
        q = levels[(z[:, None] - levels[None, :]).abs().argmin(1)]  # nearest level
        return (u @ u) / (rot @ q), q
    return dense_rotated(x, seed, chunk, quantize)


# ---- Lloyd–Max levels -----------------------------------------------------------------------------
@pytest.mark.parametrize("bits", [1, 2, 3, 4])
def test_levels_recomputed_match_max_1960(bits):
    levels = lloyd_max_gaussian(bits)
    published, mse = MAX_1960[bits]
    assert len(levels) == 2 ** bits and list(levels) == sorted(levels)
    assert levels[2 ** (bits - 1):] == tuple(-v for v in reversed(levels[:2 ** (bits - 1)]))
    assert np.allclose(levels[2 ** (bits - 1):], published, atol=6e-4)
    assert lloyd_max_distortion(levels) == pytest.approx(mse, rel=5e-4)  # the table's 4 digits


def test_one_bit_level_is_sqrt_2_over_pi():
    assert lloyd_max_gaussian(1)[1] == pytest.approx(math.sqrt(2 / math.pi), abs=1e-14)
    assert lloyd_max_distortion(lloyd_max_gaussian(1)) == pytest.approx(1 - 2 / math.pi, abs=1e-14)


@pytest.mark.parametrize("bits", [2, 3, 4])
def test_levels_are_centroids_by_numerical_integration(bits):
    levels = np.array(lloyd_max_gaussian(bits))
    edges = np.concatenate([[-12.0], (levels[1:] + levels[:-1]) / 2, [12.0]])
    mse = 0.0
    for c, a, b in zip(levels, edges, edges[1:]):
        z = np.linspace(a, b, 20_001)
        pdf = np.exp(-z * z / 2) / math.sqrt(2 * math.pi)
        mass = np.trapezoid(pdf, z)
        assert np.trapezoid(z * pdf, z) / mass == pytest.approx(c, abs=1e-6)  # level = E[Z | cell]
        mse += np.trapezoid((z - c) ** 2 * pdf, z)
    assert mse == pytest.approx(lloyd_max_distortion(tuple(levels)), rel=1e-6)


@pytest.mark.parametrize("bits", [1, 2, 3, 4])
def test_threshold_counting_methods_agree_even_on_the_thresholds(bits):
    th = thresholds32(bits)
    g = torch.Generator().manual_seed(bits)
    special = np.concatenate([th, np.nextafter(th, np.float32(np.inf)), np.nextafter(th, np.float32(0)),
                              np.array([0.0, 7.99, 8.0, 300.0], np.float32)]).astype(np.float32)
    mag = torch.cat([torch.from_numpy(special), torch.randn(5000, generator=g).abs() * 2]).reshape(1, -1)
    expected = (mag.reshape(-1, 1) > torch.from_numpy(th).reshape(1, -1)).sum(1).to(torch.uint8)
    for cells in (False, True):
        got = count_below(mag * CELLS, bits, cells=cells).reshape(-1)
        assert torch.equal(got, expected), cells


# ---- bit packing -----------------------------------------------------------------------------------
def reference_pack(idx: np.ndarray, bits: int) -> bytes:
    stream = "".join(format(int(v), f"0{bits}b") for v in idx)
    stream += "0" * (-len(stream) % 8)
    return bytes(int(stream[i:i + 8], 2) for i in range(0, len(stream), 8))


@pytest.mark.parametrize("bits", [1, 2, 3, 4])
@pytest.mark.parametrize("n", [1, 5, 8, 13, 64, 1001])
def test_pack_indices_is_msb_first_and_index_values_inverts_it(bits, n):
    idx = np.random.default_rng(n).integers(0, 2 ** bits, n).astype(np.uint8)
    packed = pack_indices(idx, bits)
    assert packed == reference_pack(idx, bits)
    levels = tuple(float(v) for v in np.arange(2 ** bits) * 1.5 - 3)
    stream = np.frombuffer(packed, np.uint8)
    for start in range(0, n, 8):
        got = index_values(stream, start, n, bits, levels)
        assert np.array_equal(got, np.array(levels, np.float32)[idx[start:]])


def test_pack_indices_by_hand():
    idx = np.array([3, 1, 0, 2, 1], np.uint8)
    assert pack_indices(idx, 2) == bytes([0b11010010, 0b01000000])
    assert pack_indices(idx, 3) == bytes([0b01100100, 0b00100010])  # 011 001 000 010 001 + 0
    assert pack_indices(np.array([1, 0, 1], np.uint8), 1) == bytes([0b10100000])


# ---- exact numbers on tiny inputs ---------------------------------------------------------------
def test_two_values_two_bits_by_hand():
    # x = (1, 3), signs (+, +): R x = (4, -2)/sqrt(2); z = R x · sqrt(2)/‖x‖ = (1.265, -0.632)
    # -> levels (c2, -c1): indices 3 and 1 -> bits 11 01 -> 0b1101_0000
    seed = seed_with_signs([1.0, 1.0])
    c1, c2 = lloyd_max_gaussian(2)[2:]
    body = Eden(bits=2).encode_tensor(torch.tensor([1.0, 3.0]), seed)
    assert len(body) == 5 and body[4] == 0b1101_0000
    s = 10 / ((4 * c2 + 2 * c1) / math.sqrt(2))  # ‖x‖² / ⟨R x, X⟩
    assert struct.unpack("<f", body[:4])[0] == pytest.approx(s, rel=1e-6)
    y = Eden(bits=2).decode_tensor(memoryview(body), (2,), seed)
    k = s / math.sqrt(2)
    assert torch.allclose(y.double(), torch.tensor([k * (c2 - c1), k * (c2 + c1)], dtype=torch.float64), atol=1e-6)
    assert float(y.double() @ torch.tensor([1.0, 3.0], dtype=torch.float64)) == pytest.approx(10.0, rel=1e-6)


def test_one_bit_eden_is_unbiased_drive():
    x = torch.randn(5000, generator=torch.Generator().manual_seed(4))
    a = Eden(bits=1, chunk=1024).decode(Eden(bits=1, chunk=1024).encode({"x": x}, seed=9))["x"]
    b = Drive(chunk=1024).decode(Drive(chunk=1024).encode({"x": x}, seed=9))["x"]
    assert torch.allclose(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("bits", [1, 2, 3, 4])
@pytest.mark.parametrize("n,chunk", [(8, 16), (40, 16), (100, 64)])
def test_matches_dense_reference(bits, n, chunk):
    x = torch.randn(n, generator=torch.Generator().manual_seed(n + bits)) ** 3
    c = Eden(bits=bits, chunk=chunk)
    y = c.decode_tensor(memoryview(c.encode_tensor(x, 21)), (n,), 21)
    assert torch.allclose(y.double(), dense_eden(x, 21, chunk, bits), rtol=1e-4, atol=1e-5 * float(x.abs().max()))


@pytest.mark.parametrize("bits", [1, 2, 3, 4])
def test_projection_on_x_is_exact(bits):
    x = torch.randn(3000, generator=torch.Generator().manual_seed(2)) ** 5
    c = Eden(bits=bits, chunk=1024)
    y = c.decode(c.encode({"x": x}, seed=4))["x"]
    assert float(y.double() @ x.double()) == pytest.approx(float(x.double() @ x.double()), rel=1e-5)


def test_body_length_and_zero_input():
    assert len(Eden(bits=3).encode_tensor(torch.randn(100), 0)) == 4 + 128 * 3 // 8
    body = Eden(bits=4, chunk=16).encode_tensor(torch.zeros(20), 0)
    assert body == bytes(4 * 2 + 10)
    assert Eden(bits=4, chunk=16).decode_tensor(memoryview(body), (20,), 0).abs().max() == 0


# ---- the paper's numbers --------------------------------------------------------------------------
@pytest.mark.parametrize("bits", [1, 2, 3, 4])
def test_vnmse_matches_theory_on_gaussian_d_2_20(bits):
    x = torch.randn(1 << 20, generator=torch.Generator().manual_seed(10 + bits))
    dist = lloyd_max_distortion(lloyd_max_gaussian(bits))
    for chunk in (1 << 16, 1 << 20):
        got = vnmse(Eden(bits=bits, chunk=chunk), x)
        assert got == pytest.approx(dist / (1 - dist), rel=0.02)
        assert got == pytest.approx(PAPER_VNMSE[bits], rel=0.03)


def test_unbiased_over_seeds():
    x = torch.randn(256, generator=torch.Generator().manual_seed(3))
    bias2, noise = bias_over_seeds(Eden(bits=2), x, 300)
    assert bias2 < 2.0 * noise


# ---- config and hostile input ---------------------------------------------------------------------
@pytest.mark.parametrize("bad", [{"bits": 0}, {"bits": 5}, {"bits": True}, {"bits": 2.0}, {"chunk": 100}])
def test_bad_config_is_a_codec_error(bad):
    with pytest.raises(CodecError):
        Eden(**bad)


def test_decoder_rejects_bad_bodies():
    c = Eden(bits=3, chunk=16)  # 20 values -> 20 coordinates x 3 bits = 60 bits: 4 padding bits
    good = c.encode_tensor(torch.randn(20), 1)
    assert len(good) == 8 + 8
    for bad in (good[:-1], good + b"\0", struct.pack("<f", math.inf) + good[4:],
                good[:-1] + bytes([good[-1] | 0x01])):
        with pytest.raises(PayloadError):
            c.decode_tensor(memoryview(bad), (20,), 1)
