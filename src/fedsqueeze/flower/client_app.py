"""The Flower ``ClientApp``: one SuperNode = one client, the engine's ``Runtime.run_client`` for it.

``query`` messages: the node says its ``partition-id`` and ``num-partitions`` (``--node-config``), so the
server can sample the same client ids as the simulation engine. ``train`` messages: decode the
broadcast payloads with the algorithm's downlink codecs, run the client step, reply with the
encoded upload payloads, the number of samples and the client's metrics.

The client's stored state (algorithm state and codec states such as error-feedback residuals)
stays on the node, in Flower's ``Context.state`` (``engine.safe_io`` bytes in a ``ConfigRecord``, a format
that cannot run code; a pickle blob is refused); it is never sent. Data: the node loads the experiment's data source and takes partition ``partition-id``
of the experiment's partition (the same split the simulation engine makes); ``--node-config
'data-dir="/path"'`` points a node at its own copy of the files.
"""
from __future__ import annotations

import hashlib
import json
import os
from typing import Any

import torch

from fedsqueeze.config import from_dict
from fedsqueeze.engine import safe_io
from fedsqueeze.engine.runtime import Runtime
from fedsqueeze.errors import ConfigError, LegacyRunError
from fedsqueeze.flower import records

# per process, keyed by the whole experiment config (and data-dir): a long-lived ClientApp process
# (``clientapp_worker``) serves later messages of the same experiment without reloading
_RUNTIMES: dict[str, Runtime] = {}


def partition_of(node_config: Any) -> tuple[int, int]:
    try:
        return int(node_config["partition-id"]), int(node_config["num-partitions"])
    except (KeyError, ValueError) as e:
        raise ConfigError("start the SuperNode with --node-config 'partition-id=<i> num-partitions=<N>' "
                          "(N = data.num_clients of the experiment)") from e


def runtime_for(run_config: dict, node_config: Any) -> Runtime:
    from fedsqueeze.engine.simulation import build_partition, load_dataset

    experiment, _ = records.from_run_config(run_config)
    if "data-dir" in node_config:
        experiment.setdefault("data", {})["dir"] = str(node_config["data-dir"])
    key = json.dumps(experiment, sort_keys=True)
    if key not in _RUNTIMES:
        cfg = from_dict(experiment)
        client, parts = partition_of(node_config)
        if parts != cfg.data.num_clients or not 0 <= client < parts:
            raise ConfigError(f"this SuperNode has partition-id={client} num-partitions={parts}, but the experiment "
                              f"has data.num_clients = {cfg.data.num_clients}")
        dataset = load_dataset(cfg)
        _RUNTIMES.clear()  # one experiment per process: a runtime is never reused for another config
        _RUNTIMES[key] = Runtime(cfg, dataset, build_partition(cfg, dataset))
        print(f"[fedsqueeze] ClientApp (pid {os.getpid()}): loaded data, partition and model of {cfg.name!r} "
              f"(config {hashlib.sha256(key.encode()).hexdigest()[:12]})", flush=True)
    return _RUNTIMES[key]


def max_numel(runtime: Runtime) -> int:
    return 4 * runtime.model_numel() + 4096  # the bound the simulation engine decodes with


def load_stored(state: Any) -> dict | None:
    if records.STATE not in state.config_records:
        return None
    blob = bytes(state.config_records[records.STATE]["blob"])
    if safe_io.is_legacy_pickle(blob):
        raise LegacyRunError("this SuperNode's stored client state is a pickle blob (an older fedsqueeze); it is "
                             "not loaded — restart the SuperNode to start from a fresh state")
    return safe_io.loads(blob, what="the SuperNode's stored client state")


def save_stored(state: Any, stored: dict | None) -> None:
    from flwr.app import ConfigRecord

    if stored is None:  # the client dropped its state
        if records.STATE in state.config_records:
            del state[records.STATE]
        return
    state[records.STATE] = ConfigRecord({"blob": safe_io.dumps(stored)})


def handle_train(content: Any, run_config: dict, node_config: Any, state: Any) -> Any:
    """The ``train`` handler without Flower's ``Message`` wrapper: request content -> reply content."""
    from flwr.app import ConfigRecord, MetricRecord, RecordDict

    torch.set_num_threads(1)  # as the engine's workers: one thread, the same float reductions
    rt = runtime_for(run_config, node_config)
    client, _ = partition_of(node_config)
    meta = content[records.META]
    rnd, step = int(meta["round"]), int(meta["step"])
    if int(meta["client"]) != client:
        raise ConfigError(f"message for client {meta['client']} reached the SuperNode of partition {client}")
    payloads = records.unpack_payloads(content[records.PAYLOADS])
    down = {k: rt.algo.codec(k, "down", rnd).decode(p, max_numel=max_numel(rt)) for k, p in payloads.items()}
    ups, stored, n, metrics = rt.run_client(client, rnd, step, down, load_stored(state))
    save_stored(state, stored)
    reply = RecordDict({records.PAYLOADS: records.pack_payloads(ups),
                        records.META: ConfigRecord({"client": client, "num_samples": int(n)})})
    if metrics:
        reply[records.METRICS] = MetricRecord({k: float(v) for k, v in metrics.items()})
    return reply


def _make_app():
    from flwr.app import ConfigRecord, Message, RecordDict
    from flwr.clientapp import ClientApp

    app = ClientApp()

    @app.query()
    def query(msg: Message, context: Any) -> Message:
        client, parts = partition_of(context.node_config)
        return Message(RecordDict({records.META: ConfigRecord({"partition-id": client, "num-partitions": parts})}),
                       reply_to=msg)

    @app.train()
    def train(msg: Message, context: Any) -> Message:
        content = handle_train(msg.content, dict(context.run_config), context.node_config, context.state)
        return Message(content, reply_to=msg)

    return app


app = _make_app()
