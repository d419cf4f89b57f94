"""Clients in a small pool of persistent worker processes (one torch thread each).

Workers are forked once per run and inherit the ``Runtime`` (data, partition, algorithm, reusable
models), so a task carries only the client id, the downlink and the client's state. A broadcast is
written once per step into shared memory (``engine.shared_payloads``): a task carries a reference,
each worker reads and decodes it once per step. Tasks are handed out longest first (most training
samples), and each result is reported as it finishes, so the server decodes and checks replies while
the workers still train. Results are returned in task order, so aggregation order — and every
metric — is unchanged.

Devices: worker i computes on ``engine.devices[i % len]`` (or ``engine.device``); several workers may
share a GPU. CUDA cannot be forked, so whenever a worker uses CUDA (or ``spawn=True``, which tests use
on CPU) the pool *spawns* its workers instead: each rebuilds a ``Runtime`` from the config, dataset and
partition it is sent once at start (an algorithm registered only at run time in the parent process is
then unknown to the workers: register plugins at import time). Client states cross as CPU tensors.

A client that raises comes back as a ``ClientFailure`` (the worker lives on). When no task has
finished for ``engine.round_timeout`` seconds, the unfinished ones (a worker that hung or died:
``multiprocessing`` would wait for it forever) come back as None — no reply — and the pool is
replaced by a fresh one.
"""
from __future__ import annotations

import multiprocessing as mp
import os
import threading
import time
from collections.abc import Callable
from typing import Any

import torch

from fedsqueeze.engine import shared_payloads
from fedsqueeze.engine.device import worker_devices
from fedsqueeze.engine.shared_payloads import SharedPayloads, SharedRef, broadcast_key
from fedsqueeze.engine.runtime import Runtime, run_client_safely

_RUNTIME: Runtime | None = None
_DOWN: tuple[tuple, dict] | None = None  # this worker's decoded broadcast of the current step


def _init_worker(spawned: tuple | None = None) -> None:
    """Fork: the inherited runtime, one torch thread. Spawn: build this worker's runtime on its device."""
    global _RUNTIME
    torch.set_num_threads(1)
    if spawned is None:
        return
    cfg, dataset, partition, specs = spawned
    ident = mp.current_process()._identity  # (k,) for the k-th worker a pool started, from 1
    device = torch.device(specs[((ident[-1] - 1) if ident else 0) % len(specs)])
    if device.type == "cuda":
        from fedsqueeze.engine.device import apply_mode
        if device.index is not None:
            torch.cuda.set_device(device)
        apply_mode(cfg.engine.deterministic, cfg.engine.tf32)
    _RUNTIME = Runtime(cfg, dataset, partition, device=device)


def _decode_down(runtime: Runtime, rnd: int, payloads: dict[str, bytes]):
    return {kind: runtime.algo.codec(kind, "down", rnd).decode(p) for kind, p in payloads.items()}


def _task(args: tuple) -> tuple:
    global _DOWN
    client, rnd, step, payloads, stored = args
    assert _RUNTIME is not None
    key = payloads.key if isinstance(payloads, SharedRef) else broadcast_key(rnd, step, payloads)
    if _DOWN is None or _DOWN[0] != key:  # decoded once per step, unless each client has its own (delta)
        if isinstance(payloads, SharedRef):  # the step's broadcast, written once into shared memory
            payloads = shared_payloads.read(payloads)
        _DOWN = (key, _decode_down(_RUNTIME, rnd, payloads))
    return run_client_safely(_RUNTIME, client, rnd, step, _DOWN[1], stored)


class WorkerPool:
    def __init__(self, runtime: Runtime, workers: int, *, spawn: bool = False) -> None:
        """``spawn``: spawn (not fork) the workers even on CPU — what CUDA workers always do."""
        global _RUNTIME
        _RUNTIME = runtime
        self.workers = workers
        eng = runtime.cfg.engine
        self.devices = [str(d) for d in worker_devices(eng)] if eng.devices else [str(runtime.device)]
        # FEDSQUEEZE_POOL_SPAWN=1: spawn on CPU too (testing the path CUDA workers take)
        spawn = spawn or os.environ.get("FEDSQUEEZE_POOL_SPAWN") == "1"
        self.spawn = spawn or any(not d.startswith("cpu") for d in self.devices)
        self._pool = self._start()
        self._sizes = [len(t) for t in runtime.partition.train]  # a client's training samples: its work
        self._shared = SharedPayloads() if shared_payloads.available() else None

    def _share_broadcast(self, tasks: list[tuple]) -> list[tuple]:
        """Tasks whose downlink is one payload dict shared by several clients (a broadcast) carry a
        ``SharedRef`` to it in shared memory instead of the bytes (``engine.shared_payloads``)."""
        if self._shared is None or len(tasks) < 2:
            return tasks
        first = tasks[0][3]
        if not first or any(t[3] is not first for t in tasks):  # per-client payloads (delta downlink)
            return tasks
        ref = self._shared.put(tasks[0][1], tasks[0][2], first)
        return [(c, rnd, step, ref, stored) for c, rnd, step, _, stored in tasks]

    def _size(self, client: int) -> int:
        return self._sizes[client] if 0 <= client < len(self._sizes) else 0

    def _start(self):
        if not self.spawn:
            return mp.get_context("fork").Pool(self.workers, initializer=_init_worker)
        rt = _RUNTIME
        assert rt is not None
        # the CPU dataset: the partition was built from it, and tensors cross processes as CPU tensors
        data = getattr(rt, "host_dataset", rt.dataset)
        return mp.get_context("spawn").Pool(self.workers, initializer=_init_worker,
                                            initargs=((rt.cfg, data, rt.partition, self.devices),))

    def map(self, tasks: list[tuple[int, int, int, dict[str, bytes], Any]], timeout: float | None = None,
            on_result: Callable[[int, Any], None] | None = None) -> list:
        """Each task's result (a ``run_client`` tuple or a ``ClientFailure``), in task order; None for the
        tasks still unfinished once no task has finished for ``timeout`` seconds (a liveness guard, not
        a time budget: slow but steady clients are never cut off).

        Tasks are handed out longest first (most training samples; ties in task order), so the round
        does not end waiting for one large client that started last; ``on_result(i, result)`` is called
        as each task finishes (the engine starts decoding and checking it while the others train)."""
        tasks = self._share_broadcast(tasks)
        order = sorted(range(len(tasks)), key=lambda i: (-self._size(tasks[i][0]), i))
        pending: list = [None] * len(tasks)
        finished = threading.Event()  # set by the pool's result thread whenever a task finishes
        for i in order:
            pending[i] = self._pool.apply_async(_task, (tasks[i],), callback=lambda _: finished.set(),
                                                error_callback=lambda _: finished.set())
        out: list = [None] * len(pending)
        left = set(range(len(pending)))
        progress = time.monotonic()
        while left:
            finished.clear()
            done = [i for i in order if i in left and pending[i].ready()]
            for i in done:
                out[i] = pending[i].get()  # a ConfigError raised by a client is re-raised here
                left.discard(i)
                if on_result is not None:
                    on_result(i, out[i])
            if done:
                progress = time.monotonic()
            elif timeout is not None and time.monotonic() - progress > timeout:
                break
            else:
                finished.wait(0.05)
        if left:  # a stuck or dead worker still holds its task: start afresh
            self.close()
            self._pool = self._start()
        return out

    def close(self) -> None:
        self._pool.terminate()
        self._pool.join()
        if self._shared is not None:
            self._shared.close()
