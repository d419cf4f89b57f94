"""Shared fixtures: small, fast configurations on bundled data."""
from __future__ import annotations

import os

import pytest
import torch

torch.set_num_threads(1)

GPU_SKIP = "needs CUDA: torch.cuda.is_available() is False"


def pytest_collection_modifyitems(config, items):
    """``@pytest.mark.gpu`` tests are skipped, with the reason shown, on a machine without CUDA."""
    if torch.cuda.is_available() or os.environ.get("FEDSQUEEZE_GPU_TESTS_ON") == "cpu":  # the latter: a dry run
        return
    skip = pytest.mark.skip(reason=GPU_SKIP)
    for item in items:
        if item.get_closest_marker("gpu") is not None:
            item.add_marker(skip)


def digits_config(**over) -> dict:
    cfg = {
        "name": "t-digits", "seed": 0, "rounds": 4,
        "data": {"source": "digits", "num_clients": 10, "partition": "dirichlet", "alpha": 0.5},
        "model": {"name": "mlp", "options": {"hidden": 32}},
        "train": {"clients_per_round": 4, "local_epochs": 1, "batch_size": 16, "lr": 0.1},
        "algorithm": {"name": "fedavg"},
        "eval": {"every": 1, "personal_every": 2},
    }
    for key, value in over.items():
        node = cfg
        parts = key.split("__")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = value
    return cfg


@pytest.fixture(scope="session")
def digits():
    from fedsqueeze.data.sources import load_digits
    return load_digits()
