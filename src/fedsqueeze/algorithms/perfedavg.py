"""Per-FedAvg: Fallah, Mokhtari, Ozdaglar. "Personalized Federated Learning with Theoretical Guarantees:
A Model-Agnostic Meta-Learning Approach" (NeurIPS 2020; arXiv 2002.07948, first titled "Personalized
Federated Learning: A Meta-Learning Approach"), Algorithm 1.

The global model w is trained so that one gradient step on a client's data, w − α∇f_i(w), is a good
personal model (the MAML objective F_i(w) = f_i(w − α∇f_i(w))). Client, given w (kind ``model``), for
each local step t = 1..τ, with independent mini-batches D, D' (and D'' for ``variant = "hf"``):

- w̃ = w − α·∇f̃_i(w; D)                               (the adaptation step, ``alpha`` = α)
- g = ∇f̃_i(w̃; D')
- ``variant = "fo"`` (Per-FedAvg FO): w ← w − β·g
- ``variant = "hf"`` (Per-FedAvg HF, the default): w ← w − β·(g − α·d), with the Hessian-vector
  product ∇²f̃_i(w; D'')·g replaced by d = [∇f̃_i(w + δg; D'') − ∇f̃_i(w − δg; D'')] / (2δ)
  (``delta`` = δ)

β = ``train.lr``. Each step consumes the next two (FO) or three (HF) of the client's batches of
``[train]``: ``train.local_steps`` = τ counts Per-FedAvg steps (2τ or 3τ batches), while with
``local_epochs`` one epoch of n samples at batch size B is ⌊n/(2B)⌋ or ⌊n/(3B)⌋ steps. Plain
gradient steps: ``train.optimizer``, momentum and weight decay are not used. Up: the update
Δ_i = w_τ − w (kind ``update``). Server: w ← w + mean_i Δ_i = the mean of the client models
(``weighting = "uniform"``, the paper's 1/(rn); ``"samples"`` weights by n_i).

Evaluation: the global w on the test set; a client's personal model is the paper's: w after one
gradient step of size α on that client's data, taken at evaluation time from the current w. The step
uses all of the client's training data (the paper's "one step of stochastic gradient descent"
without saying the batch; the full local set makes the evaluation deterministic).

Default variant: HF, the variant whose convergence the paper proves to match the exact Hessian
version; FO (half the gradient evaluations per step, no second-order term) is the switch.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from fedsqueeze.algorithms.base import (ClientContext, Messages, Reply, add, check_options, client_model, float_state,
                                        is_number, sub, weighted_mean)
from fedsqueeze.algorithms.context import ClientData
from fedsqueeze.algorithms.fedavg import FedAvg


@dataclass(frozen=True)
class PerFedAvgParams:
    alpha: float = 0.01            # α: the adaptation step (inner)
    variant: str = "hf"            # hf (Hessian-free) | fo (first-order)
    delta: float = 1e-3            # δ of the HF finite difference
    weighting: str = "uniform"     # uniform (the paper) | samples (n_i)

    def __post_init__(self) -> None:
        check_options(self, [("alpha", is_number(self.alpha) and self.alpha > 0, "a number > 0"),
                             ("variant", self.variant in ("hf", "fo"), "'hf' or 'fo'"),
                             ("delta", is_number(self.delta) and self.delta > 0, "a number > 0"),
                             ("weighting", self.weighting in ("uniform", "samples"), "'uniform' or 'samples'")])


def _grad(model: nn.Module, params: list[nn.Parameter], at: list[torch.Tensor], xb: torch.Tensor,
          yb: torch.Tensor, loss_fn) -> tuple[list[torch.Tensor], float]:
    """∇f̃(at; batch) and the loss there (the model's parameters are set to ``at``)."""
    with torch.no_grad():
        for p, v in zip(params, at):
            p.copy_(v)
    loss = loss_fn(model(xb), yb)
    return list(torch.autograd.grad(loss, params)), float(loss.detach())


class PerFedAvg(FedAvg):
    """Federated MAML (Fallah et al. 2020): the global model is trained to personalise in one step."""

    name = "perfedavg"
    Params = PerFedAvgParams
    vectorizable = False
    adapts = True  # the engine calls ``adapt`` before evaluating a client's personal model

    def client_update(self, ctx: ClientContext, down: Messages, state: dict | None) -> Reply:
        model, params = client_model(ctx, down["model"])
        w = [p.detach().clone() for p in params]
        a, b, per_step = self.p.alpha, ctx.train.lr, 3 if self.p.variant == "hf" else 2
        group, total, steps = [], 0.0, 0
        # local_steps counts Per-FedAvg updates, each of which draws per_step independent batches
        steps_cfg = ctx.train.local_steps
        for batch in ctx.batches(steps=steps_cfg * per_step if steps_cfg > 0 else None):
            group.append(batch)
            if len(group) < per_step:
                continue
            (x1, y1), (x2, y2), *hess = group
            group = []
            g1, loss = _grad(model, params, w, x1, y1, ctx.loss)
            w_tilde = [v - a * g for v, g in zip(w, g1)]
            g, _ = _grad(model, params, w_tilde, x2, y2, ctx.loss)
            if hess:
                (x3, y3), dl = hess[0], self.p.delta
                plus, _ = _grad(model, params, [v + dl * gi for v, gi in zip(w, g)], x3, y3, ctx.loss)
                minus, _ = _grad(model, params, [v - dl * gi for v, gi in zip(w, g)], x3, y3, ctx.loss)
                g = [gi - a * (p_ - m_) / (2 * dl) for gi, p_, m_ in zip(g, plus, minus)]
            w = [v - b * gi for v, gi in zip(w, g)]
            total += loss
            steps += 1
        with torch.no_grad():
            for p, v in zip(params, w):
                p.copy_(v)
        metrics = {"train_loss": total / steps if steps else 0.0}
        return Reply(ctx.client, len(ctx.data), {"update": sub(float_state(model), down["model"])}, state, metrics)

    def aggregate(self, state: dict, rnd: int, step: int, replies: list[Reply]) -> dict:
        weights = [float(r.num_samples) if self.p.weighting == "samples" else 1.0 for r in replies]
        return {**state, "weights": add(state["weights"], weighted_mean([r.up["update"] for r in replies], weights))}

    def adapt(self, model: nn.Module, data: ClientData) -> None:
        """The personal model: ``model`` (holding w) moved one step of size α along ∇f_i(w) on the client's
        training data (evaluation mode: dropout off, BatchNorm statistics untouched)."""
        if len(data) == 0:
            return
        model.eval()
        params = [p for p in model.parameters() if p.requires_grad]
        from fedsqueeze.metrics.losses import get_loss
        grads = torch.autograd.grad(get_loss(self.setup.loss)(model(data.x), data.y), params)
        with torch.no_grad():
            for p, g in zip(params, grads):
                p.sub_(self.p.alpha * g)
