"""``flower-supernode`` with a shorter idle poll, for local federations on loopback.

A Flower 1.41 SuperNode that found no message waits a fixed 3 s before asking the SuperLink again, and
waits for its ClientApp's reply in 0.5 s steps, and retries fetching a message's parts from the SuperLink
after 1 s, then 2 s, ... (hard-coded in ``flwr.supernode.start_client_internal``).
On a real network that keeps the SuperLink's load low; on 127.0.0.1 it makes a round seconds longer than
its training. ``python -m fedsqueeze.flower.fast_supernode POLL_S ARGS...`` runs the unchanged
``flower-supernode ARGS...`` with those waits capped at ``POLL_S`` seconds and the part retries starting
at ``POLL_S`` (only that module's ``time.sleep`` and ``pull_objects`` defaults are replaced; everything
else is Flower's). ``fedsqueeze flower local`` uses it
with ``LocalFederation(node_poll_s=0.1)``; ``--node-poll 0`` runs the plain ``flower-supernode``.
"""
from __future__ import annotations

import functools
import sys
import time
import types


def patch(poll_s: float) -> bool:
    """Cap the SuperNode loop's waits at ``poll_s``; False where this Flower has no such loop."""
    from flwr.supernode import start_client_internal as loop

    if getattr(loop, "time", None) is not time:
        return False
    shim = types.ModuleType("time")
    shim.__dict__.update(time.__dict__)
    shim.sleep = lambda seconds: time.sleep(min(seconds, poll_s))
    loop.time = shim
    if callable(getattr(loop, "pull_objects", None)):  # a message's parts: first retry after poll_s, not 1 s
        loop.pull_objects = functools.partial(loop.pull_objects, initial_backoff=min(poll_s, 1.0),
                                              backoff_cap=max(poll_s, 0.2))
    return True


def main() -> None:
    poll_s = float(sys.argv[1])
    patch(poll_s)
    from flwr.supernode.cli import flower_supernode

    sys.argv = ["flower-supernode", *sys.argv[2:]]
    flower_supernode()


if __name__ == "__main__":
    main()
