"""The worker side of ``fedsqueeze bench fuzz``: runs cases in a forked process and reports them.

Each case is decoded under a per-case timer (SIGALRM); the process limits its own address space
(``RLIMIT_AS``) to its size at start plus the memory cap, measures its resident-memory growth per
batch of cases, and sends the parent a ``Part`` after every batch. The parent (``bench.fuzz``) is
the watchdog and merges the parts.
"""
from __future__ import annotations

import faulthandler
import resource
import signal
import time
import traceback
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import torch

from fedsqueeze.bench.fuzz_cases import inputs, make_case, many_payloads, valid_payloads
from fedsqueeze.codecs.spec import decode_any, make_codec
from fedsqueeze.errors import CodecError, PayloadError
from fedsqueeze.wire.payload import Header, unpack

FAILURES = ("crash", "hang", "over_cap", "bad_output", "died")
OUTCOMES = ("decoded", "rejected", *FAILURES)
BATCH = 100          # cases between progress reports and memory readings
WALL_FACTOR = 10     # with the CPU clock, a case may also take at most this times the limit in wall time
MAX_LISTED = 20      # failures kept per codec


class _Hang(Exception):
    pass


_CASE: dict = {}  # the running case with the CPU clock: its limit and start readings (for ``_alarm``)


def _run_delay() -> float:
    """Seconds this thread has waited for a CPU so far (Linux ``/proc/self/schedstat``; 0 elsewhere)."""
    try:
        with open("/proc/thread-self/schedstat") as f:
            return int(f.read().split()[1]) / 1e9
    except (OSError, ValueError, IndexError):
        return 0.0


def _alarm(signum, frame):  # noqa: ARG001
    if signum == signal.SIGPROF:
        raise _Hang("cpu")
    if _CASE:  # CPU clock: the wall timer fails a case that sleeps or blocks, not one that waits for a core
        wall = time.monotonic() - _CASE["wall"]
        blocked = wall - (time.process_time() - _CASE["cpu"]) - (_run_delay() - _CASE["queue"])
        if blocked <= _CASE["limit"]:
            signal.setitimer(signal.ITIMER_REAL, _CASE["limit"] * WALL_FACTOR)
            return
    raise _Hang("wall")


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


def run_case(bad: bytes, max_numel: int, time_limit: float, max_tensors: int | None = None,
             clock: str = "wall") -> tuple[str, bool, str]:
    """Decode one payload under the per-case timer: (outcome, past the frame and header checks, detail).
    ``max_numel``, ``max_tensors``: the receiver's limits (None: the format's own). ``clock``: ``"wall"``
    (the limit is wall-clock seconds) or ``"cpu"`` (CPU seconds of this process, so a case is not failed
    for the machine's load; every ``WALL_FACTOR`` times the limit in wall time, the case fails if more than
    the limit of it was spent neither computing nor waiting for a core: a sleep or a blocked call)."""
    header = None
    if clock == "cpu":
        _CASE.update(limit=time_limit, wall=time.monotonic(), cpu=time.process_time(), queue=_run_delay())
        signal.setitimer(signal.ITIMER_PROF, time_limit)
    signal.setitimer(signal.ITIMER_REAL, time_limit * (WALL_FACTOR if clock == "cpu" else 1))
    try:
        try:
            header = unpack(bad)[0]
        except PayloadError:
            pass
        out = decode_any(bad, max_numel=max_numel, max_tensors=max_tensors)
        problem = _check_output(out, header)
        return ("bad_output", True, problem) if problem else ("decoded", True, "")
    except (PayloadError, CodecError) as e:
        return ("over_cap" if _over_cap(e) else "rejected"), header is not None, repr(e)
    except _Hang as e:
        what = (f"{time_limit} s of CPU time" if e.args == ("cpu",) else
                f"{time_limit * WALL_FACTOR} s of wall time, more than {time_limit} s of it blocked"
                if clock == "cpu" else f"the {time_limit} s time limit")
        return "hang", header is not None, f"exceeded {what} ({clock} clock)"
    except BaseException as e:  # noqa: BLE001  (the point is to catch everything else)
        outcome = "over_cap" if _over_cap(e) else "crash"
        return outcome, header is not None, f"{e!r}\n{traceback.format_exc(limit=4)}"
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.setitimer(signal.ITIMER_PROF, 0)
        _CASE.clear()


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
class Part:
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
    slowest_by_mutation: dict = field(default_factory=dict)  # mutation -> slowest wall seconds
    seconds: float = 0.0
    final: bool = False


def run_range(cid: str, start: int, stop: int, skip: frozenset, opts: dict, slot=None, send=None) -> Part:
    """Cases ``start..stop-1`` (minus ``skip``) of ``cid``, in this process. ``slot`` (shared with the
    watchdog): [case in progress, its start time]; ``send`` gets a ``Part`` after every batch."""
    ids, goods = opts["ids"], valid_payloads(cid)
    # warm-up (lazy imports, first-call costs, also of the codecs a swapped id reaches): not a case
    many_payloads(cid)  # the many-tiny-tensor payloads are built once, before the first case
    for good in goods + [make_codec(other).encode(inputs(0), seed=0) for other in ids]:
        decode_any(good, max_numel=opts["max_numel"], max_tensors=opts.get("max_tensors"))
    mem = _Memory()
    part = Part(cid, done_through=start)
    t_batch = time.perf_counter()
    base = mem.reset()
    for i in range(start, stop):
        if i in skip:
            continue
        how, bad = make_case(cid, i, seed=opts["seed"], goods=goods, ids=ids)
        if slot is not None:
            slot[0], slot[1] = i, time.monotonic()
        t0, c0 = time.perf_counter(), time.process_time()
        outcome, reached, detail = run_case(bad, opts["max_numel"], opts["time_limit"], opts.get("max_tensors"),
                                            opts.get("clock", "wall"))
        dt, dc = time.perf_counter() - t0, time.process_time() - c0
        if slot is not None:
            slot[1] = 0.0
        part.counts[outcome] += 1
        part.by_mutation[how, outcome] += 1
        part.reached += reached
        if dt > part.slowest[0]:
            part.slowest = (dt, i, how)
        if dt > part.slowest_by_mutation.get(how, 0.0):
            part.slowest_by_mutation[how] = dt
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
                part = Part(cid, done_through=i + 1)
            t_batch = time.perf_counter()
            base = mem.reset()
    part.done_through = stop
    part.final = True
    return part


def worker(task: tuple, opts: dict, conn, slot) -> None:
    cid, start, stop, skip = task
    try:
        torch.set_num_threads(1)
        faulthandler.disable()  # a segfault is reported by the parent, with its case
        signal.signal(signal.SIGALRM, _alarm)
        signal.signal(signal.SIGPROF, _alarm)
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C and stops us
        if opts["mem_cap"]:
            _, hard = resource.getrlimit(resource.RLIMIT_AS)
            limit = _Memory().address_space() + opts["mem_cap"]
            if limit > opts["mem_cap"]:
                resource.setrlimit(resource.RLIMIT_AS, (limit if hard < 0 else min(limit, hard), hard))
        conn.send(run_range(cid, start, stop, skip, opts, slot, conn.send))
    except BaseException as e:  # noqa: BLE001  a failure outside any case (setup): tell the parent
        conn.send(("error", f"{e!r}\n{traceback.format_exc(limit=4)}"))
    finally:
        conn.close()
