"""Salient-parameter selectors for SPATL: which output channels (filters) of each encoder layer a
client keeps (and uploads) after local training, under a cost budget.

A selector is any callable ``selector(problem) -> Keep`` (``Keep`` = ``{layer: bool mask over its
output channels}``); ``SELECTORS`` maps the stateless names accepted by ``algorithm.selector``. The paper's
reinforcement-learning agent (a graph encoder over the layer graph trained with PPO to output
per-layer keep ratios; ``selector = "rl"``, SPATL's default) reads the same ``SelectionProblem``
(``groups``/``weights``/``flops`` as its state, ``cost`` for the budget, ``score`` for its reward)
but keeps weights across rounds, so it lives in ``spatl_agent``.

Provided:
- ``greedy``: filters ranked by the L2 norm of their weights; per-layer keep counts start
  at all channels and, while the cost is above the budget, the layer whose next notch down
  (``step`` x channels fewer, never below ``min_ratio``) loses the least validation accuracy per
  unit of cost saved is lowered (ties: least validation loss increase per unit saved).
- ``lazy_greedy``: the same, re-scoring only the layer just lowered (the others keep the gains
  measured earlier): 2 evaluations per step instead of one per layer, for deep models.
- ``uniform``: the same keep ratio in every layer, the largest notch that meets the budget (L2
  ranking, no validation).
- ``none``: keep everything (SPATL without salient selection, an ablation).
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from fedsqueeze.codecs.base import Tensors
from fedsqueeze.models.pruning import ChannelGroup, CostModel, Keep


@dataclass
class SelectionProblem:
    groups: list[ChannelGroup]
    weights: Tensors                                # the trained local model's float state
    score: Callable[[Keep], tuple[float, float]]    # keep -> validation (accuracy, mean loss)
    cost: CostModel                                 # kept channel counts -> cost fraction
    budget: float                                   # the cost fraction to reach
    min_ratio: float = 0.2
    step: float = 0.125
    flops: CostModel | None = None                  # the FLOPs cost model (a node feature of the RL agent)

    def __post_init__(self) -> None:
        # filters by decreasing L2 norm of their weights (ties: lower index first)
        self.order = {g.layer: torch.argsort(-self.weights[g.rows[0]].reshape(g.channels, -1).norm(dim=1),
                                             stable=True) for g in self.groups}

    def ladder(self, g: ChannelGroup) -> list[int]:
        """The keep counts a layer may take, from all channels down to ``min_ratio``."""
        low = max(1, math.ceil(self.min_ratio * g.channels - 1e-9))
        counts, j = [], 0
        while True:
            n = max(low, round(g.channels * (1 - j * self.step)))
            if not counts or n < counts[-1]:
                counts.append(n)
            if n == low:
                return counts
            j += 1

    def keep(self, counts: dict[str, int]) -> Keep:
        """The ``counts[layer]`` filters of largest L2 norm in each layer."""
        out = {}
        for g in self.groups:
            mask = torch.zeros(g.channels, dtype=torch.bool, device=self.order[g.layer].device)
            mask[self.order[g.layer][:counts[g.layer]]] = True
            out[g.layer] = mask
        return out


def keep_everything(problem: SelectionProblem) -> Keep:
    return problem.keep({g.layer: g.channels for g in problem.groups})


def uniform_l2(problem: SelectionProblem) -> Keep:
    ladders = {g.layer: problem.ladder(g) for g in problem.groups}
    depth = max((len(v) for v in ladders.values()), default=1)
    counts = {}
    for j in range(depth):
        counts = {k: v[min(j, len(v) - 1)] for k, v in ladders.items()}
        if problem.cost.fraction(counts) <= problem.budget + 1e-12:
            break
    return problem.keep(counts)


def greedy_l2(problem: SelectionProblem, *, lazy: bool = False) -> Keep:
    """Greedy per-layer keep counts (see the module docstring). Each step scores every layer's next
    notch against the current keep; ``lazy`` re-scores only the layer just lowered (the others keep
    the gains measured earlier: 2 evaluations per step instead of one per layer)."""
    ladders = {g.layer: problem.ladder(g) for g in problem.groups}
    counts = {k: v[0] for k, v in ladders.items()}
    cost = problem.cost.fraction(counts)
    acc, loss = problem.score(problem.keep(counts))
    gains: dict[str, tuple[tuple[float, float], float, float]] = {}  # layer -> (key, acc, loss) of its next notch

    def measure(layer: str) -> None:
        gains.pop(layer, None)
        ladder = ladders[layer]
        pos = ladder.index(counts[layer])
        if pos + 1 == len(ladder):
            return
        cand = {**counts, layer: ladder[pos + 1]}
        saved = cost - problem.cost.fraction(cand)
        if saved > 0:
            c_acc, c_loss = problem.score(problem.keep(cand))
            gains[layer] = (((c_acc - acc) / saved, (loss - c_loss) / saved), c_acc, c_loss)

    for layer in ladders:
        measure(layer)
    while cost > problem.budget + 1e-12 and gains:  # no gains left: every layer at min_ratio
        layer = max(gains, key=lambda k: gains[k][0])
        ladder = ladders[layer]
        counts[layer] = ladder[ladder.index(counts[layer]) + 1]
        cost = problem.cost.fraction(counts)
        if lazy:
            acc, loss = problem.score(problem.keep(counts))
        else:
            acc, loss = gains[layer][1:]
        for other in ([layer] if lazy else list(ladders)):
            measure(other)
    return problem.keep(counts)


SELECTORS: dict[str, Callable[[SelectionProblem], Keep]] = {
    "greedy": greedy_l2,
    "lazy_greedy": lambda problem: greedy_l2(problem, lazy=True),
    "uniform": uniform_l2,
    "none": keep_everything,
}
