"""Error feedback: compress ``x + e`` and carry what was lost, ``e' = x + e - C(x + e)``, to the next call.

Seide et al., "1-Bit Stochastic Gradient Descent and its Application to Data-Parallel Distributed
Training of Speech DNNs", Interspeech 2014; Stich, Cordonnier & Jaggi, NeurIPS 2018 (memory);
Karimireddy et al., ICML 2019 (EF-signSGD). With a contractive inner codec the residual stays
bounded, so the sum of what was sent tracks the sum of the inputs: after T calls
``sum_t C_t = sum_t x_t - e_T`` (up to fp32 rounding). Use it as ``"ef(inner='topk(fraction=0.01)')"``;
the inner codec may be a pipeline: ``"ef(inner='svd | rdq(coder=\"ans\")')"`` (a ``|`` inside
parentheses or quotes does not split the outer spec).

Wire: **the inner codec's own payload.** Error feedback changes only what the sender compresses,
never how the bytes are read, so the header names the inner codec (``topk``, ``signsgd``, ...)
and any receiver decodes it with ``decode_any`` without knowing that EF was used; ``EF.decode``
simply delegates. No bytes are spent on the wrapper.

State (kept by the caller, e.g. the engine's client state store, never in the codec): a dict of
fp32 residual tensors by name, or None before the first call. The residuals returned are on the
CPU; residuals handed in may be on any device (moved to the CPU first), as may the inputs: the bytes
and the new residuals do not depend on the device (see ``codecs.base``). ``encode`` without state uses a
zero residual (plain inner encoding). Integer tensors pass through untouched and carry no
residual; other float dtypes are corrected in fp32 and sent in their own dtype (the rounding
lands in the residual). The sender decodes its own payload once per call to learn ``C(x + e)`` exactly as the receiver
will see it.
"""
from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from fedsqueeze.codecs.base import (DEFAULT_MAX_NUMEL, DEFAULT_MAX_TENSORS, Codec, DeviceLike, Tensors, host,
                                    host_tensors)
from fedsqueeze.errors import CodecError, PayloadError
from fedsqueeze.wire.payload import TensorSpec


@dataclasses.dataclass(frozen=True)
class ErrorFeedback(Codec):
    """Error feedback around any codec: compresses x + residual; the wire carries the inner payload."""

    codec_id = "ef"
    stateful = True

    inner: str = "topk(fraction=0.01)"

    def __post_init__(self) -> None:
        if not isinstance(self.inner, str):
            raise CodecError(f"ef: inner must be a codec spec string such as 'topk(fraction=0.01)', "
                             f"got {self.inner!r}")
        if self.codec.stateful:
            raise CodecError(f"ef: the inner codec {self.inner!r} is itself stateful; nest error feedback once")

    @functools.cached_property
    def codec(self) -> Codec:
        from fedsqueeze.codecs.spec import make_codec  # spec imports the registry, which lists us

        return make_codec(self.inner)

    def encode(self, tensors: Mapping[str, torch.Tensor], *, seed: int = 0) -> bytes:
        return self.codec.encode(tensors, seed=seed)

    def decode(self, data: bytes, *, expect: Sequence[TensorSpec] | Mapping[str, TensorSpec] | None = None,
               max_numel: int = DEFAULT_MAX_NUMEL, max_tensors: int = DEFAULT_MAX_TENSORS, max_bytes: int | None = None,
               device: DeviceLike = None) -> Tensors:
        return self.codec.decode(data, expect=expect, max_numel=max_numel, max_tensors=max_tensors,
                                 max_bytes=max_bytes, device=device)

    def decode_body(self, body: memoryview, specs: Sequence[TensorSpec], seed: int) -> list[torch.Tensor]:
        raise PayloadError("a payload names codec 'ef', but error feedback sends the inner codec's payload")

    def encode_stateful(self, tensors: Mapping[str, torch.Tensor], *, seed: int,
                        state: Any) -> tuple[bytes, dict[str, torch.Tensor]]:
        residual = state or {}
        wanted, to_send = {}, {}
        for name, t in host_tensors(tensors).items():  # on the CPU, like every codec's arithmetic
            if t.is_floating_point():
                want = t.to(torch.float32)
                e = residual.get(name)
                if e is not None:
                    e = host(e, name)  # the engine may hand the residual back on a device
                    if e.shape != t.shape:
                        raise CodecError(f"ef: residual for {name!r} has shape {tuple(e.shape)}, the tensor "
                                         f"{tuple(t.shape)}; reset the state after changing the model")
                    want = want + e
                wanted[name] = want
                t = want.to(t.dtype)  # the declared dtype stays the caller's
            to_send[name] = t
        payload = self.codec.encode(to_send, seed=seed)
        sent = self.codec.decode(payload)
        return payload, {name: want - sent[name].to(torch.float32) for name, want in wanted.items()}
