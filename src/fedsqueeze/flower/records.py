"""What crosses Flower's wire, and how the experiment config rides in Flower's run config.

Payloads: one ``Array`` per message kind inside an ``ArrayRecord``; the array is our payload bytes
unchanged (dtype ``uint8``, shape ``(len,)``) and its ``stype`` is the payload's codec id. The
simulation engine and a Flower deployment therefore move identical bytes, and the ledger counts
the same numbers. (Flower adds its own framing around records; the ledger counts our payloads,
as it does in simulation.)

Run config: Flower's run config holds only scalars (int, float, bool, str) in nested tables, which
Flower flattens to dotted keys (``data.num_clients``). The resolved experiment config is written
as those tables, so ``flwr run --run-config 'train.lr=0.1'`` overrides an experiment key. Lists
(e.g. a codec pipeline written as a TOML list) are stored as ``"json:<json text>"`` strings. The
table ``deploy`` holds the adapter's own settings (``run-dir``: results folder on the SuperLink host).
"""
from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from fedsqueeze.errors import ConfigError, PayloadError
from fedsqueeze.wire.payload import peek_codec

PAYLOADS = "fedsqueeze-payloads"   # ArrayRecord: message kind -> payload
META = "fedsqueeze-meta"           # ConfigRecord: round, step, client, num_samples, ...
METRICS = "fedsqueeze-metrics"     # MetricRecord: what the client reported
STATE = "fedsqueeze-state"         # ConfigRecord in Context.state: the client's stored state (never sent)
DEPLOY = "deploy"                  # run-config table with the adapter's own settings
_JSON = "json:"


def pack_payloads(payloads: Mapping[str, bytes]):
    from flwr.app import Array, ArrayRecord

    return ArrayRecord({kind: Array(dtype="uint8", shape=(len(p),), stype=peek_codec(p), data=bytes(p))
                        for kind, p in payloads.items()})


def unpack_payloads(record, *, max_bytes: int | None = None) -> dict[str, bytes]:
    """The payloads of an ``ArrayRecord``; with ``max_bytes``, a record whose payloads together are longer
    is refused before any of them is copied or parsed."""
    if max_bytes is not None:
        total = sum(len(arr.data) for arr in record.values())
        if total > max_bytes:
            raise PayloadError(f"{total:,} payload bytes, more than the {max_bytes:,} allowed for this model "
                               "(refused before decoding)")
    out = {}
    for kind, arr in record.items():
        data = bytes(arr.data)
        if peek_codec(data) != arr.stype:
            raise PayloadError(f"payload {kind!r} says codec {peek_codec(data)!r} but its Flower array says "
                               f"{arr.stype!r}; the message was altered on the way")
        out[kind] = data
    return out


# ---- experiment config <-> Flower run config ------------------------------------------------------
def to_run_config(experiment: Mapping[str, Any], deploy: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Nested tables of scalars (what ``[tool.flwr.app.config]`` may hold). Empty tables are dropped
    (they are the defaults); lists become ``"json:..."`` strings."""
    def conv(v: Any) -> Any:
        if isinstance(v, Mapping):
            return {str(k): conv(x) for k, x in v.items() if not (isinstance(x, Mapping) and not x)}
        if isinstance(v, (list, tuple)):
            return _JSON + json.dumps(v)
        if v is None or not isinstance(v, (bool, int, float, str)):
            raise ConfigError(f"config value {v!r} cannot be carried in a Flower run config")
        return v

    if DEPLOY in experiment:
        raise ConfigError(f"the experiment config may not have a top-level {DEPLOY!r} table")
    out = conv(experiment)
    if deploy:
        out[DEPLOY] = conv(deploy)
    return out


def from_run_config(flat: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Flower's flattened run config -> (experiment config dict, deploy settings)."""
    nested: dict[str, Any] = {}
    for key, value in flat.items():
        if isinstance(value, str) and value.startswith(_JSON):
            value = json.loads(value[len(_JSON):])
        node = nested
        parts = str(key).split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = value
    deploy = nested.pop(DEPLOY, {})
    return nested, deploy
