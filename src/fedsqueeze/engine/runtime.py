"""The client side of a round, shared by the in-process engine, its worker pool and Flower clients.

A ``Runtime`` owns the dataset, the partition, the algorithm and one reusable module per model slot
(weights are loaded into it; no model is built or deep-copied per client). ``run_client`` turns
(decoded downlink, stored state) into encoded uplink payloads and the new stored state;
``run_client_safely`` turns a client that raises into a ``ClientFailure`` the server rejects.
"""
from __future__ import annotations

import copy
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
from fedsqueeze.engine.device import resolve, to_cpu, to_device
from fedsqueeze.errors import ConfigError
from fedsqueeze.models.zoo import build_model
from fedsqueeze.registry import ALGORITHMS
from fedsqueeze.seeding import derive_seed


def build_algorithm(cfg: Config, input_shape: tuple[int, ...], num_classes: int) -> Algorithm:
    setup = Setup(model_name=cfg.model.name, model_options=dict(cfg.model.options),
                  input_shape=tuple(input_shape), num_classes=num_classes, rounds=cfg.rounds,
                  codec_up=cfg.codec.up, codec_down=cfg.codec.down, seed=cfg.seed, downlink=cfg.codec.downlink,
                  loss=cfg.train.loss)
    from fedsqueeze.algorithms import step_vote  # rdq(step="vote") on the uplink: the clients' step vote
    return step_vote.wrap(ALGORITHMS.get(cfg.algorithm_name).from_config(cfg.algorithm_params, setup))


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
        return failure_of(e)


def failure_of(e: Exception) -> ClientFailure:
    """The ``ClientFailure`` of a client that raised ``e`` (call inside its ``except`` block)."""
    return ClientFailure(f"raised {type(e).__name__}: {e}", traceback.format_exc(limit=8),
                         isinstance(e, faults.InjectedFault))


def host_copy(obj: Any) -> Any:
    """``obj`` with every tensor copied to the CPU (a copy even of a CPU tensor: nothing aliases the
    reusable module's weights, so it can be encoded while the next client trains)."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {k: host_copy(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [host_copy(v) for v in obj]
    if isinstance(obj, tuple) and not hasattr(obj, "_fields"):
        return tuple(host_copy(v) for v in obj)
    return obj


def dataset_on(dataset: Dataset, device: torch.device) -> Dataset:
    """The dataset with its train/test tensors on ``device`` (moved once; the same object on its own device)."""
    if dataset.x_train.device == device:
        return dataset
    moved = copy.copy(dataset)  # keeps extra attributes (e.g. a dataset's natural ``groups``)
    for name in ("x_train", "y_train", "x_test", "y_test"):
        setattr(moved, name, getattr(dataset, name).to(device))
    return moved


class Runtime:
    """``device``: where clients train and models are evaluated (default ``engine.device``). The
    dataset's tensors move there once; models are built (and seeded) on the CPU, then moved; client
    states and upload tensors leave as CPU tensors, downlink messages and stored states come back to it."""

    def __init__(self, cfg: Config, dataset: Dataset, partition: Partition,
                 device: torch.device | str | None = None) -> None:
        self.cfg = cfg
        self.device = torch.device(device) if device is not None else resolve(cfg.engine.device)
        self.host_dataset = dataset  # as given (CPU): what a spawned worker is sent
        self.dataset = dataset_on(dataset, self.device)
        self.partition = partition
        self.algo = build_algorithm(cfg, dataset.input_shape, dataset.num_classes)
        self._modules: dict[str, nn.Module] = {}
        self._initial: dict[str, dict[str, torch.Tensor]] = {}
        self._initial_dev: dict[str, dict[str, torch.Tensor]] = {}
        self._down_on_device: tuple[Messages, Messages] | None = None  # (decoded broadcast, its device copy)

    # ---- models ------------------------------------------------------------------------------
    def build(self, slot: str) -> nn.Module:
        """A fresh module for a slot, on the CPU (its random init uses the CPU generator on every device)."""
        specs = self.algo.model_specs()
        name, options = specs[slot]
        return build_model(name, self.dataset.input_shape, self.dataset.num_classes, **options)

    def module(self, slot: str = "model") -> nn.Module:
        """The reusable module of a slot, on this runtime's device."""
        if slot not in self._modules:
            self._modules[slot] = self.build(slot).to(self.device)
        return self._modules[slot]

    def device_initial_weights(self, slot: str = "model") -> dict[str, torch.Tensor]:
        """``initial_weights`` on this runtime's device (what a client's context hands out)."""
        if self.device.type == "cpu":
            return self.initial_weights(slot)
        if slot not in self._initial_dev:
            self._initial_dev[slot] = to_device(self.initial_weights(slot), self.device)
        return self._initial_dev[slot]

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
        tr_t = torch.from_numpy(tr).to(self.device)
        return ClientData(d.x_train[tr_t], d.y_train[tr_t],
                          lambda: (d.x_train[torch.from_numpy(ho).to(self.device)],
                                   d.y_train[torch.from_numpy(ho).to(self.device)]), d.augment)

    def num_samples(self, client: int) -> int:
        return int(len(self.partition.train[client]))

    # ---- one client, one step ----------------------------------------------------------------
    def run_client(self, client: int, rnd: int, step: int, down: Messages,
                   stored: dict | None) -> tuple[dict[str, bytes], dict | None, int, dict[str, float]]:
        """Encoded uploads, new stored state, sample count and metrics; the metrics carry
        ``COMPUTE_KEY``, this client's wall seconds (the engine moves it to the round's ``client_s``)."""
        t0 = time.perf_counter()
        ctx, down, stored, mirror = self.open_client(client, rnd, step, down, stored)
        reply = self.algo.client_update(ctx, down, stored.get("algo"))
        return self.close_client(ctx, reply, stored, mirror, t0)

    def open_client(self, client: int, rnd: int, step: int, down: Messages,
                    stored: dict | None) -> tuple[ClientContext, Messages, dict, Messages | None]:
        """Before ``client_update``: (context, the decoded downlink this client sees, stored state, delta
        mirror or None). ``engine.vectorized`` opens every client of a step, trains them together, then
        closes each."""
        stored = stored or {}
        mirror = None
        if self.cfg.codec.downlink == "delta":  # the payloads carried the difference to our copy
            from fedsqueeze.engine.delta import apply, reference
            down = mirror = apply(stored.get("mirror") or reference(self), down)
        ctx = ClientContext(client, rnd, step, self.client_data(client), self.cfg.train, self.module,
                            self.cfg.seed, self.device_initial_weights)
        if self.device.type != "cpu":  # decoded payloads and stored states are CPU tensors
            down = self._on_device(down)
            stored = {**stored, "algo": to_device(stored.get("algo"), self.device)}
        return ctx, down, stored, mirror

    def _on_device(self, down: Messages) -> Messages:
        """``down`` on the device, moved once per step: a broadcast is one object shared by the step's
        clients (algorithms never modify it), so the last copy is reused while its source is the same."""
        if self._down_on_device is None or self._down_on_device[0] is not down:
            self._down_on_device = (down, to_device(down, self.device))
        return self._down_on_device[1]

    def close_client(self, ctx: ClientContext, reply, stored: dict, mirror: Messages | None,
                     t0: float, on_host: tuple | None = None,
                     codecs: dict[str, Any] | None = None) -> tuple[dict[str, bytes], dict | None, int, dict[str, float]]:
        """After ``client_update``: faults, encoding with the uplink codecs (of CPU tensors: the bytes never
        depend on the device), the new stored state (CPU tensors). ``on_host``: (uploads, state) already
        copied to the CPU (``host_copy``), and ``codecs``: the uplink codec of each kind, taken right after
        ``client_update`` — when the encoding runs on another thread while the algorithm serves the next
        client (an algorithm may choose a client's codec in ``client_update``, e.g. the rdq step vote)."""
        client, rnd, step = ctx.client, ctx.round, ctx.step
        on_device = self.device.type != "cpu"
        if on_host is not None:
            reply_up, reply_state = on_host
        else:
            reply_up, reply_state = (to_cpu(reply.up), to_cpu(reply.state)) if on_device else (reply.up, reply.state)
        fault = faults.client_fault(self.cfg, rnd, step, client)  # None unless engine.faults is set
        up = faults.corrupt(fault, reply_up) if fault in ("shape", "scale") else reply_up
        codec_states: dict[str, Any] = dict(stored.get("codec", {}))
        payloads: dict[str, bytes] = {}
        for kind, tensors in up.items():
            codec = codecs[kind] if codecs is not None and kind in codecs else self.algo.codec(kind, "up", rnd)
            seed = payload_seed(self.cfg.seed, "up", rnd, step, client, kind)
            if fault == "nan":
                payloads[kind] = faults.encode_unguarded(codec, faults.with_nan(tensors), seed)
            elif codec.stateful:
                payloads[kind], codec_states[kind] = codec.encode_stateful(
                    tensors, seed=seed, state=codec_states.get(kind))
            else:
                payloads[kind] = codec.encode(tensors, seed=seed)
        new_stored = None
        if reply_state is not None or codec_states or mirror is not None:
            new_stored = {"algo": reply_state, "codec": codec_states}
            if mirror is not None:
                new_stored["mirror"] = mirror
        if fault == "raise":
            raise faults.InjectedFault(f"injected fault (engine.faults.raise): client {client} crashed before "
                                       "replying")
        return payloads, new_stored, reply.num_samples, {**reply.metrics, COMPUTE_KEY: time.perf_counter() - t0}
