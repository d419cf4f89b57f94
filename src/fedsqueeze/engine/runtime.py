"""The client side of a round, shared by the in-process engine, its worker pool and Flower clients.

A ``Runtime`` owns the dataset, the partition, the algorithm and one reusable module per model slot
(weights are loaded into it; no model is built or deep-copied per client). ``run_client`` turns
(decoded downlink, stored state) into encoded uplink payloads and the new stored state;
``run_client_safely`` turns a client that raises into a ``ClientFailure`` the server rejects.
"""
from __future__ import annotations

import time
import traceback
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from fedsqueeze.algorithms.base import Algorithm, Messages, Setup, float_state
from fedsqueeze.algorithms.context import ClientContext, ClientData
from fedsqueeze.config import Config
from fedsqueeze.data.partition import Partition
from fedsqueeze.data.sources import Dataset
from fedsqueeze.engine import faults
from fedsqueeze.errors import ConfigError
from fedsqueeze.models.zoo import build_model
from fedsqueeze.registry import ALGORITHMS
from fedsqueeze.seeding import derive_seed


def build_algorithm(cfg: Config, input_shape: tuple[int, ...], num_classes: int) -> Algorithm:
    setup = Setup(model_name=cfg.model.name, model_options=dict(cfg.model.options),
                  input_shape=tuple(input_shape), num_classes=num_classes, rounds=cfg.rounds,
                  codec_up=cfg.codec.up, codec_down=cfg.codec.down, seed=cfg.seed)
    return ALGORITHMS.get(cfg.algorithm_name).from_config(cfg.algorithm_params, setup)


def payload_seed(run_seed: int, direction: str, rnd: int, step: int, client: int, kind: str) -> int:
    return derive_seed(run_seed, "payload", direction, rnd, step, client, kind)


@dataclass(frozen=True)
class ClientFailure:
    """A client update that raised: why (one line) and the traceback, for the rejection log."""

    reason: str
    detail: str = ""
    injected: bool = False  # an ``engine.faults`` 'raise', not a real error


COMPUTE_KEY = "_compute_s"  # wall seconds of one client's work, reported beside its metrics


def run_client_safely(runtime: "Runtime", client: int, rnd: int, step: int, down: Messages,
                      stored: dict | None) -> tuple | ClientFailure:
    """``Runtime.run_client``, with an exception turned into a ``ClientFailure`` — except a
    ``ConfigError``: a wrong configuration is not one client's fault and must stop the run."""
    try:
        return runtime.run_client(client, rnd, step, down, stored)
    except ConfigError:
        raise
    except Exception as e:  # noqa: BLE001 — any client fault is rejected, never propagated
        return ClientFailure(f"raised {type(e).__name__}: {e}", traceback.format_exc(limit=8),
                             isinstance(e, faults.InjectedFault))


class Runtime:
    def __init__(self, cfg: Config, dataset: Dataset, partition: Partition) -> None:
        self.cfg = cfg
        self.dataset = dataset
        self.partition = partition
        self.algo = build_algorithm(cfg, dataset.input_shape, dataset.num_classes)
        self._modules: dict[str, nn.Module] = {}
        self._initial: dict[str, dict[str, torch.Tensor]] = {}

    # ---- models ------------------------------------------------------------------------------
    def build(self, slot: str) -> nn.Module:
        specs = self.algo.model_specs()
        name, options = specs[slot]
        return build_model(name, self.dataset.input_shape, self.dataset.num_classes, **options)

    def module(self, slot: str = "model") -> nn.Module:
        if slot not in self._modules:
            self._modules[slot] = self.build(slot)
        return self._modules[slot]

    def initial_weights(self, slot: str = "model") -> dict[str, torch.Tensor]:
        """Seeded initial weights of a slot: identical in every process that asks."""
        if slot not in self._initial:
            state = torch.random.get_rng_state()
            torch.manual_seed(derive_seed(self.cfg.seed, "init", slot))
            self._initial[slot] = float_state(self.build(slot))
            torch.random.set_rng_state(state)
        return self._initial[slot]

    def model_numel(self) -> int:
        return max(sum(t.numel() for t in self.initial_weights(s).values()) for s in self.algo.model_specs())

    # ---- data --------------------------------------------------------------------------------
    def client_data(self, client: int) -> ClientData:
        tr, ho = self.partition.train[client], self.partition.holdout[client]
        d = self.dataset
        tr_t = torch.from_numpy(tr)
        return ClientData(d.x_train[tr_t], d.y_train[tr_t],
                          lambda: (d.x_train[torch.from_numpy(ho)], d.y_train[torch.from_numpy(ho)]), d.augment)

    def num_samples(self, client: int) -> int:
        return int(len(self.partition.train[client]))

    # ---- one client, one step ----------------------------------------------------------------
    def run_client(self, client: int, rnd: int, step: int, down: Messages,
                   stored: dict | None) -> tuple[dict[str, bytes], dict | None, int, dict[str, float]]:
        """Encoded uploads, new stored state, sample count and metrics; the metrics carry
        ``COMPUTE_KEY``, this client's wall seconds (the engine moves it to the round's ``client_s``)."""
        t0 = time.perf_counter()
        stored = stored or {}
        mirror = None
        if self.cfg.codec.downlink == "delta":  # the payloads carried the difference to our copy
            from fedsqueeze.engine.delta import apply, reference
            down = mirror = apply(stored.get("mirror") or reference(self), down)
        ctx = ClientContext(client, rnd, step, self.client_data(client), self.cfg.train, self.module,
                            self.cfg.seed, self.initial_weights)
        reply = self.algo.client_update(ctx, down, stored.get("algo"))
        fault = faults.client_fault(self.cfg, rnd, step, client)  # None unless engine.faults is set
        up = faults.corrupt(fault, reply.up) if fault in ("shape", "scale") else reply.up
        codec_states: dict[str, Any] = dict(stored.get("codec", {}))
        payloads: dict[str, bytes] = {}
        for kind, tensors in up.items():
            codec = self.algo.codec(kind, "up", rnd)
            seed = payload_seed(self.cfg.seed, "up", rnd, step, client, kind)
            if fault == "nan":
                payloads[kind] = faults.encode_unguarded(codec, faults.with_nan(tensors), seed)
            elif codec.stateful:
                payloads[kind], codec_states[kind] = codec.encode_stateful(
                    tensors, seed=seed, state=codec_states.get(kind))
            else:
                payloads[kind] = codec.encode(tensors, seed=seed)
        new_stored = None
        if reply.state is not None or codec_states or mirror is not None:
            new_stored = {"algo": reply.state, "codec": codec_states}
            if mirror is not None:
                new_stored["mirror"] = mirror
        if fault == "raise":
            raise faults.InjectedFault(f"injected fault (engine.faults.raise): client {client} crashed before "
                                       "replying")
        return payloads, new_stored, reply.num_samples, {**reply.metrics, COMPUTE_KEY: time.perf_counter() - t0}
