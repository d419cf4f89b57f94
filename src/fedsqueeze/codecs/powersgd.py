"""PowerSGD: rank-r compression by one step of power iteration, warm-started, with error feedback.

Vogels, Karimireddy, Jaggi. "PowerSGD: Practical Low-Rank Gradient Compression for Distributed
Optimization". NeurIPS 2019. arXiv 1905.13727.

Each float tensor with two or more dimensions is reshaped to a matrix ``M`` (``out`` x ``in·k·k``)
and compressed with rank ``r = min(rank, out, in·k·k)`` (Algorithm 1, one worker)::

    P = M Q;  P̂ = orthonormalize(P);  Q' = Mᵀ P̂;  send P̂, Q';  receiver: M̂ = P̂ Q'ᵀ

``M̂`` is ``M`` projected on the span of ``P̂``: exact when ``rank(M) <= r``. Biased. Other tensors
(1-D, scalars) travel as raw float32. Orthonormalization is a Householder QR (the paper uses
Gram–Schmidt: same span, but QR stays orthonormal when ``P`` is rank-deficient).

State (``encode_stateful``; ``stateful = True``): ``{"q": {name: Q'}, "residual": {name: e}}``.
- warm start: the next call starts its power step from the previous ``Q'`` of the same tensor,
  so repeated calls on a slowly changing matrix run subspace iteration and approach its best
  rank-r approximation;
- error feedback: the next call compresses ``M + e`` and keeps ``e ← (M + e) − M̂``, so nothing is
  lost, only delayed.
Plain ``encode`` is stateless: ``Q`` starts as N(0, 1) draws from the per-tensor seed. The state
returned is on the CPU; state handed in may be on any device (it is moved to the CPU first).

Body of a matrix: ``P̂`` (out x r) then ``Q'`` (in·k·k x r), float32 little-endian, row-major;
``r`` follows from the config and the shape, so the length is checked exactly. Other tensors:
raw float32. The power step and the reconstruction run in float64 (reconstruction rounds once to
float32, so it is reproducible across BLAS libraries in practice).
"""
from __future__ import annotations

import contextvars
import dataclasses
import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from fedsqueeze.codecs.base import Codec, host_state, host_tensors
from fedsqueeze.errors import CodecError, PayloadError
from fedsqueeze.seeding import derive_seed

# During encode_stateful: per-tensor seed -> (tensor name, warm-start Q or None), and a sink that
# collects (name -> (P, Q)) for the new state. Keyed by the per-tensor seed ``derive_seed(seed, i)``
# that the base class hands to ``encode_tensor``.
_CALL: contextvars.ContextVar[tuple[dict[int, tuple[str, torch.Tensor | None]], dict] | None] = \
    contextvars.ContextVar("powersgd_call", default=None)


def power_step(m: torch.Tensor, q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One power-iteration step on matrix ``m`` from ``q`` (in x r): ``(P̂, Q')`` as float32."""
    m64 = m.to(torch.float64)
    p, _ = torch.linalg.qr(m64 @ q.to(torch.float64))
    return p.to(torch.float32).contiguous(), (m64.T @ p).to(torch.float32).contiguous()


def low_rank(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """``P Qᵀ`` in float64, rounded once to float32."""
    return (p.to(torch.float64) @ q.to(torch.float64).T).to(torch.float32)


@dataclasses.dataclass(frozen=True)
class PowerSGD(Codec):
    """PowerSGD: rank-r power iteration per matrix, warm start and error feedback (Vogels et al. 2019)."""

    codec_id = "powersgd"
    stateful = True

    rank: int = 2
    warm_start: bool = True
    error_feedback: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.rank, bool) or not isinstance(self.rank, int) or not 1 <= self.rank <= 4096:
            raise CodecError(f"powersgd: rank must be an integer from 1 to 4096, got {self.rank!r}")
        for name in ("warm_start", "error_feedback"):
            if not isinstance(getattr(self, name), bool):
                raise CodecError(f"powersgd: {name} must be true or false, got {getattr(self, name)!r}")

    def _rank(self, shape: tuple[int, ...]) -> int:
        return min(self.rank, shape[0], math.prod(shape[1:]))

    # ---- per tensor -----------------------------------------------------------------------------
    def encode_tensor(self, x: torch.Tensor, seed: int) -> bytes:
        if x.dim() < 2:
            return x.reshape(-1).numpy().astype("<f4").tobytes()
        m = x.reshape(x.shape[0], -1)
        r = self._rank(tuple(x.shape))
        call = _CALL.get()
        name, q = call[0].get(seed, (None, None)) if call else (None, None)
        if q is None or tuple(q.shape) != (m.shape[1], r):
            q = torch.randn(m.shape[1], r, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
        p, q = power_step(m, q)
        if call is not None and name is not None:
            call[1][name] = (p, q)
        return p.numpy().astype("<f4").tobytes() + q.numpy().astype("<f4").tobytes()

    def decode_tensor(self, data: memoryview, shape: tuple[int, ...], seed: int) -> torch.Tensor:
        n = math.prod(shape)
        if len(shape) < 2:
            if len(data) != 4 * n:
                raise PayloadError(f"powersgd: {len(data)} bytes for {n} raw float32 values")
            return torch.from_numpy(np.frombuffer(data, dtype="<f4").astype(np.float32))
        rows, inner, r = shape[0], n // shape[0], self._rank(shape)
        if len(data) != 4 * r * (rows + inner):
            raise PayloadError(f"powersgd: {len(data)} bytes for rank-{r} factors of a {rows} x {inner} matrix")
        vals = np.frombuffer(data, dtype="<f4").astype(np.float32)
        if not np.isfinite(vals).all():
            raise PayloadError("powersgd: a factor holds NaN or Inf")
        t = torch.from_numpy(vals)
        return low_rank(t[:rows * r].view(rows, r), t[rows * r:].view(inner, r)).reshape(shape)

    # ---- stateful -------------------------------------------------------------------------------
    def encode_stateful(self, tensors: Mapping[str, torch.Tensor], *, seed: int,
                        state: Any) -> tuple[bytes, Any]:
        state = state if isinstance(state, dict) else {}
        # state may come back on a device (the engine moves client states): compute on the CPU
        old_q = host_state(state.get("q", {})) if self.warm_start else {}
        old_res = host_state(state.get("residual", {})) if self.error_feedback else {}
        inputs: dict[str, torch.Tensor] = {}
        for name, t in host_tensors(tensors).items():
            e = old_res.get(name)
            if e is not None and t.is_floating_point() and tuple(e.shape) == tuple(t.shape):
                t = t.to(torch.float32) + e
            inputs[name] = t
        warm = {derive_seed(seed, i): (name, old_q.get(name)) for i, name in enumerate(inputs)}
        sink: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        token = _CALL.set((warm, sink))
        try:
            payload = self.encode(inputs, seed=seed)
        finally:
            _CALL.reset(token)
        new_state: dict[str, dict[str, torch.Tensor]] = {"q": {}, "residual": {}}
        for name, (p, q) in sink.items():
            new_state["q"][name] = q
            if self.error_feedback:
                x = inputs[name].detach().to(torch.float32)
                new_state["residual"][name] = x - low_rank(p, q).reshape(x.shape)
        return payload, new_state
