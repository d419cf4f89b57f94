"""Simulated client faults, to exercise the engine's defences; all off by default.

Two families, both drawn from ``(seed, purpose, round, step, client[, attempt])`` alone (see
``fedsqueeze.seeding``), so a run with faults is as reproducible — and as resumable — as one without:

- **No reply** (``engine.dropout``, ``engine.straggler``; simulation engine only, a deployment has real
  ones): in each attempt of a step, a pending client drops out with probability ``dropout``, else it
  is too slow for the step's deadline with probability ``straggler``. Either way the server gets
  nothing from it in that attempt and the client does no work (its state stays as it was).
- **Bad reply** (``engine.faults = {kind: probability}``; injected in ``Runtime.run_client``, so the
  worker pool and Flower clients see them too): after a normal client update, with the given
  probabilities (drawn once per (round, step, client); at most one fault) the client

  * ``nan``:   uploads a NaN as the first value of each message (framed by the configured codec's body
    encoder, bypassing its NaN guard as a non-conforming client would; exact for fp32/fp16/bf16, a
    lossy codec may quantize the NaN away);
  * ``raise``: raises ``InjectedFault`` after finishing its work (a crash before replying);
  * ``shape``: uploads the first tensor of its first message one value short;
  * ``scale``: uploads every message multiplied by ``SCALE`` (a boosted or exploded update).
"""
from __future__ import annotations

from typing import Any

import torch

from fedsqueeze.codecs.base import Codec, Tensors
from fedsqueeze.config import FAULT_KINDS, Config
from fedsqueeze.seeding import numpy_rng
from fedsqueeze.wire.payload import Header, TensorSpec, pack

SCALE = 1000.0  # the factor of an injected ``scale`` fault


class InjectedFault(RuntimeError):
    """The exception of an injected ``raise`` fault (``engine.faults``)."""


def no_reply(cfg: Config, rnd: int, step: int, client: int, attempt: int) -> str | None:
    """'dropout', 'straggler' or None: whether (and why) a client does not reply in this attempt."""
    eng = cfg.engine
    if not (eng.dropout or eng.straggler):
        return None
    u = numpy_rng(cfg.seed, "no-reply", rnd, step, client, attempt).random(2)
    if u[0] < eng.dropout:
        return "dropout"
    if u[1] < eng.straggler:
        return "straggler"
    return None


def client_fault(cfg: Config, rnd: int, step: int, client: int) -> str | None:
    """The injected fault of this client in this step (one of ``FAULT_KINDS``) or None."""
    probs = cfg.engine.faults
    if not probs:
        return None
    u = numpy_rng(cfg.seed, "client-fault", rnd, step, client).random()
    edge = 0.0
    for kind in FAULT_KINDS:
        edge += float(probs.get(kind, 0.0))
        if u < edge:
            return kind
    return None


def corrupt(fault: str, up: dict[str, Tensors]) -> dict[str, Tensors]:
    """The messages a client with a ``shape`` or ``scale`` fault uploads instead of ``up``."""
    if fault == "scale":
        return {kind: {name: t * SCALE for name, t in msg.items()} for kind, msg in up.items()}
    if fault == "shape":
        out = {kind: dict(msg) for kind, msg in up.items()}
        for msg in out.values():
            if msg:
                name = next(iter(msg))
                msg[name] = msg[name].reshape(-1)[:-1].clone()
                break
        return out
    return up


def with_nan(tensors: Tensors) -> Tensors:
    """A copy of a message whose first floating-point value is NaN."""
    out = dict(tensors)
    for name, t in tensors.items():
        if t.is_floating_point() and t.numel():
            t = t.clone()
            t.view(-1)[0] = float("nan")
            out[name] = t
            break
    return out


def encode_unguarded(codec: Codec, tensors: Tensors, seed: int) -> bytes:
    """A payload of ``codec`` built without ``Codec.encode``'s NaN/Inf check (error feedback sends its
    inner codec's payload, so the inner codec frames it)."""
    inner: Any = getattr(codec, "codec", codec) if codec.stateful else codec
    specs = tuple(TensorSpec.of(name, t) for name, t in tensors.items())
    values = [(t.detach().to(torch.float32) if t.is_floating_point() else t.detach()).contiguous()
              for t in tensors.values()]
    return pack(Header(inner.codec_id, seed, inner.get_config(), specs), inner.encode_body(values, specs, seed))
