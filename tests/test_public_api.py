"""The public API for bringing your own parts: register_*, FederatedData, objects passed to run(),
resume of such runs, entry-point plugins, and no global side effects."""
from __future__ import annotations

import dataclasses
import json
import os
import random
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

import fedsqueeze
from fedsqueeze import FederatedData, register_codec, register_model
from fedsqueeze.codecs.floats import Float16
from fedsqueeze.codecs.topk import TopK
from fedsqueeze.errors import ConfigError, DataError, RegistryError

ROOT = Path(__file__).resolve().parents[1]


def _env():
    """This checkout's package first, whatever the working directory."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


class TinyNet(nn.Module):
    """A two-layer perceptron for tests."""

    def __init__(self, input_shape, num_classes, hidden=16):
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(int(np.prod(input_shape)), hidden), nn.ReLU(),
                                 nn.Linear(hidden, num_classes))

    def forward(self, x):
        return self.net(x)


@dataclasses.dataclass(frozen=True)
class HalfCodec(Float16):
    """fp16 under another id: a user's own codec."""

    codec_id = "half_test"


@pytest.fixture
def tiny_model():
    register_model("tinynet_test", TinyNet)
    yield "tinynet_test"
    fedsqueeze.unregister("model", "tinynet_test")


@pytest.fixture
def half_codec():
    register_codec("half_test", HalfCodec)
    yield HalfCodec
    fedsqueeze.unregister("codec", "half_test")


def _cfg(rounds=2, **extra):
    cfg = {"name": "t-api", "seed": 0, "rounds": rounds,
           "train": {"clients_per_round": 3, "local_epochs": 1, "batch_size": 16, "lr": 0.1},
           "eval": {"every": 1, "personal_every": 1}}
    cfg.update(extra)
    return cfg


def _fed(n=240, features=8, classes=3, **kw):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, features, generator=g)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0.5).long()
    xt = torch.randn(60, features, generator=g)
    yt = (xt[:, 0] > 0).long() + (xt[:, 1] > 0.5).long()
    kw.setdefault("partitioner", "dirichlet")
    kw.setdefault("num_clients", 6)
    if kw["partitioner"] == "dirichlet":
        kw.setdefault("alpha", 0.5)
    return FederatedData(TensorDataset(x, y), test=TensorDataset(xt, yt), num_classes=classes, **kw)


def _strip(history):
    return [{k: v for k, v in r.items() if not k.endswith("_s")} for r in history]


# ---- registration -------------------------------------------------------------------------------
def test_register_by_decorator_and_call_duplicates_and_kinds():
    @fedsqueeze.register_model("deco_net_test")
    class Net(TinyNet):
        pass

    try:
        assert "deco_net_test" in fedsqueeze.registered("model")
        register_model("deco_net_test", Net)  # the same object again: fine
        with pytest.raises(RegistryError, match="already registered.*replace=True"):
            register_model("deco_net_test", TinyNet)
        register_model("deco_net_test", TinyNet, replace=True)
        assert isinstance(fedsqueeze.build_model("deco_net_test", (4,), 2), TinyNet)
        with pytest.raises(RegistryError, match="already registered"):
            register_model("mlp", TinyNet)  # a built-in
    finally:
        fedsqueeze.unregister("model", "deco_net_test")
    with pytest.raises(RegistryError, match="nn.Module"):
        register_model("bad_test", int)
    with pytest.raises(RegistryError, match="nn.Module"):
        register_model("bad_test", TinyNet((4,), 2))
    with pytest.raises(RegistryError, match="codec_id"):
        register_codec("not_its_id", HalfCodec)
    with pytest.raises(RegistryError, match="Codec subclass"):
        register_codec("half_test", HalfCodec())
    with pytest.raises(RegistryError, match="Algorithm subclass"):
        fedsqueeze.register_algorithm("algo_test", TinyNet)
    with pytest.raises(RegistryError, match="function"):
        fedsqueeze.register_partitioner("part_test", 3)
    with pytest.raises(RegistryError, match="name"):
        register_model("bad:name", TinyNet)


def test_custom_model_by_decorator_on_federated_tensordataset(tmp_path, tiny_model):
    res = fedsqueeze.run(_cfg(), model=tiny_model, data=_fed(), run_dir=tmp_path / "r", plot=False)
    assert len(res.history) == 2 and res.final_accuracy is not None
    saved = json.loads((tmp_path / "r" / "config.json").read_text())
    assert saved["model"]["name"] == "tinynet_test"
    assert saved["data"]["source"] == "object:own" and saved["data"]["num_clients"] == 6
    assert saved["data"]["partition"] == "dirichlet"


def test_model_class_object_recorded_by_registered_name(tmp_path, tiny_model):
    fedsqueeze.run(_cfg(), model=TinyNet, data=_fed(), run_dir=tmp_path / "r", plot=False)
    assert json.loads((tmp_path / "r" / "config.json").read_text())["model"]["name"] == "tinynet_test"


def test_model_class_in_config_dict(tmp_path):
    cfg = _cfg(model={"name": TinyNet, "options": {"hidden": 8}})
    fedsqueeze.run(cfg, data=_fed(), run_dir=tmp_path / "r", plot=False)
    assert (json.loads((tmp_path / "r" / "config.json").read_text())["model"]["name"]
            == f"{__name__}:TinyNet")


def test_custom_codec_object_recorded_and_summarised(tmp_path, tiny_model, half_codec):
    res = fedsqueeze.run(_cfg(), model=tiny_model, data=_fed(), codec_up=half_codec(),
                         codec_down=TopK(fraction=0.5), run_dir=tmp_path / "r", plot=False)
    saved = json.loads((tmp_path / "r" / "config.json").read_text())
    assert saved["codec"]["up"] == {"name": "half_test"}
    assert saved["codec"]["down"]["name"] == "topk" and saved["codec"]["down"]["fraction"] == 0.5
    assert 'name = "half_test"' in (tmp_path / "r" / "config.toml").read_text()
    summary = res.summary()
    assert summary["codec_up"] == "half_test" and summary["codec_down"].startswith("topk(fraction=0.5")
    assert res.ledger.total("up") > 0


def test_codec_object_inside_a_config_object(tmp_path, tiny_model):
    cfg = fedsqueeze.Config(**{"rounds": 1})
    cfg.codec.up = TopK(fraction=0.25)
    cfg.model.name = tiny_model
    cfg.data.num_clients = 4
    cfg.train.clients_per_round = 2
    res = fedsqueeze.run(cfg, data=_fed(num_clients=None), run_dir=tmp_path / "r", plot=False)
    assert res.summary()["codec_up"].startswith("topk(fraction=0.25")
    saved = json.loads((tmp_path / "r" / "config.json").read_text())
    assert saved["codec"]["up"]["name"] == "topk" and saved["data"]["num_clients"] == 4


# ---- resume -------------------------------------------------------------------------------------
def test_resume_with_custom_registered_parts_matches_uninterrupted(tmp_path, tiny_model, half_codec):
    fed = _fed()
    kw = dict(model=tiny_model, data=fed, codec_up=half_codec(), plot=False)
    full = fedsqueeze.run(_cfg(rounds=4), run_dir=tmp_path / "full", **kw)
    fedsqueeze.run(_cfg(rounds=2), run_dir=tmp_path / "cut", **kw)
    resumed = fedsqueeze.run(_cfg(rounds=4), run_dir=tmp_path / "cut", resume=True, **kw)
    assert _strip(resumed.history) == _strip(full.history)
    assert resumed.ledger.to_state() == full.ledger.to_state()
    # by its directory, with the registered names from config.json (data passed again)
    more = fedsqueeze.resume(tmp_path / "cut", overrides=["rounds=5"], data=fed, plot=False)
    assert len(more.history) == 5


def test_resume_refuses_other_data(tmp_path, tiny_model):
    fedsqueeze.run(_cfg(), model=tiny_model, data=_fed(), run_dir=tmp_path / "r", plot=False)
    with pytest.raises(ConfigError, match="different configuration"):
        fedsqueeze.run(_cfg(rounds=3), model=tiny_model, data=_fed(alpha=0.1), run_dir=tmp_path / "r",
                       resume=True, plot=False)
    with pytest.raises(DataError, match="object:own.*pass it again with data="):
        fedsqueeze.resume(tmp_path / "r", overrides=["rounds=3"], plot=False)


def test_resume_refused_for_unregistered_local_class(tmp_path):
    class LocalNet(TinyNet):
        pass

    fedsqueeze.run(_cfg(), model=LocalNet, data=_fed(), run_dir=tmp_path / "r", plot=False)
    name = json.loads((tmp_path / "r" / "config.json").read_text())["model"]["name"]
    assert name == f"{__name__}:test_resume_refused_for_unregistered_local_class.<locals>.LocalNet"
    before = sorted(p.name for p in (tmp_path / "r").iterdir())
    with pytest.raises(RegistryError) as e:
        fedsqueeze.resume(tmp_path / "r", overrides=["rounds=3"], data=_fed(), plot=False)
    msg = str(e.value)
    assert "\n" not in msg and name in msg and "register it with fedsqueeze.register_model" in msg
    assert sorted(p.name for p in (tmp_path / "r").iterdir()) == before
    # the CLI says the same in one line
    out = subprocess.run([sys.executable, "-m", "fedsqueeze", "run", "--resume", str(tmp_path / "r")],
                         capture_output=True, text=True, cwd=ROOT, env=_env())
    assert out.returncode != 0
    assert "cannot be rebuilt" in out.stderr + out.stdout


def test_lambda_model_cannot_be_resumed(tmp_path):
    def make(shape, classes):
        return TinyNet(shape, classes)

    fedsqueeze.run(_cfg(rounds=1), model=make, data=_fed(), run_dir=tmp_path / "r", plot=False)
    with pytest.raises(RegistryError, match="cannot be rebuilt; register it with fedsqueeze.register_model"):
        fedsqueeze.resume(tmp_path / "r", overrides=["rounds=2"], data=_fed(), plot=False)


# ---- FederatedData ------------------------------------------------------------------------------
def test_federated_data_explicit_clients_and_holdout(tmp_path, tiny_model):
    fed = _fed(partitioner=None, num_clients=None, clients=[np.arange(0, 60), np.arange(60, 120), np.arange(120, 200)],
               holdout=[np.arange(200, 210), np.arange(210, 220), []])
    res = fedsqueeze.run(_cfg(), model=tiny_model, data=fed, run_dir=tmp_path / "r", plot=False)
    stats = json.loads((tmp_path / "r" / "partition.json").read_text())
    assert stats["train_sizes"] == [60, 60, 80] and stats["holdout_sizes"] == [10, 10, 0]
    assert len(res.history) == 2


def test_federated_data_from_arrays_and_torch_dataset():
    x, y = np.random.default_rng(0).normal(size=(50, 4)).astype(np.float32), np.arange(50) % 3
    a = FederatedData((x, y), num_clients=5)
    assert a.num_classes == 3 and a.input_shape == (4,) and len(a.y_test) == 0

    class Pairs(torch.utils.data.Dataset):
        def __len__(self):
            return 50

        def __getitem__(self, i):
            return torch.from_numpy(x[i]), int(y[i])

    b = FederatedData(Pairs(), num_clients=5)
    assert torch.equal(a.x_train, b.x_train) and torch.equal(a.y_train, b.y_train)
    assert a.fingerprint() == b.fingerprint()
    p = b.partition(5, seed=0, holdout_fraction=0.2)
    assert p.num_clients == 5 and sum(map(len, p.train)) + sum(map(len, p.holdout)) == 50


@pytest.mark.parametrize("kwargs, match", [
    (dict(train=(torch.randn(10, 3), torch.randn(10))), "labels must be integer"),
    (dict(train=(torch.randn(10, 3), torch.arange(9))), "10 inputs but 9 labels"),
    (dict(train=(torch.randn(10, 3), torch.arange(10)), clients=[[0, 1], [2, 10]]), r"index 10, outside"),
    (dict(train=(torch.randn(10, 3), torch.arange(10)), clients=[[0, 1], [1, 2]]), "assigned more than once"),
    (dict(train=(torch.randn(10, 3), torch.arange(10)), clients=[[0, 1], [2]], holdout=[[2], []]),
     "assigned more than once"),
    (dict(train=(torch.randn(10, 3), torch.arange(10)), clients=[[0, 1], []]), "is empty"),
    (dict(train=(torch.randn(10, 3), torch.arange(10)), clients=[[0.5]]), "integer sample indices"),
    (dict(train=(torch.randn(10, 3), -torch.arange(10))), "non-negative"),
    (dict(train=(torch.randn(10, 3), torch.arange(10)), test=(torch.randn(5, 4), torch.arange(5))),
     "must match"),
    (dict(train=TensorDataset(torch.randn(10, 3))), "exactly two tensors"),
    (dict(train=3), "torch Dataset"),
    (dict(train=(torch.randn(10, 3), torch.arange(10)), num_classes=5), "labels go up to 9"),
    (dict(train=(torch.randn(10, 3), torch.arange(10)), clients=[[0]], partitioner="iid"), "not both"),
])
def test_federated_data_errors_are_one_line(kwargs, match):
    train = kwargs.pop("train")
    with pytest.raises(DataError, match=match) as e:
        FederatedData(train, **kwargs)
    assert "\n" not in str(e.value)


def test_plain_tensordataset_is_refused_clearly(tmp_path):
    with pytest.raises(DataError, match="FederatedData"):
        fedsqueeze.run(_cfg(), data=TensorDataset(torch.randn(10, 3), torch.arange(10)), run_dir=tmp_path / "r")


def test_registered_partitioner_and_dataset_by_name(tmp_path, tiny_model):
    def halves(labels, num_clients, *, seed, **unused):
        return list(np.array_split(np.arange(len(labels)), num_clients))

    def load_mine(**unused):
        return _fed(num_clients=None)

    fedsqueeze.register_partitioner("halves_test", halves)
    fedsqueeze.register_dataset("mine_test", load_mine)
    try:
        cfg = _cfg(data={"source": "mine_test", "num_clients": 4, "partition": "halves_test"},
                   model={"name": tiny_model})
        fedsqueeze.run(cfg, run_dir=tmp_path / "a", plot=False)
        stats = json.loads((tmp_path / "a" / "partition.json").read_text())
        assert stats["num_clients"] == 4
        # and a partitioner by name in FederatedData
        fed = _fed(partitioner="halves_test", num_clients=2)
        assert [len(t) + len(h) for t, h in zip(*vars(fed.partition(2, seed=0, holdout_fraction=0.1)).values())] \
            == [120, 120]
    finally:
        fedsqueeze.unregister("partitioner", "halves_test")
        fedsqueeze.unregister("dataset", "mine_test")


# ---- entry points -------------------------------------------------------------------------------
def test_entry_point_plugins_are_found_lazily(monkeypatch, tmp_path):
    from fedsqueeze import registry

    calls = []

    def fake_entry_points(group):
        calls.append(group)
        if group == "fedsqueeze.models":
            return [SimpleNamespace(name="plugin_net", value=f"{__name__}:TinyNet", load=lambda: TinyNet)]
        return []

    # an EntryPoint-like object: the registry loads it on first use
    monkeypatch.setattr(registry, "_entry_points", fake_entry_points)
    monkeypatch.setattr(registry.MODELS, "_plugins_loaded", False)
    monkeypatch.setattr(registry.MODELS, "_entries", dict(registry.MODELS._entries))
    registry.MODELS.get("mlp")
    assert calls == []  # known names never trigger discovery
    model = fedsqueeze.build_model("plugin_net", (4,), 2)
    assert isinstance(model, TinyNet) and calls == ["fedsqueeze.models"]
    assert "plugin_net" in fedsqueeze.registered("model")
    fedsqueeze.run(_cfg(rounds=1, model={"name": "plugin_net"}), data=_fed(), run_dir=tmp_path / "r", plot=False)
    with pytest.raises(RegistryError, match="unknown model 'nope'"):
        registry.MODELS.get("nope")
    assert calls == ["fedsqueeze.models"]  # discovered once


def test_real_entry_point_objects_are_loaded(monkeypatch):
    from importlib.metadata import EntryPoint

    from fedsqueeze import registry

    ep = EntryPoint(name="ep_net", value=f"{__name__}:TinyNet", group="fedsqueeze.models")
    monkeypatch.setattr(registry, "_entry_points", lambda group: [ep] if group == "fedsqueeze.models" else [])
    monkeypatch.setattr(registry.MODELS, "_plugins_loaded", False)
    monkeypatch.setattr(registry.MODELS, "_entries", dict(registry.MODELS._entries))
    assert registry.MODELS.get("ep_net") is TinyNet


# ---- no global side effects ---------------------------------------------------------------------
def _global_state():
    return (torch.get_num_threads(), torch.random.get_rng_state().clone(), np.random.get_state()[1].copy(),
            random.getstate())


@pytest.mark.parametrize("fail", [False, True])
def test_run_restores_threads_and_rng(tmp_path, tiny_model, fail):
    threads = torch.get_num_threads()
    torch.set_num_threads(3)
    try:
        torch.manual_seed(123)
        np.random.seed(5)
        random.seed(7)
        before = _global_state()
        if fail:
            def stop(record):
                raise RuntimeError("stop after round 1")

            with pytest.raises(RuntimeError, match="stop after round 1"):
                fedsqueeze.run(_cfg(), model=tiny_model, data=_fed(), progress=stop, run_dir=tmp_path / "r")
        else:
            fedsqueeze.run(_cfg(), model=tiny_model, data=_fed(), run_dir=tmp_path / "r", plot=False)
        after = _global_state()
        assert after[0] == 3
        assert torch.equal(before[1], after[1]) and np.array_equal(before[2], after[2]) and before[3] == after[3]
    finally:
        torch.set_num_threads(threads)


# ---- exports, docs, examples --------------------------------------------------------------------
def test_every_export_exists_and_is_documented():
    doc = (ROOT / "docs" / "api.md").read_text()
    for name in fedsqueeze.__all__:
        assert hasattr(fedsqueeze, name), name
        assert f"`{name}" in doc, f"{name} missing from docs/api.md"


@pytest.mark.parametrize("script", ["own_model_and_data.py", "own_codec.py", "own_algorithm.py"])
def test_examples_run(tmp_path, script):
    out = subprocess.run([sys.executable, str(ROOT / "examples" / script), str(tmp_path / "runs")],
                         capture_output=True, text=True, cwd=tmp_path, timeout=120, env=_env())
    assert out.returncode == 0, out.stderr[-2000:]
    assert "accuracy" in out.stdout
    if script == "own_algorithm.py":  # server momentum 0 is FedAvg exactly; 0.7 changes the model
        lines = [ln.split(": ", 1)[1] for ln in out.stdout.splitlines() if "accuracy" in ln]
        assert len(lines) == 3 and lines[0] == lines[1] and lines[2] != lines[0], out.stdout


def test_codec_object_run_resumes_from_the_command_line(tmp_path):
    from conftest import digits_config

    cfg = digits_config(rounds=1, data__num_clients=4, train__clients_per_round=2)
    fedsqueeze.run(cfg, codec_up=TopK(fraction=0.1), run_dir=tmp_path / "r", plot=False)
    assert "topk(fraction=0.1" in (tmp_path / "r" / "summary.csv").read_text()
    out = subprocess.run([sys.executable, "-m", "fedsqueeze", "run", "--resume", str(tmp_path / "r"), "--rounds", "2",
                          "--quiet"], capture_output=True, text=True, cwd=ROOT, env=_env(), timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    import csv

    row = next(csv.DictReader((tmp_path / "r" / "summary.csv").open()))
    assert row["codec_up"].startswith("topk(fraction=0.1") and row["rounds"] == "2"
