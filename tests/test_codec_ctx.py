"""rdq(coder="ctx"): the context-modelled entropy coder (fedsqueeze.codecs.ctx).

Round trips on random and adversarial symbol streams, determinism, the per-tensor mode fallback,
the rate on a Markov source against its exact entropies, hostile bodies, and a golden payload."""
from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fedsqueeze.codecs import ctx
from fedsqueeze.codecs.entropy import encode_symbols, entropy_bits
from fedsqueeze.codecs.rdq import RDQ
from fedsqueeze.codecs.spec import decode_any, make_codec
from fedsqueeze.errors import PayloadError

GOLDEN = Path(__file__).parent / "golden"


def roundtrip(q: np.ndarray, shape: tuple[int, ...]) -> bytes:
    data = ctx.encode(q, shape)
    back = ctx.decode(data, shape, q.size)
    assert back.dtype == np.int32 and np.array_equal(back, q.reshape(-1))
    return data


def forced_ctx(q: np.ndarray, shape: tuple[int, ...]) -> bytes:
    """Mode 4 (the context model) whatever its size, decoded back."""
    data = bytes([4]) + ctx._encode_ctx(np.ascontiguousarray(q, dtype=np.int32).reshape(-1), shape)
    assert np.array_equal(ctx.decode(data, shape, q.size), q.reshape(-1))
    return data


@pytest.mark.parametrize("shape", [(5000,), (1, 4097), (37, 91), (91, 37), (64, 3, 5, 5), (2,) * 12])
def test_random_streams_round_trip(shape):
    rng = np.random.default_rng(sum(shape))
    n = math.prod(shape)
    q = np.round(rng.laplace(size=n) * 3).astype(np.int32)
    roundtrip(q, shape)
    forced_ctx(q, shape)


@pytest.mark.parametrize("case", ["zeros", "one_symbol", "two_symbols", "huge", "extremes", "wide", "sparse_big"])
def test_adversarial_streams_round_trip(case):
    rng = np.random.default_rng(7)
    n, shape = 3000, (30, 100)
    q = {
        "zeros": np.zeros(n, np.int32),
        "one_symbol": np.full(n, -123456, np.int32),
        "two_symbols": np.where(rng.random(n) < 0.999, 5, 6).astype(np.int32),
        "huge": rng.integers(-(1 << 31), (1 << 31) - 1, size=n, dtype=np.int64).astype(np.int32),
        "extremes": np.resize(np.array([-(1 << 31), (1 << 31) - 1, 0], np.int32), n),
        "wide": (rng.integers(-10_000, 10_000, size=n)).astype(np.int32),  # more than MAX_CORE values: escapes
        "sparse_big": np.where(rng.random(n) < 0.01, 1 << 20, 0).astype(np.int32),
    }[case]
    data = roundtrip(q, shape)
    if case in ("zeros", "one_symbol"):
        assert ctx.mode_of(data) == "constant" and len(data) <= 5
    else:
        forced_ctx(q, shape)


@pytest.mark.parametrize("n", [1, 2, 3, 5, 17, 16, 33, 256, 257])
def test_tiny_tensors_round_trip(n):
    rng = np.random.default_rng(n)
    for shape in [(n,), (n, 1), (1, n)]:
        roundtrip(rng.integers(-40, 40, size=n).astype(np.int32), shape)
        forced_ctx(rng.integers(-3, 3, size=n).astype(np.int32), shape)


def test_three_elements_fall_back_to_raw():
    q = np.array([3, -1, 40], np.int32)
    data = roundtrip(q, (3,))
    # zigzag varints 6, 1, 80 after the mode byte: 4 bytes, below gamma, order-0 ANS (its table) and ctx
    assert data == bytes([1, 6, 1, 80])
    assert len(data) < 1 + len(encode_symbols(q))


def test_mode_choice_is_the_cheapest():
    rng = np.random.default_rng(3)
    sparse = np.where(rng.random(200) < 0.05, 1, 0).astype(np.int32)
    assert ctx.mode_of(roundtrip(sparse, (200,))) == "gamma"  # a few non-zeros: run lengths win
    dense = np.round(rng.laplace(size=200) * 2).astype(np.int32)
    got = roundtrip(dense, (200,))
    assert ctx.mode_of(got) in ("order0", "gamma")
    assert len(got) <= 1 + len(encode_symbols(dense))


def test_deterministic_bytes():
    rng = np.random.default_rng(11)
    q = np.round(rng.laplace(size=(64, 300)) * np.linspace(0.1, 3, 300)).astype(np.int32)
    assert ctx.encode(q, (64, 300)) == ctx.encode(q.copy(), (64, 300))
    assert ctx._encode_ctx(q.reshape(-1), (64, 300)) == ctx._encode_ctx(q.reshape(-1).copy(), (64, 300))
    x = {"w": torch.from_numpy(q.astype(np.float32) * 1e-3)}
    codec = make_codec("rdq(step=1.0, normalize=True, coder='ctx', dead_zone=0.0, alloc='one')")
    assert codec.encode(x, seed=3) == codec.encode(x, seed=3)


def _binary_entropy(p: float) -> float:
    return -(p * math.log2(p) + (1 - p) * math.log2(1 - p))


def _pyramid_rate(n: int, stay: float) -> float:
    """Exact expected bits of an ideal coder using ctx's contexts on a symmetric 2-state Markov chain.

    A vector is split into even/odd positions repeatedly: the odd positions of level k (distance
    s = 2^k) are coded given both neighbours at distance s. When the neighbours agree (probability
    a_s = p_s² + (1 − p_s)², p_s = P(x_{i+s} = x_i)), the middle matches them with probability
    m_s = p_s² / a_s; when they disagree it is a fair coin. The finest level has contexts of its
    own; the coarser levels share theirs, so they are coded with the pooled match probability
    (cross-entropy). The ≤ 16 root symbols cost 1 bit each."""
    levels, m, s = [], n, 1
    while m > ctx.ROOT:
        odd = m // 2
        p = 0.5 * (1 + (2 * stay - 1) ** s)
        agree = p * p + (1 - p) ** 2
        levels.append((odd, agree, p * p / agree))
        m, s = m - odd, 2 * s
    bits = float(m)
    for group in (levels[:1], levels[1:]):
        w = sum(k * a for k, a, _ in group)
        pooled = sum(k * a * match for k, a, match in group) / w
        for k, a, match in group:
            ce = -(match * math.log2(pooled) + (1 - match) * math.log2(1 - pooled))
            bits += k * (a * ce + (1 - a) * 1.0)
    return bits


def test_rate_below_order0_on_a_markov_source():
    rng = np.random.default_rng(5)
    n, stay = 40_000, 0.95
    flips = rng.random(n) >= stay
    q = (np.cumsum(flips) % 2).astype(np.int32)  # sticky binary chain
    data = forced_ctx(q, (n,))
    bits = 8 * len(data)
    h0 = entropy_bits(q)
    rate_bound = n * _binary_entropy(1 - stay)  # the entropy rate: no code beats it on average
    expected = _pyramid_rate(n, stay)
    assert h0 > 0.99 * n                       # order-0: a fair coin
    assert 0.97 * rate_bound < bits            # 0.286 bits/symbol
    assert bits < 1.03 * expected + 300        # ideal pyramid-context rate (+ tables, flush)
    assert bits < 0.5 * h0                     # far below the order-0 entropy
    assert expected < 0.5 * n


def test_structured_matrix_beats_order0_ans():
    """Rows with their own sign and scale, columns with their own scale (a gradient −η·δ·xᵀ with
    inputs x >= 0, what real updates have): ctx codes well below order-0 ANS."""
    g = torch.Generator().manual_seed(0)
    delta = torch.randn(128, 1, generator=g)
    cols = torch.rand(1, 512, generator=g) ** 3
    cols[:, :100] = 0  # dead input features
    w = delta * cols * (1 + 0.5 * torch.randn(128, 512, generator=g))
    x = {"w": w}
    ans, ctxc = (make_codec(f"rdq(step=0.2, coder='{c}', normalize=False, dead_zone=0.0, alloc='one')") for c in ("ans", "ctx"))
    pa, pc = ans.encode(x, seed=0), ctxc.encode(x, seed=0)
    assert torch.equal(ans.decode(pa)["w"], ctxc.decode(pc)["w"])  # same quantiser, same values
    assert 8 * len(pa) / w.numel() > 1.5     # about 2 bits/parameter
    assert len(pc) < 0.92 * len(pa)          # 0.885 when written


def test_rdq_ctx_whole_payload_and_small_tensors():
    g = torch.Generator().manual_seed(1)
    x = {"w": torch.randn(200, 300, generator=g) * 0.01, "b": torch.randn(3, generator=g) * 0.01,
         "n": torch.tensor([4], dtype=torch.int64), "e": torch.zeros(0)}
    codec = RDQ(step=1.0, normalize=True, coder="ctx", dead_zone=0.0, alloc="one")
    y = codec.decode(codec.encode(x, seed=0))
    ref = RDQ(step=1.0, normalize=True, coder="ans", dead_zone=0.0, alloc="one")
    z = ref.decode(ref.encode(x, seed=0))
    for k in x:
        assert torch.equal(y[k], z[k])


@pytest.mark.parametrize("spec", ["rdq(step=1.0, normalize=True, coder='ctx', dead_zone=0.0, alloc='one')"])
@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_mutated_bodies_raise_only_payload_error(spec, data):
    from fedsqueeze.wire.payload import Header, pack, unpack

    codec = make_codec(spec)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(40, 80, generator=g) * torch.linspace(0, 1, 80)
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
    assert out["w"].shape == (40, 80)


def golden_input() -> dict[str, torch.Tensor]:
    """A small update with structure (row/column scales, a dead column block) and tiny tensors."""
    g = torch.Generator().manual_seed(2024)
    delta = torch.randn(64, 4, generator=g)        # like -lr·Σ δ·xᵀ over a few samples, inputs x >= 0
    inputs = torch.rand(4, 400, generator=g) ** 2
    w = delta @ inputs + 0.1 * torch.randn(64, 400, generator=g)
    w[:, :20] = 0
    return {"fc.weight": w * 0.01, "fc.bias": torch.randn(64, generator=g) * 0.001,
            "head.bias": torch.randn(3, generator=g) * 0.01, "steps": torch.tensor([7], dtype=torch.int64)}


GOLDEN_SPEC = "rdq(step=1.0, normalize=True, coder='ctx', dead_zone=0.1)"
# the recommended setting (docs/methods.md §5): context coder, normalised step, R–D allocation
RECOMMENDED_SPEC = "rdq(step=1.0, normalize=True, coder='ctx', dead_zone=0.1, alloc='rd')"
# (fixture, the spec it was recorded with, that spec's meaning written for today's defaults)
GOLDENS = [("rdq_ctx", GOLDEN_SPEC, GOLDEN_SPEC[:-1] + ", alloc='one')"),  # recorded when alloc defaulted to one
           ("rdq_ctx_rd", RECOMMENDED_SPEC, RECOMMENDED_SPEC),
           ("rdq_default", "rdq", "rdq")]  # rdq's defaults since December 2026 (the recommended setting)


def golden_record(decoded: dict[str, torch.Tensor]) -> dict:
    return {k: hashlib.sha256(v.contiguous().numpy().tobytes()).hexdigest() for k, v in decoded.items()}


def payload_modes(payload: bytes) -> list[str]:
    """The ctx mode of every tensor of an rdq(coder='ctx') payload ('-' for non-float tensors)."""
    from fedsqueeze.wire.payload import unpack
    from fedsqueeze.wire.varint import Reader

    header, body = unpack(payload)
    r = Reader(body)
    out = []
    for spec in header.tensors:
        chunk = r.chunk()
        out.append(ctx.mode_of(chunk[4:]) if spec.dtype.is_floating_point and spec.numel else "-")
    return out


@pytest.mark.parametrize("name, recorded, spec", GOLDENS)
def test_golden_payload_still_decodes_and_encodes(name, recorded, spec):
    payload = (GOLDEN / f"{name}.bin").read_bytes()
    expected = json.loads((GOLDEN / f"{name}.json").read_text())
    assert expected["spec"] == recorded
    out = decode_any(payload)
    assert golden_record(out) == expected["sha256"]
    assert payload_modes(payload) == expected["modes"] and expected["modes"][0] == "ctx"
    assert make_codec(spec).encode(golden_input(), seed=2024) == payload  # same bytes today


def test_default_rdq_is_the_recommended_setting_and_old_headers_keep_their_meaning():
    assert make_codec("rdq") == make_codec(RECOMMENDED_SPEC)
    assert (GOLDEN / "rdq_default.bin").read_bytes() == (GOLDEN / "rdq_ctx_rd.bin").read_bytes()
    # rdq_ctx.bin's header has no alloc (it was "one", which is never written): read as "one"
    from fedsqueeze.codecs.rdq import RDQ
    from fedsqueeze.wire.payload import unpack

    header, _ = unpack((GOLDEN / "rdq_ctx.bin").read_bytes())
    assert "alloc" not in header.config
    assert RDQ.from_payload_config(header.config).alloc == "one"
    assert RDQ.from_config(header.config).alloc == "rd"  # what a user's spec without alloc means today


def _layered_update() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(4)
    return {"conv": torch.randn(16, 8, 3, 3, generator=g) * 0.05,
            "fc": torch.randn(64, 256, generator=g) * 0.002 * torch.rand(1, 256, generator=g),
            "bias": torch.randn(64, generator=g) * 0.01}


@pytest.mark.parametrize("coder", ["ans", "ctx"])
def test_rd_allocation_saves_bits_at_equal_or_lower_distortion(coder):
    x = _layered_update()
    energy = sum(float(v.double().square().sum()) for v in x.values())
    out = {}
    for alloc in ("one", "rd"):
        codec = make_codec(f"rdq(step=2.0, normalize=True, coder='{coder}', alloc='{alloc}')")
        payload = codec.encode(x, seed=0)
        y = decode_any(payload)
        err = sum(float((y[k].double() - v.double()).square().sum()) for k, v in x.items())
        out[alloc] = (len(payload), err / energy)
    (b1, d1), (b2, d2) = out["one"], out["rd"]
    assert d2 <= d1 * 1.02          # the target is the one-step distortion (estimated on the levels)
    assert b2 < 0.8 * b1            # normalised steps waste bits on the low-energy layers


def test_rd_allocation_with_a_budget_and_bad_value():
    x = _layered_update()
    codec = make_codec("rdq(step=1.0, normalize=True, coder='ctx', alloc='rd', target_bytes=1500, dead_zone=0.0)")
    payload = codec.encode(x, seed=0)
    assert len(payload) <= 1500 and decode_any(payload)["fc"].shape == (64, 256)
    from fedsqueeze.errors import CodecError
    with pytest.raises(CodecError, match="alloc must be one of one, rd"):
        make_codec("rdq(alloc='greedy')")


def _mlp_update(structured: bool) -> dict[str, torch.Tensor]:
    """The 2NN MLP's update shapes (784-200-200-10): i.i.d. Laplace values, or rows with a sign and
    columns with a scale (like a real update)."""
    g = torch.Generator().manual_seed(0)

    def lap(*shape, scale):
        u = torch.rand(*shape, generator=g, dtype=torch.float64) - 0.5
        x = (-scale * torch.sign(u) * torch.log1p(-2 * u.abs())).float()
        if structured and len(shape) == 2:
            x = x.abs() * torch.sign(torch.randn(shape[0], 1, generator=g)) * torch.rand(1, shape[1], generator=g)
        return x
    return {"encoder.1.weight": lap(200, 784, scale=1e-3), "encoder.1.bias": lap(200, scale=3e-3),
            "encoder.3.weight": lap(200, 200, scale=2e-3), "encoder.3.bias": lap(200, scale=3e-3),
            "head.weight": lap(10, 200, scale=5e-3), "head.bias": lap(10, scale=5e-3)}


def test_side_information_stays_near_h0_on_a_whole_update():
    from fedsqueeze.bench.entropy_stage import measure

    iid = measure([_mlp_update(False)], [f"rdq(step={s}, coder='{c}', normalize=False, dead_zone=0.0, alloc='one')"
                                         for s in (1e-3, 3e-3) for c in ("ans", "ctx")])
    (a1, c1, a3, c3) = iid
    assert [round(r["entropy_bits"] / r["symbols"], 2) for r in iid] == [2.70, 2.70, 1.26, 1.26]
    for ans, ctxr in ((a1, c1), (a3, c3)):
        assert ctxr["payload_bits"] <= ans["payload_bits"]   # no context to use: ctx falls back, never worse
        assert ctxr["body_pct"] < 0.5                        # bodies (steps, tags, tables) within 0.5% of H0
    structured = measure([_mlp_update(True)], [f"rdq(step={s}, coder='ctx', normalize=False, dead_zone=0.0, alloc='one')"
                                               for s in (1e-3, 2e-3)])
    for r in structured:
        assert 0.3 < r["entropy_bits"] / r["symbols"] < 2.5
        assert r["payload_pct"] < -2                         # whole payload, header included: -7.8%, -3.0% written
