"""train.loss and eval.metrics: built-in values by hand, registered callables, every algorithm training
with the configured loss through ClientContext.loss, regression end to end, one-line mismatch errors,
and unchanged outputs for existing configs."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fedsqueeze
from conftest import digits_config
from fedsqueeze.errors import ConfigError, DataError, RegistryError
from fedsqueeze.metrics.evaluate import evaluate, evaluate_metrics
from fedsqueeze.metrics.losses import mse, per_sample
from fedsqueeze.metrics.results import ROUND_FIELDS

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def registered():
    """Names registered by a test, removed afterwards."""
    names: list[tuple[str, str]] = []
    yield names
    for kind, name in names:
        fedsqueeze.unregister(kind, name)


# ---- values by hand ---------------------------------------------------------------------------------
def test_mse_and_mae_by_hand():
    out = torch.tensor([[1.0], [2.0], [4.0]])  # (N, 1) outputs meet (N,) targets
    y = torch.tensor([1.0, 0.0, 1.0])
    assert float(mse(out, y)) == pytest.approx((0 + 4 + 9) / 3)
    assert per_sample("mse")(out, y).tolist() == [0.0, 4.0, 9.0]
    two = torch.tensor([[1.0, 3.0], [0.0, 0.0]])
    assert per_sample("mse")(two, torch.zeros(2, 2)).tolist() == [5.0, 0.0]
    assert per_sample("cross_entropy") is not None and per_sample("custom") is None


class _Fixed(nn.Module):
    """Returns fixed logits per sample (selected by the input's first column)."""

    def __init__(self, logits):
        super().__init__()
        self.logits = logits

    def forward(self, x):
        return self.logits[x[:, 0].long()]


def test_accuracy_topk_and_loss_by_hand_across_batches():
    logits = torch.tensor([[3.0, 2.0, 1.0, 0.0],   # label 0: top1
                           [3.0, 2.0, 1.0, 0.0],   # label 1: top2
                           [3.0, 2.0, 1.0, 0.0],   # label 3: top4 only
                           [0.0, 1.0, 2.0, 3.0],   # label 2: top2
                           [0.0, 0.0, 0.0, 5.0]])  # label 3: top1
    y = torch.tensor([0, 1, 3, 2, 3])
    x = torch.arange(5.0)[:, None]
    model = _Fixed(logits)
    got = evaluate_metrics(model, x, y, ["accuracy", "top2", "top3", "loss"], batch_size=2)
    assert got["accuracy"] == pytest.approx(2 / 5)
    assert got["top2"] == pytest.approx(4 / 5) and got["top3"] == pytest.approx(4 / 5)
    assert got["loss"] == pytest.approx(float(F.cross_entropy(logits, y)))
    assert list(got) == ["accuracy", "top2", "top3", "loss"]
    correct, total, n = evaluate(model, x, y, batch_size=2)  # the old entry point, unchanged
    assert (correct, n) == (2, 5) and total == pytest.approx(5 * got["loss"])


def test_registered_metric_is_a_size_weighted_batch_mean(registered):
    fedsqueeze.register_metric("t_first_logit", lambda out, y: out[:, 0].mean())
    registered.append(("metric", "t_first_logit"))
    logits = torch.tensor([[1.0, 0.0], [2.0, 0.0], [6.0, 0.0]])
    got = evaluate_metrics(_Fixed(logits), torch.arange(3.0)[:, None], torch.tensor([0, 1, 0]),
                           ["t_first_logit"], batch_size=2)  # batches of 2 and 1
    assert got == {"t_first_logit": pytest.approx(3.0)}


def test_register_loss_and_metric_check_their_arguments(registered):
    with pytest.raises(RegistryError, match="needs a function"):
        fedsqueeze.register_loss("t_bad", 3)
    with pytest.raises(RegistryError, match="built-in metric name"):
        fedsqueeze.register_metric("top3", lambda o, y: 0.0)

    @fedsqueeze.register_loss("t_deco")
    def deco(out, y):
        return F.cross_entropy(out, y)

    registered.append(("loss", "t_deco"))
    assert "t_deco" in fedsqueeze.registered("loss") and deco(torch.zeros(1, 2), torch.tensor([0])) > 0


# ---- in runs --------------------------------------------------------------------------------------------
def _run(tmp_path, name, cfg, **kw):
    return fedsqueeze.run(cfg, run_dir=tmp_path / name, plot=False, **kw)


def test_existing_configs_write_the_same_keys_and_values(tmp_path, digits):
    plain = _run(tmp_path, "plain", digits_config(rounds=2), dataset=digits)
    explicit = _run(tmp_path, "explicit", digits_config(rounds=2, train__loss="cross_entropy",
                                                        eval__metrics=["accuracy", "loss"]), dataset=digits)
    for run in ("plain", "explicit"):
        rows = [json.loads(line) for line in (tmp_path / run / "metrics.jsonl").read_text().splitlines()]
        assert all(list(r) == ROUND_FIELDS for r in rows)
    keep = ("global_acc", "global_loss", "train_loss", "personal_acc", "cum_bytes")
    assert [[r[k] for k in keep] for r in plain.history] == [[r[k] for k in keep] for r in explicit.history]
    header = (tmp_path / "plain" / "summary.csv").read_text().splitlines()[0]
    assert header == "name,algorithm,model,codec_up,codec_down,rounds,final_acc,best_acc,personal_acc,mb_up,mb_down,mb_total,wall_s"


def test_extra_metrics_become_global_columns(tmp_path, digits):
    r = _run(tmp_path, "m", digits_config(rounds=2, eval__metrics=["top3", "accuracy"], eval__every=2), dataset=digits)
    rows = [json.loads(line) for line in (tmp_path / "m" / "metrics.jsonl").read_text().splitlines()]
    assert list(rows[0])[:4] == ["round", "global_acc", "global_loss", "global_top3"]
    assert rows[0]["global_top3"] is None and rows[1]["global_top3"] > rows[1]["global_acc"] > 0.15
    assert rows[1]["global_loss"] is None  # not asked for
    assert "global_top3" in (tmp_path / "m" / "rounds.csv").read_text().splitlines()[0]
    assert r.final_accuracy == rows[1]["global_acc"]


CASES = {
    "fedavg": {}, "fedprox": {"mu": 0.01}, "scaffold": {}, "fedper": {}, "local": {},
    "fedavg_ft": {}, "feddkd": {"S": 1}, "fedkd": {"teacher": "mlp"},
    "quped": {"personal": [{"bits": 2}]}, "spatl": {}, "pfedme": {}, "perfedavg": {},
}


@pytest.mark.parametrize("algo", sorted(CASES))
def test_every_algorithm_trains_with_the_configured_loss(tmp_path, digits, registered, algo):
    calls = []

    def counted(out, y):
        calls.append((len(y), torch.is_grad_enabled()))  # training (with gradients) or evaluation
        return F.cross_entropy(out, y)

    fedsqueeze.register_loss("t_counted", counted, replace=True)
    registered.append(("loss", "t_counted"))
    model = {"name": "small_cnn", "options": {}} if algo == "spatl" else {"name": "mlp", "options": {"hidden": 16}}
    cfg = digits_config(rounds=1, algorithm={"name": algo, **CASES[algo]}, model=model, train__loss="t_counted",
                        train__local_steps=2, train__clients_per_round=2, eval__every=0, eval__personal_every=0)
    r = _run(tmp_path, algo, cfg, dataset=digits)
    training = [n for n, grad in calls if grad]
    # the task term of the local steps (batches of 16; fine-tuning epochs may end with a partial batch)
    assert training.count(16) >= 2 * 2, calls
    assert r.history[0]["global_loss"] is None or math.isfinite(r.history[0]["global_loss"])


def test_vectorised_clients_train_with_mse_like_the_loop(tmp_path):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(300, 6, generator=g)
    y = x @ torch.linspace(-1, 1, 6)
    data = fedsqueeze.FederatedData((x, y), test=(x[:60], y[:60]), partitioner="iid", num_clients=4,
                                    task="regression")
    cfg = {"rounds": 2, "train": {"loss": "mse", "clients_per_round": 4, "lr": 0.05, "local_steps": 3},
           "model": {"name": "logreg"}}
    loop = _run(tmp_path, "loop", cfg, data=data)
    vec = _run(tmp_path, "vec", {**cfg, "engine": {"vectorize": True}}, data=data)
    assert loop.history[-1]["global_loss"] < loop.history[0]["global_loss"]
    assert vec.history[-1]["global_loss"] == pytest.approx(loop.history[-1]["global_loss"], rel=1e-4)


def test_regression_example_runs_and_learns(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    out = subprocess.run([sys.executable, str(ROOT / "examples" / "regression.py"), str(tmp_path / "runs")],
                         capture_output=True, text=True, cwd=tmp_path, timeout=300, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    first, last = (float(v) for v in out.stdout.split("test MSE ")[1].split(",")[0].split(" -> "))
    assert last < 0.05 * first, out.stdout


# ---- mismatches: one line, before anything is written -------------------------------------------------
def _reg_data():
    x = torch.randn(40, 3)
    return fedsqueeze.FederatedData((x, x.sum(1)), test=(x[:10], x[:10].sum(1)), partitioner="iid", num_clients=2,
                                    task="regression")


@pytest.mark.parametrize("cfg, data, error, match", [
    ({"train": {"loss": "mse"}}, "classes", DataError, "needs float targets"),
    ({}, "regression", DataError, "needs integer class labels .* train.loss = \"mse\""),
    ({"train": {"loss": "mse"}, "eval": {"metrics": ["accuracy"]}}, "regression", DataError, "for regression use"),
    ({"eval": {"metrics": ["mae"]}}, "classes", DataError, "'mae' needs float targets"),
    ({"eval": {"metrics": ["top20"]}}, "classes", ConfigError, "exceeds the 4 classes"),
    ({"eval": {"metrics": ["acuracy"]}}, "classes", ConfigError, "did you mean 'accuracy'"),
    ({"eval": {"metrics": "accuracy"}}, "classes", ConfigError, "must be of type list"),
    ({"eval": {"metrics": ["loss", "loss"]}}, "classes", ConfigError, "lists a metric twice"),
    ({"train": {"loss": "mean_squared"}}, "classes", ConfigError, "train.loss: unknown loss 'mean_squared'"),
    ({"train": {"loss": "t_custom"}, "engine": {"vectorize": True}}, "classes", ConfigError, "built-in losses"),
])
def test_mismatches_are_one_line_errors(tmp_path, registered, cfg, data, error, match):
    fedsqueeze.register_loss("t_custom", lambda o, y: F.cross_entropy(o, y), replace=True)
    registered.append(("loss", "t_custom"))
    if data == "classes":
        x = torch.randn(40, 3)
        data = fedsqueeze.FederatedData((x, torch.arange(40) % 4), test=(x[:8], torch.arange(8) % 4),
                                        partitioner="iid", num_clients=2)
    else:
        data = _reg_data()
    with pytest.raises(error, match=match) as e:
        fedsqueeze.run({"rounds": 1, "model": {"name": "logreg"}, **cfg}, data=data, run_dir=tmp_path / "r")
    assert "\n" not in str(e.value) and not (tmp_path / "r").exists()


def test_federated_data_regression_rules():
    x = torch.randn(20, 3)
    with pytest.raises(DataError, match='pass task="regression"'):
        fedsqueeze.FederatedData((x, x.sum(1)))
    with pytest.raises(DataError, match="splits by class label"):
        fedsqueeze.FederatedData((x, x.sum(1)), partitioner="dirichlet", task="regression")
    with pytest.raises(DataError, match="must match"):
        fedsqueeze.FederatedData((x, x.sum(1)), test=(x, x[:, :2]), task="regression")
    with pytest.raises(DataError, match="task must be"):
        fedsqueeze.FederatedData((x, x.sum(1)), task="regress")
    two = fedsqueeze.FederatedData((x, x[:, :2]), task="regression")
    assert two.num_classes == 2 and two.y_train.dtype == torch.float32
    assert fedsqueeze.FederatedData((x, x.sum(1).double()), task="regression").num_classes == 1


def test_the_api_docs_regression_snippet_runs(tmp_path, monkeypatch, registered, capsys):
    import re as _re

    text = (ROOT / "docs" / "api.md").read_text()
    code = _re.search(r"## Losses and metrics\n.*?```python\n(.*?)```", text, _re.S).group(1)
    monkeypatch.chdir(tmp_path)
    registered.append(("metric", "within_one"))
    scope: dict = {}
    exec(compile(code, "api.md", "exec"), scope)
    loss, within = (float(v) for v in capsys.readouterr().out.split())
    assert len(scope["result"].history) == 5 and 0 <= within <= 1
    assert loss < 0.05 * scope["result"].history[0]["global_loss"]
