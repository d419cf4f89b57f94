"""Pipeline: a codec made of codecs, e.g. ``"svd(threshold=0.9) | rdq(step=0.01)"``.

Every stage but the last is a *transform* (see ``Transform``): ``forward(tensors, seed)`` maps the
named tensors to other named tensors (SVD: ``"w"`` -> ``"w/U"``, ``"w/S"``, ``"w/V"``), and
``inverse(tensors, specs)`` maps them back to the tensors described by ``specs``. The last stage
is any codec; it encodes what the transforms produced.

Bytes: the pipeline's body is one complete nested payload (``fedsqueeze.wire.payload``) — of the
last stage if there is one transform, else of the pipeline of the remaining stages — so the names,
shapes and dtypes of the intermediate tensors (e.g. the SVD factors, whose rank varies) describe
themselves. The nested header costs ~15 bytes plus the intermediate names; it is counted like every
other byte. Stage ``i`` draws its randomness from ``derive_seed(seed, "stage", i)``.

Devices: the pipeline encodes on the CPU like every codec (inputs on any device, moved first by
``Codec.encode``), its transforms run on the CPU, the nested payload is decoded on the CPU, and only
the final tensors go to ``decode(..., device=...)`` (see ``codecs.base``).

Config: ``stages``, the stage specs as strings (``"rdq(step=0.01)"``); the default ``("fp32",)`` is
the degenerate one-stage pipeline. Stateful stages (error feedback) are refused: the pipeline keeps
no state.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Protocol, runtime_checkable

import torch

from fedsqueeze.codecs.base import Codec, decode_with
from fedsqueeze.codecs.spec import MAX_STAGES, SpecLimitError, make_codec, parse_spec
from fedsqueeze.errors import CodecError, FedsqueezeError, PayloadError
from fedsqueeze.seeding import derive_seed
from fedsqueeze.wire.payload import Limits, TensorSpec, unpack

Tensors = dict[str, torch.Tensor]
NESTED_GROWTH = 4  # a transform's output may declare up to 4x the tensors and 4x (+64 K) the elements of its input


@runtime_checkable
class Transform(Protocol):
    """A pipeline stage that rewrites tensors instead of producing bytes."""

    def forward(self, tensors: Mapping[str, torch.Tensor], seed: int) -> Tensors: ...

    def inverse(self, tensors: Mapping[str, torch.Tensor], specs: Sequence[TensorSpec]) -> Tensors: ...


def spec_string(codec: Codec) -> str:
    """``"rdq(step=0.01)"``: the codec id and the options that differ from the defaults."""
    defaults = {f.name: f.default for f in dataclasses.fields(codec)}
    defaults.update(getattr(codec, "stage_defaults", {}))  # stage strings keep their old meaning
    config = codec.get_config()
    args = [f"{k}={v!r}" for k, v in config.items() if v != _plain(defaults.get(k))]
    return f"{codec.codec_id}({', '.join(args)})" if args else codec.codec_id


def _stage_codec(text: str) -> Codec:
    """The codec of a stage string. A codec whose defaults changed (``stage_defaults``: rdq) reads the
    options a stage string omits with their old values, so the stage strings of existing pipeline
    payloads and configs keep their meaning; ``spec_string`` writes every option that differs."""
    codec = make_codec(text)
    old = getattr(type(codec), "stage_defaults", None)
    if old:
        _, params = parse_spec(text)
        codec = type(codec).from_config({**old, **params})
    return codec


def _plain(v: object) -> object:
    return list(v) if isinstance(v, tuple) else v


@dataclasses.dataclass(frozen=True)
class Pipeline(Codec):
    """Transforms (e.g. svd) followed by one codec; the last stage's payload is the body."""

    codec_id = "pipeline"

    stages: tuple[str, ...] = ("fp32",)

    def __post_init__(self) -> None:
        stages = self.stages
        if isinstance(stages, str):
            stages = tuple(s.strip() for s in stages.split("|"))
        if not isinstance(stages, (list, tuple)) or not stages or not all(isinstance(s, str) for s in stages):
            raise CodecError(f"pipeline: stages must be a non-empty list of codec specs, got {self.stages!r}")
        if len(stages) > MAX_STAGES:  # also from wire headers: checked before any stage is parsed
            raise SpecLimitError(f"pipeline: {len(stages):,} stages, more than {MAX_STAGES} (the pipeline stage cap)")
        object.__setattr__(self, "stages", tuple(stages))
        codecs = []
        for text in stages:
            try:
                codec = _stage_codec(text)
            except (FedsqueezeError, RecursionError, MemoryError, ValueError) as e:  # also from wire headers
                raise CodecError(f"pipeline: stage {text[:80]!r}: {e}") from e
            if isinstance(codec, Pipeline):
                raise CodecError(f"pipeline: stage {text!r} is itself a pipeline; list its stages flat")
            if codec.stateful:
                raise CodecError(f"pipeline: stage {text!r} is stateful (error feedback); "
                                 "wrap the whole pipeline instead")
            codecs.append(codec)
        for text, codec in zip(stages[:-1], codecs[:-1]):
            if not isinstance(codec, Transform):
                raise CodecError(f"pipeline: stage {text!r} is not a transform; only the last stage may be "
                                 "a plain codec (transforms: codecs with forward/inverse, e.g. svd)")
        object.__setattr__(self, "_codecs", tuple(codecs))

    @classmethod
    def of(cls, stages: Sequence[Codec]) -> "Pipeline":
        """The pipeline of these codec objects (transforms first, one codec last)."""
        return cls(stages=tuple(spec_string(c) for c in stages))

    def _tail(self) -> Codec:
        """What encodes the first transform's output: the last codec, or the pipeline of the rest."""
        rest = self.stages[1:]
        return self._codecs[-1] if len(rest) == 1 else Pipeline(stages=rest)

    # ---- codec hooks --------------------------------------------------------------------------------
    def encode_body(self, values: list[torch.Tensor], specs: Sequence[TensorSpec], seed: int) -> bytes:
        tensors = {spec.name: v for spec, v in zip(specs, values)}
        if len(self._codecs) == 1:
            return self._codecs[0].encode(tensors, seed=derive_seed(seed, "stage", 0))
        out = self._codecs[0].forward(tensors, derive_seed(seed, "stage", 0))
        return self._tail().encode(out, seed=derive_seed(seed, "stage", 1))

    def decode_body(self, body: memoryview, specs: Sequence[TensorSpec], seed: int) -> list[torch.Tensor]:
        one = len(self._codecs) == 1
        tail = self._codecs[0] if one else self._tail()
        total = sum(s.numel for s in specs)
        # the nested header is the sender's too: at most NESTED_GROWTH x the outer tensors and elements
        limits = Limits(max_numel=NESTED_GROWTH * total + (1 << 16), max_tensors=NESTED_GROWTH * len(specs))
        header, inner = unpack(body, limits=limits)
        if header.codec_id != tail.codec_id:
            raise PayloadError(f"pipeline: nested payload is {header.codec_id!r}, expected {tail.codec_id!r}")
        try:
            same = _agrees(tail, type(tail).from_payload_config(header.config), header.config)
        except CodecError as e:
            raise PayloadError(f"pipeline: nested payload carries an invalid config: {e}") from e
        if not same:
            raise PayloadError(f"pipeline: nested {tail.codec_id!r} config {header.config} differs from the stage's")
        nested = decode_with(type(tail), header, inner, expect=None,
                             max_numel=NESTED_GROWTH * total + (1 << 16))
        tensors = nested if one else self._codecs[0].inverse(nested, specs)
        out = []
        for spec in specs:
            x = tensors.get(spec.name)
            if not isinstance(x, torch.Tensor) or tuple(x.shape) != spec.shape:
                got = None if x is None else tuple(getattr(x, "shape", ()))
                raise PayloadError(f"pipeline: tensor {spec.name!r} came back as {got}, expected {spec.shape}")
            out.append(x)
        if len(tensors) != len(specs):
            raise PayloadError(f"pipeline: {len(tensors)} tensors came back for {len(specs)} declared")
        return out


def _agrees(stage: Codec, nested: Codec, written: Mapping) -> bool:
    """Whether a nested payload's codec is the one the stage's spec named when the payload was made: the
    same codec, or one that differs only in options the nested header leaves out while the stage has them
    at their defaults — a payload from before such an option existed, where the spec (e.g. ``"drive"``)
    meant what the header's codec reads it as (``Codec.from_payload_config``, e.g. DRIVE's old layout)."""
    if nested == stage:
        return True
    if not dataclasses.is_dataclass(stage) or type(stage) is not type(nested):
        return False
    for f in dataclasses.fields(stage):
        mine, theirs = getattr(stage, f.name), getattr(nested, f.name)
        if f.name in written:
            if mine != theirs:
                return False
        elif mine != theirs and (f.default is dataclasses.MISSING or mine != f.default):
            return False
    return True

