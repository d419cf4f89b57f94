"""The entropy stage: exact round trips, a hand-checked model header, size vs empirical entropy."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedsqueeze.codecs.entropy import (MAX_CORE, choose_shift, decode_symbols, encode_symbols,
                                       entropy_bits, unzigzag, zigzag)
from fedsqueeze.errors import CodecError, PayloadError
from fedsqueeze.wire.varint import Reader


def _split(data: bytes) -> tuple[int, int]:
    """(model bytes, ANS bytes) of a kind-1 block, parsed per the documented layout."""
    r = Reader(data)
    assert r.u8() == 1
    r.varint(), r.varint(), r.u8()
    n_esc = r.varint()
    r.chunk()
    r.take(4 * n_esc)
    return r.pos, r.remaining()


def test_entropy_bits_exact():
    assert entropy_bits(np.array([0, 0, 1, 1])) == 4.0
    assert entropy_bits(np.array([7, 7, 7])) == 0.0
    assert entropy_bits(np.array([], dtype=np.int64)) == 0.0
    assert entropy_bits(np.array([1, 2, 3, 4])) == 8.0


def test_zigzag():
    assert [zigzag(v) for v in (0, -1, 1, -2, 2)] == [0, 1, 2, 3, 4]
    assert [unzigzag(zigzag(v)) for v in (0, -1, 1, -(1 << 31), (1 << 31) - 1)] == [0, -1, 1, -(1 << 31), (1 << 31) - 1]


def test_tiny_input_model_header_by_hand():
    # counts: -1:1, 0:3, 1:1, 2:1 -> shift 1 -> c' = 1, 2, 1, 1 -> γ(2) γ(3) γ(2) γ(2)
    # = 010 011 010 010 -> 01001101 0010(0000) = 0x4D 0x20
    data = encode_symbols(np.array([1, -1, 0, 0, 0, 2]))
    assert data[:8] == bytes([1, 1, 3, 1, 0, 2, 0x4D, 0x20])  # kind, zz(lo=-1), K-1, shift, n_esc, len, table
    assert (len(data) - 8) % 4 == 0
    assert decode_symbols(data, 6).tolist() == [1, -1, 0, 0, 0, 2]


def test_constant_and_empty():
    assert encode_symbols(np.array([5, 5, 5])) == bytes([0, 10])
    assert decode_symbols(bytes([0, 10]), 3).tolist() == [5, 5, 5]
    assert encode_symbols(np.zeros(0, dtype=np.int32)) == b""
    assert decode_symbols(b"", 0).shape == (0,)


def test_laplace_million_within_half_percent_of_entropy():
    rng = np.random.default_rng(1)
    q = np.rint(rng.laplace(size=1_000_000) / 0.8).astype(np.int32)
    data = encode_symbols(q)
    assert np.array_equal(decode_symbols(data, q.size), q)
    h = entropy_bits(q)
    model, coded = _split(data)
    assert 8 * coded <= 1.005 * h + 64, (8 * coded / h)
    assert model < 100  # the count table stays compact
    assert 8 * len(data) <= 1.005 * h + 64 + 8 * model


def test_escapes_round_trip_and_stay_cheap():
    rng = np.random.default_rng(2)
    q = np.rint(rng.laplace(size=20_000) * 3).astype(np.int64)
    q[[5, 500, 5000]] = [10**6, -(1 << 31), (1 << 31) - 1]
    data = encode_symbols(q)
    assert np.array_equal(decode_symbols(data, q.size), q)
    assert len(data) < entropy_bits(q) / 8 + 3 * 4 + 200


def test_one_core_symbol_plus_escapes():
    q = np.zeros(1000, dtype=np.int64)
    q[[3, 700]] = [10**6, -5 * MAX_CORE]
    assert np.array_equal(decode_symbols(encode_symbols(q), q.size), q)


def test_wide_dense_alphabet_uses_a_window():
    q = np.arange(-3 * MAX_CORE, 3 * MAX_CORE)
    q = np.concatenate([q, np.zeros(50_000, dtype=q.dtype)])
    data = encode_symbols(q)
    assert np.array_equal(decode_symbols(data, q.size), q)


def test_choose_shift_prefers_small_tables_for_few_symbols():
    assert choose_shift(np.array([1, 3, 1, 1])) == 1
    big = np.array([10, 5000, 400_000, 5000, 10])
    s = choose_shift(big)
    q = np.ceil(big / 2.0**s)
    h = -(big * np.log2(big / big.sum())).sum()
    assert -(big * np.log2(q / q.sum())).sum() <= 1.005 * h + 64


def test_rejects_non_integer_and_out_of_range():
    with pytest.raises(CodecError):
        encode_symbols(np.array([0.5, 1.0]))
    with pytest.raises(CodecError):
        encode_symbols(np.array([0, 1 << 40]))


@pytest.mark.parametrize("bad", [b"\x02", b"\x01", b"\x00", b"\x01\x00\x00\x00\x00\x01\x00",
                                 b"\x01\x00\xff\xff\x03\x00\x00\x00", b"\x05\x00"])
def test_malformed_raise_payload_error(bad):
    with pytest.raises(PayloadError):
        decode_symbols(bad, 4)


@settings(max_examples=80, deadline=None)
@given(st.data())
def test_mutations_raise_only_payload_error(data):
    rng = np.random.default_rng(data.draw(st.integers(0, 1000)))
    q = np.rint(rng.laplace(size=300) * 2).astype(np.int32)
    good = bytearray(encode_symbols(q))
    for _ in range(data.draw(st.integers(1, 3))):
        good[data.draw(st.integers(0, len(good) - 1))] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(good)))
    try:
        out = decode_symbols(bytes(good[:cut]), q.size)
    except PayloadError:
        return
    assert out.shape == (q.size,)
