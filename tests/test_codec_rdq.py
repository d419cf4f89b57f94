"""rdq: hand-computed bitstreams, rounding modes, the step vote, and the distance to the R(D) limit."""
from __future__ import annotations

import struct

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fedsqueeze.bench.rd import rd_curve, rate_at
from fedsqueeze.codecs.entropy import encode_symbols
from fedsqueeze.codecs.rdq import QMAX, RDQ, adopt_step, rd_scores, vote_step
from fedsqueeze.codecs.spec import make_codec
from fedsqueeze.errors import CodecError, PayloadError

HALF = struct.pack("<f", 0.5)


def test_gamma_bitstream_by_hand():
    # q = [0, 0, 3, 0, -1, 0, 0, 0, 2]: non-zeros at 2, 4, 8 -> runs + 1 = 3, 2, 4
    # γ(3) 0 γ(3) | γ(2) 1 γ(1) | γ(4) 0 γ(2) = 011 0 011 | 010 1 1 | 00100 0 010  (21 bits)
    # -> 01100110 10110010 00010(000) = 0x66 0xB2 0x10
    x = torch.tensor([0, 0, 1.5, 0, -0.5, 0, 0, 0, 1.0])
    codec = RDQ(step=0.5, coder="gamma", normalize=False, dead_zone=0.0, alloc="one")
    data = codec.encode_tensor(x, seed=0)
    assert data == HALF + bytes([3, 0x66, 0xB2, 0x10])
    assert torch.equal(codec.decode_tensor(memoryview(data), (9,), 0), x)


def test_all_zero_tensor_is_one_varint():
    assert RDQ(step=0.5, coder="gamma", normalize=False, dead_zone=0.0, alloc="one").encode_tensor(torch.zeros(7), 0) == HALF + b"\x00"


def test_ans_body_is_the_entropy_stage_of_q():
    x = torch.tensor([0.1, -0.6, 0.4, 2.2, 0.0, -1.4])
    data = RDQ(step=0.5, coder="ans", normalize=False, dead_zone=0.0, alloc="one").encode_tensor(x, 0)
    assert data == HALF + encode_symbols(np.array([0, -1, 1, 4, 0, -3]))  # x / 0.5, rounded
    y = RDQ(step=0.5, coder="ans", normalize=False, dead_zone=0.0, alloc="one").decode_tensor(memoryview(data), (6,), 0)
    assert y.tolist() == [0.0, -0.5, 0.5, 2.0, 0.0, -1.5]


def test_dead_zone_by_hand():
    x = torch.tensor([0.7, -0.7, 1.6, -1.7, 0.2])
    plain = RDQ(step=1.0, coder="gamma", normalize=False, dead_zone=0.0, alloc="one").quantize(x, 1.0, 0).tolist()
    dz = RDQ(step=1.0, dead_zone=0.3, coder="gamma", normalize=False, alloc="one").quantize(x, 1.0, 0).tolist()
    assert plain == [1, -1, 2, -2, 0]
    assert dz == [0, 0, 1, -1, 0]  # floor(|y| + 0.2)


def test_dither_is_subtractive_and_uniform():
    codec = RDQ(step=0.1, rounding="dither", coder="ans", normalize=False, dead_zone=0.0, alloc="one")
    x = {"w": torch.full((200_000,), 0.0123)}  # a constant: deterministic rounding would give one error
    y = codec.decode(codec.encode(x, seed=3))["w"]
    err = (y - x["w"]).double()
    assert float(err.abs().max()) <= 0.05 + 1e-6
    assert abs(float(err.mean())) < 4 * 0.1 / np.sqrt(12 * 200_000)
    assert abs(float(err.var()) - 0.01 / 12) < 0.05 * 0.01 / 12
    y2 = codec.decode(codec.encode(x, seed=4))["w"]
    assert not torch.equal(y, y2)  # the dither comes from the seed


def test_stochastic_rounding_is_unbiased():
    codec = RDQ(step=1.0, rounding="stochastic", coder="ans", normalize=False, dead_zone=0.0, alloc="one")
    n = 1 << 18
    x = {"w": torch.full((n,), 0.3), "v": torch.full((n,), -2.7)}
    y = codec.decode(codec.encode(x, seed=0))
    assert set(y["w"].unique().tolist()) == {0.0, 1.0}
    sd = np.sqrt(0.21 / n)
    assert abs(float(y["w"].double().mean()) - 0.3) < 4 * sd
    assert abs(float(y["v"].double().mean()) + 2.7) < 4 * sd


def test_normalize_is_scale_free():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1000, generator=g)
    a = RDQ(step=0.5, normalize=True, coder="ans", dead_zone=0.0, alloc="one")
    small, big = a.encode_tensor(x * 1e-3, 0), a.encode_tensor(x * 1e3, 0)
    assert small[4:] == big[4:]  # same levels, only the fp32 step differs
    unit = struct.unpack("<f", small[:4])[0]
    assert unit == pytest.approx(0.5 * 1e-3 * float(x.double().square().mean().sqrt()), rel=1e-6)


def test_range_guard_keeps_levels_in_bounds():
    x = {"w": torch.randn(1000) * 1e30}
    codec = RDQ(step=1e-3, coder="ans", normalize=False, dead_zone=0.0, alloc="one")
    payload = codec.encode(x, seed=0)
    y = codec.decode(payload)["w"]
    unit = (x["w"].abs().max() / QMAX).item()
    assert float((y - x["w"]).abs().max()) <= unit
    assert RDQ(step=1e-3, coder="gamma", normalize=False, dead_zone=0.0, alloc="one").decode(RDQ(step=1e-3, coder="gamma", normalize=False, dead_zone=0.0, alloc="one").encode(x, seed=0))["w"].isfinite().all()


def test_vote_and_adopt():
    g = torch.Generator().manual_seed(1)
    update = {"a": torch.randn(400, generator=g) * 0.1, "b": torch.randn(50, generator=g) * 0.02}
    cands = [0.4, 0.1, 0.2, 0.05]
    scores = rd_scores(update, cands, RDQ(coder="ans", step=1e-3, normalize=False, dead_zone=0.0, alloc="one"))
    assert [s for s, _, _ in scores] == [0.05, 0.1, 0.2, 0.4]
    d = [t[1] for t in scores]
    r = [t[2] for t in scores]
    assert d == sorted(d) and r == sorted(r, reverse=True)  # coarser step: more distortion, fewer bits
    for lam in (0.0, 1e-4, 1e-3, 1.0):
        best = min(scores, key=lambda t: (t[1] + lam * t[2], t[0]))[0]
        assert vote_step(update, cands, lam, RDQ(coder="ans", step=1e-3, normalize=False, dead_zone=0.0, alloc="one")) == best
    assert vote_step(update, cands, 0.0) == 0.05
    assert vote_step(update, cands, 1.0) == 0.4
    assert adopt_step([0.1, 0.2, 0.2, 0.1]) == 0.1  # tie -> smaller
    assert adopt_step([0.4, 0.2, 0.4]) == 0.4
    with pytest.raises(CodecError):
        adopt_step([])


def test_ans_rate_near_blahut_arimoto_limit():
    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.laplace(size=1 << 18).astype(np.float32))
    curve = rd_curve(x.numpy())
    for step, dz in [(1.0, 0.0), (2.0, 0.25)]:
        codec = RDQ(step=step, coder="ans", dead_zone=dz, normalize=False, alloc="one")
        payload = codec.encode({"w": x}, seed=0)
        y = codec.decode(payload)["w"]
        rate = 8 * len(payload) / x.numel()
        limit = rate_at(curve, float(((y - x).double() ** 2).mean()))
        assert 0.5 < rate < 2.5
        assert rate / limit < 1.3, (step, rate, limit)


def test_config_validation():
    for bad in ["rdq(step=0)", "rdq(step=-1)", "rdq(rounding='nearest')", "rdq(coder='huffman')",
                "rdq(dead_zone=0.7)", "rdq(dead_zone=0.2, rounding='dither')", "rdq(normalize=1)"]:
        with pytest.raises(CodecError):
            make_codec(bad)


@pytest.mark.parametrize("spec", ["rdq(coder='ans', step=0.01, normalize=False, dead_zone=0.0, alloc='one')", "rdq(rounding='dither', step=0.01, coder='gamma', normalize=False, dead_zone=0.0, alloc='one')"])
@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_mutated_bodies_raise_only_payload_error(spec, data):
    from fedsqueeze.codecs.spec import decode_any
    from fedsqueeze.wire.payload import Header, pack, unpack

    codec = make_codec(spec)
    x = torch.randn(300, generator=torch.Generator().manual_seed(0)) * 0.05
    header, body = unpack(codec.encode({"w": x}, seed=1))
    body = bytearray(body)
    for _ in range(data.draw(st.integers(1, 3))):
        body[data.draw(st.integers(0, len(body) - 1))] = data.draw(st.integers(0, 255))
    bad = pack(Header(header.codec_id, header.seed, header.config, header.tensors),
               bytes(body[:data.draw(st.integers(0, len(body)))]))
    try:
        out = decode_any(bad)
    except PayloadError:
        return
    assert out["w"].shape == (300,)


def _old_payload_input() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(11)
    return {"fc.weight": torch.randn(48, 32, generator=g) @ torch.randn(32, 64, generator=g) * 1e-3,
            "fc.bias": torch.randn(48, generator=g) * 1e-3}


# payloads written before rdq's defaults changed (by the code of that time), and their specs written
# out with the old defaults; a pipeline's stage strings in its header omit them too
OLD = "coder='gamma', normalize=False, dead_zone=0.0, alloc='one'"


@pytest.mark.parametrize("name, today", [
    ("rdq_old_default", f"rdq(step=1e-3, {OLD})"),
    ("rdq_pipeline_old", f"svd(threshold=0.9) | rdq(step=0.01, {OLD})"),
])
def test_payloads_from_before_the_default_change_keep_their_meaning(name, today):
    import hashlib
    import json
    from pathlib import Path

    from fedsqueeze.codecs.spec import decode_any

    golden = Path(__file__).parent / "golden"
    payload = (golden / f"{name}.bin").read_bytes()
    expected = json.loads((golden / f"{name}.json").read_text())
    out = decode_any(payload)
    assert {k: hashlib.sha256(v.contiguous().numpy().tobytes()).hexdigest() for k, v in out.items()} \
        == expected["sha256"]
    assert make_codec(today).encode(_old_payload_input(), seed=7) == payload  # same bytes, old settings
    assert make_codec(expected["spec"]).encode(_old_payload_input(), seed=7) != payload  # the spec's meaning moved
