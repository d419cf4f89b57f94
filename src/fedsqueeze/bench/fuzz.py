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

The only acceptable outcomes are a decoded payload whose tensors match its header, or our own
errors (``PayloadError``/``CodecError``). Failures: any other exception (``crash``), a case slower
than the time limit (``hang``), an allocation beyond the memory cap (``over_cap``), a decode whose
tensors do not match the header (``bad_output``), and a worker process that died (``died``: a
segfault or a hang the in-process timer could not interrupt).

Cases run in forked worker processes. Each arms a per-case timer (SIGALRM) and limits its address
space to its size at start plus the memory cap (``RLIMIT_AS``); the parent is a watchdog that kills a
worker stuck past the time limit plus a grace period, records the case and resumes after it. Peak
memory is measured per batch of cases (Linux: the resident high-water mark, reset before each
batch) and the largest growth is reported. Case ``i`` of a codec is fully determined by
``(seed, codec, i)``: ``make_case`` rebuilds it for debugging.
"""
from __future__ import annotations

import faulthandler
import multiprocessing as mp
import multiprocessing.connection as mpc
import resource
import signal
import time
import traceback
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any

import torch

from fedsqueeze.bench.fuzz_cases import MUTATIONS, inputs, make_case, valid_payloads
from fedsqueeze.codecs.spec import decode_any, make_codec
from fedsqueeze.errors import CodecError, FedsqueezeError, PayloadError
from fedsqueeze.registry import CODECS
from fedsqueeze.wire.payload import Header, unpack

FAILURES = ("crash", "hang", "over_cap", "bad_output", "died")
OUTCOMES = ("decoded", "rejected", *FAILURES)
BATCH = 100          # cases between progress reports and memory readings
MAX_LISTED = 20      # failures kept per codec


class _Hang(Exception):
    pass


def _alarm(signum, frame):  # noqa: ARG001
    raise _Hang()


# ---- running cases --------------------------------------------------------------------------------
def _over_cap(exc: BaseException | None) -> bool:
    """An allocation failed (MemoryError, or torch's allocator error), possibly wrapped in ours."""
    seen = 0
    while exc is not None and seen < 10:
        if isinstance(exc, MemoryError):
            return True
        if isinstance(exc, RuntimeError) and "alloc" in str(exc).lower() and "memory" in str(exc).lower():
            return True
        exc = exc.__cause__ or exc.__context__
        seen += 1
    return False


def _check_output(out: Any, header: Header | None) -> str | None:
    if header is None:
        return "decoded a payload whose frame or header is invalid"
    if not isinstance(out, dict) or list(out) != [s.name for s in header.tensors]:
        return "decoded tensors do not match the header's names"
    for s in header.tensors:
        t = out[s.name]
        if not isinstance(t, torch.Tensor) or tuple(t.shape) != s.shape or t.dtype != s.dtype:
            return f"tensor {s.name!r} decoded as {getattr(t, 'shape', type(t))}, header says {s.shape} {s.dtype}"
    return None


def run_case(bad: bytes, max_numel: int, time_limit: float) -> tuple[str, bool, str]:
    """Decode one payload under the per-case timer: (outcome, past the frame and header checks, detail)."""
    header = None
    signal.setitimer(signal.ITIMER_REAL, time_limit)
    try:
        try:
            header = unpack(bad)[0]
        except PayloadError:
            pass
        out = decode_any(bad, max_numel=max_numel)
        problem = _check_output(out, header)
        return ("bad_output", True, problem) if problem else ("decoded", True, "")
    except (PayloadError, CodecError) as e:
        return ("over_cap" if _over_cap(e) else "rejected"), header is not None, repr(e)
    except _Hang:
        return "hang", header is not None, f"exceeded the {time_limit} s time limit"
    except BaseException as e:  # noqa: BLE001  (the point is to catch everything else)
        outcome = "over_cap" if _over_cap(e) else "crash"
        return outcome, header is not None, f"{e!r}\n{traceback.format_exc(limit=4)}"
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)


class _Memory:
    """Resident memory of this process: current and peak since the last ``reset`` (Linux /proc; elsewhere
    the lifetime peak from getrusage, so growth is measured against the first reading)."""

    def __init__(self) -> None:
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            self.proc = True
        except OSError:
            self.proc = False

    def _status(self, key: str) -> int:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key):
                    return int(line.split()[1]) * 1024
        return 0

    def reset(self) -> int:
        """Reset the peak to the current size; returns the current size in bytes."""
        if self.proc:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            return self._status("VmRSS:")
        return self.peak()

    def peak(self) -> int:
        if self.proc:
            return self._status("VmHWM:")
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

    def address_space(self) -> int:
        return self._status("VmSize:") if self.proc else 0


@dataclass
class _Part:
    """Results of a run of consecutive cases of one codec (what a worker sends after each batch)."""
    cid: str
    done_through: int = 0                 # every case below this index is accounted for
    counts: Counter = field(default_factory=Counter)
    by_mutation: Counter = field(default_factory=Counter)   # (mutation, outcome) -> count
    reached: int = 0                      # cases whose frame and header were valid
    failures: list = field(default_factory=list)           # (codec, case, mutation, outcome, detail)
    slowest: tuple = (0.0, -1, "")        # (wall seconds, case, mutation)
    slowest_cpu: tuple = (0.0, -1, "")    # (CPU seconds, case, mutation): without other processes' load
    peak: tuple = (0, -1)                 # (bytes above the batch's starting RSS, first case of the batch)
    seconds: float = 0.0
    final: bool = False


def _run_range(cid: str, start: int, stop: int, skip: frozenset, opts: dict, slot=None, send=None) -> _Part:
    """Cases ``start..stop-1`` (minus ``skip``) of ``cid``, in this process. ``slot`` (shared with the
    watchdog): [case in progress, its start time]; ``send`` gets a ``_Part`` after every batch."""
    ids, goods = opts["ids"], valid_payloads(cid)
    # warm-up (lazy imports, first-call costs, also of the codecs a swapped id reaches): not a case
    for good in goods + [make_codec(other).encode(inputs(0), seed=0) for other in ids]:
        decode_any(good, max_numel=opts["max_numel"])
    mem = _Memory()
    part = _Part(cid, done_through=start)
    t_batch = time.perf_counter()
    base = mem.reset()
    for i in range(start, stop):
        if i in skip:
            continue
        how, bad = make_case(cid, i, seed=opts["seed"], goods=goods, ids=ids)
        if slot is not None:
            slot[0], slot[1] = i, time.monotonic()
        t0, c0 = time.perf_counter(), time.process_time()
        outcome, reached, detail = run_case(bad, opts["max_numel"], opts["time_limit"])
        dt, dc = time.perf_counter() - t0, time.process_time() - c0
        if slot is not None:
            slot[1] = 0.0
        part.counts[outcome] += 1
        part.by_mutation[how, outcome] += 1
        part.reached += reached
        if dt > part.slowest[0]:
            part.slowest = (dt, i, how)
        if dc > part.slowest_cpu[0]:
            part.slowest_cpu = (dc, i, how)
        if outcome in FAILURES and len(part.failures) < MAX_LISTED:
            part.failures.append((cid, i, how, outcome, detail))
        if (i + 1 - start) % BATCH == 0 or i + 1 == stop:
            grew = mem.peak() - base
            if grew > part.peak[0]:
                part.peak = (grew, max(start, i + 1 - BATCH))
            part.done_through = i + 1
            part.seconds += time.perf_counter() - t_batch
            if send is not None:
                send(part)
                part = _Part(cid, done_through=i + 1)
            t_batch = time.perf_counter()
            base = mem.reset()
    part.done_through = stop
    part.final = True
    return part


def _worker(task: tuple, opts: dict, conn, slot) -> None:
    cid, start, stop, skip = task
    try:
        torch.set_num_threads(1)
        faulthandler.disable()  # a segfault is reported by the parent, with its case
        signal.signal(signal.SIGALRM, _alarm)
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C and stops us
        if opts["mem_cap"]:
            _, hard = resource.getrlimit(resource.RLIMIT_AS)
            limit = _Memory().address_space() + opts["mem_cap"]
            if limit > opts["mem_cap"]:
                resource.setrlimit(resource.RLIMIT_AS, (limit if hard < 0 else min(limit, hard), hard))
        conn.send(_run_range(cid, start, stop, skip, opts, slot, conn.send))
    except BaseException as e:  # noqa: BLE001  a failure outside any case (setup): tell the parent
        conn.send(("error", f"{e!r}\n{traceback.format_exc(limit=4)}"))
    finally:
        conn.close()


@dataclass
class _Running:
    proc: Any
    conn: Any
    slot: Any
    task: tuple
    done_through: int


def fuzz(cases: int, codecs: list[str] | None = None, *, seed: int = 0, time_limit: float = 2.0,
         max_numel: int = 1 << 22, jobs: int = 1, mem_cap_mb: int = 1024, grace: float = 10.0,
         progress=None) -> dict:
    """``cases`` mutated payloads per codec, in ``jobs`` forked worker processes with a watchdog.

    A worker stuck on one case for ``time_limit + grace`` seconds (the in-process timer could not
    interrupt it) is killed; a worker that dies (segfault) is replaced. Either way the case is recorded
    and the cases after it still run. ``progress(n, failed)`` is called as cases complete (``n`` more
    cases, ``failed`` of them failures)."""
    if cases < 0 or jobs < 1:
        raise FedsqueezeError("--cases must be >= 0 and --jobs >= 1")
    ids = codecs or CODECS.names()
    for cid in ids:
        CODECS.get(cid)  # unknown ids fail here, with the registry's did-you-mean
    opts = {"ids": CODECS.names(), "seed": seed, "time_limit": time_limit, "max_numel": max_numel,
            "mem_cap": mem_cap_mb << 20}
    chunk = -(-cases // jobs) if cases else 0
    todo = deque((cid, lo, min(lo + chunk, cases), frozenset()) for cid in ids for lo in range(0, cases, chunk or 1)
                 if chunk)
    per: dict[str, _Part] = {cid: _Part(cid) for cid in ids}
    ctx = mp.get_context("fork")
    running: dict[Any, _Running] = {}
    t0 = time.perf_counter()

    def add(p: _Part) -> None:
        acc = per[p.cid]
        acc.counts.update(p.counts)
        acc.by_mutation.update(p.by_mutation)
        acc.reached += p.reached
        acc.failures += p.failures[: max(0, MAX_LISTED - len(acc.failures))]
        acc.slowest = max(acc.slowest, p.slowest)
        acc.slowest_cpu = max(acc.slowest_cpu, p.slowest_cpu)
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
        add(_Part(cid, counts=Counter({outcome: 1}), by_mutation=Counter({(how, outcome): 1}),
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
                proc = ctx.Process(target=_worker, args=(task, opts, send, slot), daemon=True)
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
                if started and now - started > time_limit + grace:
                    run.proc.kill()
                    run.proc.join(timeout=5)
                    lost(run, "hang", f"no result after {time_limit + grace:.0f} s; worker killed by the watchdog")
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
        "peak_extra": max(((p.peak, cid) for cid, p in per.items()), default=((0, -1), "")),
        "peak_per_codec": {cid: p.peak[0] for cid, p in per.items()},
        "wall_s": time.perf_counter() - t0,
        "mem_cap_mb": mem_cap_mb, "max_numel": max_numel, "time_limit": time_limit,
    }


# ---- the command --------------------------------------------------------------------------------
def main(args) -> int:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from fedsqueeze.bench.report import print_environment

    console = Console(width=140)
    ids = [c.strip() for c in args.codecs.split(",") if c.strip()] if args.codecs else CODECS.names()
    console.print(f"[bold]bench fuzz[/]: {args.cases:,} mutated payloads PER CODEC x {len(ids)} codecs through the "
                  f"server-side decode path (decode_any; element cap {args.max_numel:,}, {args.time_limit} s per case, "
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
                   jobs=args.jobs, mem_cap_mb=args.mem_cap_mb, progress=progress)
    print_report(console, rep)
    return 1 if rep["bad"] else 0


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
    for col in ("mutation", "cases", "decoded", "rejected", "failures"):
        m.add_column(col, justify="right")
    bm = rep["by_mutation"]
    for how in MUTATIONS:
        row = {o: bm.get((how, o), 0) for o in OUTCOMES}
        m.add_row(how, f"{sum(row.values()):,}", f"{row['decoded']:,}", f"{row['rejected']:,}",
                  str(sum(row[o] for o in FAILURES)))
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
                  f"({ccid} case {ci}, {chow}); limit {rep['time_limit']} s")
    last = min(first + BATCH, rep["cases_per_codec"]) - 1
    console.print(f"peak extra memory: {mb(peak)} MB (largest resident-memory growth within a batch of {BATCH} "
                  f"cases: {pcid}, cases {first}..{last}); cap {rep['mem_cap_mb']} MB per worker")
    console.print(f"wall time: {rep['wall_s']:.0f} s, {rep['cases'] / max(rep['wall_s'], 1e-9):,.0f} cases/s "
                  f"with {rep['jobs']} job(s)")
