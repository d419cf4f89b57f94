"""signSGD with a scale: sign bits plus one fp32 scale per tensor.

Bernstein, Wang, Azizzadenesheli, Anandkumar, "signSGD: Compressed Optimisation for Non-Convex
Problems", ICML 2018 (signs only); Karimireddy, Rebjock, Stich, Jaggi, "Error Feedback Fixes
SignSGD and other Gradient Compression Schemes", ICML 2019 (EF-signSGD: the scaled sign
``C(p) = (||p||_1 / d) sign(p)``, a biased but contractive compressor). For EF-signSGD wrap it in
``ef``: ``"ef(inner='signsgd')"``.

Wire format per tensor::

    scale       fp32 little-endian ||p||_1 / d (rounded to nearest)
                (absent with scale = "none")
    signs       ceil(d / 8) bytes, bit i = 1 iff p_i < 0 (MSB first, zero padding);
                sign(0) is taken as +1

Switch: ``scale = "none"`` sends the bare signs and decodes to ±1 (Bernstein et al.'s signSGD,
where the step size carries the magnitude).
"""
from __future__ import annotations

import dataclasses

import numpy as np
import torch

from fedsqueeze.codecs import sparse
from fedsqueeze.codecs.base import Codec
from fedsqueeze.codecs.bits import pack_bits, pack_scale, read_scale, unpack_bits
from fedsqueeze.errors import CodecError


@dataclasses.dataclass(frozen=True)
class SignSGD(Codec):
    """signSGD: one sign bit per entry and one fp32 scale ||p||_1/d per tensor (EF-signSGD)."""

    codec_id = "signsgd"

    scale: str = "l1"

    def __post_init__(self) -> None:
        if self.scale not in ("l1", "none"):
            raise CodecError(f"signsgd: scale must be 'l1' or 'none', got {self.scale!r}")

    def encode_tensor(self, x: torch.Tensor, seed: int) -> bytes:
        p = x.reshape(-1)
        signs = pack_bits((p < 0).numpy())
        if self.scale == "none":
            return signs
        l1 = float(torch.linalg.vector_norm(p, 1))
        if not np.isfinite(l1):  # fp32 accumulation overflowed: redo in float64
            l1 = float(torch.linalg.vector_norm(p.double(), 1))
        return pack_scale(l1 / p.numel()) + signs

    def decode_tensor(self, data: memoryview, shape: tuple[int, ...], seed: int) -> torch.Tensor:
        scale, body = (1.0, data) if self.scale == "none" else (read_scale(data), data[4:])
        scale = np.float32(scale)
        return torch.from_numpy(unpack_bits(body, sparse.numel(shape), values=[scale, -scale]))
