"""The wire format: round trip and every corruption case raises PayloadError (never another error)."""
from __future__ import annotations

import json
import struct
import zlib

import pytest
import torch

from fedsqueeze.codecs.floats import Float32
from fedsqueeze.codecs.spec import decode_any
from fedsqueeze.errors import PayloadError
from fedsqueeze.wire.payload import OVERHEAD, Header, TensorSpec, pack, unpack

X = {"w": torch.arange(6, dtype=torch.float32).reshape(2, 3), "b": torch.tensor([0.5, -1.5])}


def good() -> bytes:
    return Float32().encode(X, seed=9)


def reframe(data: bytes) -> bytes:
    """Fix the CRC after a deliberate edit, so the edit reaches the parser behind it."""
    body = data[:-4]
    return body + struct.pack("<I", zlib.crc32(body))


def test_round_trip_is_exact_and_self_describing():
    data = good()
    header, body = unpack(data)
    assert header.codec_id == "fp32" and header.seed == 9 and header.config == {}
    assert header.tensors == (TensorSpec("w", (2, 3), torch.float32), TensorSpec("b", (2,), torch.float32))
    out = decode_any(data)
    assert all(torch.equal(out[k], X[k]) for k in X)


def test_exact_size_fp32():
    # frame 15 + header (1+4 "fp32" + seed 1 + cfg len 1 + count 1 + "w": 1+1+1+1+2 dims + "b": 1+1+1+1+1)
    # + body (varint 24 + 24 bytes, varint 8 + 8 bytes)
    header_len = 1 + 4 + 1 + 1 + 1 + (1 + 1 + 1 + 1 + 2) + (1 + 1 + 1 + 1 + 1)
    assert len(good()) == OVERHEAD + header_len + (1 + 24) + (1 + 8)


@pytest.mark.parametrize("cut", range(0, 60))
def test_every_truncation_is_rejected(cut):
    data = good()
    if cut >= len(data):
        return
    with pytest.raises(PayloadError):
        decode_any(data[:cut])


def test_every_single_bit_flip_is_rejected():
    data = bytearray(good())
    for i in range(len(data)):
        for bit in (0, 7):
            bad = bytearray(data)
            bad[i] ^= 1 << bit
            with pytest.raises(PayloadError):
                decode_any(bytes(bad))


def test_bad_magic_version_and_extra_bytes():
    data = good()
    with pytest.raises(PayloadError, match="magic"):
        decode_any(b"XXXX" + data[4:])
    with pytest.raises(PayloadError, match="version"):
        decode_any(reframe(data[:4] + bytes([99]) + data[5:]))
    with pytest.raises(PayloadError, match="declared size"):
        decode_any(data + b"\0")


def test_not_bytes():
    with pytest.raises(PayloadError, match="must be bytes"):
        decode_any("hello")  # type: ignore[arg-type]


def test_unknown_codec_and_wrong_codec():
    spec = TensorSpec("w", (2,), torch.float32)
    data = pack(Header("nosuchcodec", 0, {}, (spec,)), b"\x08" + bytes(8))
    with pytest.raises(PayloadError, match="unknown codec"):
        decode_any(data)
    with pytest.raises(PayloadError, match="expected 'fp16'"):
        from fedsqueeze.codecs.floats import Float16
        Float16().decode(good())
    with pytest.raises(PayloadError, match="not accepted"):
        decode_any(good(), allowed={"fp16"})


def test_absurd_declared_sizes_rejected_before_allocation():
    huge = TensorSpec("w", (1 << 20, 1 << 20), torch.float32)  # 2^40 elements
    with pytest.raises(PayloadError):
        decode_any(pack(Header("fp32", 0, {}, (huge,)), b"\x00"))
    big = TensorSpec("w", (1 << 25,), torch.float32)  # allowed by the format, beyond the caller's cap
    with pytest.raises(PayloadError, match="more than the allowed"):
        decode_any(pack(Header("fp32", 0, {}, (big,)), b"\x00"), max_numel=1 << 20)


def test_body_length_must_match_shape():
    spec = TensorSpec("w", (4,), torch.float32)
    with pytest.raises(PayloadError, match="body of 8 bytes"):
        decode_any(pack(Header("fp32", 0, {}, (spec,)), b"\x08" + bytes(8)))


def test_header_fields_validated():
    data = good()
    header, body = unpack(data)
    # a config that is JSON but not an object, and one that names an unknown option
    from fedsqueeze.wire import payload as P
    raw = bytearray(P._encode_header(header))
    bad_cfg = P._encode_header(header)[:6] + bytes([2]) + b"[]" + P._encode_header(header)[7:]
    framed = struct.pack("<4sBHI", b"FSQZ", 1, len(bad_cfg), len(body)) + bad_cfg + bytes(body)
    with pytest.raises(PayloadError, match="JSON object"):
        decode_any(framed + struct.pack("<I", zlib.crc32(framed)))
    with pytest.raises(PayloadError, match="invalid codec config"):
        decode_any(pack(Header("fp32", 0, {"level": 3}, header.tensors), bytes(body)))
    assert raw  # silence unused


def test_duplicate_tensor_names_rejected():
    # found by `bench fuzz`: the decoder returned one tensor for two specs of the same name
    header, body = unpack(good())
    w = header.tensors[0]
    twice = pack(Header("fp32", 0, {}, (w, w)), bytes(body)[:25] * 2)
    with pytest.raises(PayloadError, match="tensor name 'w' appears twice"):
        decode_any(twice)


def test_expected_specs_enforced():
    spec = (TensorSpec("w", (2, 3), torch.float32), TensorSpec("b", (2,), torch.float32))
    assert Float32().decode(good(), expect=spec)["w"].shape == (2, 3)
    with pytest.raises(PayloadError, match="do not match"):
        Float32().decode(good(), expect=spec[:1])


def test_integer_and_empty_tensors_travel():
    x = {"n": torch.tensor([1, 2, 3], dtype=torch.int64), "e": torch.zeros(0), "m": torch.tensor([True, False])}
    out = Float32().decode(Float32().encode(x))
    assert torch.equal(out["n"], x["n"]) and out["e"].shape == (0,) and torch.equal(out["m"], x["m"])


def test_header_json_is_compact_and_sorted():
    from fedsqueeze.wire.payload import _encode_header
    h = Header("x", 1, {"b": 1, "a": [1, 2]}, ())
    enc = _encode_header(h)
    assert json.dumps({"a": [1, 2], "b": 1}, separators=(",", ":")).encode() in enc
