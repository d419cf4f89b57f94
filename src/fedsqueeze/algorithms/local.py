"""Local-only training: every client trains its own model on its own data and never communicates.

The lower anchor of every personalisation comparison: zero bytes, no collaboration. All clients
start from the same seeded initial model; a client's model is kept in its state between rounds.
"""
from __future__ import annotations

from torch import nn

from fedsqueeze.algorithms.base import (Algorithm, ClientContext, Messages, NoParams, Reply, VectorJob,
                                        float_state, load_float_state)
from fedsqueeze.algorithms.context import train_locally


class LocalOnly(Algorithm):
    """Each client trains alone on its own data; nothing crosses the wire (personalised baseline)."""

    name = "local"
    Params = NoParams
    communicates = False
    vectorizable = True

    def init_server(self, model: nn.Module) -> dict:
        return {"init": float_state(model)}

    def broadcast(self, state: dict, rnd: int, step: int) -> Messages:
        return {}

    def client_update(self, ctx: ClientContext, down: Messages, state: dict | None) -> Reply:
        model = ctx.model()
        start = state["weights"] if state else ctx.initial_weights()
        load_float_state(model, start)
        loss, _ = train_locally(model, ctx)
        return Reply(ctx.client, len(ctx.data), {}, {"weights": float_state(model)}, {"train_loss": loss})

    def vector_job(self, ctx: ClientContext, down: Messages, state: dict | None) -> VectorJob:
        start = state["weights"] if state else ctx.initial_weights()
        return VectorJob(start, lambda w, loss: Reply(ctx.client, len(ctx.data), {}, {"weights": w},
                                                      {"train_loss": loss}))

    def aggregate(self, state: dict, rnd: int, step: int, replies: list[Reply]) -> dict:
        return state

    def personal_model(self, state: dict, client_state: dict | None):
        return "model", (client_state or {}).get("weights", state["init"])
