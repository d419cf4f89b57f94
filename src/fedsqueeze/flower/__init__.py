"""Running fedsqueeze on Flower's Deployment Engine (SuperLink + SuperNodes), optional extra ``[flower]``.

A thin adapter, no networking of our own:

- ``server_app``: ``FlowerServer`` is the simulation engine's round loop with one method replaced —
  client execution goes to the SuperNodes as Flower messages; sampling, ledger, decoding,
  aggregation, evaluation, results and checkpoints are the engine's own.
- ``client_app``: each SuperNode runs ``Runtime.run_client`` for its partition, keeping the client's
  state in Flower's ``Context.state``.
- ``records``: payload bytes <-> Flower records (one ``Array`` per message kind, our codec id as its
  ``stype``, the bytes untouched), experiment config <-> Flower run config.
- ``app_template``: ``fedsqueeze flower app`` writes a ready Flower app for an experiment config.
- ``local``: ``fedsqueeze flower local`` starts a SuperLink and N SuperNodes on 127.0.0.1 and runs it.
- ``sim``: ``fedsqueeze flower sim`` runs the same apps on Flower's Simulation Engine (Ray), optional extra ``[sim]``.
- ``clientapp_worker``: a long-lived ClientApp process per SuperNode (``--isolation process``) that keeps data
  and model loaded between messages; ``fast_supernode``: ``flower-supernode`` with a short idle poll (loopback).
- ``tls``: a throw-away certificate authority and server certificate for TLS tests and local runs.
"""
from __future__ import annotations

from fedsqueeze.errors import FedsqueezeError

FLWR_VERSION = "1.41.0"  # the version the tests run on
FLWR_RANGE = ">=1.41,<1.42"  # the flower extra in pyproject.toml


def require_flwr() -> None:
    """Fail with an actionable message when Flower is not installed."""
    try:
        import flwr  # noqa: F401
    except ImportError as e:
        raise FedsqueezeError("Flower is not installed; install the extra: "
                              f"pip install 'fedsqueeze[flower]' (flwr {FLWR_RANGE})") from e
