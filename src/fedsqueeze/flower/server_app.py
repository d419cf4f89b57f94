"""The Flower ``ServerApp``: the simulation engine's round loop with clients reached through the ``Grid``.

``FlowerServer`` overrides only client execution (``Simulation._execute``): the broadcast payload
bytes go to the sampled clients' SuperNodes as ``train`` messages, and the upload payload bytes
come back. Sampling, byte accounting, decoding, aggregation, evaluation of the global model on the
server's test set, results files and checkpoints are the engine's own, unchanged.

Clients and nodes: client id = the SuperNode's ``partition-id`` (its ``--node-config``). At start the
server waits for ``data.num_clients`` SuperNodes (up to ``engine.round_timeout``) and asks each for
its partition with a ``query`` message, so it samples the same client ids as the simulation.

Dropouts: a step waits up to ``engine.round_timeout`` for its replies; a client whose reply does not
come (node gone, error reply, timeout) is logged and left out, and it is not asked again in later
steps of that round. With fewer than ``engine.min_replies`` replies the step tries again, up to
``engine.retries`` times: it keeps waiting another ``round_timeout`` for nodes that are still
connected (a slow client is not sent the work twice), and sends the step anew to clients whose
SuperNode reconnected under a new node id (nodes are re-queried first). Then ``engine.too_few``
decides: ``skip`` the round (server state as before the round) or ``fail`` the run. Replies that
arrived are never discarded while the round goes on. A client that worked but whose reply was lost
keeps the state its work left (e.g. an error-feedback residual), as a real device would.

Untrusted replies: a reply's payloads together may hold at most ``max_payload_bytes(max_numel)`` bytes
(``wire.payload``; ``max_numel`` is the engine's element cap, 4x the model's parameters + 4096). A longer
or malformed reply (records missing, wrong client id) is refused — logged with the client and the
reason, counted as a dropout, never retried — before its payloads are copied, checksummed or decoded.

Differences from the simulation engine: personalised evaluation needs client data and is disabled
(``personal_acc`` is empty); resuming a run is not supported (client states live on the SuperNodes);
re-sent broadcasts are counted in the ledger, because those bytes really crossed the wire again.
"""
from __future__ import annotations

import copy
import dataclasses
import time
from pathlib import Path
from typing import Any

from fedsqueeze.config import Config
from fedsqueeze.engine.simulation import Simulation
from fedsqueeze.errors import ConfigError, FedsqueezeError, MissingExtraError, PayloadError
from fedsqueeze.flower import records
from fedsqueeze.wire.payload import max_payload_bytes

POLL_S = 0.1  # how often the server asks the SuperLink for replies (a cheap call; latency of every step)


class TooFewReplies(FedsqueezeError):
    """Fewer replies than ``engine.min_replies`` after every retry."""


class FlowerServer(Simulation):
    def __init__(self, cfg: Config, run_dir: str | Path, grid: Any, **kw: Any) -> None:
        if cfg.engine.workers or cfg.engine.vectorize:  # clients run on the SuperNodes: no local pool or vmap
            cfg = dataclasses.replace(cfg, engine=dataclasses.replace(cfg.engine, workers=0, vectorize=False))
        if cfg.codec.downlink != "broadcast":
            raise ConfigError("codec.downlink = 'delta' (per-client downlink payloads) runs on the embedded engine "
                              "only for now; use codec.downlink = 'broadcast' with Flower")
        super().__init__(cfg, run_dir, **kw)
        self.grid = grid
        eng = cfg.engine
        if eng.min_replies > self.k:
            raise ConfigError(f"engine.min_replies = {eng.min_replies} exceeds the {self.k} clients sampled per "
                              "round; lower engine.min_replies or raise train.clients_per_round")
        self.max_reply_bytes = max_payload_bytes(self._max_numel)  # per reply, all payloads together
        self.node_of: dict[int, int] = {}      # client id -> Flower node id
        self.dropouts: list[tuple[int, int, int]] = []  # (round, step, client)
        self._gone: set[int] = set()           # clients that dropped out earlier in this round
        self._asked: dict[str, int] = {}       # partition queries not answered yet: message id -> node
        self._refused: set[int] = set()        # nodes that answered the query with an error

    # ---- nodes -----------------------------------------------------------------------------------
    def start(self, *, resume: bool = False) -> None:
        if resume:
            raise ConfigError("resuming is not supported on Flower (client states live on the SuperNodes); "
                              "start a new run")
        super().start()
        want = self.cfg.data.num_clients
        deadline = time.monotonic() + self.cfg.engine.round_timeout
        while len(list(self.grid.get_node_ids())) < want and time.monotonic() < deadline:
            time.sleep(POLL_S)
        self._refresh_nodes()
        self.log("personalised evaluation is off on Flower: it needs the clients' held-out data")
        missing = sorted(set(range(want)) - set(self.node_of))
        self.log(f"{len(self.node_of)} of {want} clients connected"
                 + (f"; missing partitions {missing} count as dropouts" if missing else ""))
        if not self.node_of:
            raise FedsqueezeError(f"no SuperNode connected within engine.round_timeout = "
                                  f"{self.cfg.engine.round_timeout} s")

    def _refresh_nodes(self) -> None:
        """Forget nodes that left; ask nodes we do not know yet for their partition. A node that has not
        answered yet is not asked again: its late answer is picked up by a later refresh."""
        from flwr.app import ConfigRecord, Message, RecordDict

        alive = set(self.grid.get_node_ids())
        self.node_of = {c: n for c, n in self.node_of.items() if n in alive}
        self._asked = {mid: n for mid, n in self._asked.items() if n in alive}
        new = sorted(alive - set(self.node_of.values()) - set(self._asked.values()) - self._refused)
        self._asked.update(self._push({
            n: Message(RecordDict({records.META: ConfigRecord({"want": "partition"})}), dst_node_id=n,
                       message_type="query", ttl=self._ttl()) for n in new}))
        for node, reply in self._collect(self._asked, wait=bool(new)).items():
            if reply.has_error():
                self.log(f"node {node} did not say its partition: {reply.error.reason}")
                self._refused.add(node)
                continue
            meta = reply.content[records.META]
            client, parts = int(meta["partition-id"]), int(meta["num-partitions"])
            if parts != self.cfg.data.num_clients:
                raise ConfigError(f"SuperNode {node} has num-partitions={parts} but data.num_clients = "
                                  f"{self.cfg.data.num_clients}; give every SuperNode --node-config "
                                  f"'partition-id=<i> num-partitions={self.cfg.data.num_clients}'")
            if client in self.node_of and self.node_of[client] != node:
                raise ConfigError(f"two SuperNodes ({self.node_of[client]} and {node}) both have partition-id="
                                  f"{client}; every SuperNode needs its own partition-id")
            self.node_of[client] = node

    def _ttl(self) -> float:
        return self.cfg.engine.round_timeout * (self.cfg.engine.retries + 1) + 60.0

    def _push(self, messages: dict[int, Any]) -> dict[str, int]:
        """Send messages (key -> Message); returns message id -> key."""
        ids = list(self.grid.push_messages(list(messages.values()))) if messages else []
        return {mid: key for mid, key in zip(ids, messages) if mid}

    def _collect(self, waiting: dict[str, int], *, wait: bool = True) -> dict[int, Any]:
        """Pull replies (key -> reply Message) until none is awaited or ``round_timeout`` passed (or
        once, without ``wait``); answered ids leave ``waiting``, the rest stay awaited."""
        replies: dict[int, Any] = {}
        deadline = time.monotonic() + (self.cfg.engine.round_timeout if wait else 0.0)
        while waiting:
            for reply in self.grid.pull_messages(list(waiting)):
                key = waiting.pop(reply.metadata.reply_to_message_id, None)
                if key is not None:
                    replies[key] = reply
            if not waiting or time.monotonic() >= deadline:
                break
            time.sleep(POLL_S)
        return replies

    # ---- the engine's transport seam ----------------------------------------------------------------
    def _step(self, rnd: int, step: int, clients: list[int]) -> list:
        """Only clients with a connected node and no earlier dropout this round are sent anything."""
        if step == 0:
            self._gone = set()
            self._refresh_nodes()
        unreachable = [c for c in clients if c not in self._gone and c not in self.node_of]
        if unreachable:
            self.log(f"round {rnd} step {step}: client(s) {unreachable} have no connected SuperNode")
            self.dropouts += [(rnd, step, c) for c in unreachable]
            self._gone.update(unreachable)
        return super()._step(rnd, step, [c for c in clients if c not in self._gone])

    def _execute(self, clients: list[int], rnd: int, step: int,
                 payloads: dict[str, bytes]) -> list[tuple[int, dict[str, bytes], int, dict]]:
        eng = self.cfg.engine
        got: dict[int, tuple[dict[str, bytes], int, dict]] = {}
        waiting: dict[str, int] = {}   # message id -> client, still awaited
        sent_to: dict[int, int] = {}   # client -> node its message went to
        pending = list(clients)
        refused: list[int] = []        # replies refused (too long, malformed): final, not retried
        for attempt in range(eng.retries + 1):
            if attempt:  # keep waiting for live nodes; send again only to clients now on another node
                self._refresh_nodes()
            send = [c for c in pending if c in self.node_of and sent_to.get(c) != self.node_of[c]]
            if attempt:
                for c in send:  # the broadcast crosses the wire again
                    for kind, p in payloads.items():
                        self.ledger.record(rnd, c, "down", kind, p)
            waiting.update(self._push({c: self._train_message(c, rnd, step, payloads) for c in send}))
            sent_to.update({c: self.node_of[c] for c in send})
            for c, reply in self._collect(waiting).items():
                if reply.has_error():
                    self.log(f"round {rnd} step {step}: client {c} failed: {reply.error.reason}")
                    continue
                try:
                    got[c] = self._parse_reply(c, reply)
                except FedsqueezeError as e:
                    self.log(f"round {rnd} step {step}: client {c} refused: {e}")
                    refused.append(c)
            pending = [c for c in clients if c not in got and c not in refused]
            if pending:
                self.log(f"round {rnd} step {step}: no reply from client(s) {pending}"
                         + (f" (attempt {attempt + 1} of {eng.retries + 1})" if eng.retries else ""))
            if len(got) >= eng.min_replies or not pending:
                break
        self.dropouts += [(rnd, step, c) for c in clients if c in pending or c in refused]
        self._gone.update(pending + refused)
        if len(got) < eng.min_replies:
            raise TooFewReplies(f"round {rnd} step {step}: {len(got)} replies, engine.min_replies = "
                                f"{eng.min_replies}")
        return [(c, *got[c]) for c in clients if c in got]  # sampling order: the simulation's reduction order

    def _train_message(self, client: int, rnd: int, step: int, payloads: dict[str, bytes]) -> Any:
        from flwr.app import ConfigRecord, Message, RecordDict

        content = RecordDict({records.PAYLOADS: records.pack_payloads(payloads),
                              records.META: ConfigRecord({"round": rnd, "step": step, "client": client})})
        return Message(content, dst_node_id=self.node_of[client], message_type="train", group_id=str(rnd),
                       ttl=self._ttl())

    def _parse_reply(self, client: int, reply: Any) -> tuple[dict[str, bytes], int, dict]:
        """(payloads, num_samples, metrics) of a reply, which is untrusted: its size is checked before its
        payloads are copied or parsed, and anything malformed raises ``PayloadError``."""
        content = reply.content
        if records.PAYLOADS not in content or records.META not in content:
            raise PayloadError(f"reply without {records.PAYLOADS!r} or {records.META!r} records")
        payloads = records.unpack_payloads(content[records.PAYLOADS], max_bytes=self.max_reply_bytes)
        meta = content[records.META]
        try:
            said, n = int(meta["client"]), int(meta["num_samples"])
            metrics = dict(content[records.METRICS]) if records.METRICS in content else {}
        except (KeyError, TypeError, ValueError) as e:
            raise PayloadError(f"malformed reply metadata ({type(e).__name__}: {e})") from e
        if said != client:
            raise PayloadError(f"node {self.node_of.get(client)} answered as client {said}, expected {client}")
        return payloads, n, metrics

    # ---- rounds that cannot complete; what needs client data ---------------------------------------
    def run_round(self, rnd: int) -> dict:
        multi = self.algo.num_steps(rnd) > 1
        before = copy.deepcopy(self.server_state) if multi else self.server_state
        t0 = time.perf_counter()
        try:
            return super().run_round(rnd)
        except TooFewReplies as e:
            if self.cfg.engine.too_few == "fail":
                raise
            self.log(f"{e}: round {rnd} skipped, server state unchanged (engine.too_few = 'skip')")
            self.server_state = before
            self.store.commit(rnd)
            round_s = time.perf_counter() - t0
            rec = self._evaluate(rnd)
            rec.update(self._traffic(rnd), round=rnd, clients=0, round_s=round_s, train_loss=None,
                       client_metrics={})
            return rec

    def _personal(self, bs: int) -> tuple[float | None, float | None]:
        return None, None  # needs every client's held-out data, which stays on the SuperNodes


def _progress(cfg: Config):
    def show(rec: dict) -> None:
        acc = rec.get("global_acc")
        text = f"round {rec['round']}/{cfg.rounds}: {rec['clients']} clients"
        if acc is not None:
            text += f", acc {100 * acc:.2f}%"
        text += f", {rec['bytes_up']:,} B up, {rec['bytes_down']:,} B down, {rec['round_s']:.1f} s"
        print(f"[fedsqueeze] {text}", flush=True)
    return show


def run_server(grid: Any, run_config: dict) -> Any:
    """Everything ``main`` does, callable without a ``Context`` (tests)."""
    import torch

    from fedsqueeze.api import default_run_dir
    from fedsqueeze.config import from_dict

    torch.set_num_threads(1)
    experiment, deploy = records.from_run_config(run_config)
    cfg = from_dict(experiment)
    run_dir = Path(deploy.get("run-dir") or default_run_dir(cfg))
    def log(msg: str) -> None:
        print("\n".join(f"[fedsqueeze] {line}" for line in str(msg).splitlines()), flush=True)

    log(f"{cfg.name}: {cfg.algorithm_name} on {cfg.model.name}, up={cfg.codec.up} down={cfg.codec.down}, "
        f"results in {run_dir.resolve()}")
    from fedsqueeze.engine.rundir import RunLock

    server = FlowerServer(cfg, run_dir, grid, progress=_progress(cfg), log=log)  # validates; creates nothing
    run_dir.mkdir(parents=True, exist_ok=True)
    with RunLock(run_dir):  # one server per run folder
        result = server.run()
    try:
        from fedsqueeze.metrics.plots import plot_runs
    except MissingExtraError as e:  # the run is complete; only the picture is missing
        log(f"no accuracy_vs_mb.png: {e}")
    else:
        plot_runs([run_dir], run_dir / "accuracy_vs_mb.png", title=cfg.name)
    s = result.summary()
    acc = "—" if s["final_acc"] is None else f"{100 * s['final_acc']:.2f}%"
    log(f"done: final acc {acc}, {s['mb_up']:.3f} MB up, {s['mb_down']:.3f} MB down, "
        f"{len(server.dropouts)} dropout(s); results in {run_dir.resolve()}")
    return result


def _make_app():
    from flwr.serverapp import ServerApp

    app = ServerApp()

    @app.main()
    def main(grid, context) -> None:
        run_server(grid, dict(context.run_config))

    return app


app = _make_app()
