"""Bit-level coding: hand-computed bitstreams, round trips, and hostile streams."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedsqueeze.codecs import bits, bitscan
from fedsqueeze.errors import CodecError, PayloadError


def bitstring(data: bytes, nbits: int) -> str:
    return "".join(map(str, np.unpackbits(np.frombuffer(data, np.uint8))[:nbits]))


def test_pack_bits_is_msb_first_and_zero_padded():
    assert bits.pack_bits(np.array([1, 0, 1, 1, 0, 0, 0, 0, 1], dtype=np.uint8)) == b"\xb0\x80"
    assert bits.unpack_bits(b"\xb0\x80", 9).tolist() == [1, 0, 1, 1, 0, 0, 0, 0, 1]
    with pytest.raises(PayloadError):
        bits.unpack_bits(b"\xb0\x80", 17)  # too few bytes
    with pytest.raises(PayloadError):
        bits.unpack_bits(b"\xb0\x80\x00", 9)  # too many
    with pytest.raises(PayloadError):
        bits.unpack_bits(b"\xb0\xc0", 9)  # padding bit set


def test_elias_gamma_hand_computed():
    data, n = bits.elias_gamma_encode(np.array([1, 2, 3, 4, 5]))
    assert n == 17 and bitstring(data, n) == "1" "010" "011" "00100" "00101"
    assert data == bytes([0b10100110, 0b01000010, 0b10000000])
    assert bits.elias_gamma_decode(data, 5).tolist() == [1, 2, 3, 4, 5]
    assert bits.elias_gamma_decode(data, 5, nbits=17).tolist() == [1, 2, 3, 4, 5]


def test_rice_hand_computed():
    data, n = bits.rice_encode(np.array([0, 5, 9]), 2)
    assert bitstring(data, n) == "100" "0101" "00101" and data == b"\x8a\x50"
    assert bits.rice_decode(data, 3, 2).tolist() == [0, 5, 9]
    data, n = bits.rice_encode(np.array([3, 0]), 0)  # k = 0 is plain unary
    assert bitstring(data, n) == "0001" "1"


def test_records_interleave_fields_hand_computed():
    cols = [np.array([3, 1]), np.array([1, 0]), np.array([1, 2])]
    data, n = bits.encode_records(cols, ["gamma", 1, "gamma"])
    assert bitstring(data, n) == "011" "1" "1" "1" "0" "010"
    out, end = bits.decode_records(data, 2, ["gamma", 1, "gamma"])
    assert end == n and [c.tolist() for c in out] == [[3, 1], [1, 0], [1, 2]]
    data, n = bits.encode_records([np.array([5, 6]), np.array([9, 0])], [("fixed", 3), ("rice", 3)])
    assert bitstring(data, n) == "101" "01001" "110" "1000"  # 9 = q 1, r 001


def test_trits_hand_computed():
    assert bits.pack_trits(np.array([2, 1, 0, 2, 2, 1])) == bytes([162 + 27 + 6 + 2, 81])
    assert bits.unpack_trits(bytes([197, 81]), 6).tolist() == [2, 1, 0, 2, 2, 1]
    for bad, count in [(bytes([243]), 5), (bytes([197, 81 + 9]), 6), (bytes([1]), 6)]:
        with pytest.raises(PayloadError):  # escape byte, non-zero padding trit, too short
            bits.unpack_trits(bad, count)
    # sliced (3LC): m = 2 bytes, byte i holds trits i, 2 + i, 4 + i, 6 + i, 8 + i; pad with 1
    t = np.array([2, 0, 1, 1, 0, 2, 1, 1, 2])
    assert bits.pack_trits(t, sliced=True, pad=1) == bytes([162 + 27 + 0 + 3 + 2, 0 + 27 + 18 + 3 + 1])
    assert bits.unpack_trits(bytes([194, 49]), 9, sliced=True, pad=1).tolist() == t.tolist()


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(0, 2), max_size=60), st.booleans(), st.integers(0, 2))
def test_trits_round_trip(trits, sliced, pad):
    data = bits.pack_trits(np.array(trits), sliced=sliced, pad=pad)
    assert len(data) == (len(trits) + 4) // 5
    assert bits.unpack_trits(data, len(trits), sliced=sliced, pad=pad).tolist() == trits


@pytest.mark.parametrize("v", [1, 2, 3, 2**52 - 1, 2**53, 2**53 + 1, 2**60 - 1, 2**62, 2**63 - 1])
def test_bit_length_exact_near_float_rounding(v):
    assert bits.bit_length(np.array([v], dtype=np.uint64))[0] == v.bit_length()
    data, n = bits.elias_gamma_encode(np.array([v, 1], dtype=np.int64))
    assert n == 2 * v.bit_length() and bits.elias_gamma_decode(data, 2).tolist() == [v, 1]


@settings(max_examples=80, deadline=None)
@given(st.lists(st.integers(1, 2**63 - 1) | st.integers(1, 40), min_size=0, max_size=400))
def test_gamma_round_trip(values):
    data, n = bits.elias_gamma_encode(np.array(values, dtype=np.int64))
    assert len(data) == (n + 7) // 8 and n == sum(2 * v.bit_length() - 1 for v in values)
    assert bits.elias_gamma_decode(data, len(values)).tolist() == values


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 20), st.lists(st.integers(0, 5000), max_size=300))
def test_rice_round_trip_and_length(k, values):
    data, n = bits.rice_encode(np.array(values, dtype=np.int64), k)
    assert n == bits.rice_bits(np.array(values), k) == sum((v >> k) + 1 + k for v in values)
    assert bits.rice_decode(data, len(values), k).tolist() == values


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_records_round_trip(data):
    fields = data.draw(st.lists(st.sampled_from(["gamma", ("rice", 2), ("fixed", 1), ("fixed", 13), 63]),
                                min_size=1, max_size=4))
    n = data.draw(st.integers(0, 200))
    cols = []
    for f in fields:
        width = bits._norm_fields([f])[0][1]
        lo, hi = (1, 2**40) if f == "gamma" else (0, 300) if f == ("rice", 2) else (0, 2**width - 1)
        cols.append(np.array(data.draw(st.lists(st.integers(lo, hi), min_size=n, max_size=n)), dtype=np.int64))
    stream, nbits = bits.encode_records(cols, fields)
    out, end = bits.decode_records(stream, n, fields, nbits)
    assert end == nbits and all(np.array_equal(a, b) for a, b in zip(out, cols))


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(1, 10**6), min_size=1, max_size=200), st.data())
def test_truncated_gamma_stream_raises(values, data):
    stream, n = bits.elias_gamma_encode(np.array(values))
    cut = data.draw(st.integers(0, len(stream) - 1))
    with pytest.raises(PayloadError):
        bits.elias_gamma_decode(stream[:cut], len(values))
    with pytest.raises(PayloadError):  # one value too many
        bits.elias_gamma_decode(stream, len(values) + 1)
    with pytest.raises(PayloadError):  # a declared bit count that cuts the last code
        bits.elias_gamma_decode(stream, len(values), nbits=n - 1)


def test_hostile_streams_raise_payload_error():
    with pytest.raises(PayloadError, match="overflow"):
        bits.elias_gamma_decode(bytes(7) + b"\x01" + b"\xff" * 8, 1)  # 63 zeros: a value >= 2**63
    with pytest.raises(PayloadError, match="cannot fit"):
        bits.elias_gamma_decode(b"\xff", 10**12)  # count checked before any allocation
    with pytest.raises(PayloadError, match="trailing"):
        bits.elias_gamma_decode(b"\x80\x00", 1)
    with pytest.raises(PayloadError, match="padding"):
        bits.elias_gamma_decode(b"\x81", 1)
    with pytest.raises(PayloadError, match="overflows"):
        bits.rice_decode(b"\x3f" + b"\xff" * 8, 1, 62)  # q = 2: 2 << 62 >= 2**63
    with pytest.raises(CodecError):
        bits.elias_gamma_encode(np.array([0]))
    with pytest.raises(CodecError):
        bits.encode_records([np.array([8])], [3])


def test_decoding_many_values_is_vectorised():
    rng = np.random.default_rng(1)
    values = rng.geometric(0.1, 300_000)
    stream, n = bits.elias_gamma_encode(values)
    assert np.array_equal(bits.elias_gamma_decode(stream, len(values), nbits=n), values)


def test_all_three_boundary_searches_agree():
    rng = np.random.default_rng(2)
    spec = bits._norm_fields(["gamma", 1, ("rice", 1)])
    cols = [rng.geometric(0.3, 5000), rng.integers(0, 2, 5000), rng.geometric(0.4, 5000)]
    stream, n = bits.encode_records(cols, ["gamma", 1, ("rice", 1)])
    nxt = bitscan.next_one(np.unpackbits(np.frombuffer(stream, np.uint8), count=n))
    F = bitscan.advance(np.arange(n, dtype=nxt.dtype), spec, nxt, n)
    walked = bitscan.walk(F.__getitem__, n, 5000)
    shrunk = bitscan.shrink(F, n, 5000)
    doubled = bitscan._double(F, np.arange(n, dtype=F.dtype), n, [0], 5000)
    assert np.array_equal(walked, shrunk) and np.array_equal(shrunk, doubled) and len(walked) == 5000


def test_periodic_stream_that_never_resynchronises():
    # all values 2 -> "010010...": decoding from offset 1 or 2 never meets the true boundaries
    stream, n = bits.elias_gamma_encode(np.full(30_001, 2))
    nxt = bitscan.next_one(np.unpackbits(np.frombuffer(stream, np.uint8), count=n))
    F = bitscan.advance(np.arange(n, dtype=nxt.dtype), [("gamma", 0)], nxt, n)
    # walkers at bits 0 and 45001 (phases 0 and 1) never merge, so walker 0 runs out of steps
    assert bitscan.walk(F.__getitem__, n, 30_001, min_bits=3, walkers=2) is None
    assert np.array_equal(bitscan.shrink(F, n, 30_001), np.arange(0, n, 3))
    assert np.array_equal(bits.elias_gamma_decode(stream, 30_001), np.full(30_001, 2))


def test_optimal_rice_k_is_the_exhaustive_minimum():
    rng = np.random.default_rng(3)
    for scale in [0.5, 3, 40, 1000, 10**6]:
        gaps = rng.geometric(1 / (scale + 1), 2000) - 1
        best = min(range(63), key=lambda k: (bits.rice_bits(gaps, k), k))
        assert bits.optimal_rice_k(gaps) == best


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(1, 2**63 - 1) | st.integers(1, 9), min_size=1, max_size=300), st.data())
def test_windowed_scan_matches(values, data):
    # tiny windows: records straddle window ends and some are longer than a window (doubling)
    stream, n = bits.elias_gamma_encode(np.array(values, dtype=np.int64))
    window = data.draw(st.sampled_from([8, 64, 200]))
    old, bitscan.WINDOW = bitscan.WINDOW, window
    try:
        assert bits.elias_gamma_decode(stream, len(values)).tolist() == values
        with pytest.raises(PayloadError):
            bits.elias_gamma_decode(stream[:-1], len(values))
    finally:
        bitscan.WINDOW = old


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 2**40) | st.integers(0, 3), min_size=1, max_size=50))
def test_optimal_rice_k_exhaustive_on_skewed_sets(gaps):
    gaps = np.array(gaps, dtype=np.int64)
    assert bits.optimal_rice_k(gaps) == min(range(63), key=lambda k: (bits.rice_bits(gaps, k), k))
