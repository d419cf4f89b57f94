"""Real model updates for benchmarks: client updates captured from a FedAvg run.

``capture_updates`` runs FedAvg (fp32 both ways) for ``warmup`` rounds, then takes the uploads of the
next round's sampled clients exactly as the server decoded them. Cached (``engine.safe_io``'s format, which
cannot run code; an old pickle cache is captured anew, never loaded), since the benchmark's inputs should
not change between its runs.
"""
from __future__ import annotations

import tempfile
from pathlib import Path

import torch

from fedsqueeze.config import from_dict
from fedsqueeze.engine import safe_io
from fedsqueeze.engine.atomic import atomic_save
from fedsqueeze.engine.sampling import sample_clients
from fedsqueeze.engine.simulation import Simulation


def capture_updates(*, dataset: str = "fashion_mnist", model: str = "cnn", warmup: int = 3, clients: int = 3,
                    data_dir: str = "", cache: Path | None = None, seed: int = 0) -> list[dict[str, torch.Tensor]]:
    if cache is not None and cache.exists():
        data = cache.read_bytes()
        if not safe_io.is_legacy_pickle(data):  # an old pickle cache: captured again and overwritten
            return safe_io.loads(data, what=str(cache))
    cfg = from_dict({
        "name": "capture", "seed": seed, "rounds": warmup + 1,
        "data": {"source": dataset, "dir": data_dir, "num_clients": 100, "partition": "dirichlet", "alpha": 0.5},
        "model": {"name": model}, "train": {"clients_per_round": 10, "lr": 0.05, "batch_size": 32},
        "eval": {"every": 0, "personal_every": 0}, "engine": {"checkpoint_every": 0}})
    with tempfile.TemporaryDirectory() as tmp:
        sim = Simulation(cfg, tmp)
        sim.start()
        for rnd in range(1, warmup + 1):
            sim.run_round(rnd)
        rnd = warmup + 1
        picked = [int(c) for c in sample_clients(100, 10, seed=seed, rnd=rnd)[:clients]]
        payloads = {k: sim.algo.codec(k, "down", rnd).encode(v) for k, v in sim.algo.broadcast(sim.server_state, rnd, 0).items()}
        outs = sim._execute(picked, rnd, 0, payloads)
        updates = [sim.algo.codec("update", "up", rnd).decode(ups["update"]) for _, ups, _, _ in outs]
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        atomic_save(updates, cache, crash_tag="capture")
    return updates
