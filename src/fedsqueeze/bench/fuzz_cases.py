"""The cases of ``fedsqueeze bench fuzz``: valid payloads of every codec and their hostile mutations.

Case ``i`` of a codec is mutation ``MUTATIONS[i % 10]`` of one of the codec's valid payloads, with
randomness seeded by ``(seed, codec, i)`` alone, so any case can be rebuilt (``make_case``) without
running the others. See ``fedsqueeze.bench.fuzz`` for what each mutation targets.
"""
from __future__ import annotations

import copy
import functools
import json
import math
import random
import zlib
from typing import Any

import torch

from fedsqueeze.codecs.spec import make_codec
from fedsqueeze.registry import CODECS
from fedsqueeze.wire.payload import (_CRC, _PREFIX, DTYPE_CODES, DTYPES, FORMAT_VERSION, MAGIC, MAX_NDIM, MAX_NUMEL,
                                     MAX_SEED, Header, TensorSpec, pack, unpack)
from fedsqueeze.wire.varint import encode_varint

MUTATIONS = ("truncate", "flip", "random", "frame_length", "body_bytes", "inflate_varint", "inflate_shape",
             "header_field", "swap_codec", "splice", "bound_value", "hostile_config", "many_tensors", "deep_spec")
MANY = (16, 256, 5000)  # tensors of the ``many_tensors`` payloads (the fuzz receiver accepts up to 1,024)

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


@functools.lru_cache(maxsize=4)
def many_payloads(cid: str) -> tuple[bytes, ...]:
    """Valid payloads of ``cid`` with ``MANY[:-1]`` tiny tensors (1 to 5 values each), and one whose header
    declares ``MANY[-1]`` tiny tensors over the body of the previous one (beyond the receiver's tensor
    cap, refused by the count). Built once per process."""
    out = []
    for n in MANY[:-1]:
        g = torch.Generator().manual_seed(n)
        tensors = {f"p{j}": torch.randn(1 + j % 5, generator=g) for j in range(n)}
        out.append(make_codec(cid).encode(tensors, seed=n))
    header, body = unpack(out[-1])
    n = MANY[-1]
    specs = tuple(TensorSpec(f"p{j}", (1 + j % 5,), torch.float32) for j in range(n))
    out.append(pack(Header(header.codec_id, header.seed, header.config, specs), bytes(body)))
    return tuple(out)


def _case_rng(seed: int, cid: str, i: int) -> random.Random:
    return random.Random(((seed * 2 ** 32 + zlib.crc32(cid.encode())) << 40) + i)


def make_case(cid: str, i: int, *, seed: int = 0, goods: list[bytes] | None = None,
              ids: list[str] | None = None) -> tuple[str, bytes]:
    """Case ``i`` of codec ``cid``: (mutation, payload bytes). Deterministic in ``(seed, cid, i)``."""
    goods = goods if goods is not None else valid_payloads(cid)
    ids = ids if ids is not None else CODECS.names()
    how = MUTATIONS[i % len(MUTATIONS)]
    good = goods[(i // len(MUTATIONS)) % len(goods)]
    rng = _case_rng(seed, cid, i)
    if how == "many_tensors":
        return how, _many_tensors(rng, many_payloads(cid))
    return how, _mutate(rng, good, how, goods, ids)


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
        return pack_loose(_header_field(rng, header), body)
    if how == "bound_value":
        return _bound_value(rng, header, body)
    if how == "hostile_config":
        return pack(_hostile_config(rng, header), body)
    if how == "deep_spec":
        return _deep_spec(rng, header, body)
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


# ---- the hostile classes of issue #22: exact bounds, hostile-but-valid configs, many tensors, deep specs ----
def raw_header(codec_id: bytes, seed: int, config: bytes, count: int, entries: list[tuple]) -> bytes:
    """Header bytes written field by field, without ``pack``'s checks: entries are (name bytes, dtype
    code, dims), so any field can be set to any value the encoding can hold."""
    out = bytearray([len(codec_id)]) + codec_id + encode_varint(seed) + encode_varint(len(config)) + config
    out += encode_varint(count)
    for name, code, dims in entries:
        out += bytes([len(name)]) + name + bytes([code, len(dims)])
        for d in dims:
            out += encode_varint(d)
    return bytes(out)


def frame(hbytes: bytes, body: bytes) -> bytes:
    """``hbytes`` and ``body`` in a valid frame with a valid CRC (the header is not checked)."""
    framed = _PREFIX.pack(MAGIC, FORMAT_VERSION, len(hbytes), len(body)) + hbytes + body
    return framed + _CRC.pack(zlib.crc32(framed))


def pack_loose(header: Header, body: bytes) -> bytes:
    """``pack`` without its checks (a seed beyond 2**63 - 1 is written as it is): what a hostile sender can do."""
    cfg = json.dumps(header.config, separators=(",", ":"), sort_keys=True).encode() if header.config else b""
    return frame(raw_header(header.codec_id.encode(), header.seed, cfg, len(header.tensors), _entries(header)), body)


def _entries(header: Header) -> list[tuple]:
    return [(s.name.encode(), DTYPE_CODES[s.dtype], list(s.shape)) for s in header.tensors]


def _near(rng: random.Random, bound: int) -> int:
    return bound + rng.choice([-1, 0, 1])


def _bound_value(rng: random.Random, header: Header, body: bytes) -> bytes:
    """One header integer at its exact bound, one below or one above (seed, tensor count, name length,
    ndim, a dim, the total element count, the config length), everything else valid."""
    cid = header.codec_id.encode()
    cfg = json.dumps(header.config, separators=(",", ":"), sort_keys=True).encode() if header.config else b""
    entries = _entries(header)
    seed, count = header.seed, len(entries)
    kind = rng.choice(["seed", "seed", "count", "name", "ndim", "dim", "total", "config_len", "codec_len"])
    j = rng.randrange(len(entries))
    name, code, dims = entries[j]
    if kind == "seed":
        seed = rng.choice([_near(rng, MAX_SEED), (1 << 64) - 1, 1 << 63, (1 << 70) - 1])
    elif kind == "count":
        count = rng.choice([_near(rng, count), 0, (1 << 16) + rng.choice([-1, 0, 1]), MAX_SEED])
    elif kind == "name":
        entries[j] = (b"n" * rng.choice([254, 255]), code, dims)
    elif kind == "ndim":
        entries[j] = (name, code, [1] * _near(rng, MAX_NDIM))
    elif kind == "dim":
        entries[j] = (name, code, [_near(rng, MAX_NUMEL)] + dims[1:])
    elif kind == "total":  # two tensors whose elements add up to the bound, one below or one above
        entries[j] = (name, code, [_near(rng, MAX_NUMEL) - 1])
        entries.append((b"__one", code, [1]))
        count += 1
    elif kind == "config_len":
        hb = raw_header(cid, seed, cfg, count, entries)
        cut = 1 + len(cid) + len(encode_varint(seed))
        lenfield = encode_varint(max(0, _near(rng, len(cfg))))
        return frame(hb[:cut] + lenfield + hb[cut + len(encode_varint(len(cfg))):], body)
    else:
        cid = cid * (255 // max(1, len(cid))) + b"x" * (255 % max(1, len(cid)))
    return frame(raw_header(cid, seed, cfg, count, entries), body)


_BIG_INTS = [1 << 16, 1 << 20, 1 << 24, (1 << 24) + 1, 1 << 30, (1 << 31) - 1, 1 << 31, 1 << 53, MAX_SEED]


def _hostile_config(rng: random.Random, header: Header) -> Header:
    """Hostile but well-typed config values: every integer of the config (bucket, levels, rank, k, chunk,
    bits, ...) set to a tensor size or to a huge value, every float to an extreme; many such configs are
    valid, so the body must still decode within the time and memory limits (or be refused)."""
    cfg = copy.deepcopy(header.config)
    sizes = [s.numel for s in header.tensors] or [1]
    keys = [k for k, v in cfg.items() if isinstance(v, (int, float))] or list(cfg)
    for k in rng.sample(keys, min(len(keys), rng.randint(1, 2))) if keys else []:
        v = cfg[k]
        if isinstance(v, bool):
            cfg[k] = not v
        elif isinstance(v, int):
            d = rng.choice(sizes)
            cfg[k] = rng.choice([1, 2, max(1, d - 1), d, d + 1, 16, 64, *_BIG_INTS])
        elif isinstance(v, float):
            cfg[k] = rng.choice([1e-300, 5e-324, 1e-7, 0.5, 0.999999, 1.0, 1e6, 1e300, float(MAX_SEED)])
        elif isinstance(v, str):
            cfg[k] = rng.choice([v, v.upper(), v + " ", ""])
    if not keys:
        cfg["bogus"] = rng.choice(_BIG_INTS)
    return Header(header.codec_id, header.seed, cfg, header.tensors)


def _many_tensors(rng: random.Random, payloads: tuple[bytes, ...]) -> bytes:
    """A valid payload of many tiny tensors, as is or with a few body bytes changed (valid CRC)."""
    good = rng.choice(payloads)
    if rng.random() < 0.5:
        return good
    header, view = unpack(good)
    b = bytearray(view)
    for _ in range(rng.randint(1, 4)):
        b[rng.randrange(len(b))] = rng.getrandbits(8)
    return pack(header, bytes(b))


def hostile_specs(rng: random.Random) -> list:
    """Long and deep codec specs, as a header may carry them (kept under the 65,535-byte header)."""
    return [
        "topk(" + "x" * rng.choice([4095, 4096, 4097, 60_000]),
        "rdq(step=" + "(" * rng.choice([16, 17, 10_000]) + "0.1" + ")" * 10,
        "|".join(["svd"] * rng.choice([16, 17, 10_000])),
        ["svd"] * rng.choice([15, 16, 17, 10_000]),
        "ef(inner=" + "-" * rng.choice([100, 4000, 50_000]) + "1)",
        "ef(inner='" * 30 + "fp32" + "')" * 30,
        "topk(**kwargs)", "topk(*a)", "topk(0.1)", "qsgd(bucket=16777216, levels=1048576)",
        "a" * rng.choice([255, 4096, 60_000]),
    ]


def _deep_spec(rng: random.Random, header: Header, body: bytes) -> bytes:
    """A long or deeply nested spec in a config field that holds specs (a pipeline's ``stages``, error
    feedback's ``inner``) or in any other key; the parser must refuse it quickly."""
    cfg = copy.deepcopy(header.config)
    spec = rng.choice(hostile_specs(rng))
    key = "stages" if "stages" in cfg else "inner" if "inner" in cfg else rng.choice(list(cfg) or ["inner"])
    if key == "stages" and isinstance(spec, str) and rng.random() < 0.5:
        spec = [spec, "fp32"]
    cfg[key] = spec
    hb = raw_header(header.codec_id.encode(), header.seed, json.dumps(cfg).encode(), len(header.tensors),
                    _entries(header))
    if len(hb) > 0xFFFF:  # beyond what a frame can carry: shorten the spec to fit
        over = len(hb) - 0xFFFF + 16
        cfg[key] = spec[:max(0, len(spec) - over)]
        hb = raw_header(header.codec_id.encode(), header.seed, json.dumps(cfg).encode(), len(header.tensors),
                        _entries(header))
    return frame(hb, body)
