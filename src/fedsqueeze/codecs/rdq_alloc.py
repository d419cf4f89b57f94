"""Rate allocation across layers for ``rdq(alloc="rd")``: one step per tensor, all at one R–D slope.

One step for every tensor (the paper's setting) gives every tensor the same MSE, which is the
optimal allocation only at high rate. At 0.3–2 bits/parameter the tensors' rate–distortion curves
bend differently (many zeros, a dead zone, tiny bias vectors), so the same total distortion can be
had for fewer bits by moving each tensor's step to the point where its curve has a common slope −λ
(Lagrangian bit allocation; Shoham & Gersho, "Efficient bit allocation for an arbitrary set of
quantizers", IEEE Trans. ASSP 36(9), 1988).

For each float tensor the encoder evaluates the candidate steps u·2^(k/4), k = −6 .. 12, around the
tensor's one-step unit u (``RDQ._unit``: ``step``, or ``step``·RMS with ``normalize``): D = the
squared error of the real quantiser, R = the order-0 entropy of its levels (a proxy of the coded
size that ranks steps the same way for every coder), both on every ⌈n/2^17⌉-th element of a big
tensor (dither and stochastic rounding then draw other noise than the real encode: an estimate). The
target is the total distortion of the one-step configuration; λ is found by bisection (in log λ) as
the largest slope whose choices stay within it. If the chosen steps would not save estimated bits,
the one-step units are kept. Each tensor's step travels in the payload as always, so decoding is
unchanged; with ``target_bytes`` the budget search varies ``step`` and every trial allocates anew.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from fedsqueeze.codecs.entropy import entropy_bits
from fedsqueeze.seeding import derive_seed

GRID = 2.0 ** (np.arange(-6, 13) / 4)  # candidate steps, multiples of the one-step unit
ONE = 6                                 # GRID[ONE] == 1
SAMPLE = 1 << 17                        # elements a tensor's estimates look at, at most


def rd_units(codec, values: list[torch.Tensor], seed: int) -> dict[int, float]:
    """Per float tensor index: the step (fp32-exact) at the common slope; see the module docstring."""
    from fedsqueeze.codecs.rdq import QMAX

    rows = []
    for i, x in enumerate(values):
        if not x.is_floating_point() or not x.numel():
            continue
        x = x.reshape(-1).to(torch.float32)
        base = codec._unit(x)
        lo, hi = torch.aminmax(x)
        floor = max(-float(lo), float(hi)) / QMAX  # the range guard: levels stay within ±2^20
        units = [float(np.float32(max(base * g, floor))) or base for g in GRID]
        s = derive_seed(seed, i)
        stride = -(-x.numel() // SAMPLE)  # big tensors: estimates from every stride-th element
        sub = x[::stride].contiguous() if stride > 1 else x
        scale = x.numel() / sub.numel()
        dist, rate = np.empty(len(units)), np.empty(len(units))
        for k, u in enumerate(units):
            q = codec.quantize(sub, u, s)
            dist[k] = scale * float((codec.dequantize(q, u, s) - sub).double().square().sum())
            rate[k] = scale * entropy_bits(q.numpy())
        rows.append((i, units, dist, rate))
    if not rows:
        return {}
    target = sum(d[ONE] for _, _, d, _ in rows)
    one_rate = sum(r[ONE] for _, _, _, r in rows)

    def choose(lam: float) -> tuple[list[int], float, float]:
        picks = [int(np.argmin(d + lam * r)) for _, _, d, r in rows]
        return (picks, sum(d[k] for (_, _, d, _), k in zip(rows, picks)),
                sum(r[k] for (_, _, _, r), k in zip(rows, picks)))

    scale = max(target, 1e-300) / max(one_rate, 1.0)  # distortion per bit: where λ lives
    lo, hi = math.log(scale * 1e-6), math.log(scale * 1e6)
    best = [ONE] * len(rows)
    best_rate = one_rate
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        picks, dist, rate = choose(math.exp(mid))
        if dist <= target * (1 + 1e-9):
            lo = mid
            if rate < best_rate:
                best, best_rate = picks, rate
        else:
            hi = mid
    return {i: units[k] for (i, units, _, _), k in zip(rows, best)}
