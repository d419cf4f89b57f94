"""The embedded simulation engine: the one round loop.

Per round: sample clients; for each communication step, encode the broadcast once, count it once
per receiving client, run the client updates (in process or in a worker pool), count and decode
every upload, aggregate; then commit client states, evaluate, write metrics and checkpoint.
"""
from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from fedsqueeze.algorithms.base import Messages, Reply
from fedsqueeze.config import Config, from_dict, to_toml
from fedsqueeze.data.partition import Partition, describe, make_partition
from fedsqueeze.data.sources import Dataset
from fedsqueeze.engine.checkpoint import load_checkpoint, save_checkpoint
from fedsqueeze.engine.runtime import Runtime, payload_seed
from fedsqueeze.engine.sampling import clients_per_round, sample_clients
from fedsqueeze.engine.state import ClientStateStore
from fedsqueeze.errors import ConfigError, DataError
from fedsqueeze.metrics.evaluate import evaluate
from fedsqueeze.metrics.results import Result, RunWriter
from fedsqueeze.registry import DATASETS
from fedsqueeze.wire.ledger import Ledger

Callback = Callable[[dict], None]


def load_dataset(cfg: Config) -> Dataset:
    loader = DATASETS.get(cfg.data.source)
    opts = dict(cfg.data.options)
    if cfg.data.dir:
        opts["data_dir"] = cfg.data.dir
    return loader(**opts)


def build_partition(cfg: Config, dataset: Dataset) -> Partition:
    d = cfg.data
    params = {"alpha": d.alpha, "shards_per_client": d.shards_per_client}
    return make_partition(d.partition, dataset.y_train.numpy(), d.num_clients, seed=cfg.seed,
                          holdout_fraction=d.holdout_fraction, **params)


class Simulation:
    def __init__(self, cfg: Config, run_dir: str | Path, *, dataset: Dataset | None = None,
                 callbacks: list[Callback] | None = None, progress: Any = None,
                 log: Callable[[str], None] | None = None) -> None:
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.dataset = dataset if dataset is not None else load_dataset(cfg)
        if cfg.data.num_clients > len(self.dataset.y_train):
            raise DataError(f"data.num_clients = {cfg.data.num_clients} exceeds the {len(self.dataset.y_train)} "
                            "training samples; lower data.num_clients")
        self.partition = build_partition(cfg, self.dataset)
        self.runtime = Runtime(cfg, self.dataset, self.partition)
        self.algo = self.runtime.algo
        self.callbacks = list(callbacks or [])
        self.progress = progress
        self.log = log or (lambda msg: None)
        self.writer = RunWriter(self.run_dir)
        self.k = clients_per_round(cfg.data.num_clients, cfg.train.clients_per_round, cfg.train.client_fraction)
        self._max_numel = 4 * self.runtime.model_numel() + 4096
        self.warnings: list[str] = []
        self.pool = None

    # ---- setup / resume ----------------------------------------------------------------------------
    def start(self, *, resume: bool = False) -> None:
        """Initialise (or restore) server state, ledger, history and client store."""
        if not (resume and self._resume()):
            self._fresh()

    def _fresh(self) -> None:
        self.server_state = self.algo.init_server(self._seeded_model())
        self.down_codec_state: dict[str, Any] = {}
        self.ledger = Ledger()
        self.history: list[dict] = []
        self.store = ClientStateStore(self.run_dir / "clients")
        self.store.collect_garbage()
        self.prev_index: dict[int, int] = {}
        self.start_round = 1
        (self.run_dir / "config.json").write_text(json.dumps(self.cfg.to_dict(), indent=1))
        (self.run_dir / "config.toml").write_text(to_toml(self.cfg.to_dict()))
        stats = self.partition.stats(self.dataset.y_train.numpy(), self.dataset.num_classes)
        (self.run_dir / "partition.json").write_text(json.dumps(stats))
        self.log(describe(stats))
        self.writer.rewrite_rounds([])

    def _seeded_model(self) -> torch.nn.Module:
        model = self.runtime.build("model")
        model.load_state_dict(self.runtime.initial_weights("model"), strict=False)
        return model

    def _resume(self) -> bool:
        ckpt, warnings = load_checkpoint(self.run_dir)
        self.warnings += warnings
        if ckpt is None:
            return False
        saved = from_dict(ckpt["config"])
        if {**saved.to_dict(), "rounds": 0} != {**self.cfg.to_dict(), "rounds": 0}:
            raise ConfigError(f"{self.run_dir} was started with a different configuration; resume it with its "
                              "own config (only 'rounds' may change) or start a new run directory")
        self.server_state = ckpt["server_state"]
        self.down_codec_state = ckpt["down_codec_state"]
        self.ledger = Ledger.from_state(ckpt["ledger"])
        self.history = ckpt["history"]
        self.store = ClientStateStore(self.run_dir / "clients", ckpt["client_index"])
        self.prev_index = ckpt.get("prev_index", {})
        self.start_round = ckpt["round"] + 1
        self.writer.rewrite_rounds(self.history)
        return True

    def _checkpoint(self, rnd: int) -> None:
        save_checkpoint(self.run_dir, {
            "round": rnd, "config": self.cfg.to_dict(), "server_state": self.server_state,
            "down_codec_state": self.down_codec_state, "ledger": self.ledger.to_state(),
            "history": self.history, "client_index": dict(self.store.index), "prev_index": self.prev_index})
        self.store.collect_garbage(also_keep=self.prev_index)
        self.prev_index = dict(self.store.index)

    # ---- the loop ------------------------------------------------------------------------------------
    def run(self, *, resume: bool = False) -> Result:
        self.start(resume=resume)
        if self.cfg.engine.workers > 0:
            from fedsqueeze.engine.pool import WorkerPool
            self.pool = WorkerPool(self.runtime, self.cfg.engine.workers)
        elapsed = self.history[-1]["elapsed_s"] if self.history else 0.0
        try:
            for rnd in range(self.start_round, self.cfg.rounds + 1):
                rec = self.run_round(rnd)
                elapsed += rec["round_s"] + rec["eval_s"]
                rec["elapsed_s"] = elapsed
                self.history.append(rec)
                self.writer.append_round(rec)
                if self.cfg.engine.checkpoint_every and (rnd % self.cfg.engine.checkpoint_every == 0
                                                         or rnd == self.cfg.rounds):
                    self._checkpoint(rnd)
                for cb in self.callbacks:
                    cb(rec)
                if self.progress is not None:
                    self.progress(rec)
        finally:
            if self.pool is not None:
                self.pool.close()
                self.pool = None
        result = Result(self.run_dir, self.cfg.to_dict(), self.history, self.ledger)
        self.writer.finish(result)
        return result

    def run_round(self, rnd: int) -> dict:
        """One round: sampling, every communication step, state commit, evaluation (if due)."""
        t0 = time.perf_counter()
        clients = sample_clients(self.cfg.data.num_clients, self.k, seed=self.cfg.seed, rnd=rnd)
        reported: dict[str, list[tuple[float, int]]] = {}
        for step in range(self.algo.num_steps(rnd)):
            replies = self._step(rnd, step, [int(c) for c in clients])
            for r in replies:
                for key, value in r.metrics.items():
                    reported.setdefault(key, []).append((float(value), r.num_samples))
            self.server_state = self.algo.aggregate(self.server_state, rnd, step, replies)
        self.store.commit(rnd)
        round_s = time.perf_counter() - t0
        rec = self._evaluate(rnd)
        # whatever clients report (train_loss, flops_ratio, model_bytes, ...): sample-weighted means
        means = {k: _weighted(v) for k, v in sorted(reported.items())}
        rec.update(self._traffic(rnd), round=rnd, clients=len(clients), round_s=round_s,
                   train_loss=means.pop("train_loss", None), client_metrics=means)
        return rec

    def _step(self, rnd: int, step: int, clients: list[int]) -> list[Reply]:
        down_msgs = self.algo.broadcast(self.server_state, rnd, step)
        payloads: dict[str, bytes] = {}
        for kind, tensors in down_msgs.items():
            codec = self.algo.codec(kind, "down", rnd)
            seed = payload_seed(self.cfg.seed, "down", rnd, step, -1, kind)
            if codec.stateful:
                payloads[kind], self.down_codec_state[kind] = codec.encode_stateful(
                    tensors, seed=seed, state=self.down_codec_state.get(kind))
            else:
                payloads[kind] = codec.encode(tensors, seed=seed)
        for c in clients:
            for kind, p in payloads.items():
                self.ledger.record(rnd, c, "down", kind, p)
        replies = []
        for c, ups, n, metrics in self._execute(clients, rnd, step, payloads):
            decoded = {}
            for kind, p in ups.items():
                self.ledger.record(rnd, c, "up", kind, p)
                decoded[kind] = self.algo.codec(kind, "up", rnd).decode(p, max_numel=self._max_numel)
            replies.append(Reply(c, n, decoded, None, metrics))
        return replies

    def _execute(self, clients: list[int], rnd: int, step: int,
                 payloads: dict[str, bytes]) -> list[tuple[int, dict[str, bytes], int, dict]]:
        """Deliver the broadcast to each client and collect (client, upload payloads, n, metrics).
        Here: in this process or the worker pool, client state in the local store. A deployment
        transport (Flower) overrides this; clients that drop out are simply missing from the list."""
        if self.pool is not None:
            outs = self.pool.map([(c, rnd, step, payloads, self.store.get(c)) for c in clients])
        else:
            down: Messages = {k: self.algo.codec(k, "down", rnd).decode(p, max_numel=self._max_numel)
                              for k, p in payloads.items()}
            outs = [self.runtime.run_client(c, rnd, step, down, self.store.get(c)) for c in clients]
        for c, (_, stored, _, _) in zip(clients, outs):
            self.store.put(c, stored)  # None drops whatever the client had stored
        return [(c, ups, n, metrics) for c, (ups, _, n, metrics) in zip(clients, outs)]

    # ---- evaluation & accounting ------------------------------------------------------------------------
    def _traffic(self, rnd: int) -> dict[str, int]:
        up = self.ledger.total("up", round=rnd)
        down = self.ledger.total("down", round=rnd)
        prev = self.history[-1] if self.history else {"cum_bytes_up": 0, "cum_bytes_down": 0}
        cu, cd = prev["cum_bytes_up"] + up, prev["cum_bytes_down"] + down
        return {"bytes_up": up, "bytes_down": down, "cum_bytes_up": cu, "cum_bytes_down": cd, "cum_bytes": cu + cd}

    def _due(self, every: int, rnd: int) -> bool:
        return rnd == self.cfg.rounds or (every > 0 and rnd % every == 0)

    def _evaluate(self, rnd: int) -> dict:
        t0 = time.perf_counter()
        rec: dict[str, Any] = {"global_acc": None, "global_loss": None, "personal_acc": None,
                               "personal_acc_clients": None}
        bs = self.cfg.eval.batch_size
        if self._due(self.cfg.eval.every, rnd):
            gm = self.algo.global_model(self.server_state)
            if gm is not None:
                model = self.runtime.module(gm[0])
                model.load_state_dict(gm[1], strict=False)
                correct, loss, n = evaluate(model, self.dataset.x_test, self.dataset.y_test, bs)
                rec["global_acc"], rec["global_loss"] = correct / n, loss / n
        if self._due(self.cfg.eval.personal_every, rnd):
            rec["personal_acc"], rec["personal_acc_clients"] = self._personal(bs)
        rec["eval_s"] = time.perf_counter() - t0
        return rec

    def _personal(self, bs: int) -> tuple[float | None, float | None]:
        """Accuracy of each client's personalised model on its own held-out split:
        (pooled over all held-out samples, unweighted mean over clients)."""
        total_c = total_n = 0
        per_client = []
        loaded = None
        for c in range(self.cfg.data.num_clients):
            ho = self.partition.holdout[c]
            if len(ho) == 0:
                continue
            stored = self.store.get(c)
            pm = self.algo.personal_model(self.server_state, stored.get("algo") if stored else None)
            if pm is None:
                return None, None
            model = self.runtime.module(pm[0])
            if loaded is not pm[1]:
                model.load_state_dict(pm[1], strict=False)
                loaded = pm[1]
            idx = torch.from_numpy(ho)
            correct, _, n = evaluate(model, self.dataset.x_train[idx], self.dataset.y_train[idx], bs)
            total_c, total_n = total_c + correct, total_n + n
            per_client.append(correct / n)
        if not total_n:
            return None, None
        return total_c / total_n, sum(per_client) / len(per_client)


def _weighted(pairs: list[tuple[float, int]]) -> float | None:
    n = sum(w for _, w in pairs)
    return sum(v * w for v, w in pairs) / n if n else None
