"""SPATL: Yu, Nguyen, Abebe, Qian, Anwar, Jannesari. "SPATL: Salient Parameter Aggregation and Transfer
Learning for Heterogeneous Federated Learning". SC22. arXiv 2111.14345. (docs/methods.md §2.)

Model = shared ``encoder`` (federated) + local ``head`` (the predictor: never sent, kept in the
client state, as in FedPer). Per round, on a sampled client:

1. Load the server encoder x and the client's head; carve a fixed local *validation* split
   (``val_fraction`` of the client's training samples, the same every round; never the
   held-out/test split) and train encoder + head on the rest with SCAFFOLD's gradient control on
   the encoder: each step adds ``control_scale`` · (c − c_i) to the encoder gradients. After K
   steps: c_i⁺ = c_i − c + (x − y)/(K η) (option II; see ``scaffold``).
2. Salient parameter selection (``salient.SELECTORS[selector]``): per encoder conv/linear layer,
   which output channels to keep so that the pruned model's cost — ``target = "flops"`` (conv +
   linear multiply–accumulates of the whole model) or ``"bytes"`` (values of the encoder upload) —
   is at most ``budget`` of the unpruned one. Default (``selector = "rl"``): the paper's agent
   (``spatl_agent``: a graph encoder over the layer graph + a PPO actor–critic giving per-layer keep
   ratios, rewarded with the pruned model's validation accuracy), which each client fine-tunes
   ``agent_episodes`` episodes per round from its own copy (kept in its state; the first copy is the
   pre-trained ``agent`` file, or the seeded init); within a layer the filters of largest L2 norm
   are kept. ``greedy``: per-layer keep ratios searched greedily on the validation split; ``none``:
   no pruning (the control).
3. Upload the encoder update Δ = y − x restricted to the kept channels: the rows of the kept
   filters (and their biases / batch-norm entries) and, in the next layer, the input slices of the
   kept channels — exactly the parameters of the pruned encoder — and the control-variate delta
   Δc = c_i⁺ − c_i restricted the same way; c_i is updated only where Δc was sent.

Wire (message kinds): down ``model`` (the encoder, configured down codec) and ``control`` (c, with
``control_codec``); up ``update``, ``control`` and ``mask``. The first two go through the
``rowsparse`` codec (bitmaps of non-zero rows and input slices + that block) with fp32 values (fp16
if the configured up codec / ``control_codec`` is fp16; any other configured up codec is used as it
is). ``mask`` is the kept-channel mask of every prunable layer, one bit per channel (``bitmask``):
the server takes each client's kept coordinates from it, so a kept filter whose update is exactly
zero is averaged in as a zero (a reply without a ``mask``, e.g. from an older client, falls back to
the zero pattern of the decoded update).

Server: ``aggregation = "masked"`` (the paper's intent): x_j ← x_j + η_g · (weighted mean of Δ_ij
over the clients i that sent coordinate j; unchanged if none did). c_j ← c_j + (|S_j|/N) · mean of
those clients' Δc_ij (|S_j|/N := 1 when ``num_clients`` = 0, the released code's plain mean).

Evaluation: beside ``personal_acc`` (the unpruned personal model), ``pruned_personal_model`` gives
the engine each client's deployed model — its last selection applied to the current encoder with
its head — reported as ``personal_acc_pruned`` and ``flops_pruned``.

Reply metrics (the engine reports their sample-weighted means per round under ``client_metrics``):
``flops_ratio`` (pruned / full model MACs of the selected keep; ``fedsqueeze.models.flops``),
``upload_ratio`` (kept / all encoder values), ``val_acc`` and ``val_acc_pruned`` (validation
accuracy before and after pruning; the latter is optimistic, the same split chose the keep),
``train_loss``. Selection costs validation passes: ``rl`` one per episode (+ 2), ``greedy`` one per
layer per notch, so for deep models (ResNet-20: 9 prunable layers) ``selector = "lazy_greedy"`` is
several times cheaper than greedy.

Where the released code (github.com/yusx-swapp/SPATL) differs from the paper — each a switch:
- gradient correction scaled by 1/100 (``control_scale = 0.01``; default 1.0, SCAFFOLD's);
- the server averages the clients' pruned encoder *weights* with zeros in the pruned filters
  (``aggregation = "dense"``: x ← x + η_g (Σ_i p_i m_i ⊙ (x + Δ_i) − x), m_i the kept mask);
- c ← c + mean Δc_i (``num_clients = 0``, our default too, as the framework does not tell the
  algorithm N).
Differences with no switch: the released code rewards its pruning agent on the client's local
*test* split (we use a validation split carved from training data); its control variates also
cover batch-norm buffers (ours: trainable parameters only); it prunes conv layers only (we also
prune the encoder's linear layers in chain models); our agent is a small version of its RL agent
(see ``spatl_agent`` for where it differs). The paper does not say whether control deltas are
uploaded for every encoder parameter; we restrict them to the salient ones (same mask), which keeps
c = mean of the c_i.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn

from fedsqueeze.algorithms.base import (ClientContext, Direction, Messages, Reply, UploadSpec, float_state,
                                        load_float_state, specs_of, sub)
from fedsqueeze.algorithms.context import ClientData, train_locally
from fedsqueeze.algorithms.fedper import FedPer, split_head
from fedsqueeze.algorithms.salient import SELECTORS, SelectionProblem
from fedsqueeze.algorithms.spatl_agent import Agent, AgentConfig, Graph
from fedsqueeze.algorithms.spatl_agent_io import load_agent
from fedsqueeze.algorithms.scaffold import (ScaffoldParams, gradient_correction, masked_mean, next_control,
                                            parameter_zeros, update_control)
from fedsqueeze.codecs.base import Codec, Tensors
from fedsqueeze.codecs.bitmask import BitMask
from fedsqueeze.codecs.rowsparse import RowSparse, kept_mask
from fedsqueeze.codecs.spec import make_codec
from fedsqueeze.errors import ConfigError
from fedsqueeze.models.pruning import CostModel, Keep, apply_masks, channel_groups, keep_all, tensor_masks
from fedsqueeze.seeding import derive_seed, torch_generator


@dataclass(frozen=True)
class SPATLParams(ScaffoldParams):
    weighting: str = "samples"      # encoder aggregation weights: samples (n_i) | uniform
    control_scale: float = 1.0      # s in the local correction s·(c − c_i); released code: 0.01
    selector: str = "rl"            # rl (the paper's agent) | greedy | lazy_greedy | uniform | none
    target: str = "flops"           # flops | bytes: what the budget limits
    budget: float = 0.6             # kept fraction of the target cost
    min_ratio: float = 0.2          # smallest per-layer keep ratio (the released code's lbound)
    step: float = 0.125             # keep-ratio notch of the greedy / uniform search
    val_fraction: float = 0.1       # share of each client's training samples used for validation
    aggregation: str = "masked"     # masked (each coordinate over its senders) | dense (released code)
    agent: str = ""                 # rl: pre-trained agent file (fedsqueeze spatl pretrain-agent); "" = seeded init
    agent_episodes: int = 16        # rl: PPO fine-tuning episodes per client per round
    agent_hidden: int = 32          # rl: graph encoder width (must match a pre-trained file)
    agent_lr: float = 0.01          # rl: Adam learning rate of the fine-tuning
    agent_penalty: float = 2.0      # rl: reward penalty per unit of relative overshoot of the budget

    def __post_init__(self) -> None:
        super().__post_init__()
        checks = [
            ("control_scale", self.control_scale >= 0, "a number >= 0"),
            ("selector", self.selector in SELECTORS or self.selector == "rl", f"one of {sorted([*SELECTORS, 'rl'])}"),
            ("target", self.target in ("flops", "bytes"), "'flops' or 'bytes'"),
            ("budget", 0 < self.budget <= 1, "a number in (0, 1]"),
            ("min_ratio", 0 < self.min_ratio <= 1, "a number in (0, 1]"),
            ("step", 0 < self.step <= 1, "a number in (0, 1]"),
            ("val_fraction", 0 <= self.val_fraction < 1, "a number in [0, 1)"),
            ("aggregation", self.aggregation in ("masked", "dense"), "'masked' or 'dense'"),
            ("agent", isinstance(self.agent, str), "a file path (a string)"),
            ("agent_episodes", isinstance(self.agent_episodes, int) and 0 <= self.agent_episodes <= 100000,
             "an integer in [0, 100000]"),
            ("agent_hidden", isinstance(self.agent_hidden, int) and 1 <= self.agent_hidden <= 1024,
             "an integer in [1, 1024]"),
            ("agent_lr", self.agent_lr >= 0, "a number >= 0"),
            ("agent_penalty", self.agent_penalty >= 0, "a number >= 0"),
        ]
        for key, ok, allowed in checks:
            if not ok:
                raise ConfigError(f"algorithm.{key} = {getattr(self, key)!r} is invalid: it must be {allowed}")

    def agent_config(self) -> AgentConfig:
        return AgentConfig(hidden=self.agent_hidden, lr=self.agent_lr, penalty=self.agent_penalty)


def sparse_codec(spec) -> Codec:
    """Row-sparse with fp32/fp16 values for a plain fp32/fp16 spec; any other codec as it is."""
    codec = make_codec(spec)
    if codec.codec_id in ("fp32", "fp16"):
        return RowSparse(values=codec.codec_id, cols=True)
    return codec


def validation_split(n: int, fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(train indices, validation indices): a fixed random ``fraction`` (>= 1 sample when n >= 2)."""
    n_val = min(n - 1, max(1, round(fraction * n))) if fraction > 0 and n >= 2 else 0
    perm = torch.randperm(n, generator=torch_generator(seed))
    return perm[n_val:], perm[:n_val]


def subset_context(ctx: ClientContext, idx: torch.Tensor) -> ClientContext:
    sub_ctx = copy.copy(ctx)
    sub_ctx.data = ClientData(ctx.data.x[idx], ctx.data.y[idx], ctx.data.holdout, ctx.data.augment)
    return sub_ctx


class PrunedScorer:
    """Validation (accuracy, mean cross-entropy) of a model with the unkept channels zeroed; only the
    tensors pruning touches are rewritten between calls."""

    def __init__(self, model: nn.Module, weights: Tensors, groups, x: torch.Tensor, y: torch.Tensor,
                 loss=None) -> None:
        self.model, self.weights, self.groups, self.x, self.y = model, weights, groups, x, y
        self.loss = loss or nn.functional.cross_entropy  # the run's train.loss (ClientContext.loss)
        load_float_state(model, weights)
        model.eval()
        live = {**dict(model.named_parameters()), **dict(model.named_buffers())}
        touched = tensor_masks({k: v.shape for k, v in weights.items()}, groups, keep_all(groups))
        self.live = {k: live[k] for k in touched}

    def detached(self) -> "PrunedScorer":
        """The same scorer on its own copy of the module (the runtime's module is reused by every client)."""
        return PrunedScorer(copy.deepcopy(self.model), self.weights, self.groups, self.x, self.y)

    def __call__(self, keep: Keep) -> tuple[float, float]:
        masks = tensor_masks({k: t.shape for k, t in self.live.items()}, self.groups, keep)
        with torch.no_grad():
            for k, t in self.live.items():
                t.copy_(torch.where(masks[k].to(t.device), self.weights[k], 0.0))
            if not len(self.y):
                return 0.0, 0.0
            logits = torch.cat([self.model(self.x[i:i + 512]) for i in range(0, len(self.y), 512)])
        loss = self.loss(logits, self.y).item()
        return float((logits.argmax(1) == self.y).float().mean()), loss


class SPATL(FedPer):
    """Shared encoder + local head, SCAFFOLD gradient control, salient-filter upload (Yu et al. SC22)."""

    name = "spatl"
    Params = SPATLParams

    def __init__(self, params, setup) -> None:
        super().__init__(params, setup)
        self._control = make_codec(self.p.control_codec)
        self._sparse_up = sparse_codec(setup.codec_up)
        self._sparse_control = sparse_codec(self.p.control_codec)
        self._mask = BitMask()
        self._costs: dict[str, CostModel] | None = None
        self._pretrained = load_agent(self.p.agent, self.p.agent_hidden) if self.p.selector == "rl" and self.p.agent \
            else None

    def _groups(self):
        """The model's prunable channel groups, from a model built on the meta device (server side)."""
        if "_groups_cache" not in self.__dict__:
            from fedsqueeze.models.zoo import build_model
            name, options = self.model_specs()["model"]
            with torch.device("meta"):
                model = build_model(name, self.setup.input_shape, self.setup.num_classes, **options)
            self.__dict__["_groups_cache"] = channel_groups(model)
        return self.__dict__["_groups_cache"]

    # ---- wire --------------------------------------------------------------------------------------
    def init_server(self, model: nn.Module) -> dict:
        return {**super().init_server(model), "c": split_head(parameter_zeros(model))[0]}

    def broadcast(self, state: dict, rnd: int, step: int) -> Messages:
        return {"model": state["weights"], "control": state["c"]}

    def upload_spec(self, rnd: int, step: int, down: Messages) -> UploadSpec:
        # pruned coordinates are zeros of the dense tensors: the shapes are the broadcast's
        mask = {g.layer: ((g.channels,), torch.float32) for g in self._groups()}
        return {"update": specs_of(down["model"]), "control": specs_of(down["control"]), "mask": mask}

    def codec(self, kind: str, direction: Direction, rnd: int) -> Codec:
        if direction == "up":
            if kind == "mask":
                return self._mask
            return self._sparse_control if kind == "control" else self._sparse_up
        return self._control if kind == "control" else self._down

    # ---- client ------------------------------------------------------------------------------------
    def new_agent(self) -> Agent:
        """The agent a client starts from: the pre-trained one if configured, else the seeded init."""
        return Agent(self.p.agent_config(), self._pretrained, init_seed=derive_seed(self.setup.seed, "spatl-agent"))

    def train_client(self, ctx: ClientContext, down: Messages, state: dict | None):
        """Local training and the selection problem of one client: (model, weights, c_new, c_i, loss,
        groups, costs, scorer, problem)."""
        model = self.local_model(ctx, down, state)
        x, c = down["model"], down["control"]
        c_i = state["c"] if state else {k: torch.zeros_like(v) for k, v in c.items()}
        train_idx, val_idx = validation_split(len(ctx.data), self.p.val_fraction,
                                              derive_seed(self.setup.seed, "spatl-validation", ctx.client))
        if not len(val_idx):  # a single sample: nothing to hold out, select on it
            val_idx = train_idx
        hook = gradient_correction(model, {k: self.p.control_scale * (c[k] - c_i[k]) for k in c})
        loss, steps = train_locally(model, subset_context(ctx, train_idx), after_backward=hook)
        weights = float_state(model)
        encoder, head = split_head(weights)
        c_new = next_control(c_i, c, x, encoder, steps, ctx.train.lr)
        groups = channel_groups(model)
        costs = self._cost_models(model, groups, encoder)
        score = PrunedScorer(model, weights, groups, ctx.data.x[val_idx], ctx.data.y[val_idx],
                             loss=ctx.loss)
        problem = SelectionProblem(groups, weights, score, costs[self.p.target], self.p.budget,
                                   self.p.min_ratio, self.p.step, flops=costs["flops"])
        return weights, c_new, c_i, loss, groups, costs, score, problem

    def client_update(self, ctx: ClientContext, down: Messages, state: dict | None) -> Reply:
        x, c = down["model"], down["control"]
        weights, c_new, c_i, loss, groups, costs, score, problem = self.train_client(ctx, down, state)
        encoder, head = split_head(weights)
        new_state: dict = {}
        if not groups:
            keep = {}
        elif self.p.selector == "rl":
            agent = self.new_agent()
            if state and "agent" in state:
                agent.load(state["agent"])
            prev = state.get("keep") if state else None
            ratios = [float(prev[g.layer].float().mean()) if prev and g.layer in prev else 1.0 for g in groups]
            graph = Graph.of(problem, ratios)
            agent.finetune(problem, self.p.agent_episodes,
                           torch_generator(self.setup.seed, "spatl-agent", ctx.client, ctx.round, ctx.step), graph)
            keep = agent.select(problem, graph)
            new_state["agent"] = agent.weights()
        else:
            keep = SELECTORS[self.p.selector](problem)
        masks = tensor_masks({k: v.shape for k, v in encoder.items()}, groups, keep)
        delta_c = apply_masks(sub(c_new, c_i), masks)
        counts = {g: int(m.sum()) for g, m in keep.items()}
        metrics = {"train_loss": loss, "flops_ratio": costs["flops"].fraction(counts),
                   "upload_ratio": costs["bytes"].fraction(counts),
                   "val_acc": score(keep_all(groups))[0], "val_acc_pruned": score(keep)[0]}
        up = {"update": apply_masks(sub(encoder, x), masks), "control": delta_c,
              "mask": {g: m.to(torch.float32) for g, m in keep.items()}}
        new_state.update({"head": head, "c": {k: c_i[k] + delta_c[k] for k in c_i},
                          "keep": {g: m.clone() for g, m in keep.items()}})
        return Reply(ctx.client, len(ctx.data), up, new_state, metrics)

    def _cost_models(self, model: nn.Module, groups, encoder: Tensors) -> dict[str, CostModel]:
        if self._costs is None:  # a function of the architecture only
            self._costs = {"flops": CostModel.flops(model, self.setup.input_shape, groups),
                           "bytes": CostModel.size({k: v.shape for k, v in encoder.items()}, groups)}
        return self._costs

    # ---- server ------------------------------------------------------------------------------------
    def sent_masks(self, reply: Reply, kind: str) -> dict[str, torch.Tensor]:
        """Per tensor of a reply's ``kind`` message: the coordinates the client kept — from its explicit
        ``mask`` message (a kept coordinate whose value is exactly zero still counts), or, for a reply
        without one, recovered from the decoded zeros."""
        msg = reply.up[kind]
        if "mask" not in reply.up:
            return {k: kept_mask(v) for k, v in msg.items()}
        keep = {g: m > 0.5 for g, m in reply.up["mask"].items()}
        groups = [g for g in self._groups() if g.layer in keep]
        return tensor_masks({k: v.shape for k, v in msg.items()}, groups, keep)

    def aggregate(self, state: dict, rnd: int, step: int, replies: list[Reply]) -> dict:
        x = state["weights"]
        w = [float(r.num_samples) if self.p.weighting == "samples" else 1.0 for r in replies]
        ups = [r.up["update"] for r in replies]
        masks = [self.sent_masks(r, "update") for r in replies]
        if self.p.aggregation == "masked":
            mean, _ = masked_mean(ups, w, masks)
        else:  # released code: average the pruned weights, zeros where a client pruned
            dense = [{k: torch.where(m[k], x[k] + u[k], 0.0) if k in m else x[k] + u[k] for k in u}
                     for u, m in zip(ups, masks)]
            mean, _ = masked_mean(dense, w)
            mean = sub(mean, x)
        new_x = {k: x[k] + self.p.server_lr * mean[k] if k in mean else x[k] for k in x}
        deltas = [r.up["control"] for r in replies]
        c = update_control(state["c"], deltas, self.p.num_clients, [self.sent_masks(r, "control") for r in replies])
        return {**state, "weights": new_x, "c": c}

    # ---- evaluation --------------------------------------------------------------------------------
    def pruned_personal_model(self, state: dict, client_state: dict | None):
        """(slot, weights, FLOPs fraction) of a client's *pruned* personal model: the current encoder with
        the client's head, the channels outside its last selection zeroed (which computes what the
        physically smaller model computes). A client that never selected has the unpruned model (1.0)."""
        slot, weights = self.personal_model(state, client_state)
        keep = client_state.get("keep") if client_state else None
        if not keep:
            return slot, weights, 1.0
        groups = [g for g in self._groups() if g.layer in keep]
        masks = tensor_masks({k: v.shape for k, v in weights.items()}, groups, keep)
        counts = {g.layer: int(keep[g.layer].sum()) for g in groups}
        return slot, apply_masks(weights, masks), self._flops_model().fraction(counts)

    def _flops_model(self) -> CostModel:
        if "_flops_cache" not in self.__dict__:
            from fedsqueeze.models.zoo import build_model
            name, options = self.model_specs()["model"]
            with torch.device("meta"):  # shapes only: no memory, no draw from the global RNG
                model = build_model(name, self.setup.input_shape, self.setup.num_classes, **options)
            self.__dict__["_flops_cache"] = CostModel.flops(model, self.setup.input_shape, self._groups())
        return self.__dict__["_flops_cache"]
