"""Device plumbing on the CPU: engine.device validation, 'auto' on a CPU machine, device='cpu' runs
equal the default ones exactly, the spawn pool (what CUDA workers use) equals the in-process run."""
from __future__ import annotations

import json

import pytest
import torch

import fedsqueeze
from conftest import digits_config
from fedsqueeze.config import from_dict
from fedsqueeze.engine.device import compute_mode, resolve, to_device
from fedsqueeze.errors import ConfigError
from fedsqueeze.metrics.results import TIMING_FIELDS


def strip(history):
    return [{k: v for k, v in rec.items() if k not in TIMING_FIELDS} for rec in history]


@pytest.mark.parametrize("bad", ["gpu", "cuda0", "CUDA", "cuda:x", "", "tpu"])
def test_bad_device_spec_is_a_config_error(bad):
    with pytest.raises(ConfigError, match="engine.device"):
        from_dict(digits_config(engine={"device": bad}))


def test_bad_devices_entries_are_config_errors():
    with pytest.raises(ConfigError, match="engine.devices entry 'auto'"):
        from_dict(digits_config(engine={"workers": 2, "devices": ["auto"]}))
    with pytest.raises(ConfigError, match="engine.workers"):
        from_dict(digits_config(engine={"devices": ["cpu"]}))
    with pytest.raises(ConfigError, match="must be of type list"):
        from_dict(digits_config(engine={"workers": 2, "devices": "cpu"}))


def test_defaults_and_auto():
    cfg = from_dict(digits_config())
    assert (cfg.engine.device, cfg.engine.devices, cfg.engine.deterministic, cfg.engine.tf32) == ("auto", [], True, False)
    assert resolve("cpu") == torch.device("cpu")
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve("auto").type == expected


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without CUDA")
def test_cuda_without_cuda_is_a_clear_error(tmp_path, digits):
    with pytest.raises(ConfigError, match=r"cuda requested but torch.cuda.is_available\(\) is False"):
        resolve("cuda")
    with pytest.raises(ConfigError, match=r"cuda:1 requested"):
        fedsqueeze.run(digits_config(rounds=1, engine={"device": "cuda:1"}), run_dir=tmp_path, dataset=digits,
                       plot=False)


def test_to_device_moves_nested_tensors_only():
    obj = {"a": torch.ones(2), "b": [torch.zeros(1), 3], "c": (torch.ones(1), "x"), "d": None}
    out = to_device(obj, torch.device("cpu"))
    assert out["b"][1] == 3 and out["c"][1] == "x" and out["d"] is None
    assert out["a"] is obj["a"]  # already there: no copy


def test_compute_mode_is_a_no_op_on_cpu():
    before = (torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.allow_tf32)
    with compute_mode([torch.device("cpu")], True, True):
        assert (torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.allow_tf32) == before
    assert (torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.allow_tf32) == before


@pytest.mark.skipif(torch.cuda.is_available(), reason="'auto' is CPU only on a machine without CUDA")
def test_explicit_cpu_equals_auto_and_records_the_device(tmp_path, digits):
    a = fedsqueeze.run(digits_config(rounds=2), run_dir=tmp_path / "a", dataset=digits, plot=False)
    b = fedsqueeze.run(digits_config(rounds=2, engine={"device": "cpu"}), run_dir=tmp_path / "b", dataset=digits,
                       plot=False)
    assert strip(a.history) == strip(b.history)
    assert a.ledger.to_state() == b.ledger.to_state()
    rec = json.loads((tmp_path / "b" / "device.json").read_text())
    assert rec["device"] == "cpu" and rec["requested"] == "cpu"
    assert json.loads((tmp_path / "a" / "device.json").read_text())["requested"] == "auto"


@pytest.mark.parametrize("algo", ["fedavg", "local"])
def test_spawned_pool_equals_in_process(tmp_path, digits, monkeypatch, algo):
    """The pool's spawn path (rebuilding the Runtime in each worker, as CUDA workers do), forced on CPU."""
    cfg = dict(rounds=3, algorithm={"name": algo}, engine={"device": "cpu"})
    a = fedsqueeze.run(digits_config(**cfg), run_dir=tmp_path / "a", dataset=digits, plot=False)
    monkeypatch.setenv("FEDSQUEEZE_POOL_SPAWN", "1")
    cfg["engine"] = {"device": "cpu", "workers": 2, "devices": ["cpu", "cpu"]}
    b = fedsqueeze.run(digits_config(**cfg), run_dir=tmp_path / "b", dataset=digits, plot=False)
    assert strip(a.history) == strip(b.history)
    assert a.ledger.to_state() == b.ledger.to_state()


def test_spawned_pool_places_workers_round_robin(digits):
    from fedsqueeze.engine.pool import WorkerPool
    from fedsqueeze.engine.runtime import Runtime
    from fedsqueeze.engine.simulation import build_partition

    cfg = from_dict(digits_config(engine={"workers": 2, "devices": ["cpu", "cpu"]}))
    pool = WorkerPool(Runtime(cfg, digits, build_partition(cfg, digits)), 2, spawn=True)
    try:
        assert pool.spawn and pool.devices == ["cpu", "cpu"]
    finally:
        pool.close()
