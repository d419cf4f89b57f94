"""Clients in a small pool of persistent worker processes (one torch thread each).

Workers are forked once per run and inherit the ``Runtime`` (data, partition, algorithm, reusable
models), so a task carries only the client id, the downlink payload bytes and the client's state.
Results are returned in task order, so aggregation order — and every metric — is unchanged.

A client that raises comes back as a ``ClientFailure`` (the worker lives on). When no task has
finished for ``engine.round_timeout`` seconds, the unfinished ones (a worker that hung or died:
``multiprocessing`` would wait for it forever) come back as None — no reply — and the pool is
replaced by a fresh one.
"""
from __future__ import annotations

import multiprocessing as mp
import time
import zlib
from typing import Any

import torch

from fedsqueeze.engine.runtime import Runtime, run_client_safely

_RUNTIME: Runtime | None = None
_DOWN: tuple[tuple, dict] | None = None  # this worker's decoded broadcast of the current step


def _init_worker() -> None:
    torch.set_num_threads(1)


def _decode_down(runtime: Runtime, rnd: int, payloads: dict[str, bytes]):
    return {kind: runtime.algo.codec(kind, "down", rnd).decode(p) for kind, p in payloads.items()}


def _task(args: tuple) -> tuple:
    global _DOWN
    client, rnd, step, payloads, stored = args
    assert _RUNTIME is not None
    key = (rnd, step, tuple((k, len(p), zlib.crc32(p)) for k, p in payloads.items()))
    if _DOWN is None or _DOWN[0] != key:  # decoded once per step, unless each client has its own (delta)
        _DOWN = (key, _decode_down(_RUNTIME, rnd, payloads))
    return run_client_safely(_RUNTIME, client, rnd, step, _DOWN[1], stored)


class WorkerPool:
    def __init__(self, runtime: Runtime, workers: int) -> None:
        global _RUNTIME
        _RUNTIME = runtime
        self.workers = workers
        self._pool = self._start()

    def _start(self):
        return mp.get_context("fork").Pool(self.workers, initializer=_init_worker)

    def map(self, tasks: list[tuple[int, int, int, dict[str, bytes], Any]], timeout: float | None = None) -> list:
        """Each task's result (a ``run_client`` tuple or a ``ClientFailure``), in task order; None for the
        tasks still unfinished once no task has finished for ``timeout`` seconds (a liveness guard, not
        a time budget: slow but steady clients are never cut off)."""
        pending = [self._pool.apply_async(_task, (t,)) for t in tasks]
        out: list = [None] * len(pending)
        left = set(range(len(pending)))
        progress = time.monotonic()
        while left:
            done = [i for i in sorted(left) if pending[i].ready()]
            for i in done:
                out[i] = pending[i].get()  # a ConfigError raised by a client is re-raised here
                left.discard(i)
            if done:
                progress = time.monotonic()
            elif timeout is not None and time.monotonic() - progress > timeout:
                break
            else:
                pending[min(left)].wait(0.05)
        if left:  # a stuck or dead worker still holds its task: start afresh
            self.close()
            self._pool = self._start()
        return out

    def close(self) -> None:
        self._pool.terminate()
        self._pool.join()
