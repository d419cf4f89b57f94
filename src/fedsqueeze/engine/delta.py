"""Per-client delta downlink (``codec.downlink = "delta"``): each client receives the compressed
difference between what the server broadcasts and the copy that client already holds.

Both sides keep the client's copy (its *mirror*): the client in its own state, the server in a
store of its own (``mirrors/`` in the run folder, checkpointed like client states). A client's first
mirror is the broadcast of the seeded initial server state, which both sides can compute without a
byte on the wire. Each step the server encodes ``broadcast − mirror`` with the downlink codec for
that client, decodes its own payload and sets ``mirror ← mirror + decoded`` — exactly what the
client computes on arrival, float op for float op, so the two copies stay bitwise equal. The
compression error is never lost: whatever a payload did not carry is still in the next difference
(error feedback for free), and a client that was away for many rounds receives one payload with
everything it missed. Integer tensors are sent as they are.

The server's mirror of a client advances only when that client's state does (its reply accepted);
a rejected or silent client keeps both copies where they were. Lossless broadcast (``"broadcast"``,
the default) encodes once for all clients instead.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from fedsqueeze.algorithms.base import Messages
from fedsqueeze.engine.state import ClientStateStore
from fedsqueeze.errors import ConfigError

MODES = ("broadcast", "delta")


def reference(runtime: Any) -> Messages:
    """The broadcast of the seeded initial server state: every client's first mirror (cached)."""
    ref = getattr(runtime, "_delta_reference", None)
    if ref is None:
        model = runtime.build("model")
        model.load_state_dict(runtime.initial_weights("model"), strict=False)
        ref = runtime.algo.broadcast(runtime.algo.init_server(model), 1, 0)
        runtime._delta_reference = ref
    return ref


def _base(base: dict[str, torch.Tensor] | None, name: str, like: torch.Tensor) -> torch.Tensor | None:
    t = None if base is None else base.get(name)
    return t if t is not None and t.shape == like.shape and t.dtype == like.dtype else None


def difference(target: Messages, mirror: Messages) -> Messages:
    """``target − mirror`` per float tensor (zeros where the mirror has no such tensor); ints as they are."""
    out: Messages = {}
    for kind, tensors in target.items():
        out[kind] = {}
        for name, t in tensors.items():
            b = _base(mirror.get(kind), name, t) if t.is_floating_point() else None
            out[kind][name] = t - b if b is not None else t.clone()
    return out


def apply(mirror: Messages, delta: Messages) -> Messages:
    """``mirror + delta`` per float tensor (the delta itself where the mirror has none); ints replaced."""
    out: Messages = {}
    for kind, tensors in delta.items():
        out[kind] = {}
        for name, d in tensors.items():
            b = _base(mirror.get(kind), name, d) if d.is_floating_point() else None
            out[kind][name] = b + d if b is not None else d
    return out


def check(cfg: Any, algo: Any) -> None:
    if cfg.codec.downlink not in MODES:
        raise ConfigError(f"codec.downlink = {cfg.codec.downlink!r} is invalid: use 'broadcast' or 'delta'")


class ServerMirrors:
    """The server's copy of each client's mirror, with staged updates committed per accepted reply."""

    def __init__(self, directory: Path, index: dict[int, int] | None = None) -> None:
        self.store = ClientStateStore(directory, index)
        self.staged: dict[int, Messages] = {}

    def mirror(self, client: int, runtime: Any) -> Messages:
        return self.staged.get(client) or self.store.get(client) or reference(runtime)

    def encode(self, runtime: Any, client: int, msgs: Messages, rnd: int, encode: Any) -> dict[str, bytes]:
        """Payloads for one client (``encode(kind, tensors) -> bytes``); stages its new mirror."""
        base = self.mirror(client, runtime)
        delta = difference(msgs, base)
        payloads = {kind: encode(kind, tensors) for kind, tensors in delta.items()}
        decoded = {kind: runtime.algo.codec(kind, "down", rnd).decode(p) for kind, p in payloads.items()}
        self.staged[client] = apply(base, decoded)
        return payloads

    def accept(self, client: int) -> None:
        if client in self.staged:
            self.store.put(client, self.staged.pop(client))

    def reset_step(self) -> None:
        self.staged = {}
