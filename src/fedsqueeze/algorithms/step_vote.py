"""The rate–distortion step vote in the round loop: ``codec.up = "rdq(step='vote', lam=..., candidates=[...])"``.

Mitchell, Ballé, Charles, Konečný. "Optimizing the Communication-Accuracy Trade-off in Federated
Learning with Rate-Distortion Theory". arXiv 2201.02664 (2022). docs/methods.md §5.

Protocol, per communication step (every message a real payload in the ledger):

1. down ``rdq_step``: the index (uint8) of the adopted step among the sorted ``candidates`` travels
   to every sampled client beside the algorithm's own broadcast. The first round uses ``initial``
   (default: the smallest candidate).
2. the client trains as the wrapped algorithm says, encodes its update with ``rdq`` at the adopted
   step (a plain fixed-step rdq payload), and scores every candidate step u on that same update by
   D(u) + λ·R(u) (``rdq.rd_scores``: D = MSE per parameter of the decoded update, R = 8·bytes/d of
   the real payload at u); up ``rdq_vote``: the index (uint8) of its best step (ties: the smaller).
3. the server adopts the most-voted step (``rdq.adopt_step``; ties: the smaller step) for the next
   round and keeps it in its state, so a resumed run continues with the step it had adopted. Votes
   with an index out of range are ignored; a step without votes keeps the step.

The wrapper is generic: any algorithm whose uplink messages use the voting rdq gets the protocol
(``wrap`` leaves every other configuration alone). The scores cover every message kind the voting
codec encodes in that step, as one update. Not with ``engine.vectorize`` (the vote needs each client's
own encode), and only on the uplink: the downlink has one sender and nothing to vote on.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import torch

from fedsqueeze.algorithms.base import Algorithm, Direction, Messages, Reply, UploadSpec
from fedsqueeze.codecs.base import Codec
from fedsqueeze.codecs.rdq import RDQ, adopt_step, vote_step
from fedsqueeze.codecs.spec import make_codec
from fedsqueeze.errors import ConfigError

STEP_KIND = "rdq_step"     # down: the adopted step's index
VOTE_KIND = "rdq_vote"     # up: the client's vote's index
STATE_KEY = "_rdq_step"    # server state: the adopted step
_INDEX = torch.uint8
_LOSSLESS = make_codec("fp32")  # integers travel raw: the payload is the frame, header and one byte


def _voting(codec: Any) -> bool:
    return isinstance(codec, RDQ) and codec.voting


def wrap(algo: Algorithm) -> Algorithm:
    """``algo`` with the step vote when its configured uplink codec is a voting rdq; else ``algo`` itself."""
    if _voting(make_codec(algo.setup.codec_down)):
        raise ConfigError("rdq(step='vote') is an uplink protocol (clients vote); use a fixed step on codec.down")
    up = make_codec(algo.setup.codec_up)
    return StepVote(algo, up) if _voting(up) else algo


class StepVote(Algorithm):
    """An algorithm whose uplink rdq step is chosen by the clients' D + λR votes (see the module docstring)."""

    vectorizable = False

    def __init__(self, inner: Algorithm, codec: RDQ) -> None:  # noqa: D107 — no super(): it delegates
        self.inner, self.vote_codec = inner, codec
        self.p, self.setup = inner.p, inner.setup
        self.name, self.Params, self.communicates = inner.name, inner.Params, inner.communicates
        self.adapts = inner.adapts
        self.candidates: tuple[float, ...] = codec.candidates
        self._client_step = codec.fixed_step  # the step this process encodes with (set per client)

    def __getattr__(self, attr: str) -> Any:  # anything else an algorithm offers (e.g. FedKD.threshold)
        if attr == "inner":
            raise AttributeError(attr)
        return getattr(self.inner, attr)

    def _index(self, step: float) -> torch.Tensor:
        return torch.tensor([self.candidates.index(step)], dtype=_INDEX)

    def _plain(self, step: float) -> RDQ:
        """The fixed-step rdq the payloads are encoded with: the header says only which step."""
        return dataclasses.replace(self.vote_codec, step=step, lam=None, candidates=(), initial=None)

    # ---- delegated -----------------------------------------------------------------------------
    def model_specs(self):
        return self.inner.model_specs()

    def slot_spec(self, slot: str = "model", *, parameters_only: bool = False):
        return self.inner.slot_spec(slot, parameters_only=parameters_only)

    def num_steps(self, rnd: int) -> int:
        return self.inner.num_steps(rnd)

    def global_model(self, state: dict):
        return self.inner.global_model(state)

    def personal_model(self, state: dict, client_state: dict | None):
        return self.inner.personal_model(state, client_state)

    def client_profile(self, client: int, client_state: dict | None):
        return self.inner.client_profile(client, client_state)

    def adapt(self, model, data) -> None:
        self.inner.adapt(model, data)

    # ---- the protocol ------------------------------------------------------------------------------
    def init_server(self, model) -> dict:
        return {**self.inner.init_server(model), STATE_KEY: self.vote_codec.fixed_step}

    def broadcast(self, state: dict, rnd: int, step: int) -> Messages:
        return {**self.inner.broadcast(state, rnd, step), STEP_KIND: {"index": self._index(state[STATE_KEY])}}

    def codec(self, kind: str, direction: Direction, rnd: int) -> Codec:
        if kind in (STEP_KIND, VOTE_KIND):
            return _LOSSLESS
        codec = self.inner.codec(kind, direction, rnd)
        return self._plain(self._client_step) if _voting(codec) else codec

    def upload_spec(self, rnd: int, step: int, down: Messages) -> UploadSpec | None:
        spec = self.inner.upload_spec(rnd, step, {k: v for k, v in down.items() if k != STEP_KIND})
        if spec is None or not any(_voting(self.inner.codec(k, "up", rnd)) for k in spec):
            return spec
        return {**spec, VOTE_KIND: {"index": ((1,), _INDEX)}}

    def client_update(self, ctx, down: Messages, state: dict | None) -> Reply:
        index = int(down[STEP_KIND]["index"][0])
        if not 0 <= index < len(self.candidates):
            raise ValueError(f"rdq_step index {index} is not one of the {len(self.candidates)} candidates")
        self._client_step = self.candidates[index]  # close_client encodes this client's update with it
        reply = self.inner.client_update(ctx, {k: v for k, v in down.items() if k != STEP_KIND}, state)
        voted = {f"{kind}/{name}": t for kind, tensors in reply.up.items()
                 if _voting(self.inner.codec(kind, "up", ctx.round)) for name, t in tensors.items()}
        if not voted:
            return reply
        best = vote_step(voted, self.candidates, self.vote_codec.lam, self._plain(self.candidates[0]), seed=ctx.seed)
        return dataclasses.replace(reply, up={**reply.up, VOTE_KIND: {"index": self._index(best)}},
                                   metrics={**reply.metrics, "rdq_step": self._client_step, "rdq_vote": best})

    def aggregate(self, state: dict, rnd: int, step: int, replies: list[Reply]) -> dict:
        votes = [int(r.up[VOTE_KIND]["index"][0]) for r in replies if VOTE_KIND in r.up]
        votes = [self.candidates[i] for i in votes if 0 <= i < len(self.candidates)]
        replies = [dataclasses.replace(r, up={k: v for k, v in r.up.items() if k != VOTE_KIND}) for r in replies]
        new = self.inner.aggregate(state, rnd, step, replies)
        return {**new, STATE_KEY: adopt_step(votes) if votes else state[STATE_KEY]}
