"""Plain floating-point codecs: fp32 (lossless), fp16 and bf16 (round to nearest)."""
from __future__ import annotations

import dataclasses

import torch

from fedsqueeze.codecs.base import Codec
from fedsqueeze.errors import PayloadError


@dataclasses.dataclass(frozen=True)
class _Cast(Codec):
    wire_dtype = torch.float32

    def encode_tensor(self, x: torch.Tensor, seed: int) -> bytes:
        x = x.reshape(-1)
        if self.wire_dtype == torch.float16:  # saturate instead of overflowing to Inf
            x = x.clamp(-65504.0, 65504.0)
        y = x.to(self.wire_dtype)
        # a byte view of the values (no copy here: the body writer copies them once, into the payload)
        return memoryview((y.view(torch.int16) if self.wire_dtype == torch.bfloat16 else y).numpy()).cast("B")  # type: ignore[return-value]

    def decode_tensor(self, data: memoryview, shape: tuple[int, ...], seed: int) -> torch.Tensor:
        item = torch.empty((), dtype=self.wire_dtype).element_size()
        numel = 1
        for d in shape:
            numel *= d
        if len(data) != numel * item:
            raise PayloadError(f"{self.codec_id}: body of {len(data)} bytes for {numel} values")
        raw = torch.frombuffer(bytearray(data), dtype=torch.int16 if self.wire_dtype == torch.bfloat16
                               else self.wire_dtype)
        if self.wire_dtype == torch.bfloat16:
            raw = raw.view(torch.bfloat16)
        return raw.to(torch.float32)


@dataclasses.dataclass(frozen=True)
class Float32(_Cast):
    """Identity: every value as a 4-byte IEEE float (the uncompressed baseline)."""

    codec_id = "fp32"
    lossless = True
    unbiased = True
    wire_dtype = torch.float32


@dataclasses.dataclass(frozen=True)
class Float16(_Cast):
    """Every value rounded to a 2-byte IEEE half float (round to nearest, saturating range)."""

    codec_id = "fp16"
    wire_dtype = torch.float16


@dataclasses.dataclass(frozen=True)
class BFloat16(_Cast):
    """Every value rounded to bfloat16 (fp32 range, 8-bit mantissa)."""

    codec_id = "bf16"
    wire_dtype = torch.bfloat16
