"""GPU checks (``pytest -m gpu``; skipped with a reason where torch.cuda.is_available() is False).

Every registered algorithm and every registered codec runs on ``engine.device = "cuda"``; a CUDA run
is reproducible, a resumed CUDA run equals the uninterrupted one, the dataset and models live on the
GPU, and a pool of CUDA workers (spawned) equals the in-process CUDA run. Digits, 2 rounds: the whole
file takes well under two minutes on one H200.

``FEDSQUEEZE_GPU_TESTS_ON=cpu`` runs the same tests on the CPU (a dry run of their logic on a machine
without a GPU; conftest.py then does not skip them).
"""
from __future__ import annotations

import math
import os

import pytest
import torch

import fedsqueeze
from codec_kit import all_codec_ids
from conftest import digits_config
from fedsqueeze.config import from_dict
from fedsqueeze.engine.simulation import Simulation
from fedsqueeze.metrics.results import TIMING_FIELDS
from fedsqueeze.registry import ALGORITHMS

pytestmark = pytest.mark.gpu
# deterministic cuBLAS needs this before its first use in the process (runs set it too; see docs/gpu.md)
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
DEVICE = os.environ.get("FEDSQUEEZE_GPU_TESTS_ON", "cuda")
CHANCE = 0.1  # digits: 10 classes

# each algorithm's small working configuration (as in its own test file)
SMALL_CNN = {"model": {"name": "small_cnn", "options": {}}}
ALGO_CONFIGS: dict[str, dict] = {
    "fedavg": {},
    "fedprox": {"algorithm": {"name": "fedprox", "mu": 0.01}},
    "local": {},
    "scaffold": SMALL_CNN,
    "fedper": {},
    "spatl": {**SMALL_CNN, "algorithm": {"name": "spatl", "target": "bytes", "budget": 0.5}},
    "quped": {"algorithm": {"name": "quped", "personal": [{"bits": 1}, {"bits": 2}, {"bits": 4}]}},
    "local_quant": {"algorithm": {"name": "local_quant", "bits": 2}},
    "fedavg_ft": {},
    "feddkd": {"algorithm": {"name": "feddkd", "S": 1}},
    "fedkd": {"algorithm": {"name": "fedkd", "teacher": "mlp"}},
    "pfedme": {"algorithm": {"name": "pfedme", "lam": 15.0, "K": 5, "personal_lr": 0.05},
               "train": {"clients_per_round": 4, "local_epochs": 2, "batch_size": 16, "lr": 0.05}},
    "perfedavg": {"algorithm": {"name": "perfedavg", "alpha": 0.05}},
}


def strip(history):
    return [{k: v for k, v in rec.items() if k not in TIMING_FIELDS} for rec in history]


def cfg_for(algo: str = "fedavg", **over) -> dict:
    base = {"rounds": 2, "algorithm": {"name": algo}, "eval": {"every": 1, "personal_every": 1},
            "engine": {"device": DEVICE}, "train": {"clients_per_round": 4, "local_epochs": 2, "batch_size": 16,
                                                    "lr": 0.1}}
    base.update(ALGO_CONFIGS.get(algo, {}))
    for key, value in over.items():
        base[key] = {**base.get(key, {}), **value} if isinstance(value, dict) and key != "algorithm" else value
    return digits_config(**base)


def test_every_algorithm_has_a_gpu_config():
    assert set(ALGO_CONFIGS) == set(ALGORITHMS.names()), "add the new algorithm's small config to ALGO_CONFIGS"


@pytest.mark.parametrize("algo", ALGORITHMS.names())
def test_algorithm_runs_and_learns_on_the_gpu(algo, tmp_path, digits):
    res = fedsqueeze.run(cfg_for(algo), run_dir=tmp_path, dataset=digits, plot=False)
    last = res.history[-1]
    accs = [a for a in (last["global_acc"], last["personal_acc"]) if a is not None]
    assert accs, f"{algo}: no accuracy measured"
    for rec in res.history:
        for key in ("global_acc", "global_loss", "personal_acc", "train_loss"):
            if rec.get(key) is not None:
                assert math.isfinite(rec[key]), f"{algo}: {key} = {rec[key]} in round {rec['round']}"
        assert all(math.isfinite(v) for v in rec["client_metrics"].values() if v is not None), rec["client_metrics"]
    assert max(accs) > CHANCE + 0.1, f"{algo}: accuracy {accs} after 2 rounds is near chance"
    assert (tmp_path / "device.json").read_text().count(DEVICE) >= 1


@pytest.mark.parametrize("cid", all_codec_ids())
def test_codec_both_ways_in_fedavg_on_the_gpu(cid, tmp_path, digits):
    cfg = cfg_for(codec={"up": cid, "down": cid}, eval={"every": 1, "personal_every": 0},
                  train={"local_epochs": 1})
    res = fedsqueeze.run(cfg, run_dir=tmp_path, dataset=digits, plot=False)
    assert res.ledger.total("up") > 0 and res.ledger.total("down") > 0
    assert all(math.isfinite(rec["global_loss"]) for rec in res.history)


def test_gpu_run_is_reproducible(tmp_path, digits):
    cfg = cfg_for("fedavg", **SMALL_CNN, codec={"up": "qsgd", "down": "fp16"})
    a = fedsqueeze.run(cfg, run_dir=tmp_path / "a", dataset=digits, plot=False)
    b = fedsqueeze.run(cfg, run_dir=tmp_path / "b", dataset=digits, plot=False)
    assert strip(a.history) == strip(b.history)
    assert a.ledger.to_state() == b.ledger.to_state()


class Crash(Exception):
    pass


@pytest.mark.parametrize("algo", ["local", "scaffold"])  # client states stored between rounds
def test_gpu_resume_equals_uninterrupted(algo, tmp_path, digits):
    cfg = from_dict(cfg_for(algo, rounds=4))
    full = Simulation(cfg, tmp_path / "full", dataset=digits).run()

    def die(rec):
        if rec["round"] == 2:
            raise Crash()
    with pytest.raises(Crash):
        Simulation(cfg, tmp_path / "cut", dataset=digits, callbacks=[die]).run()
    resumed = Simulation(cfg, tmp_path / "cut", dataset=digits).run(resume=True)
    assert strip(resumed.history) == strip(full.history)
    assert resumed.ledger.to_state() == full.ledger.to_state()


def test_dataset_and_models_live_on_the_gpu(tmp_path, digits):
    sim = Simulation(from_dict(cfg_for("fedavg")), tmp_path, dataset=digits)
    d = sim.runtime.dataset
    for t in (d.x_train, d.y_train, d.x_test, d.y_test):
        assert t.device.type == DEVICE
    assert sim.dataset.x_train.device.type == "cpu"  # the host copy (partitioning, spawned workers)
    assert all(p.device.type == DEVICE for p in sim.runtime.module("model").parameters())
    data = sim.runtime.client_data(0)
    assert data.x.device.type == DEVICE and data.holdout()[0].device.type == DEVICE
    assert torch.device(DEVICE).type == sim.device.type


def test_cuda_worker_pool_equals_in_process(tmp_path, digits):
    """Two spawned workers sharing the GPU: same metrics as the in-process CUDA run."""
    dev = "cuda:0" if DEVICE == "cuda" else DEVICE
    a = fedsqueeze.run(cfg_for("fedavg", engine={"device": dev}), run_dir=tmp_path / "a", dataset=digits, plot=False)
    b = fedsqueeze.run(cfg_for("fedavg", engine={"device": dev, "workers": 2, "devices": [dev, dev]}),
                       run_dir=tmp_path / "b", dataset=digits, plot=False)
    assert strip(a.history) == strip(b.history)
