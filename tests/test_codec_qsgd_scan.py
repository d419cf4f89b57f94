"""The fast QSGD record decoder (codecs/qsgd_scan.py) returns exactly what the general one does."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from fedsqueeze.codecs import qsgd_scan
from fedsqueeze.codecs.bits import decode_records, encode_records
from fedsqueeze.codecs.qsgd import QSGD
from fedsqueeze.errors import PayloadError
from fedsqueeze.wire.varint import Reader

FIELDS = ["gamma", 1, "gamma"]


def stream_of(codec: QSGD, x: torch.Tensor) -> tuple[memoryview, int]:
    body = codec.encode_tensor(x, 5)
    r = Reader(memoryview(body))
    nnz = r.varint()
    r.take(4 * -(-x.numel() // codec.bucket))
    return r.take(r.remaining()), nnz


def same(a: list[np.ndarray], b: list[np.ndarray]) -> bool:
    return all(np.array_equal(u, v) and u.dtype == v.dtype for u, v in zip(a, b))


@pytest.mark.parametrize("levels,bucket,norm", [(16, 512, "l2"), (4, 512, "l2"), (8, 128, "max"), (2, 4096, "l2")])
def test_fast_path_runs_and_matches_the_general_decoder(levels, bucket, norm):
    x = torch.randn(200_000, generator=torch.Generator().manual_seed(levels)) ** 3 * 0.01  # heavy tails
    data, nnz = stream_of(QSGD(levels=levels, bucket=bucket, norm=norm), x)
    ref = decode_records(data, nnz, FIELDS, strict=True)[0]
    fast = qsgd_scan._fast(data, nnz, 8 * len(data))
    assert fast is not None and same(fast, ref)
    assert same(qsgd_scan.decode_qsgd_records(data, nnz), ref)


def test_long_records_mixed_in():
    rng = np.random.default_rng(0)
    n = 30_000
    gaps = rng.geometric(0.6, n)
    gaps[rng.random(n) < 0.02] = rng.integers(200, 1 << 20, int((rng.random(n) < 0.02).sum()) or 1)[0]
    gaps[::997] = 123_456  # 33-bit codes: decoded from 64-bit reads
    levels = rng.integers(1, 17, n)
    levels[::501] = 200  # 15-bit level codes straddle the 16-bit table
    signs = rng.integers(0, 2, n)
    data, _ = encode_records([gaps, signs, levels], FIELDS)
    fast = qsgd_scan._fast(data, n, 8 * len(data))
    assert fast is not None and same(fast, [gaps.astype(np.int64), signs.astype(np.int64), levels.astype(np.int64)])


def test_bad_streams_fail_as_the_general_decoder_does():
    x = torch.randn(100_000, generator=torch.Generator().manual_seed(1)) * 0.01
    good, nnz = stream_of(QSGD(), x)
    good = bytes(good)
    rng = np.random.default_rng(1)
    cases = [good[:-1], good + b"\0", good[:-1] + bytes([good[-1] | 1]), good[: len(good) // 2]]
    for _ in range(20):
        bad = bytearray(good)
        bad[int(rng.integers(len(bad)))] ^= 1 << int(rng.integers(8))
        cases.append(bytes(bad))
    for bad in cases:
        for count in (nnz, nnz - 1, nnz + 1):
            try:
                want = decode_records(bad, count, FIELDS, strict=True)[0]
            except PayloadError:
                with pytest.raises(PayloadError):
                    qsgd_scan.decode_qsgd_records(bad, count)
            else:
                assert same(qsgd_scan.decode_qsgd_records(bad, count), want)


def test_table_rows_by_hand():
    count, used, off, cell = qsgd_scan._table()
    # 1 0 1 | 1 0 1 | 010 1 1 | 1 1 1 | 00 (unfinished): (gap, sign, level) = (1,+,1) (1,+,1) (2,-,1) (1,-,1)
    w = 0b1011_0101_0111_1100
    assert count[w] == 4 and used[w] == 14 and off[w, :4].tolist() == [0, 3, 6, 11]
    got = [(int(c) & 0xFF, int(c) >> 16, (int(c) >> 8) & 0xFF) for c in cell[w, :4]]
    assert got == [(1, 0, 1), (1, 0, 1), (2, 1, 1), (1, 1, 1)]
    assert count[0] == 0 and used[0] == 0 and count[1 << 16] == 0  # all zeros: longer than 16 bits; idle row
