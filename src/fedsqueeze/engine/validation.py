"""Server-side checks of client replies: what the engine rejects before anything is aggregated.

A reply is *rejected* — logged with its client, round, step and reason, left out of the aggregate,
and its client's new state not committed — when the client raised, a payload does not decode, its
messages differ from what the algorithm expects (``Algorithm.upload_spec``: kinds, tensor names,
shapes, dtypes), a value is NaN/Inf, or the L2 norm of a message exceeds ``engine.max_update_norm``.
The norm is taken per message kind over all of its decoded tensors, ``sqrt(sum_t sum_i t_i^2)``
(in float64), so e.g. SCAFFOLD's ``update`` and ``control`` are bounded separately.

The expected tensors also go into ``decode`` (``expected_specs``): a payload whose header declares
other names, shapes, dtypes or more tensors is refused while the header is read, before anything is
allocated (``wire.payload.SpecMismatch``), and rejected with check ``spec`` as if it had been decoded.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import torch

from fedsqueeze.algorithms.base import Reply, UploadSpec
from fedsqueeze.errors import CodecError, FedsqueezeError, PayloadError
from fedsqueeze.wire.payload import SpecMismatch, TensorSpec


class TooFewReplies(FedsqueezeError):
    """A communication step ended with fewer valid replies than ``engine.min_replies``."""

    def __init__(self, summary: str, fix: str = "") -> None:
        super().__init__(f"{summary}; {fix}" if fix else summary)
        self.summary = summary  # what happened, without the advice (for the log of a skipped round)


@dataclass(frozen=True)
class Rejection:
    """One rejected reply, as written to ``rejections.jsonl``."""

    round: int
    step: int
    client: int
    check: str      # raised | decode | spec | nonfinite | norm | samples
    reason: str

    def to_json(self) -> dict:
        return asdict(self)


def check_num_samples(n: object) -> str | None:
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        return f"num_samples = {n!r} is not a count >= 0"
    return None


def check_kinds(uploaded: set[str], expected: UploadSpec | None) -> str | None:
    """Which message kinds are missing or unexpected (checked before decoding anything)."""
    if expected is None or uploaded == set(expected):
        return None
    missing, extra = sorted(set(expected) - uploaded), sorted(uploaded - set(expected))
    parts = ([f"missing message(s) {missing}"] if missing else []) + ([f"unexpected message(s) {extra}"]
                                                                      if extra else [])
    return "; ".join(parts)


def check_spec(kind: str, tensors: dict[str, torch.Tensor], expected: UploadSpec | None) -> str | None:
    """Tensor names, shapes and dtypes of one decoded message against the algorithm's expectation."""
    if expected is None:
        return None
    want = expected[kind]
    missing, extra = sorted(set(want) - set(tensors)), sorted(set(tensors) - set(want))
    if missing or extra:
        return (f"message {kind!r}: " + ", ".join(([f"missing tensors {missing[:3]}"] if missing else [])
                                                  + ([f"unexpected tensors {extra[:3]}"] if extra else [])))
    for name, t in tensors.items():
        shape, dtype = want[name]
        if tuple(t.shape) != tuple(shape) or t.dtype != dtype:
            return (f"message {kind!r}: tensor {name!r} is {tuple(t.shape)} {t.dtype}, expected "
                    f"{tuple(shape)} {dtype}")
    return None


def expected_specs(kind: str, expected: UploadSpec | None) -> dict[str, TensorSpec] | None:
    """The tensors the server expects in message ``kind`` as ``TensorSpec``s, passed into ``decode`` so a
    payload declaring others is refused while its header is read, before anything is allocated."""
    if expected is None or kind not in expected:
        return None
    return {name: TensorSpec(name, tuple(shape), dtype) for name, (shape, dtype) in expected[kind].items()}


def check_values(kind: str, tensors: dict[str, torch.Tensor], max_norm: float) -> tuple[str, str] | None:
    """(check, reason) if a value is NaN/Inf or the message's L2 norm exceeds ``max_norm`` (0 = no bound).

    Without a bound only finiteness matters: one pass summing each tensor in its own dtype (a NaN/Inf
    makes the sum non-finite; a finite sum proves every value finite), the elementwise scan only when
    the sum is not finite (a NaN, or a sum that overflowed). Same verdict as the float64 path, which a
    bound needs for its norm, without its float64 copy."""
    if not max_norm > 0:
        for name, t in tensors.items():
            if t.is_floating_point() and t.numel():
                t = t.detach()
                if not bool(torch.isfinite(t.sum())) and not bool(torch.isfinite(t).all()):
                    return "nonfinite", f"message {kind!r}: tensor {name!r} contains NaN or Inf"
        return None
    total = 0.0
    for name, t in tensors.items():
        if not t.is_floating_point() or not t.numel():
            continue
        x = t.detach().to(torch.float64).reshape(-1)
        sq = float(torch.dot(x, x))
        # a NaN/Inf value makes the sum of squares NaN/Inf; a finite one keeps it finite unless float64
        # squares overflow, so the elementwise scan runs only when the sum is not finite
        if not math.isfinite(sq) and not bool(torch.isfinite(x).all()):
            return "nonfinite", f"message {kind!r}: tensor {name!r} contains NaN or Inf"
        total += sq
    norm = math.sqrt(total)
    if max_norm > 0 and not norm <= max_norm:
        return "norm", f"message {kind!r}: L2 norm {norm:.6g} exceeds engine.max_update_norm = {max_norm:g}"
    return None


def message_norm(tensors: dict[str, torch.Tensor]) -> float:
    """The L2 norm the bound applies to: over all floating-point values of one message (float64)."""
    return math.sqrt(sum(float((t.detach().to(torch.float64) ** 2).sum()) for t in tensors.values()
                         if t.is_floating_point()))


def admit(rnd: int, step: int, client: int, ups: dict[str, bytes], n: Any, metrics: dict,
          expected: UploadSpec | None, decode: Callable[[str, bytes], dict[str, torch.Tensor]],
          max_norm: float) -> Reply | Rejection:
    """The decoded reply, or why it is rejected. Cheap checks first, and nothing undeclared is decoded;
    ``decode(kind, payload)`` raises ``PayloadError``/``CodecError`` on a payload it cannot read."""
    why = check_num_samples(n)
    if why:
        return Rejection(rnd, step, client, "samples", why)
    why = check_kinds(set(ups), expected)
    if why:
        return Rejection(rnd, step, client, "spec", why)
    decoded = {}
    for kind, p in ups.items():
        try:
            decoded[kind] = decode(kind, p)
        except SpecMismatch as e:  # refused from its header (``expected_specs`` passed into decode)
            return Rejection(rnd, step, client, "spec", f"message {kind!r}: {e.detail}")
        except (PayloadError, CodecError) as e:
            return Rejection(rnd, step, client, "decode", f"message {kind!r} does not decode: {e}")
        why = check_spec(kind, decoded[kind], expected)
        if why:
            return Rejection(rnd, step, client, "spec", why)
        bad = check_values(kind, decoded[kind], max_norm)
        if bad:
            return Rejection(rnd, step, client, *bad)
    return Reply(client, n, decoded, None, metrics)
