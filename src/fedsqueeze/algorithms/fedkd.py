"""FedKD: Wu, Wu, Lyu, Huang, Xie. "Communication-efficient federated learning via knowledge
distillation". Nature Communications 13:2032 (2022). arXiv 2108.13323. (docs/methods.md §1.)

Each client keeps a private **teacher** (model slot ``teacher``, architecture ``teacher`` /
``teacher_options``; never sent) and trains it together with the shared **student** (slot ``model``,
the configured ``[model]``) on the same local batches, by adaptive mutual distillation
(:func:`mutual_losses`). With task losses L_t = CE(teacher), L_s = CE(student) and the adaptive
intensity w = 1/(L_t + L_s):

- student: L_s + w·τ²·KL(p_t ‖ p_s) + w·MSE(H_t, W_h·H_s)
- teacher: L_t + w·τ²·KL(p_s ‖ p_t) + w·MSE(H_t, W_h·H_s)

p = softmax(logits/τ) (``temperature`` τ, 1 in the paper), KL averaged over the batch, H = the
penultimate features ``features(x)`` (``hidden = "none"`` drops the hidden term), W_h a learned
d_t × d_s projection without bias, kept in the client state with the teacher. In each model's loss
the other model's side is a constant target, so one backward pass gives each model exactly the
gradient of its own loss; W_h is trained by the student's hidden term (the paper does not say which
loss trains it). ``detach_weight = true`` (default) treats w as a scalar, as the paper does;
``false`` lets gradients flow through w into both models, as the released code's single joint loss
does. One optimizer (``[train]``: lr, momentum, weight decay) steps teacher, student and W_h.

Wire. Up ``update``: the student's update Δ_i, through the ``svd`` codec with the energy threshold
T(t) = T_start + (t/R)(T_end − T_start), t = 1..R the round (so T(R) = T_end, as in the released
code's ``(1 + comm_round)/epochs``). The codec factorises every ≥2-D tensor (conv kernels as
out × in·k·k) keeping the smallest rank K ≥ 1 with Σ_{j≤K} σ_j² ≥ T·Σ σ_j²; 1-D tensors go raw. The
server averages the decoded updates (n_i-weighted, ``weighting = "uniform"`` as an option, times
``server_lr``, 1 in the paper). Down, by ``downlink``:

- ``"model"`` (default): the global student weights (kind ``model``, configured ``codec.down``,
  fp32 by default), ŵ ← ŵ + mean Δ̂. Sound under partial participation: a client sampled after
  missing rounds needs nothing it does not receive. The aggregate is not SVD-compressed again: the
  weights travel, and a second projection would only add error.
- ``"update"`` (the paper's scheme): kind ``update`` = the previous round's aggregate through the
  svd codec at that round's T (round 1 sends nothing: every client derives the run's seeded initial
  student itself). The server applies the *decoded* aggregate (it runs the deterministic codec
  round trip itself), and each client stores the student it started from plus the round it saw, so
  server and clients hold bit-identical students. This needs every client to hear every broadcast;
  the engine sends a broadcast only to the sampled clients (and counts it only for them), so the
  mode requires full participation and raises ConfigError when a client missed a broadcast.
- ``"delta"`` (the paper's two-way compression, sound under partial participation; needs
  ``codec.downlink = "delta"``): kind ``model`` = the global student, which the engine's per-client
  delta downlink (``fedsqueeze.engine.delta``) turns into the difference between ŵ_t and the student
  that client holds, sent through the svd codec at T(t) (``svd = false``: through ``codec.down``). A
  client never sampled holds the run's seeded initial student (no bytes), one that missed rounds gets
  everything it missed in one payload, and the compression error stays in the next difference. The
  client trains from the student it rebuilt (within the SVD's residual of ŵ_t) and uploads its update
  from there; server and client copies stay bit-identical (tests/test_fedkd.py).

Byte cost of the choice, measured (real payloads): with 10 of 100 Fashion-MNIST clients per round
(configs/fmnist-fedkd.toml, student small_cnn, 424 kB fp32), ``"model"`` sends 10 × 424 kB = 4.2 MB
down per round; the round-2 aggregate through the svd codec is 44 kB (10.4% of the student at
T = 0.95, 52 kB = 12.4% at 0.98), so letting all 100 clients hear it every round would cost
4.4-5.2 MB: no cheaper, and every client would have to stay online and keep its student. On digits
(student mlp(32), 14.0 kB) the aggregate is 5.4 kB (38%). The compressed downlink pays off only when
most clients take part in most rounds. Uploads: 24-42 kB per client on Fashion-MNIST (6-10% of the
student; FedAvg of the teacher cnn uploads 6.6 MB). ``svd = false`` sends every
message through the configured codecs (the ablation "FedKD without compression"). With ``svd =
true`` the ``[codec]`` table is ignored for ``update`` messages.

Evaluation: the global student on the test set; a client's teacher on its held-out split (a client
never sampled has only the run's seeded initial teacher, so it scores like an untrained model).

Deviations from the paper: the default downlink (``"model"``) sends the global student's weights
instead of the compressed aggregate update; the paper's scheme is ``downlink = "update"`` (sound only
with full participation) or, with a per-client difference instead of one broadcast, ``"delta"``.
Where the saving comes from: most of FedKD's saving over FedAvg of the teacher is the smaller
student; FedAvg of the student itself with the same SVD uplink is the control that separates the
two (configs/suites/fmnist-fedkd.toml). Choices where the paper is silent: W_h trained by the
student's hidden term, features = the penultimate layer, T(t) with t counted from 1, τ² scaling of
the KL terms when τ ≠ 1. Where the released code (github.com/wuch15/FedKD, run.py, model_bert.py,
parameters.py) differs from the paper — we implement the paper:
- the SVD reconstruction omits diag(σ) (``np.dot(np.dot(u, sigma), v)`` with σ a vector);
- the rank rule can return K = 0 (the loop never reaches K = len(σ), and uses a strict ``>`` on the
  uplink but ``>=`` on the downlink); here K ≥ 1 always and "≥" everywhere (``svd.energy_rank``);
- the thresholds are declared ``type=int`` (``--tmin 0.95`` on the command line is rejected; only the
  unconverted defaults 0.95/0.98 work); here T_start/T_end are floats checked in (0, 1];
- clients upload the *update* of their student, as here (the paper calls it the gradient); its
  downlink is the compressed aggregate update (our ``"update"`` mode), our default sends weights;
- one joint loss: both KL terms and the hidden MSE train both models (no detached targets), the
  hidden MSE is added twice, w is not detached; ``nn.KLDivLoss()`` averages over classes too;
  the hidden loss matches all student layers to every third teacher layer plus attention maps,
  with no W_h (the projections ``mdenses`` are created but never used);
- 4 clients, all in every round; uniform averaging; zero updates are sent uncompressed.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from fedsqueeze.algorithms.base import (ClientContext, Direction, Messages, Reply, Tensors, UploadSpec, add,
                                        float_state, load_float_state, sub, weighted_mean)
from fedsqueeze.algorithms.context import train_locally
from fedsqueeze.algorithms.fedavg import FedAvg, FedAvgParams
from fedsqueeze.algorithms.quped import kd_loss
from fedsqueeze.codecs.base import Codec
from fedsqueeze.codecs.svd import SVD
from fedsqueeze.errors import ConfigError
from fedsqueeze.models.zoo import build_model
from fedsqueeze.seeding import derive_seed, torch_generator

MIN_TASK_LOSS = 1e-12  # w = 1/(L_t + L_s) stays finite if both models fit a batch exactly


@dataclass(frozen=True)
class FedKDParams(FedAvgParams):
    teacher: str = "cnn"                                # registered model name of the private teacher
    teacher_options: dict = field(default_factory=dict)
    T_start: float = 0.95                               # SVD energy threshold in round 1 ...
    T_end: float = 0.98                                 # ... rising linearly to this in round R
    temperature: float = 1.0                            # τ of the KL terms (1 in the paper)
    detach_weight: bool = True                          # w = 1/(L_t+L_s) as a scalar (paper) or not (code)
    hidden: str = "features"                            # features (penultimate) | none
    downlink: str = "model"                             # model (weights) | delta (svd per client) | update
    svd: bool = True                                    # false: configured codecs (no SVD)

    def __post_init__(self) -> None:
        super().__post_init__()
        from fedsqueeze.registry import MODELS

        checks = [
            ("teacher", self.teacher, isinstance(self.teacher, str) and self.teacher in MODELS,
             f"a registered model ({', '.join(MODELS.names())})"),
            ("teacher_options", self.teacher_options, isinstance(self.teacher_options, dict), "a table"),
            ("T_start", self.T_start, _unit(self.T_start), "a number in (0, 1]"),
            ("T_end", self.T_end, _unit(self.T_end), "a number in (0, 1]"),
            ("temperature", self.temperature, _number(self.temperature) and self.temperature > 0, "a number > 0"),
            ("detach_weight", self.detach_weight, isinstance(self.detach_weight, bool), "true or false"),
            ("hidden", self.hidden, self.hidden in ("features", "none"), "'features' or 'none'"),
            ("downlink", self.downlink, self.downlink in ("model", "delta", "update"),
             "'model', 'delta' or 'update'"),
            ("svd", self.svd, isinstance(self.svd, bool), "true or false")]
        for key, value, ok, allowed in checks:
            if not ok:
                raise ConfigError(f"algorithm.{key} = {value!r} is invalid: it must be {allowed}")


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _unit(v) -> bool:
    return _number(v) and 0.0 < v <= 1.0


def energy_threshold(rnd: int, rounds: int, T_start: float, T_end: float) -> float:
    """T(t) = T_start + (t/R)(T_end − T_start) for round t in 1..R (clamped to that range)."""
    t = min(max(rnd, 0), rounds)
    return min(1.0, T_start + (t / rounds) * (T_end - T_start))


# ---- the client-side loss (a pure function, tested by hand) ---------------------------------------

def mutual_losses(z_t: torch.Tensor, z_s: torch.Tensor, y: torch.Tensor, h_t: torch.Tensor | None = None,
                  h_s_proj: torch.Tensor | None = None, *, temperature: float = 1.0,
                  detach_weight: bool = True, task: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None
                  ) -> dict[str, torch.Tensor]:
    """FedKD's adaptive mutual distillation losses for one batch.

    ``z_t``/``z_s`` teacher/student logits, ``h_t`` teacher features, ``h_s_proj`` = W_h·H_s (both
    None: no hidden term). Returns ``teacher`` and ``student`` (each model's loss; the other model's
    side enters as a constant target), ``weight`` (w), ``task_t``, ``task_s``, ``kl_t``, ``kl_s``, ``mse``.
    ``task``: the task loss (the run's ``train.loss`` via ``ClientContext.loss``; default cross-entropy, as in
    the paper); the distillation terms stay as the paper defines them.
    """
    task = F.cross_entropy if task is None else task
    task_t, task_s = task(z_t, y), task(z_s, y)
    w = 1.0 / (task_t + task_s).clamp_min(MIN_TASK_LOSS)
    if detach_weight:
        w = w.detach()
    kl_s = kd_loss(z_s, z_t.detach(), temperature)  # τ²·KL(p_t ‖ p_s): trains the student
    kl_t = kd_loss(z_t, z_s.detach(), temperature)  # τ²·KL(p_s ‖ p_t): trains the teacher
    out = {"weight": w, "task_t": task_t, "task_s": task_s, "kl_t": kl_t, "kl_s": kl_s}
    mse_s = mse_t = torch.zeros((), dtype=z_s.dtype, device=z_s.device)
    if h_t is not None and h_s_proj is not None:
        mse_s = F.mse_loss(h_s_proj, h_t.detach())  # trains the student and W_h
        mse_t = F.mse_loss(h_t, h_s_proj.detach())  # trains the teacher (same value)
    out["mse"] = mse_s.detach()
    out["student"] = task_s + w * (kl_s + mse_s)
    out["teacher"] = task_t + w * (kl_t + mse_t)
    return out


class _Pair(nn.Module):
    """Teacher, student and W_h under one module, so one optimizer steps all three."""

    def __init__(self, teacher: nn.Module, student: nn.Module, proj: nn.Linear | None) -> None:
        super().__init__()
        self.teacher, self.student, self.proj = teacher, student, proj


def _logits_and_features(model: nn.Module, x: torch.Tensor, hidden: bool):
    if not hidden:
        return model(x), None
    h = model.features(x)
    return model.head(h), h


def new_projection(d_s: int, d_t: int, seed: int) -> torch.Tensor:
    """W_h (d_t × d_s), uniform in ±1/√d_s like ``nn.Linear``, from the run's seed (same on every client)."""
    bound = d_s ** -0.5
    return torch.empty(d_t, d_s).uniform_(-bound, bound, generator=torch_generator(seed, "fedkd", "W_h"))


class FedKD(FedAvg):
    """Private teacher + shared student by adaptive mutual distillation; dynamic-SVD updates (Wu et al. 2022)."""

    name = "fedkd"
    Params = FedKDParams

    def __init__(self, params: FedKDParams, setup) -> None:
        super().__init__(params, setup)
        if params.downlink == "delta" and setup.downlink != "delta":
            raise ConfigError("algorithm.downlink = 'delta' sends each client the SVD-compressed difference to the "
                              "student it holds: set codec.downlink = 'delta' too")
        self._teacher0 = self._seeded_teacher()  # also checks the teacher fits the input early

    def model_specs(self) -> dict[str, tuple[str, dict]]:
        return {**super().model_specs(), "teacher": (self.p.teacher, dict(self.p.teacher_options))}

    def _seeded_teacher(self) -> Tensors:
        """The run's initial teacher, seeded exactly as the engine seeds a model slot, so the server
        can name a never-sampled client's teacher (``personal_model`` is not given a context)."""
        rng = torch.random.get_rng_state()
        torch.manual_seed(derive_seed(self.setup.seed, "init", "teacher"))
        try:
            model = build_model(self.p.teacher, self.setup.input_shape, self.setup.num_classes,
                                **self.p.teacher_options)
        finally:
            torch.random.set_rng_state(rng)
        if self.p.hidden == "features" and not (hasattr(model, "features") and hasattr(model, "head")):
            raise ConfigError(f"algorithm.teacher = {self.p.teacher!r} has no features()/head split; "
                              "use a zoo model or set algorithm.hidden = 'none'")
        return float_state(model)

    def threshold(self, rnd: int) -> float:
        return energy_threshold(rnd, self.setup.rounds, self.p.T_start, self.p.T_end)

    def codec(self, kind: str, direction: Direction, rnd: int) -> Codec:
        if self.p.svd and self.p.downlink == "delta" and kind == "model" and direction == "down":
            return SVD(threshold=self.threshold(rnd))  # the difference to the client's student, at T(t)
        if not self.p.svd or kind != "update":
            return super().codec(kind, direction, rnd)
        # the downlink of round rnd carries the aggregate of round rnd - 1, compressed at its T
        return SVD(threshold=self.threshold(rnd if direction == "up" else rnd - 1))

    # ---- server ------------------------------------------------------------------------------------
    def broadcast(self, state: dict, rnd: int, step: int) -> Messages:
        if self.p.downlink in ("model", "delta"):
            return {"model": state["weights"]}
        return {"update": state["pending"]} if "pending" in state else {}

    def upload_spec(self, rnd: int, step: int, down: Messages) -> UploadSpec:
        return {"update": self.slot_spec("model")}  # the student's update, whatever the downlink carried

    def aggregate(self, state: dict, rnd: int, step: int, replies: list[Reply]) -> dict:
        if self.p.downlink in ("model", "delta"):
            return super().aggregate(state, rnd, step, replies)
        weights = [float(r.num_samples) if self.p.weighting == "samples" else 1.0 for r in replies]
        mean = weighted_mean([r.up["update"] for r in replies], weights)
        mean = {k: v * self.p.server_lr for k, v in mean.items()}
        # what every client will decode from next round's broadcast: apply exactly that
        codec = self.codec("update", "down", rnd + 1)
        if codec.stateful:
            raise ConfigError("algorithm.downlink = 'update' needs a stateless downlink codec")
        decoded = codec.decode(codec.encode(mean, seed=self._down_seed(rnd + 1)))
        return {**state, "weights": add(state["weights"], decoded), "pending": mean}

    def _down_seed(self, rnd: int) -> int:
        from fedsqueeze.engine.runtime import payload_seed  # the engine's seed for this broadcast
        return payload_seed(self.setup.seed, "down", rnd, 0, -1, "update")

    # ---- client ------------------------------------------------------------------------------------
    def _start(self, ctx: ClientContext, down: Messages, state: dict) -> Tensors:
        if self.p.downlink in ("model", "delta"):  # delta: the engine rebuilt the student from its mirror
            return down["model"]
        if ctx.round == 1 and "seen" not in state:
            return ctx.initial_weights()
        if state.get("seen") != ctx.round - 1:
            last = state.get("seen", "never")
            raise ConfigError(
                f"algorithm.downlink = 'update': client {ctx.client} is sampled in round {ctx.round} but last "
                f"synchronised in round {last}, so it missed broadcasts; this mode needs every client in every "
                "round (train.clients_per_round = data.num_clients) — use algorithm.downlink = 'model' otherwise")
        return add(state["student"], down["update"])

    def client_update(self, ctx: ClientContext, down: Messages, state: dict | None) -> Reply:
        state = state or {}
        start = self._start(ctx, down, state)
        student, teacher = ctx.model("model"), ctx.model("teacher")
        load_float_state(student, start)
        load_float_state(teacher, state["teacher"] if "teacher" in state else ctx.initial_weights("teacher"))
        proj = self._projection(ctx, teacher, student, state.get("W_h"))
        pair, hidden = _Pair(teacher, student, proj), proj is not None
        sums = {"task_s": 0.0, "task_t": 0.0, "weight": 0.0}

        def loss_fn(_, xb, yb):
            z_t, h_t = _logits_and_features(teacher, xb, hidden)
            z_s, h_s = _logits_and_features(student, xb, hidden)
            out = mutual_losses(z_t, z_s, yb, h_t, proj(h_s) if hidden else None,
                                temperature=self.p.temperature, detach_weight=self.p.detach_weight, task=ctx.loss)
            for key in sums:
                sums[key] += float(out[key].detach())
            return out["teacher"] + out["student"]

        _, steps = train_locally(pair, ctx, loss_fn)
        new_state = {"teacher": float_state(teacher)}
        if proj is not None:
            new_state["W_h"] = proj.weight.detach().clone()
        if self.p.downlink == "update":
            new_state.update(student=start, seen=ctx.round)
        n = max(steps, 1)
        metrics = {"train_loss": sums["task_s"] / n, "teacher_loss": sums["task_t"] / n,
                   "kd_weight": sums["weight"] / n}
        return Reply(ctx.client, len(ctx.data), {"update": sub(float_state(student), start)}, new_state, metrics)

    def _projection(self, ctx: ClientContext, teacher: nn.Module, student: nn.Module,
                    w_h: torch.Tensor | None) -> nn.Linear | None:
        if self.p.hidden == "none":
            return None
        if w_h is None:
            with torch.no_grad():
                x = ctx.data.x[:1]
                d_t, d_s = teacher.features(x).shape[1], student.features(x).shape[1]
            w_h = new_projection(d_s, d_t, self.setup.seed)
        proj = nn.Linear(w_h.shape[1], w_h.shape[0], bias=False, device=ctx.data.x.device)
        with torch.no_grad():
            proj.weight.copy_(w_h)
        return proj

    # ---- evaluation --------------------------------------------------------------------------------
    def personal_model(self, state: dict, client_state: dict | None):
        if client_state and "teacher" in client_state:
            return "teacher", client_state["teacher"]
        return "teacher", self._teacher0
