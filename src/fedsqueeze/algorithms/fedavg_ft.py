"""FedAvg + local fine-tuning: the personalised reading of FedAvg (as in Wang et al. 2019, "Federated
evaluation of on-device personalization", and the baselines of QuPeD, Ozkara et al. NeurIPS 2021).

Training and the wire are exactly FedAvg's (down ``model``, up ``update``). A client's personal model is
the global model it received, fine-tuned on its own training data for ``ft_epochs`` epochs (or
``ft_steps`` steps if > 0) at ``ft_lr`` (0 = ``train.lr``), with the configured optimizer.

Choice: the fine-tuning happens when the client participates, not at evaluation time
(``personal_model`` gets no data), and the fine-tuned copy is kept in the client's state until its next
participation; so a client's personal model may be a few rounds staler than the current global model.
A client that never participated is evaluated with the current global model. With the default recipe
(fine-tuning = the local training recipe), the fine-tuned copy *is* the client's locally trained model
(same batches, same seed), so it costs no extra compute.
"""
from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass

from fedsqueeze.algorithms.base import ClientContext, Messages, Reply, float_state, load_float_state
from fedsqueeze.algorithms.context import train_locally
from fedsqueeze.algorithms.fedavg import FedAvg, FedAvgParams
from fedsqueeze.errors import ConfigError


@dataclass(frozen=True)
class FedAvgFTParams(FedAvgParams):
    ft_epochs: int = 1      # fine-tuning epochs over the client's training data
    ft_steps: int = 0       # if > 0, a fixed number of fine-tuning steps instead of epochs
    ft_lr: float = 0.0      # fine-tuning learning rate; 0 = train.lr

    def __post_init__(self) -> None:
        super().__post_init__()
        for key, ok, allowed in [("ft_epochs", self.ft_epochs >= 0, "an integer >= 0"),
                                 ("ft_steps", self.ft_steps >= 0, "an integer >= 0"),
                                 ("ft_lr", self.ft_lr >= 0, "a number >= 0 (0 = train.lr)")]:
            if not ok:
                raise ConfigError(f"algorithm.{key} = {getattr(self, key)!r} is invalid: it must be {allowed}")


class FedAvgFT(FedAvg):
    """FedAvg whose personal model is the received global model fine-tuned on the client's data."""

    name = "fedavg_ft"
    Params = FedAvgFTParams

    def client_update(self, ctx: ClientContext, down: Messages, state: dict | None) -> Reply:
        reply = super().client_update(ctx, down, state)
        tr = ctx.train
        ft = dataclasses.replace(tr, local_epochs=self.p.ft_epochs, local_steps=self.p.ft_steps,
                                 lr=self.p.ft_lr or tr.lr)
        model = ctx.model()
        if ft != tr:  # otherwise the model FedAvg just trained is exactly the fine-tuned copy
            ft_ctx = copy.copy(ctx)
            ft_ctx.train = ft
            load_float_state(model, down["model"])
            train_locally(model, ft_ctx)
        reply.state = {"personal": float_state(model)}
        return reply

    def personal_model(self, state: dict, client_state: dict | None):
        if not client_state:
            return self.global_model(state)
        return "model", client_state["personal"]
