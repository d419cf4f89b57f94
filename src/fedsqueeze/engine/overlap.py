"""Server-side admission overlapped with client training.

The server's work on a reply — decode every payload, check its spec, scan its values (see
``fedsqueeze.engine.validation.admit``) — depends on nothing but the reply's bytes and the step's
expectations, so it can start the moment a reply arrives, on a background thread, while the next
client trains (in process: torch releases the GIL inside its kernels, and CUDA training is queued
asynchronously anyway; with the worker pool: while the workers still train).

Only the *work* moves: the engine still takes every verdict in sampling order (``result``), records
the ledger, rejections and state commits in that order, and aggregates in client order, so every
byte and every metric is what a serial admission gives. The engine turns the background admission on
when a core is idle (``spare_core``: on a machine busier than its cores it would only add waiting) and
always on an accelerator. A reply that was never submitted (a
transport that overrides ``Simulation._execute``, e.g. Flower) is admitted on the spot.

On an accelerator the same thread also *encodes* a client's uploads (``later``): the main thread copies
the trained tensors to the CPU (``runtime.host_copy``) and goes on to the next client's training while
client k is encoded, then admitted, in that order. Codecs draw randomness only from their own seeded
generators, never from the global one the training uses, so nothing depends on the interleaving.
"""
from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

Check = Callable[[int, dict, Any, dict], Any]  # (client, uploads, num_samples, metrics) -> Reply | Rejection


def spare_core() -> bool:
    """Whether a CPU core is idle for the background thread (load average at least one below the cores).
    On a machine already busier than its cores, handing work to another thread only adds waiting (for
    the scheduler, for the GIL), so admission then stays on the spot: the same results either way."""
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):
        return (os.cpu_count() or 1) > 1
    return (os.cpu_count() or 1) - load >= 1.0


def without(metrics: Any, key: str) -> Any:
    """``metrics`` without ``key`` (a new dict when it had it), as the engine hands them to ``admit``."""
    if isinstance(metrics, dict) and key in metrics:
        return {k: v for k, v in metrics.items() if k != key}
    return metrics


class Admission:
    """One background thread; per step, ``start(check)``, ``submit`` on arrival, ``result`` in order."""

    def __init__(self, enabled: bool = True) -> None:
        """``enabled=False``: ``submit`` does nothing, every verdict is computed on the spot (serial)."""
        self.enabled = enabled
        self._executor: ThreadPoolExecutor | None = None
        self._check: Check | None = None
        self._pending: dict[int, tuple[dict, Future]] = {}

    def start(self, check: Check) -> None:
        """A new step: replies are admitted with ``check``; anything still pending is forgotten."""
        self.finish()
        self._check = check

    def submit(self, client: int, ups: dict, n: Any, metrics: Any, *, inline: bool = False) -> None:
        """Begin admitting one arrived reply in the background; ``inline``: admit it here and now (a caller
        with nothing else to do, e.g. waiting for pool workers), keeping the verdict for ``result``."""
        if self._check is None:
            return
        if inline:
            done: Future = Future()
            try:
                done.set_result(self._check(client, ups, n, metrics))
            except Exception as e:  # noqa: BLE001 — re-raised by result(), where a serial admission raises
                done.set_exception(e)
            self._pending[client] = (ups, done)
            return
        if not self.enabled:
            return
        self._pending[client] = (ups, self.later(self._check, client, ups, n, metrics))

    def later(self, fn: Callable[..., Any], *args: Any) -> Future:
        """``fn(*args)`` on the background thread, after everything handed to it before (one thread: FIFO)."""
        if self._executor is None:
            self._executor = ThreadPoolExecutor(1, thread_name_prefix="fedsqueeze-admit")
        return self._executor.submit(fn, *args)

    def result(self, client: int, ups: dict, n: Any, metrics: Any) -> Any:
        """The verdict on a reply: the background one if this very reply was submitted, else computed now.
        An exception of the check is raised here, as a serial admission would raise it."""
        pending = self._pending.pop(client, None)
        if pending is not None and pending[0] is ups:
            return pending[1].result()
        assert self._check is not None, "Admission.start(check) must come first"
        return self._check(client, ups, n, metrics)

    def finish(self) -> None:
        """End of a step: wait for (and drop) whatever is still being admitted."""
        for _, fut in self._pending.values():
            fut.exception()  # waits; a stray error belongs to a reply nobody asked for
        self._pending.clear()
        self._check = None

    def close(self) -> None:
        self.finish()
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None
