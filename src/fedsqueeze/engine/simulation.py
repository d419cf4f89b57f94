"""The embedded simulation engine: the one round loop.

Per round: sample clients; for each communication step, encode the broadcast once, count it once
per receiving client, run the client updates (in process or in a worker pool), count and decode
every upload, aggregate; then commit client states, evaluate, write metrics and checkpoint.

Client faults (see ``fedsqueeze.engine.validation`` and ``fedsqueeze.engine.faults``): a reply that
raised, does not decode, has other messages/tensors/shapes than ``Algorithm.upload_spec`` says, holds
NaN/Inf or exceeds ``engine.max_update_norm`` is *rejected* — logged, written to ``rejections.jsonl``,
counted in the round's ``rejected``, its client's new state discarded — and the step aggregates the
rest. A client that gives no valid reply in a step is not asked again in that round. With fewer
replies than ``engine.min_replies`` the clients that did not reply are asked again (``engine.retries``
times; a rejected reply is final: a faulty client would fail again), then a step still short of
``min_replies`` valid replies skips the round — server state, downlink codec state and every client
state as before it — or fails the run (``engine.too_few``); the same rule as on Flower.
"""
from __future__ import annotations

import copy
import time
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path
from typing import Any

from fedsqueeze.algorithms.base import Messages, Reply
from fedsqueeze.config import Config
from fedsqueeze.data.partition import Partition, make_partition
from fedsqueeze.data.sources import Dataset
from fedsqueeze.engine import delta, faults, vectorized
from fedsqueeze.engine.atomic import crash_point
from fedsqueeze.engine.device import compute_mode, worker_devices
from fedsqueeze.engine.deadline import Deadline
from fedsqueeze.engine.evaluation import global_metrics, personal_accuracies, pooled_accuracy, pruned_personal
from fedsqueeze.engine.overlap import Admission, spare_core, without
from fedsqueeze.engine.rejections import REJECTIONS, RejectionLog
from fedsqueeze.engine.run_state import RunState
from fedsqueeze.engine.runtime import (COMPUTE_KEY, ClientFailure, Runtime, failure_of, host_copy, payload_seed,
                                       run_client_safely)
from fedsqueeze.engine.sampling import clients_per_round, sample_clients
from fedsqueeze.engine.validation import Rejection, TooFewReplies, admit, expected_specs
from fedsqueeze.errors import ConfigError, DataError, FedsqueezeError
from fedsqueeze.metrics.results import Result, RunWriter
from fedsqueeze.registry import DATASETS

Callback = Callable[[dict], None]


def load_dataset(cfg: Config) -> Dataset:
    if cfg.data.source.startswith("object:"):
        raise DataError(f"data.source {cfg.data.source!r} was a FederatedData passed to fedsqueeze.run(data=...) "
                        "and cannot be rebuilt from the config; pass it again with data=, or register a loader "
                        "with fedsqueeze.register_dataset and use its name")
    loader = DATASETS.get(cfg.data.source)
    opts = dict(cfg.data.options)
    if cfg.data.dir:
        opts["data_dir"] = cfg.data.dir
    return loader(**opts)


def build_partition(cfg: Config, dataset: Dataset) -> Partition:
    d = cfg.data
    from fedsqueeze.data.federated import FederatedData
    if isinstance(dataset, FederatedData):  # own data: its own clients or partitioner
        return dataset.partition(d.num_clients, seed=cfg.seed, holdout_fraction=d.holdout_fraction)
    # groups: the dataset's own clients, if it defines them (for partition = "natural")
    params = {"alpha": d.alpha, "shards_per_client": d.shards_per_client,
              "groups": getattr(dataset, "groups", None)}
    from fedsqueeze.data.federated import partition_labels
    return make_partition(d.partition, partition_labels(dataset)[0], d.num_clients, seed=cfg.seed,
                          holdout_fraction=d.holdout_fraction, **params)


class Simulation(RunState):
    def __init__(self, cfg: Config, run_dir: str | Path, *, dataset: Dataset | None = None,
                 callbacks: list[Callback] | None = None, progress: Any = None,
                 log: Callable[[str], None] | None = None) -> None:
        self.cfg = cfg
        self.run_dir = Path(run_dir)  # created by start(): nothing on disk until everything validated
        self.dataset = dataset if dataset is not None else load_dataset(cfg)
        if cfg.data.num_clients > len(self.dataset.y_train):
            raise DataError(f"data.num_clients = {cfg.data.num_clients} exceeds the {len(self.dataset.y_train)} "
                            "training samples; lower data.num_clients")
        from fedsqueeze.metrics.losses import check_task, metric_names
        check_task(cfg.train.loss, cfg.eval.metrics, self.dataset.y_train, self.dataset.num_classes)
        self.metric_names = metric_names(cfg.eval.metrics, self.dataset.y_train)  # eval.metrics, or the default
        self.partition = build_partition(cfg, self.dataset)
        self.runtime = Runtime(cfg, self.dataset, self.partition)  # resolves engine.device (an error if missing)
        self.device = self.runtime.device
        self.algo = self.runtime.algo
        self.callbacks = list(callbacks or [])
        self.progress = progress
        self.log = log or (lambda msg: None)
        self.writer = RunWriter(self.run_dir)
        self.rejections = RejectionLog(self.run_dir)
        self.k = clients_per_round(cfg.data.num_clients, cfg.train.clients_per_round, cfg.train.client_fraction)
        if cfg.engine.min_replies > self.k:
            raise ConfigError(f"engine.min_replies = {cfg.engine.min_replies} exceeds the {self.k} clients sampled "
                              "per round; lower engine.min_replies or raise train.clients_per_round")
        self._max_numel = 4 * self.runtime.model_numel() + 4096
        delta.check(cfg, self.algo)
        vectorized.check(cfg, self.algo)
        self.delta = cfg.codec.downlink == "delta"
        self.mirrors: delta.ServerMirrors | None = None
        self.warnings: list[str] = []
        self.pool = None
        # per step: new states of clients that replied (committed only if the reply is accepted), failures
        self._staged: dict[int, Any] = {}
        self._failed: dict[int, ClientFailure] = {}
        self._encode_behind = self.device.type != "cpu"  # uploads encoded while the next client trains
        # replies decoded and checked while the next client trains (when a core is free for it)
        self._admission = Admission(enabled=self._encode_behind or spare_core())
        self.deadline = Deadline.from_config(cfg)  # engine.deadline_s, or None
        self._missed: dict[int, list[int]] = {}  # this step: clients past the deadline -> upload bytes sent in time
        self._new_round([])

    # ---- the loop ------------------------------------------------------------------------------------
    def run(self, *, resume: bool = False) -> Result:
        eng = self.cfg.engine
        devices = [self.device] + (worker_devices(eng) if eng.workers else [])
        with compute_mode(devices, eng.deterministic, eng.tf32):
            return self._run(resume)

    def _run(self, resume: bool) -> Result:
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
                crash_point("round-recorded")
                if self.cfg.engine.checkpoint_every and (rnd % self.cfg.engine.checkpoint_every == 0
                                                         or rnd == self.cfg.rounds):
                    self._checkpoint(rnd)
                for cb in self.callbacks:
                    cb(rec)
                if self.progress is not None:
                    self.progress(rec)
        finally:
            self._admission.close()
            if self.pool is not None:
                self.pool.close()
                self.pool = None
        result = Result(self.run_dir, self.cfg.to_dict(), self.history, self.ledger)
        self.writer.finish(result)
        return result

    def run_round(self, rnd: int) -> dict:
        """One round: sampling, every communication step, state commit, evaluation (if due). A step
        with too few valid replies skips the round (nothing changes but the bytes sent) or fails it."""
        t0 = time.perf_counter()
        clients = [int(c) for c in sample_clients(self.cfg.data.num_clients, self.k, seed=self.cfg.seed, rnd=rnd)]
        self._new_round(clients)
        before = (copy.deepcopy(self.server_state) if self.algo.num_steps(rnd) > 1 else self.server_state,
                  copy.deepcopy(self.down_codec_state))
        reported: dict[str, list[tuple[float, int]]] = {}
        skipped = False
        try:
            for step in range(self.algo.num_steps(rnd)):
                replies = self._step(rnd, step, clients)
                for r in replies:
                    for key, value in r.metrics.items():
                        reported.setdefault(key, []).append((float(value), r.num_samples))
                self.server_state = self.algo.aggregate(self.server_state, rnd, step, replies)
        except TooFewReplies as e:
            if self.cfg.engine.too_few == "fail":
                raise
            self.log(f"{e.summary}: round {rnd} skipped, server and client states unchanged "
                     "(engine.too_few = 'skip')")
            self.server_state, self.down_codec_state = before
            self.store.discard()
            if self.mirrors is not None:
                self.mirrors.store.discard()
            reported, skipped = {}, True
        self.store.commit(rnd)
        if self.mirrors is not None:
            self.mirrors.store.commit(rnd)
        round_s = time.perf_counter() - t0
        rec = self._evaluate(rnd)
        # whatever clients report (train_loss, flops_ratio, model_bytes, ...): sample-weighted means
        means = {k: _weighted(v) for k, v in sorted(reported.items())}
        rec.update(self._traffic(rnd), round=rnd, clients=0 if skipped else len(clients), round_s=round_s,
                   train_loss=means.pop("train_loss", None), client_metrics=means, **self._fault_counts(clients),
                   client_s={str(c): round(s, 4) for c, s in sorted(self._client_s.items())},
                   skipped=skipped)
        return rec

    # ---- one communication step ---------------------------------------------------------------------
    def _new_round(self, clients: list[int]) -> None:
        self._client_s: dict[int, float] = {}  # measured client seconds, summed over the round's steps
        self._out: set[int] = set()        # no valid reply earlier in this round: not asked again
        self._rejected: set[int] = set()   # rejected in this round
        self._valid: set[int] = set(clients)  # gave a valid reply in the latest step
        self._late: set[int] = set()       # stragglers (simulation): no reply because too slow

    def _fault_counts(self, clients: list[int]) -> dict[str, int]:
        no_reply = set(clients) - self._rejected - self._valid
        return {"rejected": len(self._rejected), "no_reply": len(no_reply), "stragglers": len(self._late & no_reply)}

    def _step(self, rnd: int, step: int, clients: list[int]) -> list[Reply]:
        clients = [c for c in clients if c not in self._out]
        down_msgs = self.algo.broadcast(self.server_state, rnd, step)
        payloads = self._encode_down(down_msgs, rnd, step, clients)
        for c in clients:
            for kind, p in payloads_for(payloads, c).items():
                self.ledger.record(rnd, c, "down", kind, p)
        expected = self.algo.upload_spec(rnd, step, down_msgs)

        def decode_up(kind: str, payload: bytes) -> dict:
            return self.algo.codec(kind, "up", rnd).decode(payload, max_numel=self._max_numel,
                                                           expect=expected_specs(kind, expected))

        self._staged, self._failed = {}, {}
        max_norm = self.cfg.engine.max_update_norm

        def check(c: int, ups: dict[str, bytes], n: Any, metrics: dict) -> Reply | Rejection:
            return admit(rnd, step, c, ups, n, metrics, expected, decode_up, max_norm)

        self._admission.start(check)  # each reply is admitted as it arrives (engine.overlap), verdicts read in order
        arrived = self._execute(clients, rnd, step, payloads)
        replies, rejections = [], []
        for c, ups, n, metrics in arrived:
            if isinstance(metrics, dict) and COMPUTE_KEY in metrics:
                metrics = dict(metrics)
                self._client_s[c] = self._client_s.get(c, 0.0) + float(metrics.pop(COMPUTE_KEY))
            for kind, p in ups.items():
                self.ledger.record(rnd, c, "up", kind, p)  # received bytes count, accepted or not
            reply = self._admission.result(c, ups, n, metrics)
            if isinstance(reply, Rejection):
                rejections.append((reply, ""))
                continue
            replies.append(reply)
            if c in self._staged:
                self.store.put(c, self._staged[c])  # None drops whatever the client had stored
            if self.mirrors is not None:
                self.mirrors.accept(c)  # the server's copy of the client's model advances with its state
        self._admission.finish()
        for c, failure in self._failed.items():
            rejections.append((Rejection(rnd, step, c, "raised", failure.reason),
                               "" if failure.injected else failure.detail))
        for rejection, detail in sorted(rejections, key=lambda r: r[0].client):
            self._reject(rejection, detail)
        self._valid = {r.client for r in replies}
        self._rejected |= {r.client for r, _ in rejections}
        self._out |= set(clients) - self._valid
        real = [f for f in self._failed.values() if not f.injected]
        if real and not replies and len(real) == len(rejections):
            raise FedsqueezeError(f"round {rnd} step {step}: every client failed — {real[0].reason}; that is a bug "
                                  f"or a misconfiguration, not a client fault (tracebacks in {REJECTIONS})")
        if len(replies) < self.cfg.engine.min_replies:
            summary = (f"round {rnd} step {step}: {len(replies)} valid replies from {len(clients)} clients "
                       f"({len(rejections)} rejected, {len(clients) - len(arrived) - len(self._failed)} without "
                       f"reply), engine.min_replies = {self.cfg.engine.min_replies}")
            raise TooFewReplies(summary, "lower engine.min_replies or set engine.too_few = 'skip' to skip such rounds")
        return replies

    def _encode_down(self, msgs: Messages, rnd: int, step: int, clients: list[int]) -> Payloads:
        """One payload per kind for every client (``broadcast``), or per client (``delta``)."""
        if self.mirrors is not None:
            self.mirrors.reset_step()

            def encode_for(c: int):
                def encode(kind: str, tensors: dict) -> bytes:
                    codec = self.algo.codec(kind, "down", rnd)
                    if codec.stateful:
                        raise ConfigError(f"codec.downlink = 'delta' already feeds the compression error back; "
                                          f"use a stateless downlink codec, not {codec.codec_id!r}")
                    return codec.encode(tensors, seed=payload_seed(self.cfg.seed, "down", rnd, step, c, kind))
                return encode

            return {c: self.mirrors.encode(self.runtime, c, msgs, rnd, encode_for(c)) for c in clients}
        payloads: dict[str, bytes] = {}
        for kind, tensors in msgs.items():
            codec = self.algo.codec(kind, "down", rnd)
            seed = payload_seed(self.cfg.seed, "down", rnd, step, -1, kind)
            if codec.stateful:
                payloads[kind], self.down_codec_state[kind] = codec.encode_stateful(
                    tensors, seed=seed, state=self.down_codec_state.get(kind))
            else:
                payloads[kind] = codec.encode(tensors, seed=seed)
        return payloads

    def _arrived(self, client: int, out: Any, payloads: Payloads) -> None:
        """A client's ``run_client`` result (or a failure, or None) just came in: hold it to the deadline
        (``engine.deadline_s``), then start admitting it."""
        if not isinstance(out, tuple):
            return
        ups, _, n, metrics = out
        if self.deadline is not None:
            measured = float(metrics.get(COMPUTE_KEY, 0.0)) if isinstance(metrics, dict) else 0.0
            compute = self.deadline.compute_s(self.runtime.num_samples(client), measured)
            _, sent = self.deadline.verdict(client, [len(p) for p in payloads_for(payloads, client).values()],
                                            [len(p) for p in ups.values()], compute)
            if sent is not None:
                self._missed[client] = sent
                return
        # with a pool and no core to spare, the main thread (which only waits for workers) admits it itself
        self._admission.submit(client, ups, n, without(metrics, COMPUTE_KEY),
                               inline=self.pool is not None and not self._admission.enabled)

    def _reject(self, rejection: Rejection, detail: str = "") -> None:
        r = rejection
        self.log(f"round {r.round} step {r.step}: client {r.client} rejected ({r.check}): {r.reason}")
        self.rejections.append(r, detail)

    def _execute(self, clients: list[int], rnd: int, step: int,
                 payloads: dict[str, bytes]) -> list[tuple[int, dict[str, bytes], int, dict]]:
        """Deliver the broadcast to each client and collect (client, upload payloads, n, metrics).
        Here: in this process or the worker pool, with the simulated dropouts and stragglers of
        ``engine.dropout``/``engine.straggler``; a client that raised goes to ``self._failed``, the new
        state of one that replied to ``self._staged``. With fewer than ``engine.min_replies`` replies,
        up to ``engine.retries`` more attempts: a client that dropped out is sent the broadcast again
        (counted: the bytes cross the wire again), a straggler is waited for another deadline. A
        deployment transport (Flower) overrides this; clients that did not reply are missing from the list."""
        eng = self.cfg.engine
        got: dict[int, tuple[dict[str, bytes], int, dict]] = {}
        pending, missing = list(clients), {}
        self._missed, past = {}, set()
        down: list[Messages] = []  # decoded at most once per step
        for attempt in range(eng.retries + 1):
            for c in (c for c in pending if attempt and missing.get(c) == "dropout"):
                for kind, p in payloads_for(payloads, c).items():
                    self.ledger.record(rnd, c, "down", kind, p)
            missing = {}
            ask = []
            for c in pending:
                why = faults.no_reply(self.cfg, rnd, step, c, attempt)
                if why is None:
                    ask.append(c)
                else:
                    missing[c] = why
            for c, out in zip(ask, self._run_clients(ask, rnd, step, payloads, down)):
                if out is None:
                    missing[c] = "timeout"
                elif isinstance(out, ClientFailure):
                    self._failed[c] = out
                elif c in self._missed:  # engine.deadline_s: too slow; what it sent in time is counted
                    for (kind, p), sent in zip(out[0].items(), self._missed[c]):
                        if sent:
                            self.ledger.record(rnd, c, "up", kind, p[:sent])
                    if isinstance(out[3], dict):
                        self._client_s[c] = self._client_s.get(c, 0.0) + float(out[3].get(COMPUTE_KEY, 0.0))
                    missing[c] = "deadline"
                    past.add(c)
                else:
                    ups, stored, n, metrics = out
                    got[c], self._staged[c] = (ups, n, metrics), stored
            pending = [c for c in pending if c in missing and c not in past]  # a retry would be as slow
            if missing:
                self.log(f"round {rnd} step {step}: no reply from client(s) " + ", ".join(
                    f"{c} ({why})" for c, why in sorted(missing.items()))
                    + (f" (attempt {attempt + 1} of {eng.retries + 1})" if eng.retries else ""))
            if len(got) >= eng.min_replies or not pending:
                break
        self._late |= {c for c, why in missing.items() if why in ("straggler", "timeout")} | past
        return [(c, *got[c]) for c in clients if c in got]  # sampling order: a fixed reduction order

    def _run_clients(self, clients: list[int], rnd: int, step: int, payloads: dict[str, bytes],
                     down: list[Messages]) -> list:
        """Per client: its ``run_client`` result, a ``ClientFailure``, or None (its worker went silent
        for ``engine.round_timeout`` seconds)."""
        if not clients:
            return []
        if self.pool is not None:
            return self.pool.map([(c, rnd, step, payloads_for(payloads, c), self.store.get(c)) for c in clients],
                                 timeout=self.cfg.engine.round_timeout,
                                 on_result=lambda i, out: self._arrived(clients[i], out, payloads))

        def decoded(c: int) -> Messages:
            if self.delta:  # a payload of its own per client
                return {k: self.algo.codec(k, "down", rnd).decode(p, max_numel=self._max_numel)
                        for k, p in payloads_for(payloads, c).items()}
            if not down:
                down.append({k: self.algo.codec(k, "down", rnd).decode(p, max_numel=self._max_numel)
                             for k, p in payloads.items()})
            return down[0]

        if self.cfg.engine.vectorize:  # the training of all of them at once (engine.vectorized)
            outs = vectorized.run_clients(self.runtime, clients, rnd, step, [decoded(c) for c in clients],
                                          [self.store.get(c) for c in clients])
            for c, out in zip(clients, outs):
                self._arrived(c, out, payloads)
            return outs
        if self._encode_behind:  # an accelerator: encode (and admit) client k while client k+1 trains
            futures = [self._start_client(c, rnd, step, decoded(c), payloads) for c in clients]
            return [f.result() for f in futures]
        outs = []
        for c in clients:
            outs.append(run_client_safely(self.runtime, c, rnd, step, decoded(c), self.store.get(c)))
            self._arrived(c, outs[-1], payloads)  # admitted in the background while the next client trains
        return outs

    def _start_client(self, c: int, rnd: int, step: int, down: Messages, payloads: Payloads) -> Future:
        """``run_client_safely`` split in two: training and the copy of its result to the CPU here, then
        encoding (``Runtime.close_client``) and admission on the background thread (engine.overlap)."""
        rt = self.runtime
        t0 = time.perf_counter()
        try:
            ctx, down_c, stored, mirror = rt.open_client(c, rnd, step, down, self.store.get(c))
            reply = rt.algo.client_update(ctx, down_c, stored.get("algo"))
            on_host = (host_copy(reply.up), host_copy(reply.state))
            codecs = {kind: rt.algo.codec(kind, "up", rnd) for kind in reply.up}  # this client's, before the next
        except ConfigError:
            raise
        except Exception as e:  # noqa: BLE001 — a client fault, as in run_client_safely
            failed: Future = Future()
            failed.set_result(failure_of(e))
            return failed
        trained_s = time.perf_counter() - t0

        def finish() -> Any:
            start = time.perf_counter()
            try:  # client_s: training + encoding, not the time spent waiting for this thread
                out = rt.close_client(ctx, reply, stored, mirror, start - trained_s, on_host=on_host, codecs=codecs)
            except ConfigError:
                raise
            except Exception as e:  # noqa: BLE001
                out = failure_of(e)
            self._arrived(c, out, payloads)
            return out

        return self._admission.later(finish)

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
        rec.update({f"global_{m}": None for m in self.metric_names if m not in ("accuracy", "loss")})
        bs = self.cfg.eval.batch_size
        if self._due(self.cfg.eval.every, rnd):
            rec.update(global_metrics(self.runtime, self.algo, self.server_state, self.dataset, bs, self.metric_names))
        if self._due(self.cfg.eval.personal_every, rnd):
            rec["personal_acc"], rec["personal_acc_clients"] = self._personal(bs)
            if hasattr(self.algo, "pruned_personal_model") and rec["personal_acc"] is not None:  # SPATL
                rec.update(pruned_personal(self.runtime, self.algo, self.server_state, self.store, self.partition,
                                           self.dataset, self.cfg.data.num_clients, bs))
        rec["eval_s"] = time.perf_counter() - t0
        return rec

    def _personal(self, bs: int) -> tuple[float | None, float | None]:
        """Personalised accuracy (pooled, mean over clients); a transport without client data overrides it."""
        return pooled_accuracy(self.personal_accuracies(bs))

    def personal_accuracies(self, bs: int | None = None):
        """Per client with a held-out split: (client, correct, n, the algorithm's client_profile)."""
        return personal_accuracies(self.runtime, self.algo, self.server_state, self.store, self.partition,
                                   self.dataset, self.cfg.data.num_clients, bs or self.cfg.eval.batch_size)


Payloads = dict  # kind -> bytes for every client, or client -> (kind -> bytes) with codec.downlink = "delta"


def payloads_for(payloads: Payloads, client: int) -> dict[str, bytes]:
    """The downlink payloads one client receives."""
    return payloads[client] if client in payloads else payloads


def _weighted(pairs: list[tuple[float, int]]) -> float | None:
    n = sum(w for _, w in pairs)
    return sum(v * w for v, w in pairs) / n if n else None
