"""``engine.vectorize``: a step's clients trained together with ``torch.func`` (``functional_call`` +
``vmap`` over stacked parameters and per-client batches), for algorithms whose client update is plain
local SGD on cross-entropy (``Algorithm.vectorizable``: FedAvg, FedProx, local-only).

Exactness: every client draws exactly the batches of the sequential path (``batch_indices`` with its
own seed: same order, same sizes). Clients with fewer steps or a smaller last batch are *masked*, not
grouped: each step's batches are padded to ``train.batch_size`` with weight-0 samples (the loss is the
weighted sum, weights 1/b on the b real samples, so it is each client's batch mean), and a client past
its last step keeps its weights (``torch.where``). SGD (momentum, weight decay, FedProx's proximal
gradient) is applied functionally in ``torch.optim.SGD``'s order. Only the training is vectorised:
``Runtime.open_client``/``close_client`` (delta downlink, faults, uplink codecs and their states, stored
client state) run per client as in ``Runtime.run_client``.

Refused with a ``ConfigError``: the worker pool (``engine.workers > 0``), an algorithm that does not
declare it can, an optimizer other than SGD, and models with buffers (BatchNorm) or dropout.
"""
from __future__ import annotations

import time
import traceback
from collections.abc import Sequence

import torch
from torch import nn

from fedsqueeze.algorithms.base import Algorithm, Messages, Tensors, VectorJob
from fedsqueeze.algorithms.context import batch_indices
from fedsqueeze.config import Config
from fedsqueeze.engine import faults
from fedsqueeze.errors import ConfigError


def _owner(cls: type, attr: str) -> type:
    return next(c for c in cls.__mro__ if attr in c.__dict__)


def is_vectorizable(algo: Algorithm) -> bool:
    """Declared (``vectorizable = True``), and ``vector_job`` is at least as specific as ``client_update``
    (a subclass that overrides ``client_update`` alone, e.g. FedKD over FedAvg, does not inherit it)."""
    cls = type(algo)
    return bool(algo.vectorizable) and issubclass(_owner(cls, "vector_job"), _owner(cls, "client_update"))


def check(cfg: Config, algo: Algorithm) -> None:
    """With ``engine.vectorize``: the configuration must allow it (a ConfigError says why not)."""
    if not cfg.engine.vectorize:
        return
    if cfg.engine.workers > 0:
        raise ConfigError(f"engine.vectorize trains a step's clients together in this process; it does not combine "
                          f"with engine.workers = {cfg.engine.workers}: set one of them to 0/false")
    if not is_vectorizable(algo):
        raise ConfigError(f"algorithm {algo.name!r} cannot train its clients vectorised (engine.vectorize supports "
                          "fedavg, fedprox, local and algorithms that declare it); set engine.vectorize = false")
    if cfg.train.optimizer != "sgd":
        raise ConfigError(f"engine.vectorize implements SGD (with momentum and weight decay), not train.optimizer = "
                          f"{cfg.train.optimizer!r}; set engine.vectorize = false or train.optimizer = \"sgd\"")
    from fedsqueeze.metrics.losses import per_sample
    if per_sample(cfg.train.loss) is None:
        raise ConfigError(f"engine.vectorize trains with the built-in losses (cross_entropy, mse), not train.loss = "
                          f"{cfg.train.loss!r}; set engine.vectorize = false")


def check_model(model: nn.Module) -> None:
    names = {n for n, _ in model.named_buffers()}
    stochastic = [type(m).__name__ for m in model.modules()
                  if isinstance(m, (nn.modules.dropout._DropoutNd, nn.modules.batchnorm._NormBase))]
    if names or stochastic:
        raise ConfigError(f"engine.vectorize: model {type(model).__name__} has "
                          + (f"buffers ({', '.join(sorted(names))})" if names else f"{', '.join(stochastic)}")
                          + "; only models without buffers, BatchNorm or dropout are vectorised; "
                          "set engine.vectorize = false")


# ---- the vectorised SGD --------------------------------------------------------------------------------

def plan(batches: Sequence[Sequence[torch.Tensor]], sizes: Sequence[int], batch_size: int
         ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per step s and client c: indices into the clients' concatenated data (client c's rows start at
    ``sum(sizes[:c])``), padded to ``batch_size`` (S, C, B); sample weights 1/b, 0 on padding (S, C, B);
    whether client c takes step s (S, C)."""
    steps = max((len(b) for b in batches), default=0)
    width = max([batch_size] + [len(i) for b in batches for i in b])
    C = len(batches)
    idx = torch.zeros(steps, C, width, dtype=torch.long)
    wts = torch.zeros(steps, C, width)
    active = torch.zeros(steps, C, dtype=torch.bool)
    offset = 0
    for c, (client_batches, n) in enumerate(zip(batches, sizes)):
        idx[:, c, :] = offset
        for s, i in enumerate(client_batches):
            idx[s, c, :len(i)] = i + offset
            wts[s, c, :len(i)] = 1.0 / len(i)
            active[s, c] = True
        offset += n
    return idx, wts, active


def train_stacked(model: nn.Module, params: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor,
                  idx: torch.Tensor, wts: torch.Tensor, active: torch.Tensor, *, lr: float, momentum: float = 0.0,
                  weight_decay: float = 0.0, prox_mu: torch.Tensor | None = None, loss: str = "cross_entropy"
                  ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """SGD on C clients at once. ``params``: name -> (C, ...) start weights (not modified); x, y: all
    clients' data concatenated; idx/wts/active from ``plan`` (on x's device). Returns the trained
    (C, ...) weights and the per-step losses (S, C; 0 where a client is done). ``loss``: a built-in
    ``train.loss`` (per-sample values are weighted, so padding rows count for nothing)."""
    from torch.func import functional_call, grad_and_value, vmap

    from fedsqueeze.metrics.losses import per_sample
    per = per_sample(loss)

    def loss_fn(p, xb, yb, wb):
        return (per(functional_call(model, p, (xb,)), yb) * wb).sum()

    step_fn = vmap(grad_and_value(loss_fn))
    anchor = params
    params = {k: v.clone() for k, v in params.items()}
    prox = None
    if prox_mu is not None and bool((prox_mu != 0).any()):
        prox = prox_mu.to(device=x.device, dtype=next(iter(params.values())).dtype)
    bufs: dict[str, torch.Tensor] = {}
    losses = torch.zeros(idx.shape[:2], device=x.device)
    every = bool(active.all())
    for s in range(idx.shape[0]):
        xb, yb = x[idx[s]], y[idx[s]]
        grads, loss = step_fn(params, xb, yb, wts[s])
        losses[s] = torch.where(active[s], loss.detach(), 0.0)
        with torch.no_grad():
            for k, p in params.items():
                d = grads[k]
                shape = (-1,) + (1,) * (p.dim() - 1)
                if prox is not None:  # FedProx: the proximal gradient, added after backward
                    d = d + prox.view(shape) * (p - anchor[k])
                if weight_decay:
                    d = d + weight_decay * p
                if momentum:
                    d = bufs[k] = d.clone() if s == 0 else bufs[k] * momentum + d
                new = p - lr * d
                params[k] = new if every else torch.where(active[s].view(shape), new, p)
    return params, losses


# ---- the engine's step ----------------------------------------------------------------------------------

def run_clients(runtime, clients: list[int], rnd: int, step: int, downs: list[Messages],
                stored: list[dict | None]) -> list:
    """What ``[run_client_safely(runtime, c, ...) for c in clients]`` returns, the training vectorised.
    A client whose opening or closing raises is a ``ClientFailure``; a vectorised training that raises
    is a ConfigError (no one client's fault)."""
    from fedsqueeze.engine.runtime import ClientFailure

    def failure(e: Exception) -> ClientFailure:
        return ClientFailure(f"raised {type(e).__name__}: {e}", traceback.format_exc(limit=8),
                             isinstance(e, faults.InjectedFault))

    algo, tr = runtime.algo, runtime.cfg.train
    out: list = [None] * len(clients)
    opened: dict[int, tuple] = {}  # position -> (ctx, stored, mirror, job, seconds so far)
    for i, (c, down, st) in enumerate(zip(clients, downs, stored)):
        t0 = time.perf_counter()
        try:
            ctx, down_c, st_c, mirror = runtime.open_client(c, rnd, step, down, st)
            job = algo.vector_job(ctx, down_c, st_c.get("algo"))
            opened[i] = (ctx, st_c, mirror, job, time.perf_counter() - t0)
        except ConfigError:
            raise
        except Exception as e:  # noqa: BLE001 — as run_client_safely
            out[i] = failure(e)
    by_slot: dict[str, list[int]] = {}
    for i, (_, _, _, job, _) in opened.items():
        by_slot.setdefault(job.slot, []).append(i)
    trained: dict[int, tuple[Tensors, float]] = {}
    for slot, members in by_slot.items():
        t0 = time.perf_counter()
        jobs = [opened[i][3] for i in members]
        ctxs = [opened[i][0] for i in members]
        results = train_jobs(runtime.module(slot), jobs, ctxs, tr)
        share = (time.perf_counter() - t0) / len(members)
        for i, r in zip(members, results):
            trained[i] = r
            opened[i] = (*opened[i][:4], opened[i][4] + share)
    for i, (ctx, st_c, mirror, job, seconds) in opened.items():
        t0 = time.perf_counter() - seconds
        try:
            torch.manual_seed(ctx.seed)  # the global RNG as train_locally leaves it
            weights, loss = trained[i]
            out[i] = runtime.close_client(ctx, job.finish(weights, loss), st_c, mirror, t0)
        except ConfigError:
            raise
        except Exception as e:  # noqa: BLE001
            out[i] = failure(e)
    return out


def train_jobs(model: nn.Module, jobs: list[VectorJob], ctxs: list, tr) -> list[tuple[Tensors, float]]:
    """(trained weights, mean loss) per client, as ``train_locally`` from ``job.start`` would give."""
    check_model(model)
    names = [n for n, _ in model.named_parameters()]
    for job in jobs:
        if set(job.start) != set(names):
            raise ConfigError(f"engine.vectorize: the start weights ({', '.join(sorted(job.start))}) are not the "
                              f"model's parameters ({', '.join(names)}); set engine.vectorize = false")
    if any(getattr(ctx.data, "augment", None) is not None for ctx in ctxs):
        raise ConfigError("engine.vectorize does not apply the dataset's augmentation (data.options.augment); "
                          "set engine.vectorize = false or data.options.augment = false")
    batches = [list(batch_indices(len(ctx.data), tr.batch_size, epochs=tr.local_epochs, steps=tr.local_steps,
                                  seed=ctx.seed)) for ctx in ctxs]
    sizes = [len(ctx.data) for ctx in ctxs]
    steps = [len(b) for b in batches]
    if max(steps, default=0) == 0:
        return [({k: v.detach().clone() for k, v in job.start.items()}, 0.0) for job in jobs]
    idx, wts, active = plan(batches, sizes, tr.batch_size)
    x = torch.cat([ctx.data.x for ctx in ctxs])
    y = torch.cat([ctx.data.y for ctx in ctxs])
    device = x.device
    start = {k: torch.stack([job.start[k] for job in jobs]).to(device) for k in names}
    mu = torch.tensor([job.prox_mu for job in jobs])
    try:
        params, losses = train_stacked(model, start, x, y, idx.to(device), wts.to(device), active.to(device),
                                       lr=tr.lr, momentum=tr.momentum, weight_decay=tr.weight_decay, prox_mu=mu,
                                       loss=getattr(tr, "loss", "cross_entropy"))
    except ConfigError:
        raise
    except Exception as e:  # noqa: BLE001 — an op vmap does not support is the configuration's fault
        raise ConfigError(f"engine.vectorize: training {type(model).__name__} vectorised failed ({type(e).__name__}: "
                          f"{e}); set engine.vectorize = false") from e
    totals = losses.double().sum(0).tolist()
    return [({k: params[k][c].detach().clone() for k in job.start}, (totals[c] / steps[c] if steps[c] else 0.0))
            for c, job in enumerate(jobs)]
