"""Deterministic seed derivation: every random choice comes from (run seed, round, client, purpose)."""
from __future__ import annotations

import hashlib
import struct

import numpy as np
import torch


def derive_seed(*keys: int | str) -> int:
    """A 63-bit seed from a tuple of ints/strings; stable across processes and platforms."""
    h = hashlib.blake2b(digest_size=8)
    for k in keys:
        if isinstance(k, str):
            h.update(b"s" + k.encode())
        else:
            h.update(b"i" + struct.pack("<q", int(k)))
    return int.from_bytes(h.digest(), "little") >> 1


def numpy_rng(*keys: int | str) -> np.random.Generator:
    return np.random.default_rng(derive_seed(*keys))


def torch_generator(*keys: int | str) -> torch.Generator:
    g = torch.Generator()
    g.manual_seed(derive_seed(*keys))
    return g
