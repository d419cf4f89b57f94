"""SCAFFOLD: Karimireddy, Kale, Mohri, Reddi, Stich, Suresh. "SCAFFOLD: Stochastic Controlled Averaging
for Federated Learning". ICML 2020 (Algorithm 1, option II control variates).

Server state: the model x and the server control variate c (zero at start); each client keeps its
own control variate c_i (zero at start) in its client state. Per round, on a sampled client:

    y ← x;  K local steps  y ← y − η_l (g_i(y) − c_i + c)       (η_l = train.lr)
    c_i⁺ = c_i − c + (x − y) / (K η_l)                            (option II)
    send Δy = y − x and Δc = c_i⁺ − c_i;  c_i ← c_i⁺

Server: x ← x + η_g · mean Δy,  c ← c + (|S|/N) · mean Δc.

Wire (message kinds): down ``model`` (x, the configured down codec) and ``control`` (c); up
``update`` (Δy, the configured up codec) and ``control`` (Δc). Control variates travel with
``control_codec`` (fp32 by default, whatever the update codec: a lossy c would bias every
correction). Control variates cover the trainable parameters; the update also carries the float
buffers (batch-norm statistics), as FedAvg's does.

Choices and deviations:
- ``num_clients`` is N of the c update. The algorithm is not told the federation size, so it is an
  option; 0 (the default) uses |S|/N = 1, i.e. c ← c + mean Δc (what the released SPATL code does;
  docs/methods.md §2). Set it to ``data.num_clients`` for the paper's rule.
- ``weighting = "uniform"`` (the paper's 1/|S| mean) by default; ``"samples"`` weights Δy by n_i
  as FedAvg does. Δc is always a plain mean (c tracks the mean of the c_i).
- The correction is added to the gradient before the optimizer step, so momentum and weight decay
  (if configured) act on the corrected gradient; option II's formula uses η_l and K as if the
  steps were plain SGD (for Adam it is only a heuristic).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from fedsqueeze.algorithms.base import (ClientContext, Direction, Messages, Reply, UploadSpec, float_state,
                                        load_float_state, specs_of, sub)
from fedsqueeze.algorithms.context import train_locally
from fedsqueeze.algorithms.fedavg import FedAvg, FedAvgParams
from fedsqueeze.codecs.base import Codec, Tensors
from fedsqueeze.codecs.spec import make_codec
from fedsqueeze.errors import ConfigError


def check_control_params(num_clients: int, control_codec: str) -> None:
    if isinstance(num_clients, bool) or not isinstance(num_clients, int) or num_clients < 0:
        raise ConfigError(f"algorithm.num_clients = {num_clients!r} must be an integer >= 0 "
                          "(N of the control-variate update; 0 = plain mean)")
    try:
        make_codec(control_codec)
    except Exception as e:  # noqa: BLE001 - any bad spec is a config error here
        raise ConfigError(f"algorithm.control_codec = {control_codec!r} is not a valid codec spec: {e}") from e


@dataclass(frozen=True)
class ScaffoldParams(FedAvgParams):
    weighting: str = "uniform"      # uniform (paper: 1/|S|) | samples (n_i)
    num_clients: int = 0            # N in c ← c + (|S|/N)·mean Δc_i; 0: |S|/N := 1
    control_codec: str = "fp32"     # codec of c (down) and Δc (up)

    def __post_init__(self) -> None:
        super().__post_init__()
        check_control_params(self.num_clients, self.control_codec)


# ---- control-variate arithmetic (shared with SPATL) ---------------------------------------------

def parameter_zeros(model: nn.Module) -> Tensors:
    """A zero control variate: one zero tensor per trainable parameter."""
    return {n: torch.zeros_like(p) for n, p in model.named_parameters()}


def gradient_correction(model: nn.Module, correction: Tensors) -> Callable[[], None]:
    """An ``after_backward`` hook adding ``correction[name]`` to each named parameter's gradient."""
    pairs = [(p, correction[n]) for n, p in model.named_parameters() if n in correction]

    def hook() -> None:
        for p, corr in pairs:
            if p.grad is None:
                p.grad = corr.clone()
            else:
                p.grad.add_(corr)
    return hook


def next_control(c_i: Tensors, c: Tensors, x: Tensors, y: Tensors, steps: int, lr: float) -> Tensors:
    """Option II: c_i⁺ = c_i − c + (x − y) / (K η_l); unchanged if no step was taken."""
    if steps == 0:
        return {k: v.clone() for k, v in c_i.items()}
    return {k: c_i[k] - c[k] + (x[k] - y[k]) / (steps * lr) for k in c_i}


def masked_mean(messages: list[Tensors], weights: list[float],
                masks: list[dict[str, torch.Tensor]] | None = None) -> tuple[Tensors, dict[str, torch.Tensor]]:
    """Per coordinate: the ``weights``-weighted mean over the messages whose mask covers it (0 where
    none does), and how many messages covered it. No masks: every message covers everything."""
    mean, count = {}, {}
    for name, first in messages[0].items():
        num = torch.zeros(first.shape, dtype=torch.float64)
        den = torch.zeros(first.shape, dtype=torch.float64)
        cnt = torch.zeros(first.shape, dtype=torch.int64)
        for i, (m, w) in enumerate(zip(messages, weights)):
            cover = masks[i][name] if masks is not None and name in masks[i] else torch.ones((), dtype=torch.bool)
            num += torch.where(cover, m[name].to(torch.float64) * w, 0.0)
            den += torch.where(cover, float(w), 0.0)
            cnt += cover.to(torch.int64)
        mean[name] = torch.where(den > 0, num / den.clamp_min(1e-300), 0.0).to(first.dtype)
        count[name] = cnt
    return mean, count


def update_control(c: Tensors, deltas: list[Tensors], num_clients: int,
                   masks: list[dict[str, torch.Tensor]] | None = None) -> Tensors:
    """c + (|S_j| / N) · mean of the Δc_i that cover coordinate j (|S_j|/N := 1 if N = 0)."""
    mean, count = masked_mean(deltas, [1.0] * len(deltas), masks)
    out = {}
    for k in c:
        scale = count[k].to(torch.float64) / num_clients if num_clients else 1.0
        out[k] = (c[k].to(torch.float64) + mean[k].to(torch.float64) * scale).to(c[k].dtype)
    return out


# ---- the algorithm -------------------------------------------------------------------------------

class Scaffold(FedAvg):
    """SCAFFOLD (Karimireddy et al. 2020): local steps corrected by control variates c − c_i (option II)."""

    name = "scaffold"
    Params = ScaffoldParams

    def __init__(self, params, setup) -> None:
        super().__init__(params, setup)
        self._control = make_codec(self.p.control_codec)

    def init_server(self, model: nn.Module) -> dict:
        return {"weights": float_state(model), "c": parameter_zeros(model)}

    def broadcast(self, state: dict, rnd: int, step: int) -> Messages:
        return {"model": state["weights"], "control": state["c"]}

    def codec(self, kind: str, direction: Direction, rnd: int) -> Codec:
        return self._control if kind == "control" else super().codec(kind, direction, rnd)

    def upload_spec(self, rnd: int, step: int, down: Messages) -> UploadSpec:
        return {"update": specs_of(down["model"]), "control": specs_of(down["control"])}

    def client_update(self, ctx: ClientContext, down: Messages, state: dict | None) -> Reply:
        model = ctx.model()
        x, c = down["model"], down["control"]
        load_float_state(model, x)
        c_i = state["c"] if state else {k: torch.zeros_like(v) for k, v in c.items()}
        hook = gradient_correction(model, sub(c, c_i))
        loss, steps = train_locally(model, ctx, after_backward=hook)
        y = float_state(model)
        c_new = next_control(c_i, c, x, y, steps, ctx.train.lr)
        return Reply(ctx.client, len(ctx.data), {"update": sub(y, x), "control": sub(c_new, c_i)},
                     {"c": c_new}, {"train_loss": loss})

    def aggregate(self, state: dict, rnd: int, step: int, replies: list[Reply]) -> dict:
        state = super().aggregate(state, rnd, step, replies)
        c = update_control(state["c"], [r.up["control"] for r in replies], self.p.num_clients)
        return {**state, "c": c}

