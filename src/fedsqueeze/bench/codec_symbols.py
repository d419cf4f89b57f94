"""How much dependence between rdq's quantised symbols a context coder could use: order-0 entropy and
first-order conditional entropy given the previous symbol (the ``h0`` and ``h1`` columns of the codec benchmark)."""
from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from fedsqueeze.bench.codec_limits import Update


def symbol_entropies(codec, updates: Sequence[Update]) -> tuple[float, float]:
    """(order-0 entropy, first-order conditional entropy given the previous symbol) of an rdq codec's
    quantised symbols, bits per parameter over all float tensors; NaN for other codecs.

    The previous symbol (clipped to ±16) is the one before in memory order; the first symbol of a
    tensor has "no previous" as its own context. Plug-in estimates from the joint histogram."""
    from fedsqueeze.codecs.entropy import entropy_bits
    from fedsqueeze.codecs.rdq import RDQ

    if not isinstance(codec, RDQ):
        return math.nan, math.nan
    h0 = h1 = 0.0
    n = 0
    for up in updates:
        for t in up.values():
            if not t.is_floating_point() or not t.numel():
                continue
            x = t.detach().to(torch.float32).reshape(-1).clone()
            q = codec.quantize(x, codec._unit(x), 0).numpy().astype(np.int64)
            h0 += entropy_bits(q)
            h1 += conditional_entropy_bits(q)
            n += q.size
    return (h0 / n, h1 / n) if n else (math.nan, math.nan)


def conditional_entropy_bits(q: np.ndarray, clip: int = 16) -> float:
    """n·H(Q_i | Q_{i-1}) of an int sequence (plug-in, previous symbol clipped to ±``clip``)."""
    from fedsqueeze.codecs.entropy import entropy_bits

    q = np.asarray(q, dtype=np.int64).reshape(-1)
    if q.size == 0:
        return 0.0
    prev = np.concatenate([[clip + 1], np.clip(q[:-1], -clip, clip)])  # clip + 1: "no previous"
    _, sym = np.unique(q, return_inverse=True)
    joint = (prev + clip) * (int(sym.max()) + 1) + sym
    return entropy_bits(joint) - entropy_bits(prev)
