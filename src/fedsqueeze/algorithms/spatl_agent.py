"""SPATL's salient-parameter agent: a graph encoder over the network's prunable layers feeding a PPO
actor–critic that outputs per-layer keep ratios (``algorithm.selector = "rl"``).

SPATL (Yu et al., SC22, arXiv 2111.14345) selects the parameters a client uploads with the pruning
agent of GNN-RL (Yu, Mazaheri, Jannesari, "Topology-Aware Network Pruning using Multi-stage Graph
Embedding and Reinforcement Learning", ICML 2022): the network is a graph, a graph neural network
embeds it, and a PPO (Schulman et al. 2017, arXiv 1707.06347) actor–critic maps the embedding to
pruning ratios; the reward is the pruned model's accuracy. The agent is pre-trained, then fine-tuned
on each client. This module is our own small, plain-torch version of that design:

State (the layer graph)
    One node per prunable layer (``models.pruning.ChannelGroup``), in execution order; edges join
    consecutive layers and a producer to the layer consuming its channels when that is a prunable
    layer too. Node features (``FEATURES``): channels / largest channel count, log2 of the kernel
    size (1 for a linear layer) / 4, the layer's share of the model's FLOPs, its share of the
    prunable parameters, its current keep ratio (the client's previous selection, 1 before any),
    layer index / (L − 1), and the budget.
Encoder
    ``layers`` (2) message-passing layers h ← tanh(h W_self + mean_{neighbours}(h) W_nbr + b).
Actor
    Per node a Gaussian in logit space: u ~ N(μ(h_node), σ²), σ = exp(log_std) (one learned scalar);
    keep ratio = min_ratio + (1 − min_ratio) · sigmoid(u). The deterministic action is u = μ.
    (The squashing's Jacobian does not depend on the policy parameters, so PPO's probability ratio is
    that of u; the entropy bonus is the Gaussian's, as is usual for squashed policies.)
Critic
    V(s) = linear(mean of the node embeddings).
Episodes and returns
    One decision per episode: the agent sets every layer's ratio at once (GNN-RL's action is also a
    whole-network ratio vector; it may take several steps per episode, we take one), so the return is
    the reward and the advantage is R − V(s) (GAE with a one-step horizon); advantages are
    normalised over each batch (``normalize_advantage``).
Reward
    validation accuracy of the pruned model − ``penalty`` · max(0, cost/budget − 1), cost being the
    FLOPs or upload-bytes fraction (``target``) of the evaluated keep. With ``fit`` (default) the
    drawn ratios are first moved onto the budget (``fit_budget``, below), as AMC bounds its actions
    so that every episode meets the budget and GNN-RL ends an episode once it does: the agent then
    learns how to share the budget among layers, and the penalty only bites when even ``min_ratio``
    everywhere is over budget. ``fit = False`` scores the ratios as drawn (the penalty then teaches
    the agent the budget itself; the final selection is still fitted).
Update
    PPO's clipped surrogate: L = −mean(min(ρA, clip(ρ, 1 − ε, 1 + ε)A)) + c_v · mean((V − R)²)
    − c_e · mean(entropy), ρ = exp(log π_new − log π_old); ``epochs`` Adam steps per batch.
Selection
    After fine-tuning, the deterministic ratios are moved onto the budget (``fit_budget``): shrunk
    towards ``min_ratio`` when over it, grown towards 1 when under it (one common fraction of every
    layer's slack, by bisection), so the agent decides how the budget is shared among layers and the
    upload always meets it; within a layer the filters of largest L2 norm are kept (as the greedy
    selector does).

The agent's weights are a plain ``{name: tensor}`` mapping (saved with ``engine.safe_io``, never
pickle); ``fedsqueeze spatl pretrain-agent`` writes one (``algorithms.spatl_pretrain``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from fedsqueeze.algorithms.salient import SelectionProblem
from fedsqueeze.models.pruning import Keep

FEATURES = ("channels", "log_kernel", "flops_share", "params_share", "keep_ratio", "depth", "budget")
FORMAT = "fedsqueeze-spatl-agent"


@dataclass(frozen=True)
class AgentConfig:
    hidden: int = 32
    layers: int = 2
    lr: float = 0.01
    clip: float = 0.2           # ε of the clipped surrogate
    vf_coef: float = 0.5        # c_v
    ent_coef: float = 0.01      # c_e
    epochs: int = 4             # Adam steps per batch of episodes
    batch: int = 8              # episodes per PPO update
    penalty: float = 2.0        # reward penalty per unit of relative overshoot of the budget
    fit: bool = True            # score each episode's ratios moved onto the budget (False: as drawn)
    init_log_std: float = -0.5
    normalize_advantage: bool = True


class AgentNet(nn.Module):
    """Graph encoder + Gaussian actor (logit space) + critic."""

    def __init__(self, hidden: int = 32, layers: int = 2, init_log_std: float = -0.5) -> None:
        super().__init__()
        dims = [len(FEATURES)] + [hidden] * layers
        self.self_w = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims, dims[1:]))
        self.nbr_w = nn.ModuleList(nn.Linear(a, b, bias=False) for a, b in zip(dims, dims[1:]))
        self.actor = nn.Linear(hidden, 1)
        self.critic = nn.Linear(hidden, 1)
        self.log_std = nn.Parameter(torch.tensor(float(init_log_std)))

    def forward(self, x: torch.Tensor, adj: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(μ per node, V): ``x`` nodes × features, ``adj`` row-normalised neighbour matrix."""
        h = x
        for ws, wn in zip(self.self_w, self.nbr_w):
            h = torch.tanh(ws(h) + wn(adj @ h))
        return self.actor(h).squeeze(-1), self.critic(h.mean(0)).squeeze(-1)


def ppo_loss(logp_new: torch.Tensor, logp_old: torch.Tensor, adv: torch.Tensor, value: torch.Tensor,
             ret: torch.Tensor, entropy: torch.Tensor, *, clip: float, vf_coef: float,
             ent_coef: float) -> tuple[torch.Tensor, dict[str, float]]:
    """PPO's loss over a batch (one entry per episode): clipped surrogate + c_v · value MSE − c_e · entropy."""
    ratio = torch.exp(logp_new - logp_old)
    surrogate = torch.minimum(ratio * adv, torch.clamp(ratio, 1 - clip, 1 + clip) * adv).mean()
    value_loss = ((value - ret) ** 2).mean()
    ent = entropy.mean()
    loss = -surrogate + vf_coef * value_loss - ent_coef * ent
    return loss, {"surrogate": float(surrogate.detach()), "value_loss": float(value_loss.detach()),
                  "entropy": float(ent.detach())}


@dataclass
class Graph:
    """The agent's view of one ``SelectionProblem``: node features (keep ratio column filled per call)
    and the neighbour matrix."""

    x: torch.Tensor
    adj: torch.Tensor

    @classmethod
    def of(cls, problem: SelectionProblem, ratios: list[float] | None = None) -> "Graph":
        groups = problem.groups
        n = len(groups)
        index = {g.layer: i for i, g in enumerate(groups)}
        flops = [0.0] * n
        for amount, out, inp in problem.flops.terms if problem.flops else []:
            for g in (out, inp):
                if g in index:
                    flops[index[g]] += amount
        total_flops = sum(flops) or 1.0
        params = [float(sum(problem.weights[k].numel() for k in g.rows if k in problem.weights)) for g in groups]
        total_params = sum(params) or 1.0
        widest = max((g.channels for g in groups), default=1)
        ratios = ratios if ratios is not None else [1.0] * n
        rows = []
        for i, g in enumerate(groups):
            w = problem.weights[g.rows[0]]
            kernel = math.prod(w.shape[2:]) if w.dim() > 2 else 1
            rows.append([g.channels / widest, math.log2(kernel) / 4, flops[i] / total_flops,
                         params[i] / total_params, float(ratios[i]), i / max(1, n - 1), float(problem.budget)])
        adj = torch.zeros(n, n)
        for i, g in enumerate(groups):
            for j in (i - 1, i + 1):
                if 0 <= j < n:
                    adj[i, j] = 1.0
            if g.consumer in index:
                adj[i, index[g.consumer]] = adj[index[g.consumer], i] = 1.0
        deg = adj.sum(1, keepdim=True).clamp_min(1.0)
        return cls(torch.tensor(rows, dtype=torch.float32), adj / deg)


def ratios_to_counts(problem: SelectionProblem, ratios: list[float]) -> dict[str, int]:
    out = {}
    for g, r in zip(problem.groups, ratios):
        low = max(1, math.ceil(problem.min_ratio * g.channels - 1e-9))
        out[g.layer] = min(g.channels, max(low, round(r * g.channels)))
    return out


def fit_budget(problem: SelectionProblem, ratios: list[float]) -> dict[str, int]:
    """Keep counts from ``ratios`` moved onto the budget: over it, every layer's slack above
    ``min_ratio`` shrinks by one common fraction (the least that meets the budget; all at
    ``min_ratio`` if nothing does); under it, every layer's gap to 1 closes by one common fraction
    (the most that still meets the budget). Bisection, 30 steps."""
    def cost(counts: dict[str, int]) -> float:
        return problem.cost.fraction(counts)

    def shrink(t: float) -> dict[str, int]:
        return ratios_to_counts(problem, [problem.min_ratio + t * (r - problem.min_ratio) for r in ratios])

    def grow(t: float) -> dict[str, int]:
        return ratios_to_counts(problem, [r + t * (1.0 - r) for r in ratios])

    over = cost(shrink(1.0)) > problem.budget + 1e-12
    move = shrink if over else grow
    lo, hi = 0.0, 1.0
    if not over and cost(grow(1.0)) <= problem.budget + 1e-12:
        return grow(1.0)
    for _ in range(30):  # invariant: shrink(lo) / grow(lo) meets the budget
        mid = (lo + hi) / 2
        if cost(move(mid)) <= problem.budget + 1e-12:
            lo = mid
        else:
            hi = mid
    return move(lo)


class Agent:
    """An ``AgentNet`` with its PPO fine-tuning and selection. ``generator`` drives every random draw
    (action noise), so a seed fixes the selections."""

    def __init__(self, config: AgentConfig, weights: dict[str, torch.Tensor] | None = None, *,
                 init_seed: int = 0) -> None:
        self.config = config
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(init_seed)
            self.net = AgentNet(config.hidden, config.layers, config.init_log_std)
        if weights is not None:
            self.load(weights)

    def weights(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().clone() for k, v in self.net.state_dict().items()}

    def load(self, weights: dict[str, torch.Tensor]) -> None:
        own = self.net.state_dict()
        if set(weights) != set(own) or any(tuple(weights[k].shape) != tuple(own[k].shape) for k in own):
            raise ValueError("the agent weights do not match the configured agent (hidden size / layers)")
        self.net.load_state_dict(weights)

    # ---- acting --------------------------------------------------------------------------------
    def _ratio(self, problem: SelectionProblem, u: torch.Tensor) -> list[float]:
        return (problem.min_ratio + (1 - problem.min_ratio) * torch.sigmoid(u)).tolist()

    def reward(self, problem: SelectionProblem, ratios: list[float]) -> tuple[float, float, float]:
        """(reward, validation accuracy, cost fraction) of the keep the ratios give (moved onto the budget
        first when ``config.fit``)."""
        counts = fit_budget(problem, ratios) if self.config.fit else ratios_to_counts(problem, ratios)
        cost = problem.cost.fraction(counts)
        acc = problem.score(problem.keep(counts))[0]
        return acc - self.config.penalty * max(0.0, cost / problem.budget - 1.0), acc, cost

    def finetune(self, problem: SelectionProblem, episodes: int, generator: torch.Generator,
                 graph: Graph | None = None) -> list[float]:
        """``episodes`` PPO episodes on one problem (updates every ``batch`` episodes and after the
        last); returns the rewards seen."""
        cfg = self.config
        graph = graph or Graph.of(problem)
        opt = torch.optim.Adam(self.net.parameters(), lr=cfg.lr)
        rewards: list[float] = []
        done = 0
        while done < episodes:
            n = min(cfg.batch, episodes - done)
            with torch.no_grad():
                mu, _ = self.net(graph.x, graph.adj)
                std = self.net.log_std.exp()
                us = mu + std * torch.randn(n, len(mu), generator=generator)
                logp_old = torch.distributions.Normal(mu, std).log_prob(us).sum(1)
            batch_r = torch.tensor([self.reward(problem, self._ratio(problem, u))[0] for u in us])
            rewards += batch_r.tolist()
            for _ in range(cfg.epochs):
                mu, value = self.net(graph.x, graph.adj)
                dist = torch.distributions.Normal(mu, self.net.log_std.exp())
                adv = batch_r - value.detach()
                if cfg.normalize_advantage and n > 1:
                    adv = (adv - adv.mean()) / (adv.std() + 1e-8)
                loss, _ = ppo_loss(dist.log_prob(us).sum(1), logp_old, adv, value.expand(n), batch_r,
                                   dist.entropy().sum().expand(n), clip=cfg.clip, vf_coef=cfg.vf_coef,
                                   ent_coef=cfg.ent_coef)
                opt.zero_grad()
                loss.backward()
                opt.step()
            done += n
        return rewards

    def ratios(self, problem: SelectionProblem, graph: Graph | None = None) -> list[float]:
        """The deterministic per-layer keep ratios (before budget fitting)."""
        graph = graph or Graph.of(problem)
        with torch.no_grad():
            mu, _ = self.net(graph.x, graph.adj)
        return self._ratio(problem, mu)

    def select(self, problem: SelectionProblem, graph: Graph | None = None) -> Keep:
        return problem.keep(fit_budget(problem, self.ratios(problem, graph)))
