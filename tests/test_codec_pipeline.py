"""pipeline: transforms then one codec, the last stage's payload nested as the body."""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import pytest
import torch

import fedsqueeze

from codec_kit import nmse, sample_update
from fedsqueeze.codecs.base import Codec
from fedsqueeze.codecs.pipeline import Pipeline, Transform, spec_string
from fedsqueeze.codecs.rdq import RDQ
from fedsqueeze.codecs.spec import decode_any, make_codec
from fedsqueeze.errors import CodecError, PayloadError
from fedsqueeze.wire.payload import Header, TensorSpec, pack, unpack


@dataclasses.dataclass(frozen=True)
class Transpose(Codec):
    """Test transform: every 2-D float tensor travels transposed, as "<name>/T"; others unchanged."""

    codec_id = "transpose"

    def forward(self, tensors: Mapping[str, torch.Tensor], seed: int) -> dict[str, torch.Tensor]:
        return {(f"{k}/T" if v.dim() == 2 and v.is_floating_point() else k):
                (v.T.contiguous() if v.dim() == 2 and v.is_floating_point() else v) for k, v in tensors.items()}

    def inverse(self, tensors: Mapping[str, torch.Tensor], specs: Sequence[TensorSpec]) -> dict[str, torch.Tensor]:
        out = {}
        for s in specs:
            if len(s.shape) == 2 and s.dtype.is_floating_point:
                out[s.name] = tensors[f"{s.name}/T"].T.contiguous()
            else:
                out[s.name] = tensors[s.name]
        return out


@pytest.fixture
def transpose(monkeypatch):
    fedsqueeze.register_codec("transpose", Transpose)
    yield
    fedsqueeze.unregister("codec", "transpose")


def _update():
    g = torch.Generator().manual_seed(0)
    return {"w": torch.randn(3, 5, generator=g), "b": torch.randn(5, generator=g), "n": torch.tensor([4])}


def test_transform_then_codec_round_trip(transpose):
    codec = make_codec("transpose | rdq(step=0.01, coder='ans', normalize=False, dead_zone=0.0, alloc='one')")
    assert isinstance(codec, Pipeline) and codec.stages == ("transpose", "rdq(step=0.01, coder='ans')")
    x = _update()
    payload = codec.encode(x, seed=3)
    y = decode_any(payload)
    assert list(y) == ["w", "b", "n"] and y["w"].shape == (3, 5) and torch.equal(y["n"], x["n"])
    assert float((y["w"] - x["w"]).abs().max()) <= 0.005 + 1e-7
    # the body is a complete rdq payload of the transposed tensors
    header, body = unpack(payload)
    inner, _ = unpack(body)
    assert inner.codec_id == "rdq" and [s.name for s in inner.tensors] == ["w/T", "b", "n"]
    assert inner.tensors[0].shape == (5, 3)
    assert body.tobytes() == RDQ(step=0.01, coder="ans", normalize=False, dead_zone=0.0, alloc="one").encode(Transpose().forward(x, 0), seed=inner.seed)


def test_two_transforms_nest_pipelines(transpose):
    codec = make_codec("transpose | transpose | fp32")
    x = _update()
    payload = codec.encode(x, seed=0)
    y = codec.decode(payload)
    assert all(torch.equal(x[k], y[k]) for k in x)
    _, body = unpack(payload)
    mid, mid_body = unpack(body)
    assert mid.codec_id == "pipeline" and mid.config == {"stages": ["transpose", "fp32"]}
    assert unpack(mid_body)[0].codec_id == "fp32"


def test_default_is_degenerate_fp32_pipeline():
    codec = Pipeline()
    x = sample_update()
    assert nmse(x, codec.decode(codec.encode(x, seed=0))) == 0.0
    assert codec.get_config() == {"stages": ["fp32"]}


def test_of_writes_compact_specs():
    p = Pipeline.of([RDQ(step=0.01, coder="ans", normalize=False, dead_zone=0.0, alloc="one")])
    assert p.stages == ("rdq(step=0.01, coder='ans')",)  # relative to rdq's old defaults (stage_defaults)
    assert Pipeline.of([RDQ()]).stages == ("rdq(step=1.0, coder='ctx', normalize=True, dead_zone=0.1, alloc='rd')",)
    assert make_codec(Pipeline.of([RDQ()]).stages[0]) == RDQ()
    assert spec_string(RDQ(step=1e-3, coder="gamma", normalize=False, dead_zone=0.0, alloc="one")) == "rdq"
    assert Pipeline(stages=p.stages)._codecs[0] == RDQ(step=0.01, coder="ans", normalize=False, dead_zone=0.0, alloc="one")


def test_stages_before_the_last_must_be_transforms(transpose):
    with pytest.raises(CodecError, match="not a transform"):
        make_codec("fp16 | rdq")
    with pytest.raises(CodecError, match="stateful"):
        Pipeline(stages=("transpose", "ef"))
    with pytest.raises(CodecError):
        Pipeline(stages=())
    with pytest.raises(CodecError, match="unknown codec"):
        Pipeline(stages=("nope", "fp32"))


def test_hostile_stage_config_in_a_header_is_a_payload_error():
    header, body = unpack(Pipeline().encode(_update(), seed=0))
    for stages in (["nope"], ["rdq(step=" + "(" * 500 + ")"], [3], "fp32 | fp32"):
        bad = pack(Header(header.codec_id, header.seed, {"stages": stages}, header.tensors), bytes(body))
        with pytest.raises(PayloadError):
            decode_any(bad)
    assert isinstance(Transpose(), Transform) and not isinstance(RDQ(step=1e-3, coder="gamma", normalize=False, dead_zone=0.0, alloc="one"), Transform)


def test_nested_config_must_match_the_stage(transpose):
    codec = make_codec("transpose | rdq(step=0.01, coder='gamma', normalize=False, dead_zone=0.0, alloc='one')")
    header, body = unpack(codec.encode(_update(), seed=0))
    inner, inner_body = unpack(body)
    forged = pack(Header(inner.codec_id, inner.seed, {**inner.config, "step": 0.5}, inner.tensors),
                  bytes(inner_body))
    with pytest.raises(PayloadError, match="differs"):
        decode_any(pack(header, forged))
    with pytest.raises(PayloadError, match="nested payload is"):
        decode_any(pack(header, make_codec("fp32").encode(_update())))


def test_svd_then_rdq():
    pytest.importorskip("fedsqueeze.codecs.svd")
    codec = make_codec("svd(threshold=0.9) | rdq(step=0.01, coder='gamma', normalize=False, dead_zone=0.0, alloc='one')")
    g = torch.Generator().manual_seed(0)
    x = {"w": torch.randn(40, 30, generator=g) @ torch.diag(torch.logspace(0, -2, 30)), "b": torch.randn(40)}
    payload = codec.encode(x, seed=0)
    y = decode_any(payload)
    assert y["w"].shape == (40, 30) and nmse(x, y) < 0.15
    inner, _ = unpack(unpack(payload)[1])
    assert {s.name for s in inner.tensors} == {"w/U", "w/S", "w/V", "b"}
    assert len(payload) < RDQ(step=0.01, coder="gamma", normalize=False, dead_zone=0.0, alloc="one").encode(x, seed=0).__len__()
