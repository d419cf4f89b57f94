"""The randomized Hadamard transform shared by DRIVE and EDEN."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from fedsqueeze.codecs.hadamard import (SLAB, ChunkLayout, fwht, irht, next_pow2, random_signs, rht, rotate,
                                        sign_bytes, unrotate)
from rotation_kit import sylvester


def test_sylvester_reference_is_the_popcount_formula():
    formula = torch.tensor([[(-1.0) ** bin(a & b).count("1") for b in range(8)] for a in range(8)],
                           dtype=torch.float64)
    assert torch.equal(sylvester(8), formula)
    assert torch.equal(sylvester(8) @ sylvester(8), 8 * torch.eye(8, dtype=torch.float64))


def test_fwht_matches_dense_hadamard_on_d8():
    x = torch.tensor([[1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0],
                      [0.5, -1.0, 0.0, 2.0, -3.0, 0.25, 1.0, -0.5]])
    expected = (x.double() @ sylvester(8).T).float()
    assert torch.equal(fwht(x), expected)  # small integers and halves: exact
    assert fwht(x)[0].tolist() == [36.0, -4.0, -8.0, 0.0, -16.0, 0.0, 0.0, 0.0]


def test_fwht_random_rows_match_dense_and_reject_bad_lengths():
    x = torch.randn(5, 64, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(fwht(x).double(), x.double() @ sylvester(64).T, atol=1e-4)
    assert torch.equal(fwht(torch.tensor([[2.5]])), torch.tensor([[2.5]]))
    with pytest.raises(ValueError, match="power of two"):
        fwht(torch.zeros(2, 6))


def test_rht_is_h_d_over_sqrt_d_with_seeded_signs():
    x = torch.randn(8, generator=torch.Generator().manual_seed(1))
    d = random_signs(8, 77).double()
    expected = sylvester(8) @ (d * x.double()) / math.sqrt(8)
    assert torch.allclose(rht(x, 77).double(), expected, atol=1e-6)


@pytest.mark.parametrize("n", [1, 2, 7, 8, 1000, 4097])
def test_rht_preserves_norms_and_inner_products_and_inverts(n):
    g = torch.Generator().manual_seed(n)
    x, z = torch.randn(n, generator=g), torch.randn(n, generator=g)
    rx, rz = rht(x, 5), rht(z, 5)
    assert rx.numel() == next_pow2(n)
    assert math.isclose(float(rx.norm()), float(x.norm()), rel_tol=1e-5)
    assert math.isclose(float(rx.double() @ rz.double()), float(x.double() @ z.double()),
                        rel_tol=1e-4, abs_tol=1e-4)
    assert torch.allclose(irht(rx, 5, n), x, atol=2e-6)
    with pytest.raises(ValueError):
        irht(rx[:-1], 5, n) if rx.numel() > 1 else irht(torch.zeros(2), 5, n)


def test_signs_are_seeded_balanced_and_follow_the_documented_bit_order():
    a, b = random_signs(4096, 3), random_signs(4096, 4)
    assert torch.equal(a, random_signs(4096, 3)) and not torch.equal(a, b)
    assert set(a.unique().tolist()) == {-1.0, 1.0}
    assert abs(float(a.mean())) < 0.1
    bits = np.unpackbits(sign_bytes(4096, 3), bitorder="little")  # bit j of byte i -> coordinate 8i+j
    assert np.array_equal(np.where(bits == 1, -1.0, 1.0), a.numpy())
    assert torch.equal(random_signs(10, 3, scale=0.25), 0.25 * a[:10])


def test_chunk_layout_numbers():
    lay = ChunkLayout(100, 32)
    assert (lay.full, lay.tail, lay.rows, lay.padded) == (3, 4, 4, 100)
    assert lay.widths().tolist() == [32, 32, 32, 4]
    lay = ChunkLayout(10_000_000, 1 << 16)
    assert (lay.full, lay.tail, lay.padded) == (152, 1 << 16, 153 * (1 << 16))
    lay = ChunkLayout(5, 1 << 16)  # shorter than a chunk: the paper's whole-vector padding
    assert (lay.full, lay.tail, lay.rows, lay.padded) == (0, 8, 1, 8)
    per = SLAB // 1024  # rows of 1024 per slab
    assert list(ChunkLayout(3 * SLAB + 5, 1024).slabs()) == [(0, per, 1024), (per, per, 1024),
                                                            (2 * per, per, 1024), (3 * per, 1, 8)]
    assert list(ChunkLayout(5 * SLAB, 2 * SLAB).slabs()) == [(0, 1, 2 * SLAB), (1, 1, 2 * SLAB), (2, 1, SLAB)]


@pytest.mark.parametrize("n,chunk", [(100, 32), (96, 32), (1, 16), (70, 128), (300_000, 1 << 16)])
def test_chunked_rotation_inverts_and_rotates_rows_independently(n, chunk):
    x = torch.randn(n, generator=torch.Generator().manual_seed(n))
    lay = ChunkLayout(n, chunk)
    flat = torch.empty(lay.padded)
    for r, block in rotate(x, 9, chunk):
        flat[r * chunk:r * chunk + block.numel()] = block.reshape(-1)
    # each row is H D x_row on its own: norms per row scale by its width
    signs = random_signs(n, 9)
    for r, w in enumerate(lay.widths().tolist()):
        seg = (x * signs)[r * chunk:r * chunk + w]
        row = flat[r * chunk:r * chunk + w]
        assert math.isclose(float(row.norm()), math.sqrt(w) * float(seg.norm()), rel_tol=1e-5, abs_tol=1e-6)
    scale = torch.tensor(1.0 / lay.widths(), dtype=torch.float32)
    back = unrotate(lambda a, b, out: out.copy_(flat[a:b]), 9, n, chunk, scale)
    assert torch.allclose(back, x, atol=2e-6)
