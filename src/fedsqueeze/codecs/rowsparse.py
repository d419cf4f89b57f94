"""Row-sparse: send only the output rows (filters, neurons) of each tensor that are not entirely zero.

Made for structured (filter) pruning, SPATL's salient-parameter upload (Yu et al., SC22): a client
zeroes the rows of the filters it does not upload, and this codec turns those zeros into a bitmap.
Lossless with ``values="fp32"`` (a zero row decodes to zeros, which it was).

Per floating-point tensor of shape ``(d0, d1, ...)`` (a scalar counts as ``(1,)``) the chunk is::

    rows      ceil(d0 / 8) bytes: bit i (MSB first) set iff row x[i] has a non-zero entry
    cols      only if ``cols`` and ndim >= 2: ceil(d1 / 8) bytes, bit j set iff the slice x[:, j]
              has a non-zero entry (the input channels a pruned consumer layer still reads)
    values    the kept block x[rows][:, cols] in row-major order, r * c * prod(d2, ...) values
              as little-endian fp32 or fp16 (fp16 saturates at +-65504)

Padding bits of the bitmaps must be zero; the value count follows from the bitmaps and must match
the chunk length exactly. A receiver recovers which slices a sender kept from the zero pattern of
the decoded tensor (``kept_mask``), which is how SPATL's server averages each coordinate only over
the clients that sent it.
"""
from __future__ import annotations

import dataclasses
import math

import numpy as np
import torch

from fedsqueeze.codecs import sparse
from fedsqueeze.codecs.base import Codec
from fedsqueeze.codecs.bits import pack_bits, unpack_bits
from fedsqueeze.errors import CodecError, PayloadError


@dataclasses.dataclass(frozen=True)
class RowSparse(Codec):
    """Bitmap of non-zero output rows (and optionally input columns) + the kept block as fp32/fp16."""

    codec_id = "rowsparse"
    unbiased = True

    values: str = "fp32"
    cols: bool = False

    def __post_init__(self) -> None:
        if self.values not in sparse.VALUE_DTYPES:
            raise CodecError(f"rowsparse: values must be one of {sorted(sparse.VALUE_DTYPES)}, got {self.values!r}")
        if not isinstance(self.cols, bool):
            raise CodecError(f"rowsparse: cols must be true or false, got {self.cols!r}")

    @property
    def lossless(self) -> bool:  # type: ignore[override]
        return self.values == "fp32"

    def _view(self, shape: tuple[int, ...]) -> tuple[int, int, int]:
        """(rows, cols, inner): the tensor seen as a rows x cols x inner block."""
        if len(shape) == 0:
            return 1, 1, 1
        if len(shape) == 1 or not self.cols:
            return shape[0], 1, math.prod(shape[1:])
        return shape[0], shape[1], math.prod(shape[2:])

    def encode_tensor(self, x: torch.Tensor, seed: int) -> bytes:
        d0, d1, inner = self._view(tuple(x.shape))
        block = x.reshape(d0, d1, inner).numpy()
        nz = block != 0
        rows = nz.any(axis=(1, 2))
        out = pack_bits(rows)
        kept = block[rows]
        if self.cols and x.dim() >= 2:
            cols = nz.any(axis=(0, 2))
            out += pack_bits(cols)
            kept = kept[:, cols]
        return out + sparse.encode_values(kept.reshape(-1), self.values)

    def decode_tensor(self, data: memoryview, shape: tuple[int, ...], seed: int) -> torch.Tensor:
        d0, d1, inner = self._view(shape)
        nrow = (d0 + 7) // 8
        ncol = (d1 + 7) // 8 if self.cols and len(shape) >= 2 else 0
        if len(data) < nrow + ncol:
            raise PayloadError(f"rowsparse: {len(data)} bytes cannot hold the bitmaps of a {shape} tensor")
        rows = unpack_bits(data[:nrow], d0).astype(bool)
        cols = unpack_bits(data[nrow:nrow + ncol], d1).astype(bool) if ncol else np.ones(d1, dtype=bool)
        r, c = int(rows.sum()), int(cols.sum())
        kept = sparse.decode_values(data[nrow + ncol:], r * c * inner, self.values).reshape(r, c, inner)
        out = np.zeros((d0, d1, inner), dtype=np.float32)
        out[np.ix_(rows, cols)] = kept
        return torch.from_numpy(out)


def kept_mask(x: torch.Tensor, *, cols: bool = True) -> torch.Tensor:
    """The coordinates a row-sparse sender kept, recovered from the decoded tensor: those in a
    non-zero row (dim 0) and, with ``cols``, in a non-zero input slice (dim 1) of that tensor."""
    if x.dim() == 0:
        return x != 0
    nz = x != 0
    mask = nz.reshape(x.shape[0], -1).any(dim=1).reshape((-1,) + (1,) * (x.dim() - 1))
    if cols and x.dim() >= 2:
        in_slices = nz.transpose(0, 1).reshape(x.shape[1], -1).any(dim=1)
        mask = mask & in_slices.reshape((1, -1) + (1,) * (x.dim() - 2))
    return mask.expand(x.shape)
