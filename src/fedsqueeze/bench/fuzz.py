"""``fedsqueeze bench fuzz``: hostile payloads against the server-side decode path.

For every registered codec, valid payloads (several seeds and tensor layouts) are mutated —
truncated, bit-flipped, replaced by random bytes, given inflated length or shape fields, relabelled
with another codec's id, or body-mutated and re-framed with a valid CRC so the mutation reaches the
codec's own parser — and decoded with ``decode_any`` under an element cap. The only acceptable
outcomes are a decoded payload or our own errors (``PayloadError``/``CodecError``). Anything else,
a case slower than the time limit (a hang), or a ``MemoryError`` is a failure, and is reported.
"""
from __future__ import annotations

import random
import resource
import signal
import time
import traceback
from collections import Counter

import torch

from fedsqueeze.codecs.spec import decode_any, make_codec
from fedsqueeze.errors import CodecError, PayloadError
from fedsqueeze.registry import CODECS
from fedsqueeze.wire.payload import Header, TensorSpec, pack, unpack

MUTATIONS = ("truncate", "flip", "random", "reframe_body", "inflate_shape", "swap_codec", "splice")


class _Hang(Exception):
    pass


def _alarm(signum, frame):  # noqa: ARG001
    raise _Hang()


def _inputs(seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    shapes = [(16, 3, 3, 3), (32, 40), (32,), (7,), (1,)]
    out = {f"t{i}": torch.randn(*s, generator=g) * 10 ** (-(i % 3)) for i, s in enumerate(shapes[: 2 + seed % 4])}
    out["n"] = torch.tensor([seed], dtype=torch.int64)
    return out


def _mutate(rng: random.Random, good: bytes, how: str, ids: list[str]) -> bytes:
    if how == "truncate":
        return good[: rng.randrange(len(good))]
    if how == "flip":
        bad = bytearray(good)
        for _ in range(rng.randint(1, 4)):
            bad[rng.randrange(len(bad))] ^= 1 << rng.randrange(8)
        return bytes(bad)
    if how == "random":
        return bytes(rng.getrandbits(8) for _ in range(rng.randint(0, 400)))
    header, body = unpack(good)
    body = bytearray(body)
    if how == "reframe_body":
        for _ in range(rng.randint(1, 6)):
            if body:
                body[rng.randrange(len(body))] = rng.getrandbits(8)
        return pack(header, bytes(body[: rng.randint(0, len(body))] if rng.random() < 0.3 else body))
    if how == "inflate_shape":
        specs = list(header.tensors)
        i = rng.randrange(len(specs))
        s = specs[i]
        factor = rng.choice([2, 1000, 1 << 20])
        shape = tuple(d * factor if j == 0 else d for j, d in enumerate(s.shape)) or (factor,)
        specs[i] = TensorSpec(s.name, shape, s.dtype)
        return pack(Header(header.codec_id, header.seed, header.config, tuple(specs)), bytes(body))
    if how == "swap_codec":
        other = rng.choice(ids)
        cfg = make_codec(other).get_config() if rng.random() < 0.5 else header.config
        return pack(Header(other, header.seed, cfg, header.tensors), bytes(body))
    # splice: another codec's body under this header
    return pack(header, bytes(body[::-1]))


def fuzz(cases: int, codecs: list[str] | None = None, *, seed: int = 0, time_limit: float = 2.0,
         max_numel: int = 1 << 22, progress=None) -> dict:
    ids = codecs or CODECS.names()
    rng = random.Random(seed)
    old = signal.signal(signal.SIGALRM, _alarm)
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    resource.setrlimit(resource.RLIMIT_AS, (min(8 << 30, hard) if hard > 0 else 8 << 30, hard))
    report: dict = {"cases": 0, "failures": [], "outcomes": Counter(), "per_codec": {}, "slowest_s": 0.0}
    try:
        for cid in ids:
            codec = make_codec(cid)
            goods = [codec.encode(_inputs(s), seed=s) for s in range(4)]
            count = Counter()
            for i in range(cases):
                how = MUTATIONS[i % len(MUTATIONS)]
                bad = _mutate(rng, goods[i % len(goods)], how, ids)
                t0 = time.perf_counter()
                signal.setitimer(signal.ITIMER_REAL, time_limit)
                try:
                    decode_any(bad, max_numel=max_numel)
                    outcome = "decoded"
                except (PayloadError, CodecError):
                    outcome = "rejected"
                except _Hang:
                    outcome = "hang"
                except BaseException as e:  # noqa: BLE001  (the point is to catch everything else)
                    outcome = "crash"
                    if len(report["failures"]) < 20:
                        report["failures"].append((cid, how, repr(e), traceback.format_exc(limit=3)))
                finally:
                    signal.setitimer(signal.ITIMER_REAL, 0)
                report["slowest_s"] = max(report["slowest_s"], time.perf_counter() - t0)
                if outcome == "hang" and len(report["failures"]) < 20:
                    report["failures"].append((cid, how, f"exceeded {time_limit}s", ""))
                count[outcome] += 1
                report["cases"] += 1
                if progress is not None:
                    progress()
            report["per_codec"][cid] = dict(count)
            report["outcomes"].update(count)
    finally:
        signal.signal(signal.SIGALRM, old)
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))
    report["bad"] = report["outcomes"]["crash"] + report["outcomes"]["hang"]
    return report


def main(args) -> int:
    from rich.console import Console
    from rich.progress import Progress
    from rich.table import Table

    from fedsqueeze.bench.report import print_environment

    console = Console()
    console.print(f"[bold]bench fuzz[/]: {args.cases} mutated payloads per codec through decode_any "
                  f"(cap {args.max_numel:,} elements, {args.time_limit}s per case, address space 8 GiB)")
    print_environment(console)
    ids = [c.strip() for c in args.codecs.split(",")] if args.codecs else None
    total = args.cases * len(ids or CODECS.names())
    with Progress(console=console, transient=True) as prog:
        task = prog.add_task("fuzzing", total=total)
        rep = fuzz(args.cases, ids, seed=args.seed, time_limit=args.time_limit, max_numel=args.max_numel,
                   progress=lambda: prog.advance(task))
    t = Table(title="outcomes per codec")
    for col in ("codec", "decoded", "rejected (our errors)", "crash", "hang"):
        t.add_column(col, justify="right")
    for cid, c in rep["per_codec"].items():
        t.add_row(cid, str(c.get("decoded", 0)), str(c.get("rejected", 0)), str(c.get("crash", 0)),
                  str(c.get("hang", 0)))
    console.print(t)
    for cid, how, err, tb in rep["failures"]:
        console.print(f"[red]FAIL[/] {cid} / {how}: {err}\n{tb}")
    console.print(f"cases: {rep['cases']:,}   failures (crash or hang): {rep['bad']}   "
                  f"slowest case: {rep['slowest_s'] * 1000:.1f} ms")
    return 1 if rep["bad"] else 0
