"""``fedsqueeze bench fuzz``: hostile payloads against the server-side decode path.

For every registered codec, valid payloads (several configurations, seeds and tensor layouts) are
mutated and decoded with ``decode_any`` — the path a server takes with an upload: frame, CRC and
header checks (``wire.payload.unpack``), then ``decode_with`` (element cap, the codec rebuilt from
the header's config, its body parser) — under an element cap. Mutations:

- ``truncate``, ``flip``: cut or bit-flipped bytes (the frame length or CRC check must catch them);
- ``random``: random bytes, alone or as the body of a valid frame;
- ``frame_length``: the frame's header/body length fields or version changed, CRC recomputed;
- ``body_bytes``: body bytes overwritten, cut or extended, re-framed with a valid CRC (so the
  codec's own parser sees them);
- ``inflate_varint``: a huge varint (a length or count field) written into the body, valid CRC;
- ``inflate_shape``: a declared tensor shape scaled up, zeroed or given extra dims, valid CRC;
- ``header_field``: seed, dtype, names, tensor list or codec config (hostile values, unknown keys)
  changed, valid CRC;
- ``swap_codec``: another codec's id (and config) on this body, valid CRC;
- ``splice``: another payload's body (other shapes) under this header, valid CRC.

The hostile classes of issue #22 (a sender that chooses valid-looking values to stop or starve the
receiver):

- ``bound_value``: one header integer at its exact bound, one below or one above (seed at 2**63 - 1,
  the tensor count, a name of 255 bytes, ndim at 8, a dim and the total element count at 2**31,
  the config length), written field by field under a valid CRC;
- ``hostile_config``: well-typed but hostile codec configs (bucket, levels, rank, k, chunk set to a
  tensor's size or to 2**16 .. 2**63 - 1; floats to extremes): many are valid configs, so the body
  must decode within the limits (e.g. qsgd with ``bucket = 2**24`` on a tiny tensor);
- ``many_tensors``: valid payloads of 16 and 256 tiny tensors and a header declaring 5,000, as is or
  with a few body bytes changed; the receiver accepts at most ``max_tensors`` (default 1,024);
- ``deep_spec``: long (4,096 .. 60,000 characters) and deep (16 .. 10,000 levels, 10,000 stages)
  codec specs, ``**kw`` and ``-`` chains in the config fields that hold specs (``stages``, ``inner``).

The only acceptable outcomes are a decoded payload whose tensors match its header, or our own
errors (``PayloadError``/``CodecError``). Failures: any other exception (``crash``), a case slower
than the time limit (``hang``), an allocation beyond the memory cap (``over_cap``), a decode whose
tensors do not match the header (``bad_output``), and a worker process that died (``died``: a
segfault or a hang the in-process timer could not interrupt).

The per-case time limit is wall-clock seconds by default; ``clock="cpu"`` (``--clock cpu``) counts the
worker's CPU seconds instead (SIGPROF), so a case on a loaded, shared machine is not failed for time it
spent waiting for a core; a wall-clock timer every ``WALL_FACTOR`` (10) times the limit still fails a
case that spent more than the limit neither computing nor waiting in the run queue (a sleep or a blocked
call; Linux ``schedstat``), and the watchdog allows 60 times the limit plus its grace.

Cases run in forked worker processes (``bench.fuzz_worker``). Each arms a per-case timer (SIGALRM)
and limits its address space to its size at start plus the memory cap (``RLIMIT_AS``); the parent is a
watchdog that kills a worker stuck past the time limit plus a grace period, records the case and
resumes after it. Peak
memory is measured per batch of cases (Linux: the resident high-water mark, reset before each
batch) and the largest growth is reported. Case ``i`` of a codec is fully determined by
``(seed, codec, i)``: ``make_case`` rebuilds it for debugging.
"""
from __future__ import annotations

import multiprocessing as mp
import multiprocessing.connection as mpc
import signal
import time
from collections import Counter, deque
from dataclasses import dataclass
from typing import Any

from fedsqueeze.bench.fuzz_cases import MUTATIONS
from fedsqueeze.bench.fuzz_worker import BATCH, FAILURES, MAX_LISTED, OUTCOMES, WALL_FACTOR, Part, worker
from fedsqueeze.errors import FedsqueezeError
from fedsqueeze.registry import CODECS

@dataclass
class _Running:
    proc: Any
    conn: Any
    slot: Any
    task: tuple
    done_through: int


def fuzz(cases: int, codecs: list[str] | None = None, *, seed: int = 0, time_limit: float = 2.0,
         max_numel: int = 1 << 22, jobs: int = 1, mem_cap_mb: int = 1024, grace: float = 10.0,
         progress=None, max_tensors: int = 1024, clock: str = "wall") -> dict:
    """``cases`` mutated payloads per codec, in ``jobs`` forked worker processes with a watchdog.

    A worker stuck on one case for ``time_limit + grace`` seconds (the in-process timer could not
    interrupt it) is killed; a worker that dies (segfault) is replaced. Either way the case is recorded
    and the cases after it still run. ``progress(n, failed)`` is called as cases complete (``n`` more
    cases, ``failed`` of them failures)."""
    if cases < 0 or jobs < 1:
        raise FedsqueezeError("--cases must be >= 0 and --jobs >= 1")
    if clock not in ("wall", "cpu"):
        raise FedsqueezeError(f"--clock must be 'wall' or 'cpu', not {clock!r}")
    if max_tensors < 0 or not time_limit > 0 or mem_cap_mb < 0:
        raise FedsqueezeError("--max-tensors and --mem-cap-mb must be >= 0 and --time-limit > 0")
    ids = codecs or CODECS.names()
    for cid in ids:
        CODECS.get(cid)  # unknown ids fail here, with the registry's did-you-mean
    opts = {"ids": CODECS.names(), "seed": seed, "time_limit": time_limit, "max_numel": max_numel,
            "max_tensors": max_tensors, "mem_cap": mem_cap_mb << 20, "clock": clock}
    # what the watchdog adds its grace to; with the CPU clock a starved case may run long in wall time
    wall_limit = time_limit * (6 * WALL_FACTOR if clock == "cpu" else 1)
    chunk = -(-cases // jobs) if cases else 0
    todo = deque((cid, lo, min(lo + chunk, cases), frozenset()) for cid in ids for lo in range(0, cases, chunk or 1)
                 if chunk)
    per: dict[str, Part] = {cid: Part(cid) for cid in ids}
    ctx = mp.get_context("fork")
    running: dict[Any, _Running] = {}
    t0 = time.perf_counter()

    def add(p: Part) -> None:
        acc = per[p.cid]
        acc.counts.update(p.counts)
        acc.by_mutation.update(p.by_mutation)
        acc.reached += p.reached
        acc.failures += p.failures[: max(0, MAX_LISTED - len(acc.failures))]
        acc.slowest = max(acc.slowest, p.slowest)
        acc.slowest_cpu = max(acc.slowest_cpu, p.slowest_cpu)
        for how, dt in p.slowest_by_mutation.items():
            acc.slowest_by_mutation[how] = max(acc.slowest_by_mutation.get(how, 0.0), dt)
        acc.peak = max(acc.peak, p.peak)
        acc.seconds += p.seconds
        if progress is not None:
            progress(sum(p.counts.values()), sum(p.counts[o] for o in FAILURES))

    def lost(run: _Running, outcome: str, detail: str) -> None:
        """The worker is gone in the middle of a case: record that case, requeue the rest of its range."""
        cid, _, stop, skip = run.task
        i = int(run.slot[0])
        if i < 0:  # died before its first case: nothing to resume
            raise FedsqueezeError(f"fuzz worker for {cid} died during setup: {detail}")
        how = MUTATIONS[i % len(MUTATIONS)]
        add(Part(cid, counts=Counter({outcome: 1}), by_mutation=Counter({(how, outcome): 1}),
                  failures=[(cid, i, how, outcome, detail)]))
        if i + 1 < stop or run.done_through < i:
            todo.appendleft((cid, run.done_through, stop, skip | {i}))

    def finish(run: _Running) -> None:
        run.conn.close()
        run.proc.join(timeout=5)
        del running[run.conn]

    try:
        while todo or running:
            while todo and len(running) < jobs:
                task = todo.popleft()
                slot = ctx.RawArray("d", [-1.0, 0.0])
                recv, send = ctx.Pipe(duplex=False)
                proc = ctx.Process(target=worker, args=(task, opts, send, slot), daemon=True)
                proc.start()
                send.close()
                running[recv] = _Running(proc, recv, slot, task, task[1])
            for conn in mpc.wait(list(running), timeout=0.25):
                run = running[conn]
                try:
                    msg = conn.recv()
                except (EOFError, OSError, ValueError, TypeError, AttributeError):  # died (mid-message)
                    run.proc.join(timeout=5)
                    code = run.proc.exitcode
                    why = (f"killed by {signal.Signals(-code).name}" if code is not None and code < 0
                           else f"exited with code {code}")
                    lost(run, "died", f"worker {why}")
                    finish(run)
                    continue
                if isinstance(msg, tuple):  # ("error", detail): setup failed
                    finish(run)
                    raise FedsqueezeError(f"fuzz worker for {run.task[0]} failed outside any case: {msg[1]}")
                add(msg)
                run.done_through = msg.done_through
                if msg.final:
                    finish(run)
            now = time.monotonic()
            for run in list(running.values()):
                started = run.slot[1]
                if started and now - started > wall_limit + grace:
                    run.proc.kill()
                    run.proc.join(timeout=5)
                    lost(run, "hang", f"no result after {wall_limit + grace:.0f} s; worker killed by the watchdog")
                    finish(run)
    finally:
        for run in list(running.values()):
            run.proc.kill()
            finish(run)

    total = Counter()
    for p in per.values():
        total.update(p.counts)
    return {
        "cases": sum(total.values()), "cases_per_codec": cases, "codecs": ids, "jobs": jobs,
        "outcomes": total, "bad": sum(total[o] for o in FAILURES),
        "per_codec": {cid: dict(p.counts) for cid, p in per.items()},
        "reached": {cid: p.reached for cid, p in per.items()},
        "codec_seconds": {cid: p.seconds for cid, p in per.items()},
        "by_mutation": sum((p.by_mutation for p in per.values()), Counter()),
        "failures": [f for p in per.values() for f in p.failures],
        "slowest": max(((p.slowest, cid) for cid, p in per.items()), default=((0.0, -1, ""), "")),
        "slowest_cpu": max(((p.slowest_cpu, cid) for cid, p in per.items()), default=((0.0, -1, ""), "")),
        "slowest_s": max((p.slowest[0] for p in per.values()), default=0.0),
        "slowest_per_codec": {cid: p.slowest[0] for cid, p in per.items()},
        "slowest_by_mutation": {how: max((p.slowest_by_mutation.get(how, 0.0) for p in per.values()), default=0.0)
                                for how in MUTATIONS},
        "peak_extra": max(((p.peak, cid) for cid, p in per.items()), default=((0, -1), "")),
        "peak_per_codec": {cid: p.peak[0] for cid, p in per.items()},
        "wall_s": time.perf_counter() - t0,
        "mem_cap_mb": mem_cap_mb, "max_numel": max_numel, "max_tensors": max_tensors, "time_limit": time_limit,
        "clock": clock,
    }


def hostile_input_figures() -> list[tuple[str, float, str]]:
    """(input, seconds, the error it ended in) for the inputs of issue #22 that are too big for a payload
    header: the spec parser on a 1 MB spec, 10,000 and 2,000 nested parentheses, 10,000 stages, 50,000 minus signs,
    and a payload declaring 5,000 tiny tensors against a receiver expecting 2 and one capped at 1,024."""
    import torch

    from fedsqueeze.codecs.spec import decode_any, make_codec
    from fedsqueeze.wire.payload import TensorSpec

    many = make_codec("fp32").encode({f"t{i}": torch.zeros(1) for i in range(5000)}, seed=0)
    want = [TensorSpec("a", (1,), torch.float32), TensorSpec("b", (1,), torch.float32)]
    cases = [
        ("spec of 1 MB", lambda: make_codec("topk(fraction=" + "1" * (1 << 20) + ")")),
        ("spec nested 10,000 deep", lambda: make_codec("ef(inner=" + "(" * 10_000 + ")" * 10_000 + ")")),
        ("spec nested 2,000 deep (4,010 characters)",
         lambda: make_codec("ef(inner=" + "(" * 2000 + ")" * 2000 + ")")),
        ("pipeline of 10,000 stages", lambda: make_codec("|".join(["svd"] * 10_000))),
        ("ef inner of 50,000 minus signs", lambda: make_codec("ef(inner=" + "-" * 50_000 + "1)")),
        ("5,000 tensors, 2 expected", lambda: decode_any(many, expect=want)),
        ("5,000 tensors, cap 1,024", lambda: decode_any(many, max_tensors=1024)),
    ]
    out = []
    for what, act in cases:
        t0 = time.perf_counter()
        try:
            act()
            err = "no error"
        except FedsqueezeError as e:
            err = type(e).__name__
        out.append((what, time.perf_counter() - t0, err))
    return out


# ---- the command --------------------------------------------------------------------------------
def main(args) -> int:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from fedsqueeze.bench.report import print_environment

    console = Console(width=140)
    ids = [c.strip() for c in args.codecs.split(",") if c.strip()] if args.codecs else CODECS.names()
    console.print(f"[bold]bench fuzz[/]: {args.cases:,} mutated payloads PER CODEC x {len(ids)} codecs through the "
                  f"server-side decode path (decode_any; element cap {args.max_numel:,}, "
                  f"tensor cap {args.max_tensors:,}, "
                  f"{args.time_limit} s per case ({args.clock} clock), "
                  f"memory cap {args.mem_cap_mb} MB per worker, {args.jobs} worker process(es), seed {args.seed})")
    print_environment(console)
    total = args.cases * len(ids)
    with Progress(TextColumn("fuzzing"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console, transient=True) as prog:
        task = prog.add_task("fuzz", total=total)
        done = {"n": 0, "bad": 0, "next": 0.1, "t0": time.perf_counter()}

        def progress(n: int, bad: int) -> None:
            prog.advance(task, n)
            done["n"] += n
            done["bad"] += bad
            if not console.is_terminal and done["n"] >= done["next"] * total:  # a log file: a line per 10%
                while done["n"] >= done["next"] * total:
                    done["next"] += 0.1
                console.print(f"fuzz: {done['n']:,} of {total:,} cases, {done['bad']} failures, "
                              f"{time.perf_counter() - done['t0']:.0f} s")
        rep = fuzz(args.cases, ids, seed=args.seed, time_limit=args.time_limit, max_numel=args.max_numel,
                   jobs=args.jobs, mem_cap_mb=args.mem_cap_mb, progress=progress, max_tensors=args.max_tensors,
                   clock=args.clock)
    print_report(console, rep)
    figures = hostile_input_figures()
    console.print("hostile inputs beyond a header's size: " + "; ".join(
        f"{what}: {err} in {secs * 1000:.1f} ms" for what, secs, err in figures))
    clean = all(err != "no error" for _, _, err in figures)
    return 1 if rep["bad"] or not clean else 0


def print_report(console, rep: dict) -> None:
    from rich.table import Table

    mb = lambda b: f"{b / 2 ** 20:.1f}"  # noqa: E731
    t = Table(title=f"outcomes per codec ({rep['cases_per_codec']:,} cases each)")
    for col in ("codec", "cases", "decoded", "rejected (our errors)", "past frame+header", "failures",
                "slowest ms", "peak extra MB", "cases/s"):
        t.add_column(col, justify="right")
    for cid, c in rep["per_codec"].items():
        n = sum(c.values())
        secs = rep["codec_seconds"][cid]
        t.add_row(cid, f"{n:,}", f"{c.get('decoded', 0):,}", f"{c.get('rejected', 0):,}",
                  f"{rep['reached'][cid]:,}", str(sum(c.get(o, 0) for o in FAILURES)),
                  f"{rep['slowest_per_codec'][cid] * 1000:.1f}",
                  mb(rep["peak_per_codec"][cid]), f"{n / secs:,.0f}" if secs else "—")
    console.print(t)
    m = Table(title="outcomes per mutation (all codecs)")
    for col in ("mutation", "cases", "decoded", "rejected", "failures", "slowest ms"):
        m.add_column(col, justify="right")
    bm = rep["by_mutation"]
    for how in MUTATIONS:
        row = {o: bm.get((how, o), 0) for o in OUTCOMES}
        m.add_row(how, f"{sum(row.values()):,}", f"{row['decoded']:,}", f"{row['rejected']:,}",
                  str(sum(row[o] for o in FAILURES)), f"{rep['slowest_by_mutation'].get(how, 0.0) * 1000:.1f}")
    console.print(m)
    for cid, i, how, outcome, detail in rep["failures"]:
        console.print(f"[red]FAIL[/] {cid} case {i} ({how}): {outcome}: {detail}")
    (secs, i, how), scid = rep["slowest"]
    (csecs, ci, chow), ccid = rep["slowest_cpu"]
    (peak, first), pcid = rep["peak_extra"]
    o = rep["outcomes"]
    console.print(f"cases: {rep['cases']:,} ({rep['cases_per_codec']:,} per codec x {len(rep['per_codec'])} codecs)   "
                  f"failures: {rep['bad']} (" + ", ".join(f"{k} {o[k]}" for k in FAILURES) + ")")
    console.print(f"slowest case: {secs * 1000:.1f} ms wall ({scid} case {i}, {how}), {csecs * 1000:.1f} ms CPU "
                  f"({ccid} case {ci}, {chow}); limit {rep['time_limit']} s ({rep['clock']} clock)")
    last = min(first + BATCH, rep["cases_per_codec"]) - 1
    console.print(f"peak extra memory: {mb(peak)} MB (largest resident-memory growth within a batch of {BATCH} "
                  f"cases: {pcid}, cases {first}..{last}); cap {rep['mem_cap_mb']} MB per worker")
    console.print(f"wall time: {rep['wall_s']:.0f} s, {rep['cases'] / max(rep['wall_s'], 1e-9):,.0f} cases/s "
                  f"with {rep['jobs']} job(s)")
