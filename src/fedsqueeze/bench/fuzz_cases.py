"""The cases of ``fedsqueeze bench fuzz``: valid payloads of every codec and their hostile mutations.

Case ``i`` of a codec is mutation ``MUTATIONS[i % 10]`` of one of the codec's valid payloads, with
randomness seeded by ``(seed, codec, i)`` alone, so any case can be rebuilt (``make_case``) without
running the others. See ``fedsqueeze.bench.fuzz`` for what each mutation targets.
"""
from __future__ import annotations

import copy
import math
import random
import zlib
from typing import Any

import torch

from fedsqueeze.codecs.spec import make_codec
from fedsqueeze.registry import CODECS
from fedsqueeze.wire.payload import _CRC, _PREFIX, DTYPES, Header, TensorSpec, pack, unpack
from fedsqueeze.wire.varint import encode_varint

MUTATIONS = ("truncate", "flip", "random", "frame_length", "body_bytes", "inflate_varint", "inflate_shape",
             "header_field", "swap_codec", "splice")

# More configurations than the default, so every body format a codec has is mutated.
EXTRA_SPECS: dict[str, list[str]] = {
    "drive": ["drive(chunk=64, scale='biased')"],
    "eden": ["eden(bits=1, chunk=64)", "eden(bits=4)"],
    "svd": ["svd(threshold=0.5)"],
    "powersgd": ["powersgd(rank=1, warm_start=False, error_feedback=False)"],
    "rdq": ["rdq(step=0.01, coder='ans')", "rdq(step=0.5, normalize=True, rounding='dither')",
            "rdq(step=0.05, dead_zone=0.25)"],
    "pipeline": ["svd | rdq(step=0.25, normalize=True, coder='ans')", "svd(threshold=0.5) | fp16"],
    "topk": ["topk(fraction=0.6, values='fp16')"],
    "randk": ["randk(k=5)"],
    "qsgd": ["qsgd(levels=2, bucket=16, norm='max')"],
    "terngrad": ["terngrad(clip=0)"],
    "signsgd": ["signsgd(scale='none')"],
    "threelc": ["threelc(zero_run=False, multiplier=1.5)"],
    "ef": ["ef(inner='qsgd')"],
    "rowsparse": ["rowsparse(cols=True, values='fp16')"],
}

# Values a hostile header may carry in a codec config (wrong types, extremes, hostile codec specs).
HOSTILE = [-1, 0, 1, 2, 3, 7, 255, 0.5, -0.5, 1e-300, 1e308, -1e308, math.nan, math.inf, -math.inf,
           2 ** 31, 2 ** 63, 2 ** 64, 2 ** 100, "", "x", "fp32", "l2", "max", "ans", "gamma", "dither", "unbiased",
           None, True, False, [], [1], ["fp32"], ["topk"], ["svd", "svd"], {}, {"name": "fp32"},
           "topk(fraction=2)", "topk(k=1000000000)", "rdq(step=1e-300)", "qsgd(levels=1000000000)",
           "eden(chunk=1)", "drive(chunk=1)", "pipeline", "ef", "ef(inner='ef')"]


# ---- valid inputs and their mutations ---------------------------------------------------------
def inputs(seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    shapes = [(16, 3, 3, 3), (32, 40), (32,), (7,), (1,)]
    out = {f"t{i}": torch.randn(*s, generator=g) * 10 ** (-(i % 3)) for i, s in enumerate(shapes[: 2 + seed % 4])}
    out["n"] = torch.tensor([seed], dtype=torch.int64)
    return out


def valid_payloads(cid: str) -> list[bytes]:
    """Valid payloads of codec ``cid``: its default and ``EXTRA_SPECS`` configurations on several inputs."""
    out = []
    for spec in [cid, *EXTRA_SPECS.get(cid, [])]:
        codec = make_codec(spec)
        out += [codec.encode(inputs(s), seed=s) for s in range(4)]
    return out


def _case_rng(seed: int, cid: str, i: int) -> random.Random:
    return random.Random(((seed * 2 ** 32 + zlib.crc32(cid.encode())) << 40) + i)


def make_case(cid: str, i: int, *, seed: int = 0, goods: list[bytes] | None = None,
              ids: list[str] | None = None) -> tuple[str, bytes]:
    """Case ``i`` of codec ``cid``: (mutation, payload bytes). Deterministic in ``(seed, cid, i)``."""
    goods = goods if goods is not None else valid_payloads(cid)
    ids = ids if ids is not None else CODECS.names()
    how = MUTATIONS[i % len(MUTATIONS)]
    good = goods[(i // len(MUTATIONS)) % len(goods)]
    return how, _mutate(_case_rng(seed, cid, i), good, how, goods, ids)


def _mutate(rng: random.Random, good: bytes, how: str, goods: list[bytes], ids: list[str]) -> bytes:
    if how == "truncate":
        return good[: rng.randrange(len(good))]
    if how == "flip":
        bad = bytearray(good)
        for _ in range(rng.randint(1, 4)):
            bad[rng.randrange(len(bad))] ^= 1 << rng.randrange(8)
        return bytes(bad)
    if how == "frame_length":
        return _frame_length(rng, good)
    header, view = unpack(good)
    body = bytes(view)
    if how == "random":
        junk = rng.randbytes(rng.randint(0, 2 * len(body) + 16))
        return junk if rng.random() < 0.5 else pack(header, junk)
    if how == "body_bytes":
        b = bytearray(body)
        for _ in range(rng.randint(1, 6)):
            if b:
                b[rng.randrange(len(b))] = rng.getrandbits(8)
        r = rng.random()
        if r < 0.3:
            b = b[: rng.randint(0, len(b))]
        elif r < 0.4:
            b += rng.randbytes(rng.randint(1, 16))
        return pack(header, bytes(b))
    if how == "inflate_varint":
        pos = 0 if rng.random() < 0.3 or not body else rng.randrange(len(body))
        value = rng.choice([len(body) + 1, 8 * len(body) + 1, 1 << rng.randrange(7, 64), (1 << 64) - 1, 1 << 69])
        return pack(header, body[:pos] + encode_varint(value) + body[pos + rng.randint(0, 4):])
    if how == "inflate_shape":
        return pack(_inflate_shape(rng, header), body)
    if how == "header_field":
        return pack(_header_field(rng, header), body)
    if how == "swap_codec":
        other = rng.choice(ids)
        cfg = make_codec(other).get_config() if rng.random() < 0.5 else header.config
        return pack(Header(other, header.seed, cfg, header.tensors), body)
    # splice: another payload's body (another configuration or tensor layout) under this header
    other = bytes(unpack(rng.choice(goods))[1]) if rng.random() < 0.7 else body[::-1]
    return pack(header, other)


def _frame_length(rng: random.Random, good: bytes) -> bytes:
    """Prefix fields changed, CRC recomputed: lengths that disagree with the data, a moved header/body
    boundary (lengths still add up, so the header parser sees the wrong bytes), another version."""
    raw = bytearray(good[:-_CRC.size])
    magic, version, hlen, blen = _PREFIX.unpack_from(raw)
    kind = rng.choice(["boundary", "inflate", "shrink", "version"])
    if kind == "boundary":
        d = rng.randint(-hlen, blen)
        if 0 <= hlen + d <= 0xFFFF:
            hlen, blen = hlen + d, blen - d
    elif kind == "inflate":
        if rng.random() < 0.5:
            blen = rng.choice([blen + 1, 2 * blen + 1, 0xFFFFFFFF])
        else:
            hlen = rng.choice([min(hlen + 1, 0xFFFF), 0xFFFF])
    elif kind == "shrink":
        blen = rng.randrange(blen) if blen else 0
    else:
        version = rng.randrange(256)
    _PREFIX.pack_into(raw, 0, magic, version, hlen, blen)
    return bytes(raw) + _CRC.pack(zlib.crc32(raw))


def _inflate_shape(rng: random.Random, header: Header) -> Header:
    specs = list(header.tensors)
    i = rng.randrange(len(specs))
    s = specs[i]
    kind = rng.choice(["scale", "huge", "zero", "extra_dim"])
    if kind == "scale":
        factor = rng.choice([2, 1000, 1 << 20])
        shape = tuple(d * factor if j == 0 else d for j, d in enumerate(s.shape)) or (factor,)
    elif kind == "huge":
        shape = (rng.choice([1 << 31, 1 << 40, (1 << 63) - 1]),) + s.shape[1:]
    elif kind == "zero":
        shape = (0,) + s.shape[1:] if s.shape else (0,)
    else:
        shape = s.shape + (rng.choice([1, 2, 65536]),)
    specs[i] = TensorSpec(s.name, shape, s.dtype)
    return Header(header.codec_id, header.seed, header.config, tuple(specs))


def _header_field(rng: random.Random, header: Header) -> Header:
    specs = list(header.tensors)
    cfg = copy.deepcopy(header.config)
    seed = header.seed
    i = rng.randrange(len(specs))
    s = specs[i]
    kind = rng.choice(["seed", "dtype", "name", "config_value", "config_value", "config_key", "ndim",
                       "drop", "duplicate", "reorder"])
    if kind == "seed":
        seed = rng.getrandbits(rng.choice([8, 32, 64]))
    elif kind == "dtype":
        specs[i] = TensorSpec(s.name, s.shape, rng.choice(list(DTYPES.values())))
    elif kind == "name":
        specs[i] = TensorSpec(rng.choice(["", "x" * 255, "\u00e9", specs[rng.randrange(len(specs))].name]),
                              s.shape, s.dtype)
    elif kind == "config_value":
        if not _poke(rng, cfg):
            cfg["bogus"] = rng.choice(HOSTILE)
    elif kind == "config_key":
        cfg[rng.choice(["bogus", "name", "stages", "inner", "k", "chunk", "levels", "step", ""])] = rng.choice(HOSTILE)
    elif kind == "ndim":
        shape = rng.choice([s.shape + (1,), s.shape[:-1], s.shape[::-1], (s.numel,), (1,) * 8])
        specs[i] = TensorSpec(s.name, shape, s.dtype)
    elif kind == "drop":
        del specs[i]
    elif kind == "duplicate":
        specs.insert(i, s)
    else:
        rng.shuffle(specs)
    return Header(header.codec_id, seed, cfg, tuple(specs))


def _poke(rng: random.Random, node: Any) -> bool:
    """Replace one value somewhere inside a JSON-like config with a hostile one (False if empty)."""
    keys = list(node) if isinstance(node, dict) else list(range(len(node)))
    if not keys:
        return False
    k = rng.choice(keys)
    if isinstance(node[k], (dict, list)) and node[k] and rng.random() < 0.6 and _poke(rng, node[k]):
        return True
    node[k] = rng.choice(HOSTILE)
    return True
