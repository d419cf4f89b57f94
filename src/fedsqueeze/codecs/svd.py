"""FedKD's dynamic SVD: each matrix as its smallest truncated SVD that keeps a fraction T of the energy.

Wu, Wu, Lyu, Huang, Xie. "Communication-efficient federated learning via knowledge distillation".
Nature Communications 13:2032 (2022). arXiv 2108.13323. (docs/methods.md §1.)

Every float tensor with two or more dimensions is reshaped to ``(out, in·k·k)`` (first dimension
against the rest) and factorised ``W = U Σ Vᵀ``; the rank kept is the smallest ``K >= 1`` with
``Σ_{j<=K} σ_j² >= T · Σ_j σ_j²`` (``energy_rank``). The receiver rebuilds ``Ŵ = U_K diag(σ_K) V_Kᵀ``;
``‖W − Ŵ‖²_F = Σ_{j>K} σ_j² <= (1 − T) ‖W‖²_F``. Biased (a projection). Other tensors (1-D, scalars)
travel as raw float32.

Body of a factorised tensor (``out`` x ``inner`` matrix)::

    K        varint, 1 <= K <= min(out, inner)
    U_K      out x K floats, float32 little-endian, row-major
    σ_K      K floats
    V_K      inner x K floats, row-major

Body of any other float tensor: its values as float32 little-endian. The decoder checks ``K``
against the shape and the body length against ``K`` before allocating. Reconstruction runs in
float64 and rounds once to float32, so it is reproducible across BLAS libraries in practice.

As a transform (pipelines, the FedKD algorithm): ``forward(tensors, seed)`` returns the factors as
tensors named ``"<name>/U"``, ``"<name>/S"``, ``"<name>/V"`` (other tensors unchanged under their own
name) and ``inverse(factors, specs)`` rebuilds the tensors, validating every factor's shape. Both
take tensors on any device and compute on the CPU: the factors and the rebuilt tensors are CPU
tensors; tensors ``forward`` does not factorise pass through as they are (see ``codecs.base``).

Where FedKD's released code differs from the paper (we implement the paper):
- the reconstruction multiplies ``U`` by ``Vᵀ`` without ``diag(σ)``;
- the energy rule can return rank 0 (here ``K >= 1`` always, also for a zero matrix);
- the thresholds are parsed as integers (so 0.95 became 0); here ``threshold`` is a float in (0, 1].
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence

import numpy as np
import torch

from fedsqueeze.codecs.base import Codec, Tensors, host
from fedsqueeze.errors import CodecError, PayloadError
from fedsqueeze.wire.payload import TensorSpec
from fedsqueeze.wire.varint import Reader, encode_varint

FACTORS = ("U", "S", "V")


def energy_rank(sigma: torch.Tensor, threshold: float) -> int:
    """Smallest ``K >= 1`` with ``Σ_{j<=K} σ_j² >= threshold · Σ_j σ_j²`` (σ sorted decreasingly).

    Sums in float64; an all-zero ``sigma`` gives 1.
    """
    if not 0.0 < threshold <= 1.0:
        raise CodecError(f"energy threshold must be in (0, 1], got {threshold!r}")
    s = sigma.detach().reshape(-1).to(torch.float64)
    if not s.numel():
        raise CodecError("energy_rank needs at least one singular value")
    cum = torch.cumsum(s * s, 0)
    k = int((cum < threshold * cum[-1]).sum()) + 1
    return min(k, s.numel())


def factorize(w: torch.Tensor, threshold: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(U_K, σ_K, V_K)`` float32 of ``w`` reshaped to ``(w.shape[0], -1)``."""
    m = w.detach().reshape(w.shape[0], -1)
    u, s, vh = torch.linalg.svd(m.to(torch.float64), full_matrices=False)
    k = energy_rank(s, threshold)
    return (u[:, :k].to(torch.float32).contiguous(), s[:k].to(torch.float32),
            vh[:k].T.to(torch.float32).contiguous())


def reconstruct(u: torch.Tensor, s: torch.Tensor, v: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """``U diag(σ) Vᵀ`` computed in float64, rounded once to float32, reshaped to ``shape``."""
    w = (u.to(torch.float64) * s.to(torch.float64)) @ v.to(torch.float64).T
    return w.to(torch.float32).reshape(tuple(shape))


def factorizable(spec: TensorSpec) -> bool:
    """Tensors the SVD applies to: floating point, at least 2-D, not empty."""
    return spec.dtype.is_floating_point and len(spec.shape) >= 2 and spec.numel > 0


def _floats(t: torch.Tensor) -> bytes:
    return t.reshape(-1).numpy().astype("<f4").tobytes()


@dataclasses.dataclass(frozen=True)
class SVD(Codec):
    """FedKD dynamic SVD: smallest rank keeping a fraction ``threshold`` of each matrix's energy."""

    codec_id = "svd"

    threshold: float = 0.95

    def __post_init__(self) -> None:
        t = self.threshold
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not 0.0 < t <= 1.0:
            raise CodecError(f"svd: threshold must be a number in (0, 1], got {t!r}")

    # ---- codec ----------------------------------------------------------------------------------
    def encode_tensor(self, x: torch.Tensor, seed: int) -> bytes:
        if x.dim() < 2:
            return _floats(x)
        u, s, v = factorize(x, self.threshold)
        return encode_varint(s.numel()) + _floats(u) + _floats(s) + _floats(v)

    def decode_tensor(self, data: memoryview, shape: tuple[int, ...], seed: int) -> torch.Tensor:
        if len(shape) < 2:
            if len(data) != 4 * math.prod(shape):
                raise PayloadError(f"svd: {len(data)} bytes for {math.prod(shape)} raw float32 values")
            return torch.from_numpy(np.frombuffer(data, dtype="<f4").astype(np.float32))
        rows = shape[0]
        inner = math.prod(shape[1:])
        r = Reader(data)
        k = r.varint(limit=min(rows, inner))
        if k < 1:
            raise PayloadError("svd: rank 0 in the payload")
        if r.remaining() != 4 * k * (rows + 1 + inner):
            raise PayloadError(f"svd: {r.remaining()} bytes for rank {k} factors of a {rows} x {inner} matrix")
        vals = np.frombuffer(r.take(r.remaining()), dtype="<f4").astype(np.float32)
        if not np.isfinite(vals).all():
            raise PayloadError("svd: a factor holds NaN or Inf")
        t = torch.from_numpy(vals)
        u, s, v = t[:rows * k].view(rows, k), t[rows * k:rows * k + k], t[rows * k + k:].view(inner, k)
        return reconstruct(u, s, v, shape)

    # ---- transform ------------------------------------------------------------------------------
    def forward(self, tensors: Mapping[str, torch.Tensor], seed: int = 0) -> Tensors:
        """Factor tensors ``"<name>/U"`` (out x K), ``"<name>/S"`` (K), ``"<name>/V"`` (inner x K) for
        every factorizable tensor; the others unchanged under their own name. ``seed`` is unused
        (the SVD is deterministic) and accepted for the transform protocol."""
        out: Tensors = {}
        for name, t in tensors.items():
            if factorizable(TensorSpec.of(name, t)):
                t = host(t, name)  # factorised on the CPU (LAPACK), as in encode
                if t.dtype != torch.float32:
                    t = t.to(torch.float32)
                if not bool(torch.isfinite(t).all()):
                    raise CodecError(f"tensor {name!r} contains NaN or Inf; refusing to factorize it")
                parts = dict(zip(FACTORS, factorize(t, self.threshold)))
                items = [(f"{name}/{f}", parts[f]) for f in FACTORS]
            else:
                items = [(name, t)]
            for key, value in items:
                if key in out:
                    raise CodecError(f"svd: factor name {key!r} collides with another tensor's name")
                out[key] = value
        return out

    def inverse(self, factors: Mapping[str, torch.Tensor], specs: Sequence[TensorSpec]) -> Tensors:
        """The tensors described by ``specs`` rebuilt from ``forward``'s output (PayloadError if a
        factor is missing, extra, or of the wrong shape)."""
        factors = {k: host(v, k) if isinstance(v, torch.Tensor) else v for k, v in factors.items()}
        out: Tensors = {}
        used = 0
        for spec in specs:
            if not factorizable(spec):
                t = _get(factors, spec.name, spec.shape)
                out[spec.name] = t.to(spec.dtype)
                used += 1
                continue
            rows, inner = spec.shape[0], math.prod(spec.shape[1:])
            s = factors.get(f"{spec.name}/S")
            k = s.numel() if isinstance(s, torch.Tensor) and s.dim() == 1 else -1
            if not 1 <= k <= min(rows, inner):
                raise PayloadError(f"svd: factor {spec.name + '/S'!r} is missing or its rank is outside "
                                   f"1..{min(rows, inner)}")
            u = _get(factors, f"{spec.name}/U", (rows, k))
            v = _get(factors, f"{spec.name}/V", (inner, k))
            out[spec.name] = reconstruct(u, s, v, spec.shape).to(spec.dtype)
            used += 3
        if used != len(factors):
            raise PayloadError(f"svd: {len(factors) - used} unexpected factor tensors")
        return out


def _get(factors: Mapping[str, torch.Tensor], name: str, shape: tuple[int, ...]) -> torch.Tensor:
    t = factors.get(name)
    if not isinstance(t, torch.Tensor) or tuple(t.shape) != tuple(shape):
        got = None if t is None else tuple(getattr(t, "shape", ()))
        raise PayloadError(f"svd: factor {name!r} should have shape {tuple(shape)}, got {got}")
    return t

