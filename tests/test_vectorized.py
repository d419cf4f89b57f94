"""engine.vectorize: a step's clients trained together (torch.func.vmap) give what the sequential
clients give — weights to 1e-5, the same bytes, faults, codec and client states — and configurations it
cannot serve are refused with a clear error."""
from __future__ import annotations

import pytest
import torch

from conftest import digits_config
from fedsqueeze.config import from_dict
from fedsqueeze.engine import vectorized
from fedsqueeze.engine.simulation import Simulation
from fedsqueeze.errors import ConfigError


def _round(tmp_path, name, **over):
    sim = Simulation(from_dict(digits_config(**over)), tmp_path / name)
    sim.start()
    rec = sim.run_round(1)
    return sim, rec


def _pair(tmp_path, **over):
    a, ra = _round(tmp_path, "seq", **over)
    b, rb = _round(tmp_path, "vec", engine={"vectorize": True}, **over)
    return a, ra, b, rb


def _max_diff(x: dict, y: dict) -> float:
    assert list(x) == list(y)
    return max(float((x[k] - y[k]).abs().max()) for k in x)


@pytest.mark.parametrize("over", [
    {},
    {"algorithm": {"name": "fedprox", "mu": 0.5}},
    {"train__momentum": 0.9, "train__weight_decay": 1e-3},
    {"train__local_steps": 7},
    {"train__local_epochs": 2, "train__batch_size": 7},
], ids=["fedavg", "fedprox", "momentum-wd", "steps", "epochs-odd-batch"])
def test_one_round_equals_sequential(tmp_path, over):
    a, ra, b, rb = _pair(tmp_path, **over)
    assert _max_diff(a.server_state["weights"], b.server_state["weights"]) < 1e-5
    assert rb["train_loss"] == pytest.approx(ra["train_loss"], abs=1e-5)
    assert (ra["bytes_up"], ra["bytes_down"], ra["rejected"]) == (rb["bytes_up"], rb["bytes_down"], rb["rejected"])


def test_clients_with_different_step_counts_and_last_batches(tmp_path):
    """Dirichlet clients hold different sample counts: different steps and last-batch sizes, all masked."""
    a, _, b, _ = _pair(tmp_path)
    clients = [int(c) for c in __import__("fedsqueeze.engine.sampling", fromlist=["x"]).sample_clients(
        10, 4, seed=0, rnd=1)]
    sizes = [a.runtime.num_samples(c) for c in clients]
    assert len({-(-n // 16) for n in sizes}) > 1 and len({n % 16 for n in sizes}) > 1  # steps, last batch differ
    assert _max_diff(a.server_state["weights"], b.server_state["weights"]) < 1e-5


def test_local_only_client_states(tmp_path):
    a, ra, b, rb = _pair(tmp_path, algorithm={"name": "local"})
    assert ra["bytes_up"] == rb["bytes_up"] == 0
    stored = [c for c in range(10) if a.store.get(c)]
    assert stored and stored == [c for c in range(10) if b.store.get(c)]
    for c in stored:
        assert _max_diff(a.store.get(c)["algo"]["weights"], b.store.get(c)["algo"]["weights"]) < 1e-5


def test_stateful_uplink_codec_and_faults(tmp_path):
    """Only the training is vectorised: error-feedback codec states and injected faults are per client."""
    over = {"codec": {"up": "ef(inner='topk(fraction=0.1)')"}, "engine": {"faults": {"raise": 0.3, "nan": 0.2}}}
    a, ra = _round(tmp_path, "seq", **over)
    over["engine"] = {**over["engine"], "vectorize": True}
    b, rb = _round(tmp_path, "vec", **over)
    assert ra["rejected"] == rb["rejected"] > 0
    assert _max_diff(a.server_state["weights"], b.server_state["weights"]) < 1e-5
    residuals = 0
    for c in range(10):
        sa, sb = a.store.get(c), b.store.get(c)
        assert (sa is None) == (sb is None)
        if sa:
            assert list(sa["codec"]) == list(sb["codec"])
            for kind, residual in sa["codec"].items():  # ef's state: the residual per tensor
                assert _max_diff(residual, sb["codec"][kind]) < 1e-5
                residuals += 1
    assert residuals > 0


def test_three_rounds_same_metrics(tmp_path):
    runs = []
    for name, vec in (("seq", False), ("vec", True)):
        cfg = from_dict(digits_config(rounds=3, engine={"vectorize": vec}))
        runs.append(Simulation(cfg, tmp_path / name).run().history)
    for ra, rb in zip(*runs):
        assert rb["train_loss"] == pytest.approx(ra["train_loss"], abs=1e-4)
        assert rb["global_acc"] == pytest.approx(ra["global_acc"], abs=0.01)
        assert rb["cum_bytes"] == ra["cum_bytes"]


@pytest.mark.parametrize("over, match", [
    ({"algorithm": {"name": "scaffold"}}, "algorithm 'scaffold' cannot train its clients vectorised"),
    ({"algorithm": {"name": "fedkd"}}, "algorithm 'fedkd' cannot train its clients vectorised"),
    ({"engine": {"vectorize": True, "workers": 2}}, "does not combine with engine.workers = 2"),
    ({"train__optimizer": "adam"}, "not train.optimizer = 'adam'"),
])
def test_refused_with_a_clear_error(tmp_path, over, match):
    over = {"engine": {"vectorize": True}, **over}
    with pytest.raises(ConfigError, match=match):
        Simulation(from_dict(digits_config(**over)), tmp_path / "run")


def test_model_with_batchnorm_or_dropout_is_refused():
    for model in (torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2)),
                  torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Dropout(0.5))):
        with pytest.raises(ConfigError, match="engine.vectorize: model Sequential has"):
            vectorized.check_model(model)


def test_declared_capability_is_not_inherited_by_overriding_subclasses():
    from fedsqueeze.registry import ALGORITHMS

    for name in ("fedavg", "fedprox", "local"):
        assert ALGORITHMS.get(name).vectorizable
    fedkd = ALGORITHMS.get("fedkd")
    assert fedkd.vectorizable  # inherited from FedAvg ...
    assert not vectorized.is_vectorizable(object.__new__(fedkd))  # ... but it overrides client_update
