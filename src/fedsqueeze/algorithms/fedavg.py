"""FedAvg: McMahan, Moore, Ramage, Hampson, Agüera y Arcas. "Communication-Efficient Learning of Deep
Networks from Decentralized Data". AISTATS 2017.

Down: the global model (kind ``model``). Up: each client's update Δ_i = w_i − w (kind ``update``).
Server: w ← w + η_s · Σ_i n_i Δ_i / Σ_i n_i (η_s = ``server_lr``, 1 in the paper; ``weighting =
"uniform"`` averages without the n_i weights).
"""
from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from fedsqueeze.algorithms.base import (Algorithm, ClientContext, Messages, Reply, VectorJob, add, float_state,
                                        load_float_state, sub, weighted_mean)
from fedsqueeze.algorithms.context import train_locally
from fedsqueeze.errors import ConfigError


@dataclass(frozen=True)
class FedAvgParams:
    server_lr: float = 1.0          # η_s
    weighting: str = "samples"      # samples (n_i) | uniform

    def __post_init__(self) -> None:
        if not self.server_lr > 0:
            raise ConfigError(f"algorithm.server_lr = {self.server_lr} must be > 0")
        if self.weighting not in ("samples", "uniform"):
            raise ConfigError(f"algorithm.weighting = {self.weighting!r} must be 'samples' or 'uniform'")


class FedAvg(Algorithm):
    """Federated averaging of client updates weighted by sample count (McMahan et al. 2017)."""

    name = "fedavg"
    Params = FedAvgParams
    vectorizable = True

    def init_server(self, model: nn.Module) -> dict:
        return {"weights": float_state(model)}

    def broadcast(self, state: dict, rnd: int, step: int) -> Messages:
        return {"model": state["weights"]}

    def client_update(self, ctx: ClientContext, down: Messages, state: dict | None) -> Reply:
        model = ctx.model()
        load_float_state(model, down["model"])
        loss, steps = train_locally(model, ctx)
        trained = {k: v.detach() for k, v in model.state_dict().items() if v.is_floating_point()}
        # Δ = w_i − w straight from the module's tensors (no clone of the trained weights first)
        return Reply(ctx.client, len(ctx.data), {"update": sub(trained, down["model"])},
                     state, {"train_loss": loss})

    def vector_job(self, ctx: ClientContext, down: Messages, state: dict | None) -> VectorJob:
        start = down["model"]
        return VectorJob(start, lambda w, loss: Reply(ctx.client, len(ctx.data), {"update": sub(w, start)}, state,
                                                      {"train_loss": loss}))

    def aggregate(self, state: dict, rnd: int, step: int, replies: list[Reply]) -> dict:
        weights = [float(r.num_samples) if self.p.weighting == "samples" else 1.0 for r in replies]
        mean = weighted_mean([r.up["update"] for r in replies], weights)
        return {**state, "weights": add(state["weights"], mean, self.p.server_lr)}

    def global_model(self, state: dict):
        return "model", state["weights"]
