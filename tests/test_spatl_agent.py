"""SPATL's RL agent: the PPO loss and one gradient step by hand, budget fitting, the agent against a
random selector at equal budget (a synthetic problem and a small CNN on digits), reproducibility."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from fedsqueeze.algorithms.base import float_state
from fedsqueeze.algorithms.salient import SelectionProblem
from fedsqueeze.algorithms.spatl import PrunedScorer
from fedsqueeze.algorithms.spatl_agent import Agent, AgentConfig, Graph, fit_budget, ppo_loss
from fedsqueeze.models.pruning import ChannelGroup, CostModel, channel_groups
from fedsqueeze.models.zoo import SmallCNN


def test_ppo_loss_and_one_sgd_step_by_hand():
    """A 2-parameter policy: Bernoulli(sigmoid(theta)) and a scalar value v. Old policy theta_old = 1,
    current theta = 0, v = 0.2; episode 1 took a = 1 (A = +1, R = 1), episode 2 a = 0 (A = +0.5, R = 0);
    eps = 0.2, c_v = 0.5, c_e = 0.01."""
    theta, v = torch.tensor(0.0, requires_grad=True), torch.tensor(0.2, requires_grad=True)
    actions, adv, ret = torch.tensor([1.0, 0.0]), torch.tensor([1.0, 0.5]), torch.tensor([1.0, 0.0])
    s1 = 1 / (1 + math.exp(-1.0))                   # sigmoid(1) = 0.731059
    logp_old = torch.tensor([math.log(s1), math.log(1 - s1)])
    dist = torch.distributions.Bernoulli(logits=theta)
    loss, parts = ppo_loss(dist.log_prob(actions), logp_old, adv, v.expand(2), ret, dist.entropy().expand(2),
                           clip=0.2, vf_coef=0.5, ent_coef=0.01)
    # ratios: 0.5/0.731059 = 0.683941 (below 1 - eps, A > 0: the unclipped term is the min) and
    # 0.5/0.268941 = 1.859141 (clipped to 1.2: 1.2 * 0.5 = 0.6 < 0.929570)
    surrogate = (0.5 / s1 * 1.0 + 1.2 * 0.5) / 2    # 0.641971
    value_loss = ((0.2 - 1.0) ** 2 + 0.2 ** 2) / 2  # 0.34
    assert parts["surrogate"] == pytest.approx(0.6419707, abs=1e-6) == surrogate
    assert parts["value_loss"] == pytest.approx(0.34) and parts["entropy"] == pytest.approx(math.log(2))
    assert float(loss.detach()) == pytest.approx(-surrogate + 0.5 * value_loss - 0.01 * math.log(2), abs=1e-6)
    assert float(loss.detach()) == pytest.approx(-0.4789022, abs=1e-6)
    opt = torch.optim.SGD([theta, v], lr=0.1)
    opt.zero_grad()
    loss.backward()
    opt.step()
    # d loss / d theta: only episode 1's unclipped term, -(1/2) A d ratio/d theta = -(1/2) sigmoid'(0)/s1
    # = -0.125/0.731059 = -0.170985 (the entropy's gradient is 0 at p = 1/2); d loss / d v = c_v * mean
    # 2 (v - R) = 0.5 * (-1.6 + 0.4)/2 = -0.3
    assert float(theta.detach()) == pytest.approx(0.1 * 0.125 / s1, abs=1e-7) == pytest.approx(0.01709846, abs=1e-7)
    assert float(v.detach()) == pytest.approx(0.2 + 0.1 * 0.3, abs=1e-7)


def _toy(budget: float = 0.6) -> SelectionProblem:
    """Two independent 8-channel layers of equal cost; each filter of ``a`` pruned costs 0.1 accuracy,
    each of ``b`` 0.01: the best keep at budget 0.6 is all of a and one filter of b (score 0.93)."""
    groups = [ChannelGroup("a", 8, ("a.weight",)), ChannelGroup("b", 8, ("b.weight",))]
    weights = {"a.weight": torch.arange(8.0, 0, -1).reshape(8, 1), "b.weight": torch.arange(1.0, 9).reshape(8, 1)}
    cost = CostModel([(1.0, "a", None), (1.0, "b", None)], groups)

    def score(keep):
        return 1 - 0.1 * int((~keep["a"]).sum()) - 0.01 * int((~keep["b"]).sum()), 0.0
    return SelectionProblem(groups, weights, score, cost, budget, min_ratio=0.125, step=0.125, flops=cost)


def test_graph_features_and_budget_fitting():
    p = _toy()
    g = Graph.of(p, [1.0, 0.5])
    assert g.x.shape == (2, 7) and torch.equal(g.adj, torch.tensor([[0.0, 1.0], [1.0, 0.0]]))
    assert g.x[:, 2].tolist() == [0.5, 0.5] and g.x[:, 4].tolist() == [1.0, 0.5] and g.x[:, 5].tolist() == [0, 1]
    # over budget: every slack above min_ratio shrinks by one common fraction (16/16 -> 4 + 4 <= 9.6;
    # 5 + 5 would be over); (8, 2.4) -> (7, 2)
    assert fit_budget(p, [1.0, 1.0]) == {"a": 4, "b": 4} and fit_budget(p, [1.0, 0.3]) == {"a": 7, "b": 2}
    # under budget: every gap to 1 closes by one common fraction: (4, 1) -> (5, 4)
    assert fit_budget(p, [0.5, 0.125]) == {"a": 5, "b": 4}
    # nothing fits: everything at min_ratio
    assert fit_budget(_toy(0.05), [1.0, 1.0]) == {"a": 1, "b": 1}


def test_agent_learns_the_toy_allocation_and_beats_random():
    p = _toy()
    agent = Agent(AgentConfig(), init_seed=0)
    before = p.score(agent.select(p))[0]
    rewards = agent.finetune(p, 96, torch.Generator().manual_seed(0))
    keep = agent.select(p)
    after = p.score(keep)[0]
    gen = torch.Generator().manual_seed(1)
    random = [p.score(p.keep(fit_budget(p, (0.125 + 0.875 * torch.rand(2, generator=gen)).tolist())))[0]
              for _ in range(32)]
    assert p.cost.fraction({k: int(v.sum()) for k, v in keep.items()}) <= 0.6
    assert after > before and after > sum(random) / len(random) + 0.1
    assert after == pytest.approx(0.93) and sum(rewards[-16:]) > sum(rewards[:16])  # the optimum: a whole, b one filter


@pytest.fixture(scope="module")
def digits_problem():
    from fedsqueeze.data.sources import load_digits
    d = load_digits()
    torch.manual_seed(0)
    model = SmallCNN(d.input_shape, 10)
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    x, y = d.x_train[:1000], d.y_train[:1000]
    for _ in range(30):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    groups = channel_groups(model)
    weights = float_state(model)
    score = PrunedScorer(model, weights, groups, d.x_train[1000:], d.y_train[1000:])
    flops = CostModel.flops(model, d.input_shape, groups)
    return SelectionProblem(groups, weights, score, flops, 0.4, 0.1, 0.125, flops=flops)


def test_agent_beats_random_selection_at_equal_flops_budget_on_digits(digits_problem):
    p = digits_problem
    agent = Agent(AgentConfig(), init_seed=1)
    rewards = agent.finetune(p, 32, torch.Generator().manual_seed(0))
    keep = agent.select(p)
    acc = p.score(keep)[0]
    assert p.cost.fraction({k: int(v.sum()) for k, v in keep.items()}) <= 0.4 + 1e-12
    gen = torch.Generator().manual_seed(1)
    random = [p.score(p.keep(fit_budget(p, (0.1 + 0.9 * torch.rand(3, generator=gen)).tolist())))[0]
              for _ in range(16)]
    assert acc > sum(random) / len(random) + 0.05
    assert sum(rewards[-8:]) / 8 > sum(random) / len(random)  # its exploring episodes too, at the end


def test_same_seed_same_selections_and_weights(digits_problem):
    def run():
        agent = Agent(AgentConfig(), init_seed=7)
        rewards = agent.finetune(digits_problem, 8, torch.Generator().manual_seed(3))
        return rewards, agent.select(digits_problem), agent.weights()
    r1, k1, w1 = run()
    r2, k2, w2 = run()
    assert r1 == r2 and all(torch.equal(k1[k], k2[k]) for k in k1) and all(torch.equal(w1[k], w2[k]) for k in w1)
    r3, _, _ = (lambda a: (a.finetune(digits_problem, 8, torch.Generator().manual_seed(4)), None, None))(
        Agent(AgentConfig(), init_seed=7))
    assert r3 != r1


# ---- pre-training and agent files -----------------------------------------------------------------
@pytest.mark.slow
def test_pretrain_agent_writes_a_safe_file_that_clients_start_from(tmp_path, digits):
    import fedsqueeze
    from conftest import digits_config
    from fedsqueeze.algorithms.spatl_agent_io import load_agent
    from fedsqueeze.algorithms.spatl_pretrain import pretrain_agent
    from fedsqueeze.config import from_dict
    from fedsqueeze.engine import safe_io
    from fedsqueeze.errors import ConfigError

    raw = digits_config(rounds=1, algorithm={"name": "spatl", "budget": 0.5, "agent_episodes": 4},
                        model={"name": "small_cnn", "options": {}}, eval={"every": 0, "personal_every": 0})
    cfg = from_dict(raw)
    out = tmp_path / "agent.fsq"
    info = pretrain_agent(cfg, out, clients=2, episodes=8, dataset=digits, log=lambda *_: None)
    assert len(info["clients"]) == 2 and not safe_io.is_legacy_pickle(out.read_bytes())
    weights = load_agent(out, 32)
    fresh = Agent(AgentConfig(), init_seed=0).weights()
    assert set(weights) == set(fresh) and any(not torch.equal(weights[k], fresh[k]) for k in fresh)
    # same config, same seed -> the same file
    pretrain_agent(cfg, tmp_path / "again.fsq", clients=2, episodes=8, dataset=digits, log=lambda *_: None)
    assert (tmp_path / "again.fsq").read_bytes() == out.read_bytes()
    # --rounds: pre-trained on the clients' models after a warm-up run without pruning
    warm = pretrain_agent(cfg, tmp_path / "warm.fsq", clients=1, episodes=4, rounds=1, dataset=digits,
                          log=lambda *_: None)
    assert warm["clients"] == info["clients"][:1] and set(load_agent(tmp_path / "warm.fsq", 32)) == set(weights)
    # a client's agent starts from it (no file: from the seeded init)
    from fedsqueeze.algorithms.base import Setup
    from fedsqueeze.algorithms.spatl import SPATL, SPATLParams
    setup = Setup("small_cnn", {}, (1, 8, 8), 10, rounds=1)
    started = SPATL(SPATLParams(agent=str(out)), setup).new_agent().weights()
    assert all(torch.equal(started[k], weights[k]) for k in weights)
    seeded = SPATL(SPATLParams(), setup).new_agent().weights()
    assert all(torch.equal(seeded[k], SPATL(SPATLParams(), setup).new_agent().weights()[k]) for k in seeded)
    res = fedsqueeze.run({**raw, "algorithm": {**raw["algorithm"], "agent": str(out)}}, run_dir=tmp_path / "r",
                         dataset=digits, plot=False)
    assert res.history[-1]["client_metrics"]["flops_ratio"] <= 0.5 + 1e-9
    with pytest.raises(ConfigError, match="agent_hidden = 32"):
        load_agent(out, 16)
    (tmp_path / "bad.fsq").write_bytes(b"not an agent")
    with pytest.raises(ConfigError, match="not a SPATL agent file"):
        load_agent(tmp_path / "bad.fsq", 32)


def test_pretrain_cli_refuses_a_config_that_is_not_spatl(tmp_path, capsys):
    from conftest import digits_config
    from fedsqueeze.cli import main
    from fedsqueeze.config import from_dict, to_toml

    cfg = tmp_path / "c.toml"
    cfg.write_text(to_toml(from_dict(digits_config()).to_dict()))
    assert main(["spatl", "pretrain-agent", str(cfg), "--out", str(tmp_path / "a.fsq")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: spatl pretrain-agent needs a SPATL config (algorithm.name = \"spatl\"), not 'fedavg'"]
    assert main(["spatl", "pretrain-agent", str(cfg), "--out", str(tmp_path), "--set", "algorithm.name=spatl"]) == 2
    assert "is a folder" in capsys.readouterr().err
