"""Long-lived ClientApps: one fedsqueeze ClientApp process per SuperNode (``--isolation process``) that keeps
data, partition and model between messages; the per-config cache; supervision by ``LocalFederation``."""
from __future__ import annotations

import re
import time

import pytest

pytest.importorskip("flwr")

from conftest import digits_config  # noqa: E402
from fedsqueeze.flower import client_app  # noqa: E402
from fedsqueeze.flower.records import to_run_config  # noqa: E402


def _flat(nested: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in nested.items():
        out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


def test_runtime_cache_is_keyed_by_the_whole_config(monkeypatch):
    monkeypatch.setattr(client_app, "_RUNTIMES", {})
    node = {"partition-id": 0, "num-partitions": 3}
    a = _flat(to_run_config(digits_config(data__num_clients=3, train__clients_per_round=2)))
    b = dict(a, **{"train.lr": 0.05})
    first = client_app.runtime_for(a, node)
    assert client_app.runtime_for(dict(a), node) is first  # the same experiment: reused
    other = client_app.runtime_for(b, node)
    assert other is not first and other.cfg.train.lr == 0.05  # another config is never served from the cache
    assert list(client_app._RUNTIMES) and len(client_app._RUNTIMES) == 1  # only the current one is held
    assert client_app.runtime_for(dict(a, **{"data.dir": "/elsewhere"}), node) is not other


@pytest.mark.flower
def test_long_lived_clientapps_load_once_and_are_restarted(tmp_path):
    """Two SuperNodes with long-lived ClientApps; one ClientApp process is killed before the run and is
    restarted by the federation. Two rounds: each ClientApp process loads the experiment once and answers
    every message (query + 2 trains); nothing survives stop()."""
    from test_flower import config, run  # the deployment tests' config and run helper

    from fedsqueeze.flower.local import LocalFederation
    from fedsqueeze.metrics.results import read_history

    messages: list[str] = []
    fed = LocalFederation(tmp_path / "fed", 2, insecure=True, log=messages.append)
    try:
        fed.start()
        assert fed.long_lived and set(fed.workers) == {"supernode-0", "supernode-1"}
        killed = fed.workers["supernode-1"]
        killed.kill()
        deadline = time.monotonic() + 30
        while fed.workers["supernode-1"] is killed and time.monotonic() < deadline:
            time.sleep(0.2)
        assert fed.workers["supernode-1"] is not killed, messages
        run(fed, config(rounds=2), tmp_path / "out")
        assert len(read_history(tmp_path / "out")) == 2
        for name in ("supernode-0", "supernode-1"):
            log = (fed.logs / f"{name}-clientapp.log").read_text()
            loads = re.findall(r"ClientApp \(pid (\d+)\): loaded data", log)
            assert len(loads) == 1 and int(loads[0]) == fed.workers[name].pid, log[-2000:]
        assert any("ClientApp of supernode-1 exited" in m for m in messages)
    finally:
        fed.stop()
    assert not fed.pids(), "processes survived the federation's stop()"


def test_timing_report_compares_medians_after_the_first_round():
    from fedsqueeze.config import from_dict
    from fedsqueeze.flower.commands import timing_report

    cfg = from_dict(digits_config(rounds=3, data__num_clients=3, train__clients_per_round=2))
    text = timing_report(cfg, [{"round_s": 9.0}, {"round_s": 1.0}, {"round_s": 3.0}])
    lines = text.splitlines()
    assert lines[0] == "timing (t-digits, 3 clients, 3 rounds; seconds per round)"
    assert lines[1] == "  deployment: 9.00 1.00 3.00"
    sim = [float(x) for x in lines[2].split(":")[1].split()]
    assert len(sim) == 3 and all(x > 0 for x in sim)
    m = re.search(r"deployment 2\.00 s, simulation ([0-9.]+) s, ratio ([0-9.]+)", lines[3])
    assert m, text
    s, ratio = float(m.group(1)), float(m.group(2))  # both printed to 2 decimals
    assert 2.0 / (s + 0.005) - 0.005 <= ratio <= (2.0 / (s - 0.005) if s > 0.005 else float("inf")) + 0.005
