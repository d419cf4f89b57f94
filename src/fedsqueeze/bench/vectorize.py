"""``fedsqueeze bench vectorize``: the same clients' local training, sequential vs vectorised.

N clients, each with ``steps × batch`` synthetic 1×28×28 samples (10 classes, seeded) on the device,
start from one model and run ``steps`` SGD steps (lr 0.05) on the same batches (``batch_indices``
with per-client seeds): once as the engine's sequential clients do (one module, ``torch.optim.SGD``,
``loss.item()`` per step as ``train_locally``), once with ``engine.vectorized.train_stacked``
(``torch.func.vmap``). The two are alternated ``--repeats`` times after a warm-up, CUDA synchronised
around each timing; printed: medians of client-steps/s for both, their ratio and max|Δw| between the
two sets of trained weights.
"""
from __future__ import annotations

import statistics
import time

import torch
import torch.nn.functional as F

from fedsqueeze.algorithms.context import batch_indices
from fedsqueeze.engine.vectorized import plan, train_stacked
from fedsqueeze.models.zoo import build_model

SHAPE, CLASSES, LR = (1, 28, 28), 10, 0.05
DEFAULT_CLIENTS = {"mlp": 100, "cnn": 50}


def setup(device: str, model_name: str, clients: int, steps: int, batch: int, seed: int = 0):
    """The model (on device), start weights, all clients' data concatenated, and the batch plan."""
    torch.manual_seed(seed)
    model = build_model(model_name, SHAPE, CLASSES).to(device)  # initialised on the CPU, then moved
    start = {k: v.detach().clone() for k, v in model.named_parameters()}
    n = steps * batch
    x = torch.randn(clients * n, *SHAPE).to(device)  # drawn on the CPU: the same data on every device
    y = torch.randint(0, CLASSES, (clients * n,)).to(device)
    batches = [list(batch_indices(n, batch, epochs=1, steps=steps, seed=seed + 1 + c)) for c in range(clients)]
    idx, wts, active = plan(batches, [n] * clients, batch)
    return model, start, x, y, batches, n, (idx.to(device), wts.to(device), active.to(device))


def sequential(model, start, x, y, batches, n) -> dict[str, torch.Tensor]:
    """Each client in turn, as the engine's in-process clients: load, SGD, ``loss.item()`` per step."""
    out = {k: torch.empty((len(batches), *v.shape), device=v.device) for k, v in start.items()}
    for c, client_batches in enumerate(batches):
        model.load_state_dict(start, strict=False)
        opt = torch.optim.SGD(model.parameters(), lr=LR)
        xc, yc = x[c * n:(c + 1) * n], y[c * n:(c + 1) * n]
        total = 0.0
        for i in client_batches:
            opt.zero_grad(set_to_none=True)
            loss = F.cross_entropy(model(xc[i]), yc[i])
            loss.backward()
            opt.step()
            total += loss.item()
        for k, p in model.named_parameters():
            out[k][c] = p.detach()
    return out


def vectorised(model, start, x, y, plan_) -> dict[str, torch.Tensor]:
    stacked = {k: v.unsqueeze(0).expand(plan_[0].shape[1], *v.shape).contiguous() for k, v in start.items()}
    params, losses = train_stacked(model, stacked, x, y, *plan_, lr=LR)
    losses.double().sum(0).tolist()  # the per-client mean losses reach the host, as in the engine
    return params


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def compare(device: str, model_name: str, clients: int, steps: int, batch: int = 32, repeats: int = 3) -> dict:
    model, start, x, y, batches, n, plan_ = setup(device, model_name, clients, steps, batch)
    times: dict[str, list[float]] = {"sequential": [], "vectorised": []}
    results: dict[str, dict] = {}
    runs = {"sequential": lambda: sequential(model, start, x, y, batches, n),
            "vectorised": lambda: vectorised(model, start, x, y, plan_)}
    for r in range(repeats + 1):  # round 0: warm-up, not timed
        for name, fn in runs.items():
            _sync(device)
            t0 = time.perf_counter()
            results[name] = fn()
            _sync(device)
            if r:
                times[name].append(time.perf_counter() - t0)
    seq, vec = statistics.median(times["sequential"]), statistics.median(times["vectorised"])
    dw = max(float((results["sequential"][k] - results["vectorised"][k]).abs().max()) for k in start)
    work = clients * steps
    return {"model": model_name, "device": device, "clients": clients, "steps": steps, "batch": batch,
            "sequential_s": seq, "vectorised_s": vec, "sequential_ups": work / seq, "vectorised_ups": work / vec,
            "ratio": seq / vec, "max_dw": dw}


def main(args) -> int:
    device = args.device
    if device.startswith("cuda") and not torch.cuda.is_available():
        from fedsqueeze.errors import FedsqueezeError
        raise FedsqueezeError(f"--device {device}: CUDA is not available here (torch.cuda.is_available() is False)")
    models = args.model.split(",")
    for name in models:
        if name not in DEFAULT_CLIENTS:
            from fedsqueeze.errors import FedsqueezeError
            raise FedsqueezeError(f"--model {name!r}: choose mlp or cnn (or both: mlp,cnn)")
    print(f"torch {torch.__version__}, device {device}"
          + (f" ({torch.cuda.get_device_name(device)})" if device.startswith("cuda") else "")
          + f", {args.repeats} alternated repeats after a warm-up, medians")
    print(f"{'model':6} {'clients':>7} {'steps':>5} {'seq s':>8} {'vec s':>8} {'seq upd/s':>11} {'vec upd/s':>11} "
          f"{'ratio':>7} {'max|dw|':>9}")
    for name in models:
        clients = args.clients or DEFAULT_CLIENTS[name]
        r = compare(device, name, clients, args.steps, args.batch, args.repeats)
        print(f"{name:6} {clients:7d} {args.steps:5d} {r['sequential_s']:8.3f} {r['vectorised_s']:8.3f} "
              f"{r['sequential_ups']:11.0f} {r['vectorised_ups']:11.0f} {r['ratio']:6.1f}x {r['max_dw']:9.2e}")
    return 0
