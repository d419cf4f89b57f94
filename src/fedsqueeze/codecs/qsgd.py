"""QSGD: stochastic quantization to ``s`` levels per bucket, Elias-coded (Alistarh et al. 2017).

Alistarh, Grubic, Li, Tomioka, Vojnovic, "QSGD: Communication-Efficient SGD via Gradient
Quantization and Encoding", NeurIPS 2017. Each tensor is cut into buckets of ``bucket`` entries
(the last one shorter); a bucket ``v`` with norm ``||v||`` becomes
``Q(v_i) = ||v|| sgn(v_i) l_i / s`` with ``l_i = floor(r_i) + Bernoulli(r_i - floor(r_i))``,
``r_i = s |v_i| / ||v||``. Unbiased, with ``E||Q(v) - v||^2 <= min(n/s^2, sqrt(n)/s) ||v||^2`` for a
bucket of ``n`` entries (Lemma 3.1, ℓ2 norm).

Wire format per tensor (§3.2's Elias coding: the norm as a 32-bit float, then per non-zero level
the Elias-γ code of its position offset, one sign bit, the Elias-γ code of the level)::

    nnz         varint: number of non-zero levels in the tensor
    norms       ceil(d / bucket) x fp32 little-endian (rounded up, so every r_i <= s)
    records     nnz x [γ(gap), sign bit (1 = negative), γ(level)], MSB-first, zero-padded,
                gap = position - previous position (the first from -1), level in 1..s

Decoding runs through ``fedsqueeze.codecs.qsgd_scan`` (table-driven walkers; same columns as the
general ``bits.decode_records``, several times faster on long streams).

One deviation from the paper's per-bucket messages: the position gaps run through the whole
tensor instead of restarting in each bucket, so no per-bucket count is needed.

Defaults: ``levels = 16`` and ``bucket = 512``, the "4bit QSGD, bucket size 512" setting of the
paper's experiments. ``norm = "max"`` scales buckets by max|v_i| instead of ||v||_2, the variant
the paper's experiments (and released CNTK code) use; still unbiased, with a smaller variance,
but the variance bound above is proved for the ℓ2 norm (the default).
"""
from __future__ import annotations

import dataclasses

import numpy as np
import torch

from fedsqueeze.codecs import sparse
from fedsqueeze.codecs.base import Codec
from fedsqueeze.codecs.bits import encode_records
from fedsqueeze.codecs.qsgd_scan import decode_qsgd_records
from fedsqueeze.errors import CodecError, PayloadError
from fedsqueeze.seeding import torch_generator
from fedsqueeze.wire.varint import Reader, encode_varint

FIELDS = ["gamma", 1, "gamma"]


def fp32_at_least(x: np.ndarray) -> np.ndarray:
    """float64 -> the smallest float32 >= each value (CodecError if beyond the fp32 range)."""
    y = x.astype(np.float32)
    low = y.astype(np.float64) < x
    y[low] = np.nextafter(y[low], np.float32(np.inf))
    if not np.isfinite(y).all():
        raise CodecError("a bucket norm exceeds the fp32 range; scale the update down")
    return y


@dataclasses.dataclass(frozen=True)
class QSGD(Codec):
    """QSGD: per-bucket norm, s levels with stochastic rounding, Elias-coded gaps/signs/levels."""

    codec_id = "qsgd"
    unbiased = True

    levels: int = 16
    bucket: int = 512
    norm: str = "l2"

    def __post_init__(self) -> None:
        for name, hi in (("levels", 1 << 20), ("bucket", 1 << 24)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= hi:
                raise CodecError(f"qsgd: {name} must be an integer in [1, {hi}], got {v!r}")
        if self.norm not in ("l2", "max"):
            raise CodecError(f"qsgd: norm must be 'l2' or 'max', got {self.norm!r}")

    def bucket_norms(self, mags: torch.Tensor) -> np.ndarray:
        """fp32 norm of each row of |v| (never below the row's max, so every r_i <= s)."""
        peak = mags.amax(dim=1)
        if self.norm == "max":
            return peak.numpy()
        norms = torch.linalg.vector_norm(mags, dim=1)
        redo = ~torch.isfinite(norms) | ((peak < 1e-18) & (peak > 0))  # squares over/underflow fp32
        if bool(redo.any()):
            rows = redo.nonzero().reshape(-1)
            exact = torch.linalg.vector_norm(mags[rows].double(), dim=1).numpy()
            norms[rows] = torch.from_numpy(fp32_at_least(exact))
        return torch.maximum(norms, peak).numpy()

    def quantize(self, x: torch.Tensor, seed: int) -> tuple[np.ndarray, np.ndarray]:
        """(fp32 bucket norms, signed int32 levels in [-s, s]) for a tensor, flattened."""
        flat = x.reshape(-1)
        d = flat.numel()
        nb = -(-d // self.bucket)
        buckets = flat if d == nb * self.bucket else torch.nn.functional.pad(flat, (0, nb * self.bucket - d))
        mags = buckets.view(nb, self.bucket).abs()
        norms = self.bucket_norms(mags)
        scale = torch.from_numpy(np.divide(self.levels, norms, out=np.zeros_like(norms), where=norms > 0))
        r = mags.mul_(scale[:, None]).clamp_(max=self.levels).view(-1)[:d]
        level = r.floor()
        frac = r.sub_(level)
        level.add_(torch.rand(d, generator=torch_generator(seed, "qsgd")) < frac)
        level = level.to(torch.int32)
        level[flat < 0] *= -1
        return norms, level.numpy()

    def encode_tensor(self, x: torch.Tensor, seed: int) -> bytes:
        norms, level = self.quantize(x, seed)
        pos = np.flatnonzero(level)
        nonzero = level[pos]
        stream, _ = encode_records([np.diff(pos, prepend=-1), nonzero < 0, np.abs(nonzero)], FIELDS)
        return encode_varint(len(pos)) + norms.astype("<f4").tobytes() + stream

    def decode_tensor(self, data: memoryview, shape: tuple[int, ...], seed: int) -> torch.Tensor:
        d = sparse.numel(shape)
        # the bucket comes from the sender's header: one longer than the tensor is the whole tensor (the
        # same single norm), so nothing beyond the tensor's own size is allocated (below 2 d values)
        bucket = min(self.bucket, d)
        r = Reader(data)
        nnz = r.varint(limit=d)
        norms = np.frombuffer(r.take(4 * -(-d // bucket)), dtype="<f4")
        if not (np.isfinite(norms).all() and (norms >= 0).all()):
            raise PayloadError("qsgd: bucket norm is negative or not finite")
        gaps, neg, level = decode_qsgd_records(r.take(r.remaining()), nnz)
        if nnz and (gaps.max() > d or level.max() > self.levels):
            raise PayloadError(f"qsgd: position gap beyond the tensor or level above {self.levels}")
        pos = np.cumsum(gaps, out=gaps)
        pos -= 1
        if nnz and pos[-1] >= d:
            raise PayloadError(f"qsgd: position {int(pos[-1])} beyond a tensor of {d}")
        np.negative(level, out=level, where=neg.astype(bool))
        out = np.zeros(len(norms) * bucket, dtype=np.float32)
        out[pos] = level
        grid = out.reshape(len(norms), bucket)
        grid *= (norms.astype(np.float64) / self.levels).astype(np.float32)[:, None]
        return torch.from_numpy(out[:d])
