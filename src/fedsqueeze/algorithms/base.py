"""The algorithm contract (after fedjax/pfl).

An algorithm never loops over rounds and never counts bytes. The engine calls, for each round
and each communication step of that round (``num_steps``, 1 for most algorithms):

1. ``broadcast(server_state, rnd, step) -> {kind: tensors}`` — what goes down to the sampled clients;
2. ``client_update(ctx, down, client_state) -> Reply`` on each sampled client — ``Reply.up`` is
   ``{kind: tensors}``, the message for the server;
3. ``aggregate(server_state, rnd, step, replies) -> server_state``.

``upload_spec(rnd, step, down)`` says what a valid reply uploads (message kinds, tensor names,
shapes, dtypes); the engine rejects any other reply before ``aggregate`` sees it, so ``aggregate``
only ever gets well-formed, finite messages (see ``fedsqueeze.engine.validation``).

Between 1-2 and 2-3 the engine encodes each message with ``codec(kind, direction, rnd)``, records
its bytes in the ledger and decodes it: the algorithm only ever sees what the receiver decoded.
Client state is a dict (or None before a client's first round): ``Reply.state`` is stored as the
client's new state, and None deletes it — return the state you were given to keep it unchanged. Hyperparameters are a frozen dataclass ``Params`` named after the paper's
symbols.
"""
from __future__ import annotations

import dataclasses
import difflib
import os
from abc import ABC, abstractmethod
from contextlib import contextmanager
from dataclasses import dataclass, field
from collections.abc import Callable
from typing import Any, ClassVar, Literal

import torch
from torch import nn

from fedsqueeze.codecs.base import Codec, Tensors
from fedsqueeze.codecs.spec import make_codec
from fedsqueeze.errors import ConfigError

Direction = Literal["up", "down"]
Messages = dict[str, Tensors]
Spec = dict[str, tuple[tuple[int, ...], torch.dtype]]  # tensor name -> (shape, dtype)
UploadSpec = dict[str, Spec]                           # message kind -> its tensors


def specs_of(tensors: Tensors) -> Spec:
    """The (shape, dtype) of every tensor of a message."""
    return {name: (tuple(t.shape), t.dtype) for name, t in tensors.items()}


@dataclass(frozen=True)
class NoParams:
    pass


@dataclass
class Reply:
    client: int
    num_samples: int
    up: Messages
    state: dict | None
    metrics: dict[str, float] = field(default_factory=dict)


@dataclass
class VectorJob:
    """One client's part in ``engine.vectorize`` (``fedsqueeze.engine.vectorized``): plain local SGD on
    cross-entropy from ``start`` over ``ctx.batches()`` — what ``train_locally`` does — plus an optional
    proximal gradient ``prox_mu·(w − start)``; ``finish(trained weights, mean loss)`` returns exactly the
    ``Reply`` that ``client_update`` would have returned."""

    start: Tensors                                  # the slot's weights the client starts from (parameters)
    finish: Callable[[Tensors, float], Reply]
    slot: str = "model"
    prox_mu: float = 0.0


@dataclass
class Setup:
    """What an algorithm may know about the experiment: model specs, codecs, schedule."""

    model_name: str
    model_options: dict
    input_shape: tuple[int, ...]
    num_classes: int
    rounds: int
    codec_up: Any = "fp32"
    codec_down: Any = "fp32"
    seed: int = 0
    downlink: str = "broadcast"  # codec.downlink: "broadcast" (one payload for all) | "delta" (per client)
    loss: str = "cross_entropy"  # train.loss: the task loss (clients get it as ``ClientContext.loss``)


class Algorithm(ABC):
    name: ClassVar[str] = ""
    Params: ClassVar[type] = NoParams
    communicates: ClassVar[bool] = True
    # engine.vectorize: the client update is train_locally from some start weights (see ``vector_job``)
    vectorizable: ClassVar[bool] = False

    def __init__(self, params: Any, setup: Setup) -> None:
        self.p = params
        self.setup = setup
        self._up = make_codec(setup.codec_up)
        self._down = make_codec(setup.codec_down)

    @classmethod
    def from_config(cls, raw: dict, setup: Setup) -> "Algorithm":
        names = [f.name for f in dataclasses.fields(cls.Params)]
        for key in raw:
            if key not in names:
                hint = difflib.get_close_matches(key, names, n=1)
                raise ConfigError(f"algorithm {cls.name!r} has no option 'algorithm.{key}'"
                                  + (f" (did you mean 'algorithm.{hint[0]}'?)" if hint
                                     else f"; options: {', '.join(names) or 'none'}"))
        _check_option_types(cls.name, cls.Params, raw)
        try:
            params = cls.Params(**raw)
        except TypeError as e:
            raise ConfigError(f"algorithm {cls.name!r}: {e}") from e
        return cls(params, setup)

    # ---- models --------------------------------------------------------------------------------
    def model_specs(self) -> dict[str, tuple[str, dict]]:
        """Model slots this algorithm uses: key -> (registered model name, options)."""
        return {"model": (self.setup.model_name, self.setup.model_options)}

    # ---- the round -------------------------------------------------------------------------------
    @abstractmethod
    def init_server(self, model: nn.Module) -> dict:
        """Initial server state, given a freshly initialised (seeded) model of slot 'model'."""

    def num_steps(self, rnd: int) -> int:
        return 1

    @abstractmethod
    def broadcast(self, state: dict, rnd: int, step: int) -> Messages: ...

    @abstractmethod
    def client_update(self, ctx: "ClientContext", down: Messages, state: dict | None) -> Reply: ...

    @abstractmethod
    def aggregate(self, state: dict, rnd: int, step: int, replies: list[Reply]) -> dict: ...

    def vector_job(self, ctx: "ClientContext", down: Messages, state: dict | None) -> VectorJob:
        """``client_update`` split for ``engine.vectorize``: the start weights and how to turn the trained
        weights into the reply. Only algorithms with ``vectorizable = True`` implement it."""
        raise ConfigError(f"algorithm {self.name!r} cannot train its clients vectorised; set engine.vectorize = false")

    def upload_spec(self, rnd: int, step: int, down: Messages) -> UploadSpec | None:
        """What a valid reply uploads in this step, given the broadcast ``down``: exactly these message
        kinds with exactly these tensors (None: not declared, only values are checked). Default: FedAvg's
        wire, an ``update`` shaped like the broadcast ``model``, and nothing without one. Algorithms with
        other messages override this."""
        if not self.communicates or "model" not in down:
            return {}
        return {"update": specs_of(down["model"])}

    def slot_spec(self, slot: str = "model", *, parameters_only: bool = False) -> Spec:
        """Names, shapes and dtypes of a model slot's float state (or of its parameters only), from a
        model built on the meta device: no memory, no draw from the global RNG."""
        key = (slot, parameters_only)
        cache = self.__dict__.setdefault("_slot_specs", {})
        if key not in cache:
            from fedsqueeze.models.zoo import build_model

            name, options = self.model_specs()[slot]
            with torch.device("meta"):
                model = build_model(name, self.setup.input_shape, self.setup.num_classes, **options)
            items = model.named_parameters() if parameters_only else model.state_dict().items()
            cache[key] = {k: (tuple(v.shape), v.dtype) for k, v in items if v.is_floating_point()}
        return cache[key]

    def codec(self, kind: str, direction: Direction, rnd: int) -> Codec:
        """The codec for a message kind; default: the configured up/down codecs."""
        return self._up if direction == "up" else self._down

    # ---- evaluation ------------------------------------------------------------------------------
    def global_model(self, state: dict) -> tuple[str, Tensors] | None:
        """(model slot, weights) of the global model, or None if the algorithm has none."""
        return None

    def personal_model(self, state: dict, client_state: dict | None) -> tuple[str, Tensors] | None:
        """(model slot, weights) of a client's personalised model; default: the global model."""
        return self.global_model(state)

    # personal models that are adapted to a client's data at evaluation time (Per-FedAvg's one step)
    adapts: ClassVar[bool] = False

    def adapt(self, model: nn.Module, data: Any) -> None:
        """With ``adapts = True``: turn ``model`` (holding ``personal_model``'s weights) into the client's
        personal model in place, given its ``ClientData``; the engine evaluates it right after."""

    def client_profile(self, client: int, client_state: dict | None) -> dict[str, Any]:
        """Facts about a client's personalised model for reports (``fedsqueeze personal``), e.g.
        ``{"group": "2-bit mlp", "model_bytes": 51234}``; default: none."""
        return {}


# ---- helpers shared by algorithms --------------------------------------------------------------

def _check_option_types(name: str, params_cls: type, raw: dict) -> None:
    """Options whose field is annotated ``float``/``int``/``str``/``bool`` must be given as that kind of value
    (a number for ``float``), so a typo is a one-line error naming the option, not a comparison failure."""
    import typing

    try:
        hints = typing.get_type_hints(params_cls)
    except Exception:  # noqa: BLE001  an annotation we cannot resolve: the dataclass checks its own values
        return
    kinds = {float: ((int, float), "a number"), int: ((int,), "an integer"), str: ((str,), "a string"),
             bool: ((bool,), "true or false")}
    for key, value in raw.items():
        kind = kinds.get(hints.get(key))
        if kind is None:
            continue
        ok = isinstance(value, kind[0]) and (hints[key] is bool or not isinstance(value, bool))
        if not ok:
            raise ConfigError(f"algorithm {name!r}: option algorithm.{key} = {str(value)[:40]!r} must be "
                              f"{kind[1]}, not {type(value).__name__}")


def is_number(value: Any) -> bool:
    """An int or a float (a bool is not a number here)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_options(params: Any, checks: list[tuple[str, bool, str]]) -> None:
    """``checks``: ``(key, ok, allowed)`` per option of ``params`` (a ``Params`` dataclass); the first that is not
    ok is one ConfigError line, ``algorithm.KEY = VALUE is invalid: it must be ALLOWED``."""
    for key, ok, allowed in checks:
        if not ok:
            raise ConfigError(f"algorithm.{key} = {getattr(params, key)!r} is invalid: it must be {allowed}")


def client_model(ctx: ClientContext, weights: Tensors) -> tuple[nn.Module, list[nn.Parameter]]:
    """The client's model holding ``weights``, in training mode, torch seeded with the client's seed (stochastic
    layers reproducible); and its trainable parameters, for algorithms that take their own gradient steps."""
    model = ctx.model()
    load_float_state(model, weights)
    model.train()
    torch.manual_seed(ctx.seed)
    return model, [p for p in model.parameters() if p.requires_grad]


def float_state(model: nn.Module) -> Tensors:
    """The communicated part of a model: its floating-point state_dict entries (detached clones)."""
    return {k: v.detach().clone() for k, v in model.state_dict().items() if v.is_floating_point()}


def load_float_state(model: nn.Module, weights: Tensors) -> None:
    model.load_state_dict(weights, strict=False)


def weighted_mean(messages: list[Tensors], weights: list[float]) -> Tensors:
    """sum_i w_i * m_i / sum_i w_i, accumulated in float64 for order-independent exactness on small inputs."""
    total = float(sum(weights))
    if total <= 0:
        raise ValueError("weights must sum to a positive number")
    out: Tensors = {}
    with _elementwise_threads(sum(t.numel() for t in messages[0].values()) * len(messages)):
        for name in messages[0]:
            acc = torch.zeros_like(messages[0][name], dtype=torch.float64)
            term = torch.empty_like(acc)  # one scratch buffer per tensor: acc += m.to(float64) * (w / total), in place
            for m, w in zip(messages, weights):
                term.copy_(m[name])
                term.mul_(w / total)
                acc.add_(term)
            out[name] = acc.to(messages[0][name].dtype)
    return out


@contextmanager
def _elementwise_threads(work: int, most: int = 8):
    """Up to ``most`` torch threads (half the machine's cores, leaving room for pool workers; none extra on
    2 cores) for a large purely element-wise job: each value is computed by the same operations in the
    same order whichever thread computes it, so the result is bit-for-bit the single-threaded one (unlike
    a reduction's). The caller's thread count is restored."""
    before = torch.get_num_threads()
    want = min(most, (os.cpu_count() or 1) // 2)
    if work < (1 << 20) or want <= before:
        yield
        return
    torch.set_num_threads(want)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def add(a: Tensors, b: Tensors, scale: float = 1.0) -> Tensors:
    return {k: a[k] + scale * b[k] for k in a}


def sub(a: Tensors, b: Tensors) -> Tensors:
    return {k: a[k] - b[k] for k in a}


from fedsqueeze.algorithms.context import ClientContext  # noqa: E402  (re-export for type hints)
