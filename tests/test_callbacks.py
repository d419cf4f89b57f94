"""Callbacks and trackers: hooks and their records, a failing callback named in one error, the
TensorBoard/MLflow/W&B trackers against fake modules (no network, packages not installed), missing
packages as one line, and the plain per-round lines of `fedsqueeze run` without a terminal."""
from __future__ import annotations

import os
import re
import subprocess
import sys
import types
from pathlib import Path

import pytest

import fedsqueeze
from conftest import digits_config
from fedsqueeze.callbacks import CallbackError, MLflow, TensorBoard, WandB, scalars, trackers
from fedsqueeze.errors import FedsqueezeError, MissingExtraError

ROOT = Path(__file__).resolve().parent.parent


def _cfg(**over):
    return digits_config(rounds=3, data__num_clients=4, train__clients_per_round=2, eval__personal_every=3, **over)


class Recorder(fedsqueeze.Callback):
    def __init__(self):
        self.events = []

    def on_run_start(self, config, run_dir):
        self.events.append(("start", config["name"], Path(run_dir).name))

    def on_round_end(self, record):
        self.events.append(("round", record["round"], record["global_acc"], record["cum_bytes"]))
        record["global_acc"] = -1.0  # a copy: the run's own history is not touched

    def on_run_end(self, result):
        self.events.append(("end", len(result.history)))


def test_hooks_see_every_round_and_the_result(tmp_path, digits):
    rec, partial = Recorder(), []

    class OnlyRounds:  # any object with some of the hooks
        def on_round_end(self, record):
            partial.append(record["round"])

    result = fedsqueeze.run(_cfg(), dataset=digits, run_dir=tmp_path / "r", plot=False, callbacks=[rec, OnlyRounds()])
    assert rec.events[0] == ("start", "t-digits", "r") and rec.events[-1] == ("end", 3)
    rounds = [e for e in rec.events if e[0] == "round"]
    assert [(r, acc, b) for _, r, acc, b in rounds] == [(h["round"], h["global_acc"], h["cum_bytes"])
                                                        for h in result.history]
    assert all(h["global_acc"] >= 0 for h in result.history) and partial == [1, 2, 3]


def test_a_failing_callback_stops_the_run_with_one_line_naming_it(tmp_path, digits):
    class Broken(fedsqueeze.Callback):
        def on_round_end(self, record):
            if record["round"] == 2:
                raise KeyError("no_such_metric")

    with pytest.raises(CallbackError) as e:
        fedsqueeze.run(_cfg(), dataset=digits, run_dir=tmp_path / "r", plot=False, callbacks=[Broken()])
    msg = str(e.value)
    assert "\n" not in msg and "Broken" in msg and "on_round_end (round 2)" in msg and "no_such_metric" in msg
    assert isinstance(e.value, FedsqueezeError) and isinstance(e.value.__cause__, KeyError)
    # round 2 was checkpointed before the callback ran: a resume continues from there
    again = fedsqueeze.run(_cfg(), dataset=digits, run_dir=tmp_path / "r", resume=True, plot=False)
    assert len(again.history) == 3
    with pytest.raises(FedsqueezeError, match="none of on_run_start"):
        fedsqueeze.run(_cfg(), dataset=digits, run_dir=tmp_path / "x", plot=False, callbacks=[object()])


def test_scalars_keep_numbers_only():
    rec = {"round": 2, "global_acc": 0.5, "global_loss": None, "skipped": False, "clients": 3,
           "client_metrics": {"flops_ratio": 0.25}, "client_s": {"1": 0.1}}
    assert scalars(rec) == {"global_acc": 0.5, "clients": 3.0, "client_flops_ratio": 0.25}


# ---- trackers against fakes ------------------------------------------------------------------------------
@pytest.fixture
def fakes(monkeypatch):
    log: dict[str, list] = {"tb": [], "mlflow": [], "wandb": []}

    class Writer:
        def __init__(self, log_dir):
            log["tb"].append(("dir", log_dir))

        def add_scalar(self, key, value, global_step):
            log["tb"].append((key, value, global_step))

        def flush(self):
            pass

        def close(self):
            log["tb"].append(("closed",))

    tb = types.ModuleType("torch.utils.tensorboard")
    tb.SummaryWriter = Writer
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", tb)

    mlflow = types.ModuleType("mlflow")
    mlflow.set_tracking_uri = lambda uri: log["mlflow"].append(("uri", uri))
    mlflow.set_experiment = lambda name: log["mlflow"].append(("experiment", name))
    mlflow.start_run = lambda run_name: log["mlflow"].append(("start", run_name))
    mlflow.log_params = lambda params: log["mlflow"].append(("params", params))
    mlflow.log_metrics = lambda metrics, step: log["mlflow"].append(("metrics", metrics, step))
    mlflow.end_run = lambda: log["mlflow"].append(("end",))
    monkeypatch.setitem(sys.modules, "mlflow", mlflow)

    class Run:
        def log(self, data, step):
            log["wandb"].append(("log", data, step))

        def finish(self):
            log["wandb"].append(("finish",))

    wandb = types.ModuleType("wandb")
    wandb.init = lambda **kw: log["wandb"].append(("init", kw)) or Run()
    monkeypatch.setitem(sys.modules, "wandb", wandb)
    return log


def test_trackers_log_every_rounds_scalars(tmp_path, digits, fakes):
    cbs = [TensorBoard(), MLflow(experiment="fsq", tracking_uri="file:/tmp/x"), WandB(mode="offline")]
    result = fedsqueeze.run(_cfg(), dataset=digits, run_dir=tmp_path / "r", plot=False, callbacks=cbs)
    hist = result.history
    # TensorBoard: one scalar per numeric entry per round, at step = round
    tb = fakes["tb"]
    assert tb[0] == ("dir", str(tmp_path / "r" / "tensorboard")) and tb[-1] == ("closed",)
    acc = [(v, s) for k, v, s in (e for e in tb if len(e) == 3) if k == "global_acc"]
    assert acc == [(h["global_acc"], h["round"]) for h in hist]
    up = [(v, s) for k, v, s in (e for e in tb if len(e) == 3) if k == "bytes_up"]
    assert up == [(float(h["bytes_up"]), h["round"]) for h in hist]
    # MLflow: config as parameters, then one metrics call per round
    ml = fakes["mlflow"]
    assert ml[:3] == [("uri", "file:/tmp/x"), ("experiment", "fsq"), ("start", "t-digits")]
    params = ml[3][1]
    assert params["train.lr"] == 0.1 and params["model.name"] == "mlp" and params["run_dir"] == str(tmp_path / "r")
    metrics = [e for e in ml if e[0] == "metrics"]
    assert [(m["global_acc"], m["cum_bytes"], step) for _, m, step in metrics] == [
        (h["global_acc"], float(h["cum_bytes"]), h["round"]) for h in hist]
    assert ml[-1] == ("end",)
    # W&B: init with the config, one log per round, finish
    wb = fakes["wandb"]
    assert wb[0][0] == "init" and wb[0][1]["project"] == "fedsqueeze" and wb[0][1]["mode"] == "offline"
    assert wb[0][1]["config"]["rounds"] == 3
    logs = [e for e in wb if e[0] == "log"]
    assert [(d["global_loss"], s) for _, d, s in logs] == [(h["global_loss"], h["round"]) for h in hist]
    assert logs[-1][1]["personal_acc"] == hist[-1]["personal_acc"] and wb[-1] == ("finish",)


@pytest.mark.parametrize("name, module", [("tensorboard", "torch.utils.tensorboard"), ("mlflow", "mlflow"),
                                          ("wandb", "wandb")])
def test_a_missing_tracker_package_is_one_line_naming_the_extra(monkeypatch, name, module):
    monkeypatch.setitem(sys.modules, module, None)  # import fails as if not installed
    with pytest.raises(MissingExtraError) as e:
        trackers(name)
    assert str(e.value) == (f"--log-to {name} needs the {name} package, which is not installed: "
                            f"pip install 'fedsqueeze[{name}]'")


def test_log_to_an_unknown_tracker():
    with pytest.raises(FedsqueezeError, match="'tensorbored' is not a tracker; choose from tensorboard, mlflow, wandb"):
        trackers("tensorbored")


# ---- the command line without a terminal ----------------------------------------------------------------
def test_run_prints_one_plain_line_per_round_to_a_pipe(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    out = subprocess.run([sys.executable, "-m", "fedsqueeze", "run", "digits-quick", "--rounds", "3",
                          "--out", str(tmp_path / "r")], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True, env=env, cwd=tmp_path, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    lines = out.stdout.splitlines()
    pattern = re.compile(r"round (\d)/3  acc (\d+\.\d\d)%(  personal \d+\.\d\d%)?  up (\d+\.\d{3}) MB  "
                         r"down (\d+\.\d{3}) MB  \d+\.\d s")
    assert len(lines) == 3 and all(pattern.fullmatch(line) for line in lines), lines
    rows = [pattern.fullmatch(line) for line in lines]
    hist = fedsqueeze.metrics.results.read_history(tmp_path / "r")
    assert [int(m.group(1)) for m in rows] == [1, 2, 3]
    assert [m.group(2) for m in rows] == [f"{100 * h['global_acc']:.2f}" for h in hist]
    assert [m.group(4) for m in rows] == [f"{h['bytes_up'] / 1e6:.3f}" for h in hist]
    assert "\x1b[" not in out.stdout  # no terminal control codes
