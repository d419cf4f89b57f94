"""Conformance kit: runs over every registered codec automatically."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from codec_kit import all_codec_ids, default_codec, nmse, sample_update
from fedsqueeze.codecs.spec import decode_any
from fedsqueeze.errors import CodecError, PayloadError
from fedsqueeze.registry import CODECS

IDS = all_codec_ids()


def nmse_bound(codec) -> float:
    """Biased codecs must not lose more than the signal (plus slack); unbiased ones trade variance
    for unbiasedness (rand-k at 1% has NMSE d/k - 1 = 99), so only finiteness-scale bounds apply."""
    return 200.0 if codec.unbiased else 2.0
GOLDEN = Path(__file__).parent / "golden"


@pytest.mark.parametrize("cid", IDS)
def test_round_trip_restores_names_shapes_dtypes(cid):
    codec = default_codec(cid)
    x = sample_update()
    y = codec.decode(codec.encode(x, seed=1))
    assert list(y) == list(x)
    for k in x:
        assert y[k].shape == x[k].shape and y[k].dtype == x[k].dtype
    assert torch.equal(y["steps"], x["steps"])  # integer tensors travel exactly
    err = nmse(x, y)
    if codec.lossless:
        assert err == 0.0
    else:
        assert err < nmse_bound(codec), f"{cid}: NMSE {err} on a Gaussian update is not a bounded error"


@pytest.mark.parametrize("cid", IDS)
def test_config_json_round_trip(cid):
    codec = default_codec(cid)
    again = type(codec).from_config(json.loads(json.dumps(codec.get_config())))
    assert again == codec and again.get_config() == codec.get_config()


@pytest.mark.parametrize("cid", IDS)
def test_same_seed_same_bytes(cid):
    codec = default_codec(cid)
    x = sample_update()
    assert codec.encode(x, seed=42) == codec.encode(x, seed=42)


@pytest.mark.parametrize("cid", IDS)
def test_empty_and_scalar_tensors(cid):
    codec = default_codec(cid)
    x = {"empty": torch.zeros(0, 5), "scalar": torch.tensor(0.75), "one": torch.tensor([-2.0])}
    y = codec.decode(codec.encode(x, seed=0))
    assert y["empty"].shape == (0, 5) and y["scalar"].shape == () and y["one"].shape == (1,)
    assert all(torch.isfinite(v).all() for v in y.values())


@pytest.mark.parametrize("cid", IDS)
@pytest.mark.parametrize("scale", [1e-30, 1e-8, 1e8, 1e30])
def test_huge_and_tiny_magnitudes_stay_finite(cid, scale):
    codec = default_codec(cid)
    x = {k: (v * scale if v.is_floating_point() else v) for k, v in sample_update(3).items()}
    y = codec.decode(codec.encode(x, seed=0))
    assert all(torch.isfinite(v).all() for v in y.values())
    if codec.codec_id != "fp16":  # fp16 saturates at 65504 and flushes below 6e-8, by design
        assert nmse(x, y) < nmse_bound(codec)


@pytest.mark.parametrize("cid", IDS)
@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_nan_and_inf_rejected(cid, bad):
    x = sample_update()
    x["fc.weight"][3, 4] = bad
    with pytest.raises(CodecError, match="NaN or Inf"):
        default_codec(cid).encode(x, seed=0)


@pytest.mark.parametrize("cid", IDS)
def test_reported_bits_are_payload_bytes(cid):
    codec = default_codec(cid)
    payload = codec.encode(sample_update(), seed=0)
    assert isinstance(payload, bytes) and payload[:4] == b"FSQZ"


@pytest.mark.parametrize("cid", IDS)
def test_golden_fixture_still_decodes(cid):
    path = GOLDEN / f"{cid}.bin"
    assert path.exists(), f"no golden fixture for {cid}: run `python scripts/make_golden.py {cid}`"
    expected = json.loads((GOLDEN / f"{cid}.json").read_text())
    out = decode_any(path.read_bytes())
    assert list(out) == list(expected)
    for k, v in out.items():
        assert [float(t).hex() for t in v.reshape(-1).double()] == expected[k], f"{cid}: {k} changed"


@pytest.mark.parametrize("cid", IDS)
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_fuzzed_payloads_raise_only_our_errors(cid, data):
    codec = default_codec(cid)
    good = bytearray(codec.encode(sample_update(), seed=5))
    how = data.draw(st.sampled_from(["truncate", "flip", "random", "reframe"]))
    if how == "truncate":
        bad = good[: data.draw(st.integers(0, len(good) - 1))]
    elif how == "flip":
        i = data.draw(st.integers(0, len(good) - 1))
        bad = good.copy()
        bad[i] ^= 1 << data.draw(st.integers(0, 7))
    elif how == "random":
        bad = bytearray(data.draw(st.binary(min_size=0, max_size=300)))
    else:  # body mutated, then re-framed with a valid CRC: reaches the codec's own parser
        from fedsqueeze.wire.payload import Header, pack, unpack
        header, body = unpack(bytes(good))
        body = bytearray(body)
        if body:
            for _ in range(data.draw(st.integers(1, 4))):
                i = data.draw(st.integers(0, len(body) - 1))
                body[i] = data.draw(st.integers(0, 255))
        cut = data.draw(st.integers(0, len(body)))
        bad = pack(Header(header.codec_id, header.seed, header.config, header.tensors), bytes(body[:cut]))
    try:
        out = decode_any(bytes(bad), max_numel=1 << 20)
    except PayloadError:
        return
    # a mutation that still decodes must give well-formed tensors
    assert all(isinstance(v, torch.Tensor) for v in out.values())
