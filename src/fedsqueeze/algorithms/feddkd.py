"""FedDKD: Li, Chen, Lu. "FedDKD: Federated Learning with Decentralized Knowledge Distillation".
arXiv 2205.00706 (2022). No official code exists; this follows the paper as summarised in
docs/methods.md §4. Only the paper's abstract could be checked (its full text, algorithm box and
settings were not available to this project): the abstract's DKD — local models distilled into the
global model without data on the server, approaching the average of the local networks' maps under
a divergence, in a few DKD steps — is what this module does; the step rule, the divergence, S = 2 and
η_dkd = 0.1 are a reconstruction, every choice below a switch.

A round has ``1 + S`` communication steps (``num_steps``):

- step 0 is FedAvg, reused from :class:`~fedsqueeze.algorithms.fedavg.FedAvg`: down ``model`` (w),
  up ``update`` (Δ_i); the server's average gives w⁰. Each client keeps its freshly trained local
  model w_i as this round's frozen teacher in its client state.
- steps 1..S are decentralized distillation (DKD) steps: down ``dkd_model`` (the current w); each
  client computes ∇D_i(w), D_i(w) = E_{x∼D_i} div(f_w(x), f_{w_i}(x)), and uploads it as
  ``dkd_grad``; the server steps w ← w − η_dkd · Σ_i p_i ∇D_i (p_i = n_i / Σ n_j, or uniform with
  ``weighting = "uniform"``). Variant ``variant = "local"``: the client instead takes
  ``local_dkd_steps`` SGD steps (step size η_dkd) on D_i and uploads ``dkd_update`` = w_i' − w;
  the server averages: w ← w + Σ p_i Δ_i. With one full-data local step both variants coincide.

Every message is a payload through the configured up/down codecs, so DKD traffic is counted.
The teacher is cleared from the client state at the last DKD step (it is only needed in its round).

Choices where the paper (as summarised) is silent:
- ``divergence = "kl"``: KL(softmax f_{w_i}(x) ‖ softmax f_w(x)), the teacher's distribution first
  (whose minimiser over maps is the data-weighted mixture of the local maps); ``"mse"``: mean
  squared difference of the logits, averaged over samples and classes. Its gradients grow with the
  logit gap, so it wants a smaller step (η_dkd ≈ 0.02 learnt on digits with 2-class shards, 0.1 diverged).
- ``eta_dkd = 0.1`` is our default, not the paper's: with S = 2 it learnt on digits with 2-class
  shards (0.5 was erratic, ≥ 1 diverged).
- ``dkd_batch = 0``: the exact gradient over all local samples (computed in chunks); B > 0: one
  random mini-batch of B samples per gradient (seeded by the client's step seed).
- ``teacher = "outputs"`` (default) caches the teacher's logits on the client's own training
  samples right after local training instead of its weights. The teacher is frozen and is only
  ever evaluated on those samples, so the result is identical, at n_i × classes floats of client
  state instead of a whole model. ``teacher = "weights"`` keeps w_i and re-evaluates it.
- Both models are evaluated in eval mode during distillation (deterministic; matters only for
  dropout/batch-norm models, which the zoo does not have). DKD gradients cover parameters only;
  floating buffers, if any, are left as step 0 averaged them.
- The local variant uses plain SGD (no momentum or weight decay) with step size η_dkd.
Clients report ``dkd_loss`` (D_i before the step, local variant: mean over its steps) as a metric.
With S = 0 the algorithm is FedAvg bit for bit (same messages, metrics and weights).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from fedsqueeze.algorithms.base import (ClientContext, Messages, Reply, Tensors, UploadSpec, add, float_state,
                                        load_float_state, specs_of, sub, weighted_mean)
from fedsqueeze.algorithms.fedavg import FedAvg, FedAvgParams
from fedsqueeze.errors import ConfigError
from fedsqueeze.seeding import torch_generator

CHUNK = 1024  # samples per forward pass when a gradient spans all local data (bounds memory only)


@dataclass(frozen=True)
class FedDKDParams(FedAvgParams):
    S: int = 2                       # DKD steps per round
    eta_dkd: float = 0.1             # η_dkd: DKD server step size (local-variant SGD step size)
    divergence: str = "kl"           # kl (softmax outputs) | mse (logits)
    dkd_batch: int = 0               # samples per DKD gradient: 0 = all local data
    variant: str = "gradient"        # gradient (paper) | local (local distillation steps + averaging)
    local_dkd_steps: int = 5         # SGD steps per DKD step in the local variant
    teacher: str = "outputs"         # outputs (cached teacher logits) | weights (keep w_i)

    def __post_init__(self) -> None:
        super().__post_init__()
        checks = [("S", self.S, isinstance(self.S, int) and self.S >= 0, "an integer >= 0"),
                  ("eta_dkd", self.eta_dkd, self.eta_dkd > 0, "a number > 0"),
                  ("divergence", self.divergence, self.divergence in ("kl", "mse"), "'kl' or 'mse'"),
                  ("dkd_batch", self.dkd_batch, isinstance(self.dkd_batch, int) and self.dkd_batch >= 0,
                   "an integer >= 0 (0 = all local data)"),
                  ("variant", self.variant, self.variant in ("gradient", "local"), "'gradient' or 'local'"),
                  ("local_dkd_steps", self.local_dkd_steps,
                   isinstance(self.local_dkd_steps, int) and self.local_dkd_steps >= 1, "an integer >= 1"),
                  ("teacher", self.teacher, self.teacher in ("outputs", "weights"), "'outputs' or 'weights'")]
        for key, value, ok, allowed in checks:
            if not ok:
                raise ConfigError(f"algorithm.{key} = {value!r} is invalid: it must be {allowed}")


# ---- the client-side pieces (pure functions, tested on tiny models) -----------------------------

def divergence_sum(student: torch.Tensor, teacher: torch.Tensor, kind: str) -> torch.Tensor:
    """Σ over samples of div(student logits, teacher logits); divide by the sample count for D_i."""
    if kind == "kl":  # KL(p_teacher ‖ p_student) per sample
        return F.kl_div(F.log_softmax(student, 1), F.log_softmax(teacher, 1), reduction="sum", log_target=True)
    return (student - teacher).pow(2).sum() / student.shape[1]


def accumulate_divergence_grad(model: nn.Module, x: torch.Tensor, teacher_logits: torch.Tensor,
                               kind: str) -> float:
    """Set ``p.grad`` of every parameter to ∇ of the mean divergence over (x, teacher_logits);
    return that mean divergence. Chunked so memory does not grow with the local data."""
    model.eval()
    model.zero_grad(set_to_none=True)
    n, total = len(x), 0.0
    for i in range(0, n, CHUNK):
        loss = divergence_sum(model(x[i:i + CHUNK]), teacher_logits[i:i + CHUNK], kind) / n
        loss.backward()
        total += loss.item()
    return total


def parameter_grads(model: nn.Module) -> Tensors:
    return {name: (p.grad.detach().clone() if p.grad is not None else torch.zeros_like(p))
            for name, p in model.named_parameters()}


@torch.no_grad()
def logits_of(model: nn.Module, x: torch.Tensor, weights: Tensors | None = None) -> torch.Tensor:
    """Eval-mode outputs of ``model`` (or of ``model`` with ``weights`` swapped in), chunked."""
    model.eval()
    run = (lambda xb: functional_call(model, weights, (xb,))) if weights is not None else model
    return torch.cat([run(x[i:i + CHUNK]) for i in range(0, len(x), CHUNK)])


class FedDKD(FedAvg):
    """FedAvg, then S decentralized distillation steps of the global model toward the local models' maps."""

    name = "feddkd"
    Params = FedDKDParams

    def num_steps(self, rnd: int) -> int:
        return 1 + self.p.S

    def broadcast(self, state: dict, rnd: int, step: int) -> Messages:
        return super().broadcast(state, rnd, step) if step == 0 else {"dkd_model": state["weights"]}

    def upload_spec(self, rnd: int, step: int, down: Messages) -> UploadSpec:
        if step == 0:
            return super().upload_spec(rnd, step, down)
        if self.p.variant == "gradient":  # one gradient per parameter (no buffers)
            return {"dkd_grad": self.slot_spec("model", parameters_only=True)}
        return {"dkd_update": specs_of(down["dkd_model"])}

    def client_update(self, ctx: ClientContext, down: Messages, state: dict | None) -> Reply:
        if ctx.step == 0:
            reply = super().client_update(ctx, down, state)
            if self.p.S > 0:
                reply.state = {**(state or {}), "teacher": self._teacher(ctx)}
            return reply
        return self._distill(ctx, down["dkd_model"], state or {})

    def _teacher(self, ctx: ClientContext) -> torch.Tensor | Tensors:
        # FedAvg trained ctx.model() in place, so it holds w_i exactly (not w + Δ_i re-rounded).
        model = ctx.model()
        return float_state(model) if self.p.teacher == "weights" else logits_of(model, ctx.data.x)

    def _distill(self, ctx: ClientContext, w: Tensors, state: dict) -> Reply:
        if "teacher" not in state:
            raise RuntimeError(f"client {ctx.client} reached DKD step {ctx.step} without its step-0 teacher")
        model = ctx.model()
        x = ctx.data.x
        if self.p.teacher == "weights":
            t_all = logits_of(model, x, state["teacher"])
        else:
            t_all = state["teacher"]
        load_float_state(model, w)
        g = torch_generator(ctx.seed, "dkd")
        if self.p.variant == "gradient":
            idx = self._sample(len(x), g)
            loss = accumulate_divergence_grad(model, x[idx], t_all[idx], self.p.divergence)
            up = {"dkd_grad": parameter_grads(model)}
        else:
            opt = torch.optim.SGD(model.parameters(), lr=self.p.eta_dkd)
            losses = []
            for _ in range(self.p.local_dkd_steps):
                idx = self._sample(len(x), g)
                losses.append(accumulate_divergence_grad(model, x[idx], t_all[idx], self.p.divergence))
                opt.step()
            loss = sum(losses) / len(losses)
            up = {"dkd_update": sub(float_state(model), w)}
        # the teacher lives for one round: drop it after the last DKD step (an empty state is dropped whole)
        new_state = state
        if ctx.step == self.p.S:
            new_state = {k: v for k, v in state.items() if k != "teacher"} or None
        return Reply(ctx.client, len(ctx.data), up, new_state, {"dkd_loss": loss})

    def _sample(self, n: int, g: torch.Generator) -> torch.Tensor | slice:
        if self.p.dkd_batch == 0 or self.p.dkd_batch >= n:
            return slice(None)
        return torch.randperm(n, generator=g)[:self.p.dkd_batch]

    def aggregate(self, state: dict, rnd: int, step: int, replies: list[Reply]) -> dict:
        if step == 0:
            return super().aggregate(state, rnd, step, replies)
        kind = "dkd_grad" if self.p.variant == "gradient" else "dkd_update"
        mean = weighted_mean([r.up[kind] for r in replies], self._weights(replies))
        w = state["weights"]
        if kind == "dkd_update":
            return {**state, "weights": add(w, mean)}
        return {**state, "weights": {k: (v - self.p.eta_dkd * mean[k]) if k in mean else v for k, v in w.items()}}

    def _weights(self, replies: list[Reply]) -> list[float]:
        return [float(r.num_samples) if self.p.weighting == "samples" else 1.0 for r in replies]
