"""Client sampling: a deterministic function of (seed, round) alone, so resumed runs sample alike."""
from __future__ import annotations

import numpy as np

from fedsqueeze.seeding import numpy_rng


def clients_per_round(num_clients: int, count: int, fraction: float) -> int:
    k = int(round(fraction * num_clients)) if fraction > 0 else count
    return max(1, min(k, num_clients))


def sample_clients(num_clients: int, k: int, *, seed: int, rnd: int) -> np.ndarray:
    """``k`` distinct client ids, sorted (aggregation order is fixed, hence bitwise-reproducible)."""
    if k >= num_clients:
        return np.arange(num_clients)
    return np.sort(numpy_rng(seed, "sample", rnd).choice(num_clients, size=k, replace=False))
