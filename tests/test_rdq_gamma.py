"""rdq's run-length Elias-γ code: the one-field-per-record writer against the generic record writer,
exact round trips on edge cases, and truncated or malformed streams raising PayloadError."""
from __future__ import annotations

import numpy as np
import pytest

from fedsqueeze.codecs.bits import encode_records
from fedsqueeze.codecs.rdq_gamma import RECORD, gamma_decode, gamma_encode
from fedsqueeze.errors import PayloadError
from fedsqueeze.wire.varint import encode_varint

I32_MAX = (1 << 31) - 1


def generic(q: np.ndarray) -> bytes:
    """The reference layout: three fields per record through the generic writer."""
    nz = np.flatnonzero(q)
    if not len(nz):
        return encode_varint(0)
    v = q[nz].astype(np.int64)
    data, _ = encode_records([np.diff(nz, prepend=-1), (v < 0).astype(np.int64), np.abs(v)], RECORD)
    return encode_varint(len(nz)) + data


def roundtrip(q: np.ndarray) -> bytes:
    data = gamma_encode(q)
    assert data == generic(q)
    assert np.array_equal(gamma_decode(memoryview(data), len(q)), q)
    return data


def test_by_hand():
    # non-zeros at 2, 4, 8 -> γ(3) 0 γ(3) | γ(2) 1 γ(1) | γ(4) 0 γ(2) (21 bits)
    assert roundtrip(np.array([0, 0, 3, 0, -1, 0, 0, 0, 2], np.int32)) == bytes([3, 0x66, 0xB2, 0x10])


def test_empty_and_all_zero():
    assert roundtrip(np.zeros(0, np.int32)) == b"\x00"
    assert roundtrip(np.zeros(9, np.int32)) == b"\x00"


def test_one_value():
    assert roundtrip(np.array([1], np.int32)) == bytes([1, 0b10100000])  # γ(1) 0 γ(1)
    assert roundtrip(np.array([-1], np.int32)) == bytes([1, 0b11100000])  # γ(1) 1 γ(1)


def test_int32_extremes_and_longest_runs():
    roundtrip(np.array([I32_MAX, -I32_MAX, 1, -1], np.int32))
    roundtrip(np.array([-(1 << 31)], np.int64))  # |q| = 2^31: the largest level the decoder accepts
    long_run = np.zeros(1 << 20, np.int32)
    long_run[-1] = -I32_MAX  # a 2^20-zero run and a 31-bit level: a record of 20 + 20 + 1 + 31 + 31 bits
    data = roundtrip(long_run)
    assert len(data) == 1 + (2 * 20 + 1 + 1 + 2 * 30 + 1 + 7) // 8


def test_records_wider_than_64_bits_take_the_generic_writer():
    q = np.zeros((1 << 31) // (1 << 12), np.int32)
    q[-1] = I32_MAX  # run 2^19 (a = 19) + level 2^31 - 1 (b = 30): 19 + 60 + 3 = 82 bits
    roundtrip(q)


@pytest.mark.parametrize("scale", [0.2, 1.0, 30.0])
def test_random_levels_match_the_generic_writer(scale):
    rng = np.random.default_rng(7)
    for n in (1, 2, 63, 64, 65, 1000, 200_003):
        q = np.round(rng.laplace(size=n) * scale).astype(np.int32)
        roundtrip(q)


def test_chunks_join_across_words():
    from fedsqueeze.codecs import rdq_gamma

    rng = np.random.default_rng(3)
    q = np.round(rng.standard_normal(5000) * 3).astype(np.int32)
    whole = gamma_encode(q)
    old = rdq_gamma._CHUNK
    try:
        rdq_gamma._CHUNK = 37  # many chunks, each starting mid-word
        assert gamma_encode(q) == whole
    finally:
        rdq_gamma._CHUNK = old


def test_truncated_and_malformed_streams():
    q = np.array([0, 5, 0, 0, -3, 1, 0, 2], np.int32)
    data = gamma_encode(q)
    for cut in range(1, len(data)):
        with pytest.raises(PayloadError):
            gamma_decode(memoryview(data[:cut]), len(q))
    with pytest.raises(PayloadError):  # a trailing byte after the stream
        gamma_decode(memoryview(data + b"\x00"), len(q))
    with pytest.raises(PayloadError):  # more non-zeros declared than the tensor holds
        gamma_decode(memoryview(encode_varint(9) + data[1:]), len(q))
    with pytest.raises(PayloadError):  # the runs run past the tensor's end
        gamma_decode(memoryview(data), 5)
    with pytest.raises(PayloadError):  # a level beyond int32
        big = np.zeros(1, np.int64)
        big[0] = 1 << 32
        gamma_decode(memoryview(generic(big)), 1)
