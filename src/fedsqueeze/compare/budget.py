"""Communication budget mode for the ``rdq`` codec: a whole run within a total number of megabytes.

The budget B (bytes, up + down, headers included) is split evenly over the run's uploads, after the
downlink's fixed cost is set aside::

    per upload = floor((B − R·k·down) / (R·k·uploads))

with R rounds, k clients per round, ``down`` the exact size of one client's downlink payloads (a
fixed-size downlink codec is required so it is known in advance) and ``uploads`` the payloads a
client sends per round (measured by one dry-run client update). The uplink codec becomes
``rdq(..., target_bytes=per upload)``: each client, each round, picks the finest step whose payload
fits (a guess from the rate–distortion relation R ≈ h − log2 u, refined by bisection on real
encodes — ``fedsqueeze.codecs.rdq.fit_to_bytes``). A round never spends more than its share, so the
run never exceeds B; clients that drop out leave part of the budget unspent.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

from fedsqueeze.codecs.spec import make_codec
from fedsqueeze.config import Config, from_dict
from fedsqueeze.errors import ConfigError

FIXED_SIZE = ("fp32", "fp16", "bf16")


@dataclass
class BudgetPlan:
    budget_bytes: int
    down_bytes: int          # per client per round
    uploads: int             # payloads per client per round
    target_bytes: int        # per upload
    params: int              # uploaded float parameters per client per round

    def describe(self, rounds: int, k: int) -> str:
        down_total = rounds * k * self.down_bytes
        return (f"budget {self.budget_bytes / 1e6:,.2f} MB: downlink {down_total / 1e6:,.2f} MB fixed, uplink "
                f"<= {self.target_bytes:,} bytes per upload (~{8 * self.target_bytes / max(self.params, 1):.3f} "
                f"bits/parameter) x {rounds * k * self.uploads:,} uploads")


def plan_budget(cfg: Config, budget_mb: float, *, dataset: Any = None) -> tuple[Config, BudgetPlan]:
    """The config with ``codec.up = rdq(..., target_bytes=...)`` that keeps the run within the budget."""
    from fedsqueeze.engine.runtime import Runtime
    from fedsqueeze.engine.sampling import clients_per_round
    from fedsqueeze.engine.simulation import build_partition, load_dataset

    if not budget_mb or budget_mb <= 0:
        raise ConfigError(f"--budget-mb must be a positive number of megabytes, got {budget_mb!r}")
    up = make_codec(cfg.codec.up)
    if up.codec_id != "rdq":
        raise ConfigError(f"budget mode tunes the rdq codec's step; set codec.up to rdq(...) "
                          f"(e.g. 'rdq(coder=\"ans\")'), not {up.codec_id!r}")
    dataset = dataset if dataset is not None else load_dataset(cfg)
    runtime = Runtime(cfg, dataset, build_partition(cfg, dataset))
    algo = runtime.algo
    if algo.num_steps(1) != 1:
        raise ConfigError(f"budget mode supports single-step algorithms (one upload round trip per round); "
                          f"{cfg.algorithm_name!r} has {algo.num_steps(1)} steps")
    model = runtime.build("model")
    model.load_state_dict(runtime.initial_weights("model"), strict=False)
    state = algo.init_server(model)
    msgs = algo.broadcast(state, 1, 0)
    down_bytes = 0
    for kind, tensors in msgs.items():
        codec = algo.codec(kind, "down", 1)
        if codec.codec_id not in FIXED_SIZE:
            raise ConfigError(f"budget mode needs a fixed-size downlink codec ({', '.join(FIXED_SIZE)}) so its cost "
                              f"is known in advance; codec.down for {kind!r} is {codec.codec_id!r}")
        down_bytes += len(codec.encode(tensors, seed=0))
    decoded = {k: algo.codec(k, "down", 1).decode(algo.codec(k, "down", 1).encode(t, seed=0)) for k, t in msgs.items()}
    ups, _, _, _ = runtime.run_client(0, 1, 0, decoded, None)  # one dry-run update: what a client uploads
    for kind in ups:
        if algo.codec(kind, "up", 1).codec_id != "rdq":
            raise ConfigError(f"budget mode needs every upload to use rdq; {cfg.algorithm_name!r} also uploads "
                              f"{kind!r} with {algo.codec(kind, 'up', 1).codec_id!r}")
    params = sum(v.numel() for t in decoded.values() for v in t.values() if v.is_floating_point())
    smallest = 0
    for kind, payload in ups.items():  # the same update at the coarsest step: the least a payload can be
        codec = algo.codec(kind, "up", 1)
        smallest = max(smallest, len(make_codec({"name": "rdq", **codec.spec_config(), "step": 1e30,
                                                 "target_bytes": 0}).encode(codec.decode(payload))))
    k = clients_per_round(cfg.data.num_clients, cfg.train.clients_per_round, cfg.train.client_fraction)
    budget = int(budget_mb * 1e6)
    per_upload = (budget - cfg.rounds * k * down_bytes) // (cfg.rounds * k * max(len(ups), 1))
    if per_upload < smallest:
        raise ConfigError(f"a budget of {budget_mb:g} MB does not cover the fixed downlink "
                          f"({cfg.rounds * k * down_bytes / 1e6:,.2f} MB over {cfg.rounds} rounds) plus the smallest uploads "
                          f"({smallest} bytes each); "
                          "raise --budget-mb, lower rounds or use a smaller downlink codec (fp16)")
    raw = cfg.to_dict()
    spec = make_codec(cfg.codec.up).spec_config()
    raw["codec"] = copy.deepcopy(raw["codec"])
    raw["codec"]["up"] = {"name": "rdq", **spec, "target_bytes": int(per_upload)}
    return from_dict(raw), BudgetPlan(budget, down_bytes, len(ups), int(per_upload), params)
