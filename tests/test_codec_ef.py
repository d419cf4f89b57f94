"""Error feedback: exact residual bookkeeping on a hand example, and the wire is the inner payload."""
from __future__ import annotations

import pytest
import torch

from fedsqueeze.codecs.ef import ErrorFeedback
from fedsqueeze.codecs.spec import decode_any, make_codec
from fedsqueeze.codecs.topk import TopK
from fedsqueeze.errors import CodecError, PayloadError, RegistryError
from fedsqueeze.wire.payload import Header, pack, peek_codec, unpack


def test_hand_example_top1():
    codec = ErrorFeedback(inner="topk(k=1)")
    x = torch.tensor([1.0, 0.375])
    state, sent = None, []
    for t in range(5):
        payload, state = codec.encode_stateful({"x": x}, seed=t, state=state)
        sent.append(codec.decode(payload)["x"].tolist())
    # residual e: .375, .75, then x + e = [1, 1.125] sends the second entry, leaving [1, 0], ...
    assert sent == [[1, 0], [1, 0], [0, 1.125], [2, 0], [1, 0]]
    assert state["x"].tolist() == [0, 0.75]
    assert (torch.tensor(sent).sum(0) + state["x"]).tolist() == (5 * x).tolist()


def test_wire_is_the_inner_payload():
    x = {"w": torch.randn(100), "n": torch.tensor([3])}
    codec = make_codec("ef(inner='topk(fraction=0.1)')")
    payload = codec.encode(x, seed=4)  # stateless: zero residual
    assert payload == TopK(fraction=0.1).encode(x, seed=4)
    assert peek_codec(payload) == "topk"
    payload, state = codec.encode_stateful(x, seed=4, state=None)
    assert payload == TopK(fraction=0.1).encode(x, seed=4) and set(state) == {"w"}
    assert torch.equal(decode_any(payload)["w"], codec.decode(payload)["w"])
    forged = pack(Header("ef", 4, codec.get_config(), unpack(payload)[0].tensors), bytes(unpack(payload)[1]))
    with pytest.raises(PayloadError):
        decode_any(forged)


@pytest.mark.parametrize("inner,d,steps", [
    ("topk(fraction=0.01)", 2000, 60),  # Stich et al. 2018: top-k with memory
    ("signsgd", 64, 40),  # EF-signSGD (Karimireddy et al. 2019)
    ("threelc(multiplier=1.5)", 100, 40),  # 3LC with its error accumulation, as published
])
def test_residual_stays_bounded_and_sums_track(inner, d, steps):
    codec = ErrorFeedback(inner=inner)
    g = torch.Generator().manual_seed(11)
    state, sent, total = None, torch.zeros(d), torch.zeros(d)
    norms = []
    for t in range(steps):
        x = torch.randn(d, generator=g)
        payload, state = codec.encode_stateful({"x": x}, seed=t, state=state)
        sent += codec.decode(payload)["x"]
        total += x
        norms.append(float(state["x"].norm()))
    assert torch.allclose(sent + state["x"], total, atol=1e-3)
    third = steps // 3  # the residual saturates instead of growing with t
    assert max(norms[2 * third:]) < 1.5 * max(norms[third:2 * third])


def test_config_errors():
    with pytest.raises(RegistryError):
        ErrorFeedback(inner="nope")
    with pytest.raises(CodecError):
        ErrorFeedback(inner="ef")
    with pytest.raises(CodecError):
        ErrorFeedback(inner=3)
    codec = ErrorFeedback(inner="topk(k=1)")
    with pytest.raises(CodecError, match="reset the state"):
        codec.encode_stateful({"x": torch.ones(3)}, seed=0, state={"x": torch.zeros(4)})


def test_dtypes_are_kept_and_rounding_lands_in_the_residual():
    codec = ErrorFeedback(inner="fp32")
    x = {"h": torch.tensor([1.0, 2.0], dtype=torch.float16), "n": torch.tensor([5])}
    payload, state = codec.encode_stateful(x, seed=0, state={"h": torch.tensor([1e-4, 0.0])})
    out = codec.decode(payload)
    assert out["h"].dtype == torch.float16 and torch.equal(out["n"], x["n"])
    want = torch.tensor([1.0, 2.0]) + torch.tensor([1e-4, 0.0])  # corrected in fp32, sent as fp16
    assert out["h"].tolist() == [1.0, 2.0] and torch.equal(state["h"], want - out["h"].float())
    assert float(state["h"][0]) > 0  # the fp16 rounding is carried, not lost


def test_inner_pipeline_from_a_spec_string():
    from fedsqueeze.codecs.spec import make_codec, split_pipeline

    assert split_pipeline("svd | rdq(step=0.1)") == ["svd ", " rdq(step=0.1)"]
    assert split_pipeline("ef(inner='svd | rdq')") == ["ef(inner='svd | rdq')"]
    assert split_pipeline('ef(inner="a|b") | fp16') == ['ef(inner="a|b") ', " fp16"]
    codec = make_codec("ef(inner='svd(threshold=0.9) | rdq(coder=\"ans\", step=1e-3, normalize=False, dead_zone=0.0, alloc=\"one\")')")
    assert codec.codec_id == "ef" and codec.codec.codec_id == "pipeline"
    g = torch.Generator().manual_seed(0)
    x = {"w": torch.randn(40, 30, generator=g)}
    payload, state = codec.encode_stateful(x, seed=0, state=None)
    out = codec.decode(payload)
    assert torch.allclose(out["w"] + state["w"], x["w"], atol=1e-5)  # sent + residual = input


def test_spec_accepts_toml_booleans():
    from fedsqueeze.codecs.spec import parse_spec

    assert parse_spec("rdq(normalize=true, step=2.0)") == ("rdq", {"normalize": True, "step": 2.0})
    assert parse_spec("rdq(normalize=False)") == ("rdq", {"normalize": False})
