"""DRIVE: one sign bit per rotated coordinate plus one scale.

Vargaftik, Ben-Basat, Portnoy, Mendelson, Ben-Itzhak, Mitzenmacher. "DRIVE: One-bit Distributed
Mean Estimation". NeurIPS 2021. arXiv 2105.08339.

The sender rotates ``x`` with the randomized Hadamard transform ``R`` (seeded; the receiver
regenerates it) and sends ``sign(R x)`` and a scale ``S``; the receiver returns
``x̂ = Rᵀ (S · sign(R x))``.

- ``scale="unbiased"`` (default): ``S = ‖x‖² / ‖R x‖₁``. Then ``⟨x̂, x⟩ = ‖x‖²`` exactly and, with a
  uniform random rotation, ``E[x̂] = x``; vNMSE ``E‖x̂ − x‖² / ‖x‖² → π/2 − 1 ≈ 0.571``.
- ``scale="biased"``: ``S = ‖R x‖₁ / d``, the least-squares scale: vNMSE ``→ 1 − 2/π ≈ 0.363``.

``d`` is the padded (power-of-two) length. ``chunk`` (default 2**16): tensors longer than
``chunk`` are rotated in rows of ``chunk`` values (plus a tail row padded to a power of two), each
with its own scale: every row is an independent DRIVE instance with the same error, padding stays
below ``chunk`` values, and the scales cost 32 bits per ``chunk`` coordinates. ``chunk >= numel``
is the paper's whole-tensor rotation. ``layout`` (default ``"split"``): the tail after the full rows
becomes power-of-two rows of at least 1024 values plus one padded row for the last ``< 1024``
values; ``"pow2"`` pads the whole tail to one power-of-two row (the original format, up to half of
it padding). See ``fedsqueeze.codecs.rotated``.

Rotation: the randomized Hadamard transform, the paper's practical choice (its proofs assume a
uniform random rotation). ``⟨x̂, x⟩ = ‖x‖²`` still holds exactly, but ``E[x̂] = x`` only
approximately: over 2000 seeds, a Gaussian ``x`` with d = 256 shows no bias beyond the sampling
noise, while a heavy-tailed ``x`` (cubed Gaussian) with d = 64 has ``‖E x̂ − x‖² / ‖x‖² ≈ 0.14``.

Released code (``amitport/DRIVE-One-bit-Distributed-Mean-Estimation``, ``drive_torch/drive.py``):
it needs a power-of-two length (no padding, no chunks), offers only the unbiased scale (plus
DRIVE+, the 2-means variant, not implemented here), returns the signs as a float tensor (no bit
packing), and its in-place butterfly forms ``a − b`` as ``(a + b) − 2b`` (other rounding). None of
this changes the estimator; we follow the paper.

Body: ``rows`` float32 scales, then one bit per padded coordinate, 1 = negative (``R x < 0``),
0 = non-negative, MSB-first (see ``fedsqueeze.codecs.rotated``). About ``1 + 32 / chunk``
bits per coordinate plus padding (below 1024 coordinates per tensor with ``layout="split"``: the
MLP 784-200-200-10 costs 1.010 bits/parameter, headers included; 1.172 with ``"pow2"``).
"""
from __future__ import annotations

import dataclasses
import math

import numpy as np
import torch

from fedsqueeze.codecs.rotated import RotatedCodec, row_norms
from fedsqueeze.errors import CodecError

_SIGN_LEVELS = np.array([1.0, -1.0], dtype=np.float32)


@dataclasses.dataclass(frozen=True)
class Drive(RotatedCodec):
    """DRIVE: Hadamard rotation, 1 sign bit per coordinate + one scale (Vargaftik et al. 2021)."""

    codec_id = "drive"

    scale: str = "unbiased"

    @property
    def unbiased(self) -> bool:  # type: ignore[override]
        return self.scale == "unbiased"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.scale not in ("unbiased", "biased"):
            raise CodecError(f"drive: scale must be 'unbiased' or 'biased', got {self.scale!r}")

    def levels(self) -> np.ndarray:
        return _SIGN_LEVELS

    def quantize(self, y: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        w = y.shape[1]
        l2, l1 = row_norms(y)
        if self.scale == "unbiased":  # ‖u‖² / ‖R u‖₁ with ‖u‖² = ‖y‖² / w, ‖R u‖₁ = ‖y‖₁ / sqrt(w)
            with np.errstate(divide="ignore", invalid="ignore"):
                s = np.where(l1 > 0, l2 * l2 / (math.sqrt(w) * l1), 0.0)
        else:  # ‖R u‖₁ / w
            s = l1 / (w * math.sqrt(w))
        return torch.lt(y, 0).numpy().reshape(-1).view(np.uint8), s
