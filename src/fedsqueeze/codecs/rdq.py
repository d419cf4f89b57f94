"""RDQ: one-step-size scalar quantisation + a universal (Elias-γ) or ANS code, step chosen by R–D vote.

Mitchell, Ballé, Charles, Konečný. "Optimizing the Communication-Accuracy Trade-off in Federated
Learning with Rate-Distortion Theory". arXiv 2201.02664 (2022). docs/methods.md §5.

Quantiser (per tensor, in units of the step u actually used)::

    deterministic   q = round(Δ/u)      (half to even); with dead_zone θ > 0:
                    q = sign(Δ)·floor(|Δ|/u + ½ − θ)   (zero bin widened to ±(½ + θ)·u)
    stochastic      q = floor(Δ/u + U),  U ~ Uniform[0, 1)        unbiased, decoder needs no U
    dither          q = round(Δ/u + U),  U ~ Uniform[−½, ½)       subtractive: Δ̂ = u·(q − U)
    decode          Δ̂ = u·q  (dither: minus u·U, U regenerated from the header seed)

U is float32 from ``numpy.random.default_rng(tensor seed).random(numel, dtype=float32)`` (PCG64),
minus ½ for dither; the tensor seed is the base class's ``derive_seed(payload seed, tensor index)``.

u = ``step`` (the paper: one step size for every tensor, client and round), or ``step``·RMS(Δ)
per tensor with ``normalize=True`` (scale-free, not in the paper). Range guard (not in the paper):
a tensor whose range would need more than 2^20 levels uses u = max|Δ|/2^20 instead, so q always
fits in int32; the u actually used travels with each tensor.

Bytes per tensor (inside the base class's length-prefixed chunk)::

    f32 LE u                       the step actually used
    coder = "gamma" (the paper's universal code):
        varint m                   number of non-zero q
        for each non-zero q in order, MSB-first bits, zero-padded at the end:
            Elias-γ(zeros since the previous non-zero + 1), 1 sign bit (1 = negative), Elias-γ(|q|)
        (trailing zeros are implied by the tensor's shape)
    coder = "ans" (the near-optimal variant): ``fedsqueeze.codecs.entropy`` of all q (a compact
        count table, then an ANS stream)
    coder = "ctx" (ours): ``fedsqueeze.codecs.ctx`` of q with the tensor's shape: a mode byte, then
        the cheapest of constant / raw varints / γ / order-0 ANS / a context model (neighbours'
        signed classes and their row's activity, range-coded): below the i.i.d. limit on real updates

Bias: deterministic rounding is biased, |Δ̂ − Δ| ≤ u/2 per coordinate (≤ (½ + θ)·u with a dead zone);
stochastic rounding and subtractive dither are unbiased (the ``unbiased`` property says so). Dither makes the error Uniform[−u/2, u/2] and independent of Δ.

Step selection: ``vote_step`` scores candidate steps on one client's update by D + λ·R (D = MSE per
parameter, R = 8·len(payload)/d bits per parameter, the real bytes of this codec); ``adopt_step``
takes the server's majority. The paper finds the frontier stable across clients and rounds, so a
fixed offline step is near-optimal; tune it with the vote or ``fedsqueeze bench codecs``.

Allocation (ours): ``alloc = "rd"`` picks each tensor's step at one common R–D slope for the
distortion of the one-step setting (``fedsqueeze.codecs.rdq_alloc``); the steps travel as always, so
decoding does not change. ``alloc = "one"`` is not written into the header's config, so a header
without ``alloc`` means "one" (``RDQ.from_payload_config``).

Budget mode (ours): ``target_bytes = N`` makes every payload the finest-step one that fits in N bytes
(``fit_to_bytes``: a first guess from the high-rate relation R ≈ h − log2 u, then bracketing and
bisection on real encodes). ``fedsqueeze run --budget-mb`` sets N from a total budget.

Defaults (since December 2026): ``coder="ctx", normalize=True, step=1.0, dead_zone=0.1, alloc="rd"``
(``dead_zone`` is 0 when ``rounding`` is not deterministic): 0.64–1.20 bits/parameter at NMSE
0.056–0.068 on the captured CNN and MLP updates of docs/results/codecs/ctx, below the equal-slope
i.i.d. limit (0.62–0.84×). Before, the defaults were the paper's method (plain rounding, the
universal γ code, one absolute step 1e-3: ``DEFAULTS_BEFORE``), which codes a σ = 0.01 update at
~7 bits/parameter. Compatibility: a payload header records every field except the vote's options
(unchanged defaults) and ``alloc = "one"`` (read back as "one"), so old payloads decode as before;
pipeline stage strings (``pipeline.spec_string``) are written and read relative to
``DEFAULTS_BEFORE`` (``stage_defaults``), so old pipeline headers keep their meaning too. Configs
that meant the old defaults write them out (configs/suites, docs/results).
``coder="ans"``, ``"ctx"``, ``dead_zone``, ``normalize`` and the range guard are our additions. ANS is about 20%
smaller than γ at 1–2 bits/param on i.i.d. Laplace values, but on real FedAvg updates (zero runs) γ is
usually the smaller: 0.73–1.10× ANS's size between 0.2 and 2.4 bits/param on the Fashion-MNIST MLP,
0.75–0.99× on the CNN (``scripts/rdq_gamma_vs_ans.py``); ANS wins above ~2.5 bits/param.
``step="vote"`` (with ``lam``, ``candidates``, ``initial``) runs the vote in the round loop
(``fedsqueeze.algorithms.step_vote``); elsewhere such a codec quantises with its initial step. Measured on 10^6 i.i.d. Laplace values (``fedsqueeze.bench``):
with ``coder="ans"`` the rate is 1.14–1.33x the Blahut–Arimoto R(D) between 0.5 and 2.3 bits/param,
1.15–1.16x with ``dead_zone=0.2``. The authors' released code was not consulted.
"""
from __future__ import annotations

import dataclasses
import math
import struct
from collections import Counter
from collections.abc import Iterable, Mapping

import numpy as np
import torch

from fedsqueeze.codecs import ctx as ctx_coder
from fedsqueeze.codecs.base import Codec, host_tensors
from fedsqueeze.codecs.entropy import decode_symbols, encode_symbols
from fedsqueeze.codecs.rdq_gamma import gamma_decode, gamma_encode
from fedsqueeze.errors import CodecError, PayloadError
from fedsqueeze.wire.varint import Reader, encode_varint

ROUNDINGS = ("deterministic", "stochastic", "dither")
CODERS = ("gamma", "ans", "ctx")
ALLOCS = ("one", "rd")
# The defaults until December 2026 (the paper's method: the universal γ code, one absolute step):
# configurations written before then said just ``rdq`` for this; write them out to keep that meaning.
DEFAULTS_BEFORE = {"step": 1e-3, "coder": "gamma", "normalize": False, "dead_zone": 0.0, "alloc": "one"}
QMAX = 1 << 20
_F32 = struct.Struct("<f")


@dataclasses.dataclass(frozen=True)
class RDQ(Codec):
    """Uniform quantiser with one step size, entropy-coded (γ universal code or ANS); Mitchell et al. 2022."""

    codec_id = "rdq"

    step: float = 1.0              # in units of each tensor's RMS (normalize); see DEFAULTS_BEFORE
    rounding: str = "deterministic"
    coder: str = "ctx"
    normalize: bool = True
    dead_zone: float | None = None  # None: 0.1 with deterministic rounding, else 0 (the others are unbiased)
    target_bytes: int = 0
    # step = "vote": the step is chosen in the round loop (``fedsqueeze.algorithms.step_vote``)
    lam: float | None = None       # λ of D + λ·R (MSE per bit/parameter)
    candidates: tuple = ()         # the steps clients vote on
    initial: float | None = None   # the step of the first round (default: the first candidate)
    alloc: str = "rd"              # "rd": one step per tensor at equal R–D slope (fedsqueeze.codecs.rdq_alloc)

    stage_defaults = DEFAULTS_BEFORE  # what a pipeline stage string that omits them means (pipeline.py)

    @property
    def unbiased(self) -> bool:  # type: ignore[override]
        return self.rounding in ("stochastic", "dither")

    def __post_init__(self) -> None:
        _check_vote_options(self)
        if self.step != "vote" and (isinstance(self.step, bool) or not isinstance(self.step, (int, float))
                                    or not (0 < self.step < math.inf)):
            raise CodecError(f"rdq: step must be a positive finite number or 'vote', got {self.step!r}")
        if self.rounding not in ROUNDINGS:
            raise CodecError(f"rdq: rounding must be one of {', '.join(ROUNDINGS)}, got {self.rounding!r}")
        if self.coder not in CODERS:
            raise CodecError(f"rdq: coder must be one of {', '.join(CODERS)}, got {self.coder!r}")
        if not isinstance(self.normalize, bool):
            raise CodecError(f"rdq: normalize must be true or false, got {self.normalize!r}")
        if self.dead_zone is None:
            object.__setattr__(self, "dead_zone", 0.1 if self.rounding == "deterministic" else 0.0)
        if isinstance(self.dead_zone, bool) or not isinstance(self.dead_zone, (int, float)) \
                or not 0 <= self.dead_zone <= 0.5:
            raise CodecError(f"rdq: dead_zone must be in [0, 0.5] (step units), got {self.dead_zone!r}")
        if self.dead_zone and self.rounding != "deterministic":
            raise CodecError("rdq: dead_zone needs rounding='deterministic' (it would bias the others)")
        if isinstance(self.target_bytes, bool) or not isinstance(self.target_bytes, int) or self.target_bytes < 0:
            raise CodecError(f"rdq: target_bytes must be an integer >= 0 (0 = off), got {self.target_bytes!r}")
        if self.alloc not in ALLOCS:
            raise CodecError(f"rdq: alloc must be one of {', '.join(ALLOCS)}, got {self.alloc!r}")

    def get_config(self) -> dict:
        """The configuration in the payload header; the vote's options only when set and ``alloc`` only
        when not "one", so the payloads of configurations that existed before them keep their exact
        bytes. Every other field is always written, so a header never depends on a default."""
        cfg = super().get_config()
        for key, default in (("lam", None), ("candidates", []), ("initial", None), ("alloc", "one")):
            if cfg.get(key) == default:
                del cfg[key]
        return cfg

    def spec_config(self) -> dict:
        return {**self.get_config(), "alloc": self.alloc}

    @classmethod
    def from_payload_config(cls, config: Mapping) -> "RDQ":
        """The sender's codec from a header: a header without ``alloc`` was written with "one" (the
        field is omitted then), whatever the current default."""
        return cls.from_config({"alloc": "one", **config})

    @property
    def voting(self) -> bool:
        return self.step == "vote"

    @property
    def fixed_step(self) -> float:
        """The step this codec quantises with: ``step``, or with ``step = "vote"`` outside the round loop
        the initial step (the first candidate unless ``initial`` is set)."""
        if not self.voting:
            return self.step
        return float(self.initial) if self.initial is not None else float(self.candidates[0])

    # ---- budget mode ----------------------------------------------------------------------------
    def encode(self, tensors: Mapping[str, torch.Tensor], *, seed: int = 0) -> bytes:
        if not self.target_bytes:
            return super().encode(tensors, seed=seed)
        return fit_to_bytes(self, host_tensors(tensors), seed)  # the step search on the CPU too

    # ---- quantisation ---------------------------------------------------------------------------
    def _unit(self, x: torch.Tensor) -> float:
        """The step for this tensor, rounded to fp32 (what the decoder will read)."""
        lo, hi = torch.aminmax(x)
        amax = max(-float(lo), float(hi))
        unit = self.fixed_step
        if self.normalize:
            unit *= float(torch.linalg.vector_norm(x, dtype=torch.float64)) / math.sqrt(x.numel())
        unit = max(unit, amax / QMAX)
        unit = float(np.float32(unit))
        if not 0 < unit < math.inf:  # all zeros (normalised) or an underflow: any positive step works
            unit = float(np.float32(self.fixed_step)) or 1.0
        return unit

    def _uniform(self, n: int, seed: int) -> torch.Tensor | None:
        if self.rounding == "deterministic":
            return None
        u = torch.from_numpy(np.random.default_rng(seed).random(n, dtype=np.float32))
        return u.sub_(0.5) if self.rounding == "dither" else u

    def quantize(self, x: torch.Tensor, unit: float, seed: int) -> torch.Tensor:
        """Integer levels (int32) of a flat float32 tensor for step ``unit``."""
        y = x / unit
        u = self._uniform(y.numel(), seed)
        if u is not None:
            y.add_(u)
            y = y.floor_() if self.rounding == "stochastic" else y.round_()
        elif self.dead_zone:
            # sign(y)·floor(|y| + ½ − θ) = trunc(y + copysign(½ − θ, y)), as ½ − θ < 1
            y = y.add_(torch.copysign(torch.tensor(0.5 - self.dead_zone), y)).trunc_()
        else:
            y = y.round_()
        return y.to(torch.int32)

    def dequantize(self, q: torch.Tensor, unit: float, seed: int) -> torch.Tensor:
        y = q.to(torch.float32)
        if self.rounding == "dither":
            y.sub_(self._uniform(y.numel(), seed))
        return y.mul_(unit)

    # ---- codec hooks --------------------------------------------------------------------------------
    def encode_body(self, values: list[torch.Tensor], specs, seed: int) -> bytes:
        if self.alloc != "rd":
            return super().encode_body(values, specs, seed)
        from fedsqueeze.codecs.rdq_alloc import rd_units

        units = rd_units(self, values, seed)  # per float tensor: the step at the common R–D slope
        return super().encode_body(values, specs, seed, per_tensor={i: {"unit": u} for i, u in units.items()})

    def encode_tensor(self, x: torch.Tensor, seed: int, unit: float | None = None) -> bytes:
        shape = tuple(x.shape)
        x = x.reshape(-1)
        unit = self._unit(x) if unit is None else unit
        q = self.quantize(x, unit, seed).numpy()
        if self.coder == "ctx":
            return _F32.pack(unit) + ctx_coder.encode(q, shape)
        return _F32.pack(unit) + (encode_symbols(q) if self.coder == "ans" else _gamma_encode(q))

    def decode_tensor(self, data: memoryview, shape: tuple[int, ...], seed: int) -> torch.Tensor:
        numel = math.prod(shape)
        r = Reader(data)
        (unit,) = _F32.unpack(r.take(4))
        if not 0 < unit < math.inf:
            raise PayloadError(f"rdq: step {unit} is not a positive finite number")
        rest = r.take(r.remaining())
        if self.coder == "ctx":
            q = ctx_coder.decode(rest, tuple(shape), numel)
        else:
            q = decode_symbols(rest, numel) if self.coder == "ans" else _gamma_decode(rest, numel)
        return self.dequantize(torch.from_numpy(q), unit, seed).reshape(shape)


def _positive(v) -> bool:
    return not isinstance(v, bool) and isinstance(v, (int, float)) and 0 < v < math.inf


def _check_vote_options(c: RDQ) -> None:
    """``step = "vote"`` needs ``lam`` (≥ 0) and candidate steps (positive, distinct; kept sorted)."""
    if isinstance(c.candidates, list):
        object.__setattr__(c, "candidates", tuple(c.candidates))
    if not isinstance(c.candidates, tuple) or not all(_positive(s) for s in c.candidates):
        raise CodecError(f"rdq: candidates must be a list of positive steps, got {c.candidates!r}")
    if len(set(c.candidates)) != len(c.candidates) or len(c.candidates) > 255:
        raise CodecError("rdq: candidates must be distinct (at most 255 of them)")
    object.__setattr__(c, "candidates", tuple(sorted(float(s) for s in c.candidates)))
    if c.lam is not None and (isinstance(c.lam, bool) or not isinstance(c.lam, (int, float))
                              or not 0 <= c.lam < math.inf):
        raise CodecError(f"rdq: lam must be a number >= 0, got {c.lam!r}")
    if c.initial is not None and not _positive(c.initial):
        raise CodecError(f"rdq: initial must be a positive step, got {c.initial!r}")
    if c.step == "vote":
        if not c.candidates or c.lam is None:
            raise CodecError("rdq: step='vote' needs lam and candidates, e.g. "
                             "rdq(step='vote', lam=1e-6, candidates=[5e-4, 1e-3, 2e-3])")
        if c.initial is not None and float(c.initial) not in c.candidates:
            raise CodecError(f"rdq: initial = {c.initial!r} must be one of the candidates {list(c.candidates)}")
        if c.target_bytes:
            raise CodecError("rdq: step='vote' and target_bytes both choose the step; use one of them")


def _gamma_encode(q: np.ndarray) -> bytes:
    """varint m, then per non-zero: γ(zero run + 1), sign bit, γ(|q|) (``fedsqueeze.codecs.rdq_gamma``)."""
    return gamma_encode(q)


def _gamma_decode(data: memoryview, numel: int) -> np.ndarray:
    return gamma_decode(data, numel)


# ---- budget mode: the finest step whose payload fits ---------------------------------------------------
_COARSEST = 1e30   # every level rounds to 0: the smallest payload this codec can produce


def fit_to_bytes(codec: RDQ, tensors: Mapping[str, torch.Tensor], seed: int, *, refine: int = 7) -> bytes:
    """The payload of the finest step (most bits, least distortion) not longer than ``codec.target_bytes``.

    First guess from the high-rate rate–distortion relation of a uniform quantiser, R ≈ h(X) − log2 u
    bits per parameter with h of a Gaussian of the update's RMS (u in RMS units when ``normalize``);
    then doubling/halving to bracket the target and ``refine`` bisections in log u. Only payloads that
    were actually encoded and measured are returned, so the result never exceeds the target.
    The payload's header records the step that was chosen (and target_bytes = 0).
    """
    target = codec.target_bytes
    tensors = host_tensors(tensors)  # the RMS guess is a reduction: on the CPU, as every encode
    base = dataclasses.replace(codec, target_bytes=0)
    floats = [t.detach().reshape(-1).float() for t in tensors.values() if t.is_floating_point()]
    d = sum(t.numel() for t in floats)
    smallest = dataclasses.replace(base, step=_COARSEST).encode(tensors, seed=seed)
    if len(smallest) > target:
        raise CodecError(f"rdq: target_bytes={target} is below the smallest payload of this update "
                         f"({len(smallest)} bytes: header and per-tensor overhead); raise the budget")
    if d == 0:
        return smallest

    def encoded(step: float) -> bytes:
        return dataclasses.replace(base, step=step).encode(tensors, seed=seed)

    bits = max(8.0 * (target - len(smallest)) / d, 1e-3)
    rms = math.sqrt(sum(float(t.double().square().sum()) for t in floats) / d)
    scale = 1.0 if codec.normalize else (rms or 1.0)
    step = scale * math.sqrt(2 * math.pi * math.e) * 2.0 ** -bits
    best, fits, fails = smallest, None, None   # fits: a step whose payload fits; fails: one that does not
    for _ in range(64):
        p = encoded(step)
        if len(p) <= target:
            best, fits = (p if len(p) > len(best) else best), step
            if fails is not None:
                break
            step /= 2
        else:
            fails = step
            if fits is not None:
                break
            step *= 2
    if fits is None or fails is None:
        return best
    for _ in range(refine):
        mid = math.sqrt(fits * fails)
        p = encoded(mid)
        if len(p) <= target:
            fits = mid
            best = p if len(p) > len(best) else best
        else:
            fails = mid
    return best


# ---- step size by rate–distortion vote --------------------------------------------------------------
def rd_scores(update: Mapping[str, torch.Tensor] | torch.Tensor, candidates: Iterable[float],
              codec: RDQ | None = None, seed: int = 0) -> list[tuple[float, float, float]]:
    """(step, D = MSE per parameter, R = bits per parameter of the real payload) per candidate."""
    tensors = host_tensors({"update": update} if isinstance(update, torch.Tensor) else dict(update))
    floats = {k: v for k, v in tensors.items() if v.is_floating_point()}
    d = sum(v.numel() for v in floats.values())
    if not d:
        raise CodecError("vote_step needs an update with at least one float parameter")
    codec = codec or RDQ(**DEFAULTS_BEFORE)
    out = []
    for s in sorted(float(c) for c in candidates):
        c = dataclasses.replace(codec, step=s)
        payload = c.encode(tensors, seed=seed)
        back = c.decode(payload)
        sq = sum(float((back[k].double() - v.double()).square().sum()) for k, v in floats.items())
        out.append((s, sq / d, 8.0 * len(payload) / d))
    return out


def vote_step(update: Mapping[str, torch.Tensor] | torch.Tensor, candidates: Iterable[float], lam: float,
              codec: RDQ | None = None, seed: int = 0) -> float:
    """The candidate step minimising D + λ·R on this update (ties -> the smaller step).

    λ is in MSE per bit/parameter; ``codec`` fixes the other options (rounding, coder, ...).
    """
    scores = rd_scores(update, candidates, codec, seed)
    if not scores:
        raise CodecError("vote_step needs at least one candidate step")
    return min(scores, key=lambda t: (t[1] + lam * t[2], t[0]))[0]


def adopt_step(votes: Iterable[float]) -> float:
    """The server's choice: the most-voted step; ties -> the smaller step."""
    tally = Counter(float(v) for v in votes)
    if not tally:
        raise CodecError("adopt_step needs at least one vote")
    return min(tally, key=lambda s: (-tally[s], s))
