"""Shared helpers for the Flower adapter tests: an in-process stand-in for Flower's Grid, state comparison."""
from __future__ import annotations

import itertools

import torch
from flwr.app import Context, Error, Message, RecordDict

from fedsqueeze.flower import client_app, records
from fedsqueeze.metrics.results import TIMING_FIELDS


def set_task_identity(monkeypatch) -> None:
    """What Flower sets in a ServerApp process before ``main`` runs (messages read it)."""
    from flwr.supercore.task_identity import TaskIdentity

    for attr in ("_run_id", "_node_id", "_task_id"):
        monkeypatch.setattr(TaskIdentity, attr, 1)


class FakeGrid:
    """Flower's Grid in one process: every node is a partition; the ClientApp answers at push time.
    ``silent`` nodes never answer (a crash the SuperLink has not noticed), ``failing`` ones answer with
    an error; ``offline`` ones are not listed (the SuperLink noticed)."""

    def __init__(self, cfg_dict: dict, parts: int, *, node_parts: dict[int, int] | None = None) -> None:
        self.run_config = _flatten(records.to_run_config(cfg_dict))
        self.parts = parts
        self.node_part = dict(node_parts) if node_parts else {100 + i: i for i in range(parts)}
        self.states = {n: RecordDict() for n in self.node_part}
        self.silent: set[int] = set()
        self.failing: set[int] = set()
        self.offline: set[int] = set()
        self.sent: list[tuple[int, str]] = []   # (node, message type)
        self._ids = itertools.count()
        self._ready: dict[str, Message] = {}
        self.after_push: list = []   # one-shot hooks, called after the next push
        self.slow: set[int] = set()   # nodes whose replies wait in `held` until `release()`
        self.held: dict[str, Message] = {}

    def add_node(self, node: int, part: int) -> None:
        self.node_part[node] = part
        self.states[node] = RecordDict()

    def get_node_ids(self):
        return [n for n in self.node_part if n not in self.offline]

    def push_messages(self, messages):
        ids = []
        for msg in messages:
            mid = f"m{next(self._ids)}"
            msg.metadata.__dict__["_message_id"] = mid
            node = msg.metadata.dst_node_id
            self.sent.append((node, msg.metadata.message_type))
            ids.append(mid)
            if node in self.silent or node in self.offline:
                continue
            if node in self.failing:
                self._ready[mid] = Message(Error(code=0, reason="ClientApp crashed"), reply_to=msg)
                continue
            ctx = Context(run_id=1, node_id=node, state=self.states[node], run_config=self.run_config,
                          node_config={"partition-id": self.node_part[node], "num-partitions": self.parts})
            (self.held if node in self.slow else self._ready)[mid] = client_app.app(msg, ctx)
        while self.after_push:
            self.after_push.pop(0)(self)
        return ids

    def release(self) -> None:
        self._ready.update(self.held)
        self.held.clear()
        self.slow.clear()

    def pull_messages(self, message_ids):
        return [self._ready.pop(m) for m in list(message_ids) if m in self._ready]


def _flatten(nested: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in nested.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def strip(history):
    drop = set(TIMING_FIELDS) | {"personal_acc", "personal_acc_clients"}
    return [{k: v for k, v in rec.items() if k not in drop} for rec in history]


def flat_state(state) -> dict[str, torch.Tensor]:
    out = {}

    def walk(prefix, x):
        if isinstance(x, torch.Tensor):
            out[prefix] = x
        elif isinstance(x, dict):
            for k, v in x.items():
                walk(f"{prefix}/{k}", v)
    walk("", state)
    return out
