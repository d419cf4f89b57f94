"""Config validation: every mistake is a ConfigError that names the key and the fix."""
from __future__ import annotations

import pytest

from conftest import digits_config
from fedsqueeze.config import apply_overrides, from_dict, load_config, parse_override, to_toml
from fedsqueeze.errors import ConfigError


def test_defaults_and_presets_load():
    cfg = from_dict({})
    assert cfg.algorithm_name == "fedavg" and cfg.train.lr == 0.05 and cfg.codec.up == "fp32"
    for name in ("digits-quick", "fmnist-fedavg", "fmnist-demo"):
        assert load_config(f"configs/{name}.toml").name == name


@pytest.mark.parametrize("raw, message", [
    ({"rounds": 0}, "'rounds' = 0 is invalid: it must be an integer >= 1"),
    ({"roundz": 3}, "did you mean 'rounds'"),
    ({"train": {"lr": -1}}, "'train.lr' = -1.0 is invalid"),
    ({"train": {"learning_rate": 0.1}}, "unknown config key 'train.learning_rate'"),
    ({"train": {"batch_size": "big"}}, "'train.batch_size' must be of type int"),
    ({"data": {"alpha": 0}}, "'data.alpha' = 0.0 is invalid: it must be a number > 0"),
    ({"data": {"holdout_fraction": 1.0}}, "in [0, 1)"),
    ({"data": 5}, "data must be a table"),
    ({"train": {"optimizer": "lbfgs"}}, "'sgd' or 'adam'"),
    ({"algorithm": {"lr": 1}}, "needs a string 'name'"),
    ({"engine": {"workers": -1}}, "engine.workers"),
    ({"rounds": True}, "must be of type int"),
])
def test_invalid_configs(raw, message):
    with pytest.raises(ConfigError) as e:
        from_dict(raw)
    assert message in str(e.value)


def test_overrides_are_toml_values_or_bare_strings():
    assert parse_override("train.lr=0.1") == (["train", "lr"], 0.1)
    assert parse_override("codec.up=fp16") == (["codec", "up"], "fp16")
    assert parse_override("codec.up='topk(fraction=0.01)'") == (["codec", "up"], "topk(fraction=0.01)")
    assert parse_override("data.options={num_samples = 300}") == (["data", "options"], {"num_samples": 300})
    raw = apply_overrides({"train": {"lr": 1.0}}, ["train.lr=0.5", "rounds=3"])
    assert raw == {"train": {"lr": 0.5}, "rounds": 3}
    with pytest.raises(ConfigError, match="key=value"):
        parse_override("train.lr")
    with pytest.raises(ConfigError, match="not a table"):
        apply_overrides({"rounds": 3}, ["rounds.x=1"])


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("rounds = [")
    with pytest.raises(ConfigError, match="invalid TOML"):
        load_config(bad)


def test_toml_writer_round_trips(tmp_path):
    import tomllib
    cfg = from_dict(digits_config(codec={"up": {"name": "fp16"}, "down": "fp32"}))
    text = to_toml(cfg.to_dict())
    assert from_dict(tomllib.loads(text)).to_dict() == cfg.to_dict()


def test_algorithm_and_registry_errors(digits):
    import fedsqueeze
    with pytest.raises(ConfigError, match="did you mean 'fedavg'"):
        fedsqueeze.run(digits_config(algorithm={"name": "fedavgg"}), run_dir="/tmp/unused", dataset=digits)
    with pytest.raises(ConfigError, match="no option 'algorithm.server_lrr'.*did you mean 'algorithm.server_lr'"):
        fedsqueeze.run(digits_config(algorithm={"name": "fedavg", "server_lrr": 1}), run_dir="/tmp/unused",
                       dataset=digits)
    with pytest.raises(ConfigError, match="server_lr = 0"):
        fedsqueeze.run(digits_config(algorithm={"name": "fedavg", "server_lr": 0}), run_dir="/tmp/unused",
                       dataset=digits)
    with pytest.raises(ConfigError, match="unknown model 'cnm'"):
        fedsqueeze.run(digits_config(model={"name": "cnm"}), run_dir="/tmp/unused", dataset=digits)


def test_clients_per_round_within_the_federation():
    cfg = from_dict({"data": {"num_clients": 3}})  # the default 10 shrinks to the federation
    assert cfg.train.clients_per_round == 3 and from_dict(cfg.to_dict()).train.clients_per_round == 3
    with pytest.raises(ConfigError, match="train.clients_per_round = 4 exceeds data.num_clients = 3; lower"):
        from_dict({"data": {"num_clients": 3}, "train": {"clients_per_round": 4}})
    assert from_dict({"data": {"num_clients": 3}, "train": {"clients_per_round": 4, "client_fraction": 0.5}})
