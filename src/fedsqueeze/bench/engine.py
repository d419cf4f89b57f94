"""``fedsqueeze bench engine``: the engine's wall time per FedAvg round next to a plain PyTorch loop
doing exactly the same SGD steps on the same data in the same process.

Both sides run their own trajectory from the same initial weights; rounds are alternated
(engine, plain, engine, plain, ...) after one warm-up round each, and medians are compared. The
plain loop is written directly against torch (no fedsqueeze code in its inner loop); because both
sides take identical steps, their final weights must agree exactly — printed as a check.

The pieces (the benchmark config, an engine side with an optional worker pool, the plain loop and
the interleaved timing) are shared with ``fedsqueeze bench throughput``.

``--device`` (default cpu): both sides compute there (the plain loop keeps its data and model on the
device too; rounds end with a ``torch.cuda.synchronize``), under the engine's reproducibility
switches. Each row also times the evaluation of the whole test set on that device (median of 5).
"""
from __future__ import annotations

import csv
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn

from fedsqueeze.algorithms.context import batch_indices
from fedsqueeze.config import Config, from_dict
from fedsqueeze.data.sources import Dataset
from fedsqueeze.engine.sampling import sample_clients
from fedsqueeze.engine.simulation import Simulation, load_dataset
from fedsqueeze.models.zoo import build_model
from fedsqueeze.seeding import derive_seed


def bench_config(model: str, *, dataset: str = "fashion_mnist", data_dir: str | None = None, k: int = 10,
                 workers: int = 0, device: str = "cpu") -> Config:
    """The benchmark federation: FedAvg, fp32 both ways, 100 Dirichlet(0.5) clients, ``k`` per round,
    no evaluation or checkpoints (``rounds`` is large because rounds are driven one at a time)."""
    return from_dict({
        "name": f"bench-{model}", "seed": 0, "rounds": 10_000,
        "data": {"source": dataset, "dir": data_dir or "", "num_clients": 100, "partition": "dirichlet", "alpha": 0.5},
        "model": {"name": model}, "train": {"clients_per_round": k, "local_epochs": 1, "batch_size": 32, "lr": 0.05},
        "algorithm": {"name": "fedavg"}, "codec": {"up": "fp32", "down": "fp32"},
        "eval": {"every": 0, "personal_every": 0}, "engine": {"checkpoint_every": 0, "workers": workers, "device": device}})


@contextmanager
def engine_side(cfg: Config, data: Dataset | None = None) -> Iterator[Simulation]:
    """A started simulation in a temporary run folder, with a pool of ``cfg.engine.workers`` worker
    processes attached when that is > 0 (as ``Simulation.run`` would), closed on exit."""
    with tempfile.TemporaryDirectory() as tmp:
        sim = Simulation(cfg, tmp, dataset=data)
        sim.start()
        if cfg.engine.workers > 0:
            from fedsqueeze.engine.pool import WorkerPool
            sim.pool = WorkerPool(sim.runtime, cfg.engine.workers)
        try:
            yield sim
        finally:
            if sim.pool is not None:
                sim.pool.close()
                sim.pool = None


class PlainLoop:
    """FedAvg written as a plain PyTorch loop: the reference the engine is measured against."""

    def __init__(self, sim: Simulation) -> None:
        cfg = sim.cfg
        self.cfg = cfg
        self.device = dev = sim.runtime.device
        data = sim.runtime.dataset  # on the device
        self.x, self.y = data.x_train, data.y_train
        self.parts = [torch.from_numpy(p).to(dev) for p in sim.partition.train]
        self.model = build_model(cfg.model.name, data.input_shape, data.num_classes).to(dev)
        self.weights = {k: v.clone().to(dev) for k, v in sim.runtime.initial_weights().items()}

    def round(self, rnd: int) -> None:
        cfg = self.cfg
        clients = sample_clients(cfg.data.num_clients, cfg.train.clients_per_round, seed=cfg.seed, rnd=rnd)
        sizes = [len(self.parts[int(c)]) for c in clients]
        total = float(sum(sizes))
        acc = {k: torch.zeros_like(v, dtype=torch.float64) for k, v in self.weights.items()}
        for c, n in zip(clients, sizes):
            x, y = self.x[self.parts[int(c)]], self.y[self.parts[int(c)]]
            self.model.load_state_dict(self.weights, strict=False)
            seed = derive_seed(cfg.seed, "client", rnd, int(c), 0)
            torch.manual_seed(seed)
            opt = torch.optim.SGD(self.model.parameters(), lr=cfg.train.lr)
            self.model.train()
            for idx in batch_indices(n, cfg.train.batch_size, epochs=cfg.train.local_epochs, steps=0, seed=seed):
                idx = idx.to(self.device)
                opt.zero_grad(set_to_none=True)
                loss = nn.functional.cross_entropy(self.model(x[idx]), y[idx])
                loss.backward()
                opt.step()
                loss.item()  # the engine reads the loss too
            state = self.model.state_dict()
            for k in acc:
                acc[k] += (state[k] - self.weights[k]).to(torch.float64) * (n / total)
        self.weights = {k: self.weights[k] + acc[k].to(self.weights[k].dtype) for k in self.weights}
        synchronize(self.device)


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (timings of CUDA code must include it)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def interleaved(sides: dict[str, Callable[[int], object]], rounds: int,
                progress: Callable[[int, str, float], None] | None = None) -> dict[str, list[float]]:
    """Seconds per round of each side, for ``rounds`` measured rounds after one warm-up round.

    Every round runs every side once; the order rotates by one position each round (A B, B A for
    two sides), so no side always inherits the cache or the load of the same neighbour.
    ``progress(round, side, seconds)`` is called after each timed call (round 1 = warm-up)."""
    names = list(sides)
    times: dict[str, list[float]] = {n: [] for n in names}
    for rnd in range(1, rounds + 2):
        shift = (rnd - 1) % len(names)
        for name in names[shift:] + names[:shift]:
            t0 = time.perf_counter()
            sides[name](rnd)
            dt = time.perf_counter() - t0
            if rnd > 1:  # round 1 is the warm-up
                times[name].append(dt)
            if progress is not None:
                progress(rnd, name, dt)
    return times


def max_weight_diff(sim: Simulation, plain: PlainLoop) -> float:
    """Largest absolute difference between the engine's and the plain loop's global weights."""
    return max(float((sim.server_state["weights"][n].cpu() - plain.weights[n].cpu()).abs().max())
               for n in plain.weights)


def eval_seconds(sim: Simulation, repeats: int = 5, batch_size: int = 1000) -> float:
    """Median seconds to evaluate the global model on the whole test set, on the engine's device."""
    from fedsqueeze.metrics.evaluate import evaluate

    model = sim.runtime.module("model")
    model.load_state_dict(sim.server_state["weights"], strict=False)
    data = sim.runtime.dataset
    times = []
    for _ in range(repeats + 1):  # the first is a warm-up
        t0 = time.perf_counter()
        evaluate(model, data.x_test, data.y_test, batch_size)  # reads the counts back: synchronous
        synchronize(sim.runtime.device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times[1:])


def measure(model: str, *, dataset: str = "fashion_mnist", data_dir: str | None = None, k: int = 10,
            rounds: int = 5, data=None, workers: int = 0, device: str = "cpu") -> dict:
    from fedsqueeze.engine.device import compute_mode

    torch.set_num_threads(1)
    cfg = bench_config(model, dataset=dataset, data_dir=data_dir, k=k, workers=workers, device=device)
    with engine_side(cfg, data) as sim, compute_mode([sim.runtime.device], cfg.engine.deterministic, cfg.engine.tf32):
        plain = PlainLoop(sim)
        times = interleaved({"engine": sim.run_round, "plain": plain.round}, rounds)
        diff = max_weight_diff(sim, plain)
        eval_s = eval_seconds(sim)
    e, p = statistics.median(times["engine"]), statistics.median(times["plain"])
    return {"model": model, "device": str(sim.runtime.device), "clients_per_round": k, "rounds": rounds,
            "engine_s_per_round": e, "plain_s_per_round": p, "ratio": e / p, "max_abs_weight_diff": diff,
            "eval_s": eval_s, "test_samples": int(len(sim.dataset.y_test))}


def main(args) -> int:
    from rich.console import Console
    from rich.table import Table

    from fedsqueeze.bench.report import print_environment

    console = Console(width=150)
    torch.set_num_threads(1)
    console.print("[bold]bench engine[/]: FedAvg round, engine vs plain PyTorch loop (alternated, medians)")
    print_environment(console)
    data = load_dataset(bench_config("mlp", dataset=args.dataset, data_dir=args.data_dir))
    rows = []
    for model in [m.strip() for m in args.models.split(",") if m.strip()]:
        rows.append(measure(model, dataset=args.dataset, data_dir=args.data_dir, k=args.clients_per_round,
                            rounds=args.rounds, data=data, device=getattr(args, "device", None) or "cpu"))
    t = Table(title="engine vs plain PyTorch (s per round, median)")
    for col in ("model", "device", "clients/round", "rounds", "engine s", "plain s", "engine/plain", "max |Δw|",
                "eval s"):
        t.add_column(col, justify="right")
    for r in rows:
        t.add_row(r["model"], r["device"], str(r["clients_per_round"]), str(r["rounds"]),
                  f"{r['engine_s_per_round']:.3f}", f"{r['plain_s_per_round']:.3f}", f"{r['ratio']:.3f}",
                  f"{r['max_abs_weight_diff']:.1e}", f"{r['eval_s']:.4f}")
    console.print(t)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "engine.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    console.print(f"wrote {out / 'engine.csv'}")
    return 0
