"""``engine.deadline_s``: stragglers in time, not only in draws (simulation engine).

Each client of a communication step gets a simulated time, with the network profiles of ``compare``
(``fedsqueeze.compare.network``; ``engine.network`` names one, or is a table)::

    T_c = Σ_down (latency + 8·bytes / (down_mbps·10^6·m_c))     the broadcast arrives
        + compute_scale · compute_c                              the client trains
        + Σ_up   (latency + 8·bytes / (up_mbps·10^6·m_c))       its payloads leave, one after another

— the same sum as ``compare``'s simulated round time, in the order the events happen. ``compute_c`` is
the client's measured wall time (``client_s``) by default; with ``engine.seconds_per_sample`` > 0 it is
that many seconds per training sample the client processes in the step (its samples × ``local_epochs``,
or ``local_steps`` × ``batch_size``): deterministic, for tests and for devices unlike this machine.
Without ``engine.network`` the transfer terms are 0 (compute alone).

A client with ``T_c > deadline_s`` *misses the step*: its reply is dropped unread (never decoded, its
new state not committed), it counts as a straggler in the round's metrics and it is not asked again in
that round (a retry would take as long). Bytes: the broadcast was sent in full and is counted as
always; of its uploads, the bytes that left before the deadline are counted — the ledger records the
prefix of each payload that was sent in time (nothing for a payload not yet started).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from fedsqueeze.compare.network import NetworkProfile, profile
from fedsqueeze.errors import ConfigError


@dataclass(frozen=True)
class Deadline:
    seconds: float
    network: NetworkProfile | None = None
    seconds_per_sample: float = 0.0
    epochs: int = 1
    local_steps: int = 0
    batch_size: int = 32

    @classmethod
    def from_config(cls, cfg: Any) -> "Deadline | None":
        """The deadline of ``cfg.engine`` (None when ``deadline_s`` is 0); ``ConfigError`` on a bad profile."""
        eng = cfg.engine
        if not eng.deadline_s:
            if eng.network not in ("", None) or eng.seconds_per_sample:
                raise ConfigError("engine.network and engine.seconds_per_sample only apply with a deadline; "
                                  "set engine.deadline_s (seconds) or remove them")
            return None
        net = profile(eng.network, where="engine.network") if eng.network not in ("", None) else None
        return cls(float(eng.deadline_s), net, float(eng.seconds_per_sample), cfg.train.local_epochs,
                   cfg.train.local_steps, cfg.train.batch_size)

    def compute_s(self, samples: int, measured: float) -> float:
        """The client's compute time in the model: measured, or ``seconds_per_sample`` × samples processed."""
        if not self.seconds_per_sample:
            return measured
        processed = self.local_steps * self.batch_size if self.local_steps else samples * self.epochs
        return self.seconds_per_sample * processed

    def verdict(self, client: int, down: list[int], up: list[int], compute_s: float) -> tuple[float, list[int] | None]:
        """(T_c, None) if the client makes the deadline, else (T_c, bytes of each upload sent in time).
        ``down``/``up``: payload lengths in the order they cross."""
        net = self.network
        m = net.multiplier(client) if net is not None else 1.0

        def transfer(nbytes: int, mbps: float) -> float:
            return 0.0 if net is None else net.latency_ms / 1e3 + 8.0 * nbytes / (mbps * 1e6 * m)

        t = sum(transfer(b, net.down_mbps) for b in down) if net is not None else 0.0
        t += (net.compute_scale if net is not None else 1.0) * compute_s
        sent: list[int] = []
        for b in up:
            start = t
            t += transfer(b, net.up_mbps) if net is not None else 0.0
            if t <= self.seconds:
                sent.append(b)
            elif net is None:
                sent.append(0)
            else:  # bytes on the wire before the deadline: after the latency, at the link's rate
                left = self.seconds - start - net.latency_ms / 1e3
                sent.append(min(b, max(0, math.floor(left * net.up_mbps * 1e6 * m / 8.0))))
        return t, (None if t <= self.seconds else sent)
