"""Bitmask: tensors of zeros and ones as one bit per value (SPATL's explicit kept-channel mask).

Per tensor the chunk is ``ceil(numel / 8)`` bytes: bit i (MSB first, ``codecs.bits`` order) is set iff
element i (row-major) is non-zero; padding bits must be zero. Decoding gives 0.0/1.0 in the tensor's
shape. Lossless for 0/1 tensors (any other non-zero value decodes to 1). Not in the codec registry:
algorithms hand it out for their mask messages (``SPATL.codec``).
"""
from __future__ import annotations

import dataclasses
import math

import numpy as np
import torch

from fedsqueeze.codecs.base import Codec
from fedsqueeze.codecs.bits import pack_bits, unpack_bits


@dataclasses.dataclass(frozen=True)
class BitMask(Codec):
    codec_id = "bitmask"

    def encode_tensor(self, x: torch.Tensor, seed: int) -> bytes:
        return pack_bits(x.reshape(-1).numpy() != 0)

    def decode_tensor(self, data: memoryview, shape: tuple[int, ...], seed: int) -> torch.Tensor:
        bits = unpack_bits(data, math.prod(shape), np.array([0.0, 1.0], dtype=np.float32))
        return torch.from_numpy(np.ascontiguousarray(bits)).reshape(shape)
