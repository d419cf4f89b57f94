"""pFedMe: Dinh, Tran, Nguyen. "Personalized Federated Learning with Moreau Envelopes". NeurIPS 2020.
arXiv 2006.08848 (Algorithm 1).

Each client i keeps a personalised model θ_i tied to the local copy w of the global model by the
Moreau envelope F_i(w) = min_θ f_i(θ) + λ/2·‖θ − w‖². Client, given the global w^t (kind ``model``),
w_0 = w^t, θ = w^t, then for each local round r = 0..R−1 (one mini-batch D each, R = the batches of
``[train]``: ``local_epochs`` passes or ``local_steps``):

- θ̂ ≈ argmin_θ h(θ) = f̃_i(θ; D) + λ/2·‖θ − w_r‖² by ``K`` steps of gradient descent with
  ``personal_lr``: θ ← θ − personal_lr·(∇f̃_i(θ; D) + λ(θ − w_r)) (warm-started from the previous θ̂);
- w_{r+1} = w_r − η·λ·(w_r − θ̂), η = ``train.lr``.

Up: the update Δ_i = w_R − w^t (kind ``update``, the configured codec). Server:
w^{t+1} = (1 − β)·w^t + β·mean_i w_{i,R} = w^t + β·mean_i Δ_i over the clients that replied
(``weighting = "uniform"``, the paper's 1/S; ``"samples"`` weights by n_i).

Evaluation: the global w on the test set; a client's personalised θ̂ (its last one, kept in the client
state) on its held-out split — the paper's "pFedMe (PM)". A client never sampled is evaluated with w.

Choices where the paper is silent or differs from its released code: the paper's server sends w^t to
every client and then samples S of them; here only the sampled clients train (the aggregate is the
same; unsampled clients' work is never used). θ̂ is warm-started from the previous local round's θ̂
and from w^t at the start of a round, as the released code (github.com/CharlieDinh/pFedMe) does; the
inner solve is plain gradient descent (no momentum, no weight decay), whatever ``train.optimizer`` says.
Paper defaults: λ = 15, K = 5, personal_lr = 0.01 (MNIST), β = 1 (β = 2 also reported).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from fedsqueeze.algorithms.base import (ClientContext, Messages, Reply, add, check_options, client_model, float_state,
                                        is_number, sub, weighted_mean)
from fedsqueeze.algorithms.fedavg import FedAvg


@dataclass(frozen=True)
class PFedMeParams:
    lam: float = 15.0               # λ: strength of the tie between θ_i and w
    K: int = 5                      # gradient steps of the inner problem per mini-batch
    personal_lr: float = 0.01       # step of the inner problem
    beta: float = 1.0               # β: server mixing, w ← (1 − β)w + β·mean w_i
    weighting: str = "uniform"      # uniform (the paper's 1/S) | samples (n_i)

    def __post_init__(self) -> None:
        check_options(self, [("lam", is_number(self.lam) and self.lam > 0, "a number > 0"),
                             ("K", isinstance(self.K, int) and not isinstance(self.K, bool) and self.K >= 1,
                              "an integer >= 1"),
                             ("personal_lr", is_number(self.personal_lr) and self.personal_lr > 0, "a number > 0"),
                             ("beta", is_number(self.beta) and self.beta > 0, "a number > 0"),
                             ("weighting", self.weighting in ("uniform", "samples"), "'uniform' or 'samples'")])


class PFedMe(FedAvg):
    """Personalised FL with Moreau envelopes (Dinh et al. 2020): bi-level θ_i / w local updates."""

    name = "pfedme"
    Params = PFedMeParams
    vectorizable = False

    def client_update(self, ctx: ClientContext, down: Messages, state: dict | None) -> Reply:
        model, params = client_model(ctx, down["model"])
        w = [p.detach().clone() for p in params]          # the local copy of the global model
        theta = [p.detach().clone() for p in params]      # the personalised model, warm-started
        lam, eta, rho = self.p.lam, ctx.train.lr, self.p.personal_lr
        total, steps = 0.0, 0
        for xb, yb in ctx.batches():
            for _ in range(self.p.K):
                with torch.no_grad():
                    for p, t in zip(params, theta):
                        p.copy_(t)
                loss = ctx.loss(model(xb), yb)
                grads = torch.autograd.grad(loss, params)
                theta = [t - rho * (g + lam * (t - wr)) for t, g, wr in zip(theta, grads, w)]
            total += float(loss.detach())
            steps += 1
            w = [wr - eta * lam * (wr - t) for wr, t in zip(w, theta)]
        with torch.no_grad():  # the model's buffers (e.g. BatchNorm statistics) stay as training left them
            for p, t in zip(params, theta):
                p.copy_(t)
            personal = float_state(model)
            for p, wr in zip(params, w):
                p.copy_(wr)
        local = float_state(model)
        metrics = {"train_loss": total / steps if steps else 0.0}
        return Reply(ctx.client, len(ctx.data), {"update": sub(local, down["model"])}, {"personal": personal},
                     metrics)

    def aggregate(self, state: dict, rnd: int, step: int, replies: list[Reply]) -> dict:
        weights = [float(r.num_samples) if self.p.weighting == "samples" else 1.0 for r in replies]
        mean = weighted_mean([r.up["update"] for r in replies], weights)
        return {**state, "weights": add(state["weights"], mean, self.p.beta)}

    def personal_model(self, state: dict, client_state: dict | None):
        if not client_state:
            return self.global_model(state)
        return "model", client_state["personal"]

