"""FedProx: Li, Sahu, Zaheer, Sanjabi, Talwalkar, Smith. "Federated Optimization in Heterogeneous
Networks". MLSys 2020.

FedAvg whose clients minimise h_i(w) = F_i(w) + (μ/2)·‖w − w^t‖² (w^t = the received global model)
by local SGD; the server averages as FedAvg does. The proximal gradient μ(w − w^t) is added to each
parameter's gradient after the backward pass (exactly the gradient of the proximal term, without
building it into the graph). μ = 0 is FedAvg bit for bit. The paper's tolerance to partial local
work (γ-inexact solutions, variable local epochs for stragglers) is not modelled: every client runs
the configured local epochs/steps. The reported ``train_loss`` is F_i, without the proximal term.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

import dataclasses

from fedsqueeze.algorithms.base import ClientContext, Messages, Reply, VectorJob, float_state, load_float_state, sub
from fedsqueeze.algorithms.context import train_locally
from fedsqueeze.algorithms.fedavg import FedAvg, FedAvgParams
from fedsqueeze.errors import ConfigError


@dataclass(frozen=True)
class FedProxParams(FedAvgParams):
    mu: float = 0.01                # μ, the proximal weight (the paper tunes it in {0.001, 0.01, 0.1, 1})

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.mu, bool) or not isinstance(self.mu, (int, float)) or not 0 <= self.mu < math.inf:
            raise ConfigError(f"algorithm.mu = {self.mu!r} must be a number >= 0 (0 = FedAvg)")


class FedProx(FedAvg):
    """FedAvg with a proximal term (μ/2)·‖w − w_global‖² in each client's objective (Li et al. 2020)."""

    name = "fedprox"
    Params = FedProxParams

    def client_update(self, ctx: ClientContext, down: Messages, state: dict | None) -> Reply:
        model = ctx.model()
        load_float_state(model, down["model"])
        anchors = [(p, p.detach().clone()) for p in model.parameters() if p.requires_grad]
        mu = float(self.p.mu)

        def proximal() -> None:
            with torch.no_grad():
                for p, anchor in anchors:
                    if p.grad is not None:
                        p.grad.add_(p - anchor, alpha=mu)

        loss, _ = train_locally(model, ctx, after_backward=proximal if mu else None)
        return Reply(ctx.client, len(ctx.data), {"update": sub(float_state(model), down["model"])},
                     state, {"train_loss": loss})

    def vector_job(self, ctx: ClientContext, down: Messages, state: dict | None) -> VectorJob:
        return dataclasses.replace(super().vector_job(ctx, down, state), prox_mu=float(self.p.mu))
