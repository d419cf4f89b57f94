"""QuPeD: Ozkara, Singh, Data, Diggavi. "QuPeD: Quantized Personalization via Distillation with
Applications to Federated Learning". NeurIPS 2021, arXiv 2107.13892.

Each client i keeps a personalized, quantized model x_i (its own bit-width b_i, 2**b_i learnable
centers c_i per quantized layer, and optionally its own architecture) that never leaves the client; a
full-precision global model w (the configured ``[model]``) is learned collaboratively. Per local step
on a batch, in the paper's alternating order (see ``fedsqueeze.models.quantizer`` for the quantizer):

- x_i: gradient step on (1 − λ_p)·CE(x_i) + λ_p·KD(x_i ← w), then the prox step towards Q_c(x_i)
  with λ(t) = λ0·(e + 1) (e = epochs this client's personal model has trained), then the center step;
- w: gradient step on (1 − λ_w)·CE(w) + λ_w·KD(w ← Q_c(x_i)), the teacher being the quantized
  personal model after its step.

KD(student ← teacher) = T²·KL(softmax(z_t/T) ‖ softmax(z_s/T)), the temperature applied to both.
Server: FedAvg on w (``server_lr``, ``weighting`` as in FedAvg).

Wire: down ``model`` (w); up ``update`` (w_i − w, the same information as w_i and friendlier to update
codecs). The configured ``codec.up`` / ``codec.down`` apply to both. Personal models and centers never
travel. Each reply reports ``model_bytes``: the length of the client's deployed model packed by
``fedsqueeze.models.quantizer.pack_model`` (b_i bits per quantized weight + fp32 for the other tensors
+ the centers + a small header); the engine reports its sample-weighted mean over the round's clients
in ``client_metrics`` (column ``client_model_bytes``), beside ``train_loss`` (the personal objective)
and ``global_train_loss`` (w's objective).

Personal models (``personal`` in ``[algorithm]``): a list of entries ``{bits = b, model = "name",
options = {...}}``; client i gets entry ``i mod len(personal)`` (repeat an entry for a larger share).
``model`` defaults to the configured model (and its options); an empty list gives every client
``bits`` bits on the configured model. E.g. half the clients 2-bit small_cnn, half 4-bit mlp::

    personal = [{bits = 2, model = "small_cnn"}, {bits = 4, model = "mlp", options = {hidden = 100}}]

``federated = false`` (algorithm ``local_quant``) trains the same quantized models on local data only
(CE + quantization terms; no w, nothing on the wire): the local baseline.

Choices where the paper is silent or differs from its released code (centralized quantizer only):
- The deployed personal model is Q_c(x_i) (hard quantization). From round ⌊freeze_from·R⌋ + 1 on, a
  participating client freezes it (x_i ← Q_c(x_i)) and afterwards trains only the centers and the
  full-precision tensors: the fine-tuning phase of the released code (there at 80% of the epochs).
- λ_p = λ_w = 0.25 and T = 1 are our defaults (not given for this setting; a short scan on digits
  preferred small KD weights). λ_w = 0 makes w's training exactly FedAvg's.
- A client's personal model starts from the run's seeded initial weights of its architecture (the
  same for every client of that architecture). ``personal_init = "global"`` starts it instead from
  the global model w it receives at its first participation (when the architectures match; others
  keep the initial weights) — the paper does not say; with partial participation a client first
  sampled late otherwise starts from scratch.
- The released code divides only the teacher logits by the temperature;
  ``teacher_only_temperature = true`` reproduces that (off by default).
- A client that has never participated has no personal model; ``personal_model`` (which is not told
  the client id) then returns the global model w (for ``local_quant``, the untrained initial model).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.nn import functional as F

from fedsqueeze.algorithms.base import ClientContext, Messages, Reply, float_state, load_float_state, sub
from fedsqueeze.algorithms.fedavg import FedAvg, FedAvgParams
from fedsqueeze.errors import ConfigError
from fedsqueeze.models.quantizer import QuantConfig, Quantizer, hard_quantize, pack_model


@dataclass(frozen=True)
class QuPeDParams(FedAvgParams):
    personal: list = field(default_factory=list)  # [{bits, model?, options?}]: client i gets entry i mod len
    bits: int = 2                    # b_i for every client when ``personal`` is empty
    lambda_p: float = 0.25           # λ_p: KD weight in the personal objective
    lambda_w: float = 0.25           # KD weight (from the personal model) in the global model's objective
    temperature: float = 1.0         # T, applied to student and teacher logits
    teacher_only_temperature: bool = False  # released code's quirk: only the teacher logits divided by T
    reg: str = "l1"                  # R: l1 | l2
    lam: float = 1e-3                # λ0: λ(e) = λ0·(e + 1)
    eta_c: float = 1e-4              # η_c: center step size
    clip: float = 10.0               # clip of the per-center gradient sums
    center_prox: bool = True         # the λR term also moves the centers
    x_grad: str = "quantized"        # quantized (straight-through) | full (released code)
    quantize_first_last: bool = False
    personal_lr: float = 0.0         # η for x_i (and its prox); 0 = train.lr
    freeze_from: float = 0.8         # hard-quantize personal models in rounds > freeze_from·R (1 = never)
    personal_init: str = "initial"   # initial (seeded initial weights) | global (w at first participation)
    federated: bool = True           # false: local training of the quantized models only

    def __post_init__(self) -> None:
        super().__post_init__()
        for key, ok, allowed in [
                ("lambda_p", 0 <= self.lambda_p <= 1, "a number in [0, 1]"),
                ("lambda_w", 0 <= self.lambda_w <= 1, "a number in [0, 1]"),
                ("temperature", self.temperature > 0, "a number > 0"),
                ("personal_lr", self.personal_lr >= 0, "a number >= 0 (0 = train.lr)"),
                ("freeze_from", 0 <= self.freeze_from <= 1, "a number in [0, 1]"),
                ("personal_init", self.personal_init in ("initial", "global"), "'initial' or 'global'")]:
            if not ok:
                raise ConfigError(f"algorithm.{key} = {getattr(self, key)!r} is invalid: it must be {allowed}")
        if not isinstance(self.personal, list):
            raise ConfigError("algorithm.personal must be a list of tables, e.g. [{bits = 2, model = \"mlp\"}]")
        for i, entry in enumerate(self.personal):
            _check_entry(i, entry)
        self.quant_config(self.bits)  # validates the quantizer options

    def quant_config(self, bits: int) -> QuantConfig:
        return QuantConfig(bits=bits, reg=self.reg, lam=self.lam, eta_c=self.eta_c, clip=self.clip,
                           center_prox=self.center_prox, x_grad=self.x_grad,
                           quantize_first_last=self.quantize_first_last)


def _check_entry(i: int, entry: object) -> None:
    from fedsqueeze.registry import MODELS

    where = f"algorithm.personal[{i}]"
    if not isinstance(entry, dict):
        raise ConfigError(f"{where} must be a table like {{bits = 2, model = \"mlp\"}}, got {entry!r}")
    unknown = set(entry) - {"bits", "model", "options"}
    if unknown:
        raise ConfigError(f"{where} has unknown keys {sorted(unknown)}; allowed: bits, model, options")
    bits = entry.get("bits")
    if isinstance(bits, bool) or not isinstance(bits, int) or not 1 <= bits <= 8:
        raise ConfigError(f"{where}.bits = {bits!r} is invalid: it must be an integer in [1, 8]")
    if "model" in entry and entry["model"] not in MODELS:
        raise ConfigError(f"{where}.model = {entry['model']!r} is not a registered model; "
                          f"available: {', '.join(MODELS.names())}")
    if not isinstance(entry.get("options", {}), dict):
        raise ConfigError(f"{where}.options must be a table, got {entry['options']!r}")


def kd_loss(student: torch.Tensor, teacher: torch.Tensor, T: float, teacher_only: bool = False) -> torch.Tensor:
    """T²·KL(softmax(teacher/T) ‖ softmax(student/T)), batch mean; ``teacher_only`` leaves the student
    logits unscaled (the released code's quirk)."""
    log_s = F.log_softmax(student if teacher_only else student / T, dim=1)
    return T * T * F.kl_div(log_s, F.softmax(teacher / T, dim=1), reduction="batchmean")


class QuPeD(FedAvg):
    """Quantized personalized models (per-client bits/architecture) distilled with a FedAvg global model."""

    name = "quped"
    Params = QuPeDParams

    def __init__(self, params: QuPeDParams, setup) -> None:
        super().__init__(params, setup)
        entries = params.personal or [{"bits": params.bits}]
        archs: list[tuple[str, dict]] = []
        self._groups: list[tuple[str, int]] = []  # (model slot, bits) per entry
        for e in entries:
            arch = (e["model"], dict(e.get("options", {}))) if "model" in e \
                else (setup.model_name, dict(setup.model_options))
            if arch not in archs:
                archs.append(arch)
            self._groups.append((f"personal{archs.index(arch)}", int(e["bits"])))
        self._slots = {f"personal{k}": arch for k, arch in enumerate(archs)}
        self._global_arch = (setup.model_name, dict(setup.model_options))

    @property
    def federated(self) -> bool:
        return self.p.federated

    def model_specs(self) -> dict[str, tuple[str, dict]]:
        return {**super().model_specs(), **self._slots}

    def personal_spec(self, client: int) -> tuple[str, int]:
        """(model slot, bits) of a client's personal model."""
        return self._groups[client % len(self._groups)]

    # ---- the round -------------------------------------------------------------------------------
    def broadcast(self, state: dict, rnd: int, step: int) -> Messages:
        return super().broadcast(state, rnd, step) if self.federated else {}

    def aggregate(self, state: dict, rnd: int, step: int, replies: list[Reply]) -> dict:
        return super().aggregate(state, rnd, step, replies) if self.federated and replies else state

    def client_update(self, ctx: ClientContext, down: Messages, state: dict | None) -> Reply:
        slot, bits = self.personal_spec(ctx.client)
        cfg = self.p.quant_config(bits)
        x_model = ctx.model(slot)
        if state is None:
            start = ctx.initial_weights(slot)
            if self.p.personal_init == "global" and self.federated and self._slots[slot] == self._global_arch:
                start = down["model"]
            load_float_state(x_model, start)
            quant, steps = Quantizer.init(cfg, float_state(x_model)), 0
        else:
            load_float_state(x_model, state["x"])
            quant, steps = Quantizer.from_state(cfg, state["quantizer"]), int(state["steps"])
        if ctx.round > self.p.freeze_from * self.setup.rounds and not quant.frozen:
            quant.freeze_(x_model)
        w_model = None
        if self.federated:
            w_model = ctx.model()
            load_float_state(w_model, down["model"])
        x_loss, w_loss, steps = self._train(ctx, x_model, w_model, quant, steps)
        x = float_state(x_model)
        new_state = {"slot": slot, "x": x, "quantizer": quant.state(), "steps": steps}
        metrics = {"train_loss": x_loss, "model_bytes": float(len(pack_model(quant.hard(x), quant.centers, bits)))}
        up: Messages = {}
        if w_model is not None:
            up = {"update": sub(float_state(w_model), down["model"])}
            metrics["global_train_loss"] = w_loss
        return Reply(ctx.client, len(ctx.data), up, new_state, metrics)

    def _train(self, ctx: ClientContext, x_model: nn.Module, w_model: nn.Module | None, quant: Quantizer,
               steps: int) -> tuple[float, float, int]:
        """Local steps on x_i (and w); returns (mean personal loss, mean global loss, total personal steps)."""
        torch.manual_seed(ctx.seed)
        p = self.p
        x_model.train()
        opt_x = ctx.optimizer(x_model.parameters(), lr=p.personal_lr or None)
        opt_w = None
        if w_model is not None:
            w_model.train()
            opt_w = ctx.optimizer(w_model.parameters())
        per_epoch = math.ceil(len(ctx.data) / ctx.train.batch_size)
        x_total = w_total = 0.0
        n = 0
        for xb, yb in ctx.batches():
            lam = quant.lam(steps // per_epoch)
            if w_model is None:
                x_loss, _ = quant.step(x_model, opt_x, xb, lambda z: ctx.loss(z, yb), lam)
            else:
                with torch.no_grad():
                    t_w = w_model(xb)
                x_loss, t_x = quant.step(x_model, opt_x, xb, lambda z: self._objective(z, yb, t_w, p.lambda_p, ctx.loss), lam)
                opt_w.zero_grad(set_to_none=True)
                w_loss = self._objective(w_model(xb), yb, t_x, p.lambda_w, ctx.loss)
                w_loss.backward()
                opt_w.step()
                w_total += float(w_loss.detach())
            x_total += x_loss
            steps, n = steps + 1, n + 1
        return x_total / max(n, 1), w_total / max(n, 1), steps

    def _objective(self, logits: torch.Tensor, y: torch.Tensor, teacher: torch.Tensor, weight: float,
                   task=F.cross_entropy) -> torch.Tensor:
        """(1 − weight)·task loss (CE, or the run's ``train.loss``) + weight·KD(student ← teacher)."""
        kd = kd_loss(logits, teacher, self.p.temperature, self.p.teacher_only_temperature) if weight else 0.0
        return (1 - weight) * task(logits, y) + weight * kd

    # ---- evaluation --------------------------------------------------------------------------------
    def global_model(self, state: dict):
        return super().global_model(state) if self.federated else None

    def personal_model(self, state: dict, client_state: dict | None):
        if not client_state:
            return "model", state["weights"]
        return client_state["slot"], hard_quantize(client_state["x"], client_state["quantizer"]["centers"])

    def client_profile(self, client: int, client_state: dict | None) -> dict:
        """The client's bit-width group and its deployed model's size (bytes of ``pack_model``)."""
        slot, bits = self.personal_spec(client)
        name = self.model_specs()[slot][0]
        profile: dict = {"group": f"{bits}-bit {name}"}
        if client_state:
            centers = client_state["quantizer"]["centers"]
            profile["model_bytes"] = len(pack_model(hard_quantize(client_state["x"], centers), centers, bits))
        return profile


@dataclass(frozen=True)
class LocalQuantParams(QuPeDParams):
    federated: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.federated:
            raise ConfigError("algorithm 'local_quant' never communicates; use algorithm 'quped' for "
                              "federated training (remove algorithm.federated)")


class LocalQuant(QuPeD):
    """Local-only training of QuPeD's quantized personal models (no global model, zero bytes)."""

    name = "local_quant"
    Params = LocalQuantParams
    communicates = False
