"""What the engine measures of a run's models: the global model on the test set (accuracy, loss and the
configured ``eval.metrics``), and each client's personalised model on that client's held-out split
(accuracy; skipped for float targets)."""
from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import torch

from fedsqueeze.metrics.evaluate import evaluate, evaluate_metrics


def _loss_name(runtime: Any) -> str:
    cfg = getattr(runtime, "cfg", None)
    return getattr(cfg.train, "loss", "cross_entropy") if cfg is not None else "cross_entropy"


def global_accuracy(runtime: Any, algo: Any, server_state: Any, dataset: Any,
                    bs: int) -> tuple[float | None, float | None]:
    """(accuracy, mean loss) of the algorithm's global model on the test set; (None, None) without one."""
    rec = global_metrics(runtime, algo, server_state, dataset, bs, ["accuracy", "loss"])
    return rec["global_acc"], rec["global_loss"]


def global_metrics(runtime: Any, algo: Any, server_state: Any, dataset: Any, bs: int,
                   names: list[str]) -> dict[str, Any]:
    """The global model's metrics on the test set as record entries: ``global_acc`` and ``global_loss``
    (always present; accuracy None unless asked for) and ``global_<name>`` for every other metric. All None
    without a global model or a test set."""
    keys = {"accuracy": "global_acc", "loss": "global_loss"}
    rec: dict[str, Any] = {"global_acc": None, "global_loss": None}
    rec.update({f"global_{m}": None for m in names if m not in keys})
    gm = algo.global_model(server_state)
    if gm is None or len(dataset.y_test) == 0:
        return rec
    model = runtime.module(gm[0])
    model.load_state_dict(gm[1], strict=False)
    data = getattr(runtime, "dataset", dataset)  # the runtime's copy lives on its device
    loss = _loss_name(runtime)
    if set(names) <= set(keys):  # the usual case: one pass for accuracy and loss
        correct, total, n = evaluate(model, data.x_test, data.y_test, bs, loss)
        rec["global_acc"] = correct / n if "accuracy" in names else None
        rec["global_loss"] = total / n
        return rec
    values = evaluate_metrics(model, data.x_test, data.y_test, names, bs, loss)
    for m, v in values.items():
        rec[keys.get(m, f"global_{m}")] = v
    return rec


def personal_accuracies(runtime: Any, algo: Any, server_state: Any, store: Any, partition: Any, dataset: Any,
                        num_clients: int, bs: int) -> Iterator[tuple[int, int, int, dict]]:
    """Per client with a held-out split: (client, correct, n, the algorithm's client_profile).
    Yields nothing when the algorithm has no personalised (or global) model."""
    loaded = None
    dataset = getattr(runtime, "dataset", dataset)  # the runtime's copy lives on its device
    if dataset.y_train.dtype.is_floating_point:  # float targets (regression): no accuracy to report
        return
    device = dataset.x_train.device
    for c in range(num_clients):
        ho = partition.holdout[c]
        if len(ho) == 0:
            continue
        stored = store.get(c)
        client_state = stored.get("algo") if stored else None
        pm = algo.personal_model(server_state, client_state)
        if pm is None:
            return
        model = runtime.module(pm[0])
        if loaded is not pm[1]:  # clients sharing one model (e.g. the global one) load it once
            model.load_state_dict(pm[1], strict=False)
            loaded = pm[1]
        if getattr(algo, "adapts", False):  # e.g. Per-FedAvg: one step on the client's data, then evaluate
            algo.adapt(model, runtime.client_data(c))
            loaded = None
        idx = torch.from_numpy(ho).to(device)
        correct, _, n = evaluate(model, dataset.x_train[idx], dataset.y_train[idx], bs, _loss_name(runtime))
        yield c, correct, n, algo.client_profile(c, client_state)


def pooled_accuracy(rows: Iterable[tuple[int, int, int, dict]]) -> tuple[float | None, float | None]:
    """From ``personal_accuracies`` rows: (pooled over all held-out samples, unweighted mean over clients)."""
    total_c = total_n = 0
    per_client = []
    for _, correct, n, _ in rows:
        total_c, total_n = total_c + correct, total_n + n
        per_client.append(correct / n)
    if not total_n:
        return None, None
    return total_c / total_n, sum(per_client) / len(per_client)


def pruned_personal(runtime: Any, algo: Any, server_state: Any, store: Any, partition: Any, dataset: Any,
                    num_clients: int, bs: int) -> dict[str, float | None]:
    """For an algorithm that deploys a pruned personal model (``pruned_personal_model``: SPATL): the
    ``personal_acc_pruned`` (pooled over every held-out sample, as ``personal_acc``) and ``flops_pruned``
    (the pruned models' FLOPs fraction, mean over the same clients) of the models the clients would run."""
    dataset = getattr(runtime, "dataset", dataset)
    device = dataset.x_train.device
    correct = n = 0
    flops = []
    for c in range(num_clients):
        ho = partition.holdout[c]
        if len(ho) == 0:
            continue
        stored = store.get(c)
        slot, weights, fraction = algo.pruned_personal_model(server_state, stored.get("algo") if stored else None)
        model = runtime.module(slot)
        model.load_state_dict(weights, strict=False)
        idx = torch.from_numpy(ho).to(device)
        k, _, m = evaluate(model, dataset.x_train[idx], dataset.y_train[idx], bs)
        correct, n = correct + k, n + m
        flops.append(fraction)
    if not n:
        return {"personal_acc_pruned": None, "flops_pruned": None}
    return {"personal_acc_pruned": correct / n, "flops_pruned": sum(flops) / len(flops)}
