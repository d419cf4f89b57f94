#!/usr/bin/env python3
"""Short digits runs behind the figures in docs/methods.md §1, §5, §6 and §7: FedKD with its controls,
rdq's step vote against fixed steps, and the personalisation baselines beside QuPeD (10 rounds, 10
clients, 4 per round, seed 0; a minute or two on 2 cores).

    PYTHONPATH=src python scripts/methods_digits.py
"""
from __future__ import annotations

import tempfile
import time

import fedsqueeze

BASE = {"name": "methods-digits", "seed": 0, "rounds": 10,
        "data": {"source": "digits", "num_clients": 10, "partition": "dirichlet", "alpha": 0.5},
        "model": {"name": "mlp", "options": {"hidden": 32}},
        "train": {"clients_per_round": 4, "local_epochs": 1, "batch_size": 16, "lr": 0.1},
        "algorithm": {"name": "fedavg"}, "eval": {"every": 10, "personal_every": 10}}
SHARDS = {"data": {"source": "digits", "num_clients": 10, "partition": "shards", "shards_per_client": 2},
          "train": {"clients_per_round": 4, "local_epochs": 2, "batch_size": 16, "lr": 0.05}}
KD = {"name": "fedkd", "teacher": "cnn"}
VOTE = "rdq(step='vote', lam=1e-5, candidates=[1e-3, 4e-3, 1.6e-2], coder='gamma', normalize=False, dead_zone=0.0, alloc='one')"
RUNS = [
    ("FedKD, SVD up, fp32 student down", {"algorithm": KD}),
    ("FedKD, SVD up, SVD delta down", {"algorithm": {**KD, "downlink": "delta"},
                                       "codec": {"up": "fp32", "down": "fp32", "downlink": "delta"}}),
    ("FedAvg of the student, svd(0.965) up", {"codec": {"up": "svd(threshold=0.965)", "down": "fp32"}}),
    ("FedAvg of the student, svd both ways", {"codec": {"up": "svd(threshold=0.965)", "down": "svd(threshold=0.965)",
                                                        "downlink": "delta"}}),
    ("FedAvg fp32", {}),
    ("FedAvg, rdq D+λR vote", {"codec": {"up": VOTE, "down": "fp32"}}),
    ("FedAvg, rdq γ step 4e-3", {"codec": {"up": "rdq(step=4e-3, coder='gamma', normalize=False, dead_zone=0.0, alloc='one')", "down": "fp32"}}),
    ("FedAvg, rdq ANS step 4e-3", {"codec": {"up": "rdq(step=4e-3, coder='ans', normalize=False, dead_zone=0.0, alloc='one')", "down": "fp32"}}),
    ("shards: FedAvg", SHARDS),
    ("shards: FedAvg + fine-tuning", {**SHARDS, "algorithm": {"name": "fedavg_ft"}}),
    ("shards: pFedMe", {**SHARDS, "algorithm": {"name": "pfedme", "K": 5, "personal_lr": 0.05}}),
    ("shards: Per-FedAvg HF", {**SHARDS, "algorithm": {"name": "perfedavg", "alpha": 0.05}}),
    ("shards: Per-FedAvg FO", {**SHARDS, "algorithm": {"name": "perfedavg", "alpha": 0.05, "variant": "fo"}}),
    ("shards: QuPeD 2-bit", {**SHARDS, "algorithm": {"name": "quped", "bits": 2}}),
]


def main() -> None:
    print(f"{'run':<40}{'global':>8}{'personal':>10}{'up kB':>9}{'down kB':>9}")
    for label, over in RUNS:
        t0 = time.perf_counter()
        res = fedsqueeze.run({**BASE, **over}, run_dir=tempfile.mkdtemp() + "/run", plot=False)
        last = res.history[-1]
        print(f"{label:<40}{last['global_acc']:>8.1%}{last['personal_acc']:>10.1%}"
              f"{res.ledger.total('up') / 1e3:>9.1f}{res.ledger.total('down') / 1e3:>9.1f}"
              f"   ({time.perf_counter() - t0:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
