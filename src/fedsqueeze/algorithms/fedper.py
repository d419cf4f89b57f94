"""FedPer: Arivazhagan, Aggarwal, Singh, Choudhary. "Federated Learning with Personalization Layers".
arXiv 1912.00818 (2019). Shared body + personal head, the simplest personalisation baseline.

The model's ``encoder`` (every state key not under ``head.``) is federated exactly as in FedAvg;
the ``head`` never leaves the client: it starts from the run's seeded initial head and is kept in
the client state between rounds. Both are trained together on the local data each round.

Wire: down ``model`` (the encoder weights), up ``update`` (the encoder update Δ). Server as FedAvg
(``server_lr``, ``weighting``). There is no global model to evaluate (no global head): the
personalised model of a client is the current encoder with its own head (the initial head for a
client never sampled).
"""
from __future__ import annotations

from torch import nn

from fedsqueeze.algorithms.base import ClientContext, Messages, Reply, float_state, load_float_state, sub
from fedsqueeze.algorithms.context import train_locally
from fedsqueeze.algorithms.fedavg import FedAvg
from fedsqueeze.codecs.base import Tensors

HEAD = "head."


def split_head(weights: Tensors) -> tuple[Tensors, Tensors]:
    """(shared encoder part, local head part) of a model's weights."""
    shared = {k: v for k, v in weights.items() if not k.startswith(HEAD)}
    head = {k: v for k, v in weights.items() if k.startswith(HEAD)}
    return shared, head


class FedPer(FedAvg):
    """Shared encoder averaged as in FedAvg, personal head kept on each client (Arivazhagan et al. 2019)."""

    name = "fedper"

    def init_server(self, model: nn.Module) -> dict:
        encoder, head = split_head(float_state(model))
        return {"weights": encoder, "head0": head}

    def local_model(self, ctx: ClientContext, down: Messages, state: dict | None) -> nn.Module:
        """The worker's module holding the received encoder and this client's head."""
        model = ctx.model()
        head = state["head"] if state else split_head(ctx.initial_weights())[1]
        load_float_state(model, {**down["model"], **head})
        return model

    def client_update(self, ctx: ClientContext, down: Messages, state: dict | None) -> Reply:
        model = self.local_model(ctx, down, state)
        loss, _ = train_locally(model, ctx)
        encoder, head = split_head(float_state(model))
        return Reply(ctx.client, len(ctx.data), {"update": sub(encoder, down["model"])}, {"head": head},
                     {"train_loss": loss})

    def global_model(self, state: dict):
        return None

    def personal_model(self, state: dict, client_state: dict | None):
        head = client_state["head"] if client_state and "head" in client_state else state["head0"]
        return "model", {**state["weights"], **head}
