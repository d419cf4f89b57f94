"""Clients in a small pool of persistent worker processes (one torch thread each).

Workers are forked once per run and inherit the ``Runtime`` (data, partition, algorithm, reusable
models), so a task carries only the client id, the downlink payload bytes and the client's state.
Results are returned in task order, so aggregation order — and every metric — is unchanged.
"""
from __future__ import annotations

import multiprocessing as mp
from typing import Any

import torch

from fedsqueeze.engine.runtime import Runtime

_RUNTIME: Runtime | None = None
_DOWN: tuple[tuple[int, int], dict] | None = None  # this worker's decoded broadcast of the current step


def _init_worker() -> None:
    torch.set_num_threads(1)


def _decode_down(runtime: Runtime, rnd: int, payloads: dict[str, bytes]):
    return {kind: runtime.algo.codec(kind, "down", rnd).decode(p) for kind, p in payloads.items()}


def _task(args: tuple) -> tuple:
    global _DOWN
    client, rnd, step, payloads, stored = args
    assert _RUNTIME is not None
    if _DOWN is None or _DOWN[0] != (rnd, step):  # every client of a step gets the same broadcast
        _DOWN = ((rnd, step), _decode_down(_RUNTIME, rnd, payloads))
    return _RUNTIME.run_client(client, rnd, step, _DOWN[1], stored)


class WorkerPool:
    def __init__(self, runtime: Runtime, workers: int) -> None:
        global _RUNTIME
        _RUNTIME = runtime
        self._pool = mp.get_context("fork").Pool(workers, initializer=_init_worker)

    def map(self, tasks: list[tuple[int, int, int, dict[str, bytes], Any]]) -> list[tuple]:
        return self._pool.map(_task, tasks, chunksize=1)

    def close(self) -> None:
        self._pool.terminate()
        self._pool.join()
