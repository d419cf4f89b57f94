"""Network profiles and the simulated round time.

A profile gives every client an uplink and a downlink bandwidth (Mbit/s, 10^6 bit/s) and a one-way
latency; with ``spread`` > 0 the bandwidths are heterogeneous: client c's multiplier is
exp(spread·z_c), z_c ~ N(0, 1) drawn from (profile seed, c) — the nominal figure is the median.

Simulated time of a round (a synchronous round waits for its slowest client)::

    T_c   = compute_scale · compute_c                       client c's measured training time
          + messages_c · latency                            one latency per payload it sent/received
          + 8 · down_bytes_c / (down_mbps·10^6 · m_c)       bytes from the ledger
          + 8 · up_bytes_c   / (up_mbps·10^6 · m_c)
    T     = max over the round's clients of T_c

For multi-step algorithms (FedDKD) a client's steps are summed before the max: the barrier between
steps is ignored, which slightly favours them. ``compute_c`` is the client's own measured wall time
(``client_s`` in metrics.jsonl); ``compute_scale`` models devices slower or faster than this machine.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from fedsqueeze.errors import ConfigError
from fedsqueeze.seeding import derive_seed


@dataclass(frozen=True)
class NetworkProfile:
    name: str
    up_mbps: float
    down_mbps: float
    latency_ms: float = 50.0
    spread: float = 0.0
    compute_scale: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        for key in ("up_mbps", "down_mbps"):
            v = getattr(self, key)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v < math.inf:
                raise ConfigError(f"network profile {self.name!r}: {key} must be a bandwidth in Mbit/s > 0, got {v!r}")
        for key in ("latency_ms", "spread", "compute_scale"):
            v = getattr(self, key)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v < math.inf:
                raise ConfigError(f"network profile {self.name!r}: {key} must be a number >= 0, got {v!r}")

    def multiplier(self, client: int) -> float:
        if not self.spread:
            return 1.0
        z = np.random.default_rng(derive_seed(self.seed, "network", self.name, int(client))).standard_normal()
        return float(math.exp(self.spread * z))

    def client_time(self, client: int, up_bytes: int, down_bytes: int, messages: int, compute_s: float) -> float:
        m = self.multiplier(client)
        return (self.compute_scale * compute_s + messages * self.latency_ms / 1e3
                + 8.0 * down_bytes / (self.down_mbps * 1e6 * m) + 8.0 * up_bytes / (self.up_mbps * 1e6 * m))

    def describe(self) -> str:
        text = f"{self.name}: {_num(self.up_mbps)}/{_num(self.down_mbps)} Mbit/s up/down, {_num(self.latency_ms)} ms"
        if self.spread:
            text += f", spread {_num(self.spread)}"
        if self.compute_scale != 1.0:
            text += f", compute x{_num(self.compute_scale)}"
        return text


def _num(v: float) -> str:
    return f"{v:g}"


PROFILES: dict[str, NetworkProfile] = {
    "lte": NetworkProfile("lte", up_mbps=5, down_mbps=20, latency_ms=50),
    "lte-het": NetworkProfile("lte-het", up_mbps=5, down_mbps=20, latency_ms=50, spread=1.0),
    "iot": NetworkProfile("iot", up_mbps=0.25, down_mbps=1, latency_ms=100),
    "wifi": NetworkProfile("wifi", up_mbps=50, down_mbps=100, latency_ms=10),
    "datacenter": NetworkProfile("datacenter", up_mbps=1000, down_mbps=1000, latency_ms=1),
}


def profile(spec: Any, *, where: str = "network") -> NetworkProfile:
    """A profile from a name (``"lte"``) or a table ``{name=..., up_mbps=..., down_mbps=..., ...}``;
    a table with the name of a built-in profile overrides its fields."""
    if isinstance(spec, str):
        if spec not in PROFILES:
            raise ConfigError(f"{where}: unknown network profile {spec!r}; built-in: {', '.join(PROFILES)} "
                              "(or a table {name=..., up_mbps=..., down_mbps=..., latency_ms=...})")
        return PROFILES[spec]
    if isinstance(spec, dict):
        if not isinstance(spec.get("name"), str):
            raise ConfigError(f"{where}: a network profile table needs a name")
        fields = set(NetworkProfile.__dataclass_fields__)
        bad = set(spec) - fields
        if bad:
            raise ConfigError(f"{where}: network profile {spec['name']!r} has unknown key(s) "
                              f"{', '.join(sorted(bad))}; allowed: {', '.join(sorted(fields))}")
        start = PROFILES[spec["name"]].__dict__ if spec["name"] in PROFILES else {}
        merged = {**start, **spec}
        missing = {"up_mbps", "down_mbps"} - set(merged)
        if missing:
            raise ConfigError(f"{where}: network profile {spec['name']!r} needs {', '.join(sorted(missing))}")
        return NetworkProfile(**merged)
    raise ConfigError(f"{where}: a network profile is a name or a table, got {spec!r}")


def parse_profiles(specs: Any, *, where: str = "network") -> list[NetworkProfile]:
    if isinstance(specs, (str, dict)):
        specs = [specs]
    if not isinstance(specs, list) or not specs:
        raise ConfigError(f"{where}: network must be a profile name, a table, or a list of them")
    out = [profile(s, where=where) for s in specs]
    from fedsqueeze.config import check_name
    for p in out:  # a profile's name is part of a plot's file name
        check_name(p.name, f"{where}: network profile name")
    names = [p.name for p in out]
    if len(set(names)) != len(names):
        raise ConfigError(f"{where}: network profile names must be unique")
    return out


def round_times(rounds: list[int], traffic: dict[int, dict[int, list[int]]],
                compute: dict[int, dict[int, float]], prof: NetworkProfile) -> dict[int, float]:
    """Simulated seconds per round. ``traffic[round][client] = [up_bytes, down_bytes, messages]``
    (from the ledger); ``compute[round][client]`` = measured client seconds (missing = 0)."""
    out = {}
    for rnd in rounds:
        clients = traffic.get(rnd, {})
        times = [prof.client_time(c, up, down, msgs, compute.get(rnd, {}).get(c, 0.0))
                 for c, (up, down, msgs) in clients.items()]
        out[rnd] = max(times) if times else 0.0
    return out
