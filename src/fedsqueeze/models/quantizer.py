"""Learnable per-layer quantization by a relaxed, proximal objective, and a packed deployment format.

Ozkara, Singh, Data, Diggavi. "QuPeD: Quantized Personalization via Distillation with Applications to
Federated Learning". NeurIPS 2021, arXiv 2107.13892, Section 2 (centralized quantized training).

Each quantized tensor (layer) ``x`` has ``m = 2**b`` sorted, learnable centers ``c``; ``Q_c(x)`` maps
every weight to its nearest center. Instead of the discrete problem min f(Q_c(x)) we minimise the
relaxation f(Q_c(x)) + λ(t)·R(x, c), R = Σ_k |x_k − Q_c(x)_k| (``reg = "l1"``, default) or
Σ_k (x_k − Q_c(x)_k)² (``"l2"``), with λ(t) = λ0·(e + 1) growing linearly with the epoch e.
One step of :meth:`Quantizer.step` on a mini-batch, with step size η (the optimizer's lr):

1. gradient step on the latent weights x with the gradient of f evaluated at Q_c(x) (passed
   straight through to x); the optimizer may add momentum / weight decay;
2. proximal step towards the current centers, x ← prox_{ηλR}(x): for ℓ1 soft-thresholding of
   x − Q_c(x) by λη (weights within λη of their center snap onto it), for ℓ2 the shrink
   x ← (x + 2λη·Q_c(x)) / (1 + 2λη);
3. center step with the gradient of f at Q_c(x⁺) for the *new* x⁺ (a second forward/backward, the
   alternating order of the paper): g_j = clip(Σ_{k assigned to j} ∂f/∂q_k, ±clip) and
   c_j ← c_j − η_c·g_j, plus (``center_prox``) the paper's proximal term for R in c: ℓ1 its
   subgradient, inside the clip: c_j ← c_j − η_c·clip(Σ_{k∈j} ∂f/∂q_k − λ·Σ_{k∈j} sign(x_k − c_j)),
   ℓ2 the exact prox c_j ← (c_j − η_c g_j + 2λη_c Σ_{k∈j} x_k) / (1 + 2λη_c n_j);
4. re-sort the centers.

:meth:`Quantizer.freeze_` is the final hard quantization: x ← Q_c(x); afterwards the quantized tensors
stay on their centers (each step only moves the centers, with the same clipped gradient sums, and
the full-precision tensors), so the model is exactly representable by b-bit indices + centers.

Which tensors are quantized: every weight with ``dim >= 2`` (conv / linear), except the first and
last ones unless ``quantize_first_last``; biases and other 1-D tensors stay fp32.

Deviations and the released code (github.com/kazkara/QuPeD, centralized only):
- The paper's relaxed objective adds a smooth soft-quantizer Q̃_c for its analysis; like the released
  code we use the hard Q_c with straight-through gradients. Where the x-gradient is evaluated is a
  switch: ``x_grad = "quantized"`` (default, the method spec: ∇f at Q_c(x)) or ``"full"`` (the
  released code: ∇f at the latent x, i.e. plain training of x between prox steps).
- The released code keeps the first and last layers (and all 1-D tensors) in full precision; that is
  our default too (``quantize_first_last = False``).
- Center initialisation follows the released code: 1 bit: the means of the negative and of the
  non-negative weights; more bits: ``linspace(min, max, 2**b)``. Its clamp of x to [−1, 1] (tied to
  its Adam-initialised ±1 centers) is not reproduced. Its center-gradient clip is ±10 (``clip``).
- Ties (a weight exactly half-way between two centers) go to the lower center.
- The clip covers the whole ℓ1 center gradient (f's sum and λR's subgradient sum). Unclipped, the
  R-term's sum over a center's members grows with the layer: on the 784×200 first layer of the MLP
  (78,400 weights per center at 1 bit) η_c·λ·Σ sign reached ~0.08 per step — twice the weights'
  spread — and in a 100-round Fashion-MNIST QuPeD run the centers of whole first layers collapsed onto
  one value (x std 0.0002 around centers [0.262, 0.270]); personal accuracy fell from 83% at round 10
  to 63% at round 80. Clipping the total bounds a center's step by η_c·clip like f's own sum.

Packed format (:func:`pack_model`, all integers little-endian): ``b"FSQM"``, version u8, tensor count
u32; per tensor in state-dict order: name length u16 + UTF-8 name, kind u8 (0 fp32, 1 quantized),
ndim u8, dims u32 each; fp32: numel·4 bytes; quantized: bits u8, 2**b fp32 centers, ceil(numel·b/8)
bytes of b-bit indices (MSB first, zero padded); finally a CRC32 of everything before it.
"""
from __future__ import annotations

import math
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from fedsqueeze.codecs.bits import pack_bits, unpack_bits
from fedsqueeze.errors import ConfigError, PayloadError

Tensors = dict[str, torch.Tensor]
REGS = ("l1", "l2")
X_GRADS = ("quantized", "full")
MAGIC, VERSION = b"FSQM", 1


@dataclass(frozen=True)
class QuantConfig:
    bits: int = 2                      # b: 2**b centers per quantized tensor
    reg: str = "l1"                    # R: l1 | l2 distance to the nearest center
    lam: float = 1e-3                  # λ0: λ(e) = λ0·(e + 1) at epoch e
    eta_c: float = 1e-4                # η_c: center step size
    clip: float = 10.0                 # clip of the per-center gradient sums
    center_prox: bool = True           # the λR term also moves the centers (paper)
    x_grad: str = "quantized"          # quantized (spec) | full (released code)
    quantize_first_last: bool = False  # released code: first and last layer stay fp32

    def __post_init__(self) -> None:
        checks = [("bits", isinstance(self.bits, int) and 1 <= self.bits <= 8, "an integer in [1, 8]"),
                  ("reg", self.reg in REGS, "'l1' or 'l2'"),
                  ("lam", self.lam >= 0, "a number >= 0"),
                  ("eta_c", self.eta_c >= 0, "a number >= 0"),
                  ("clip", self.clip > 0, "a number > 0"),
                  ("x_grad", self.x_grad in X_GRADS, "'quantized' or 'full'")]
        for key, ok, allowed in checks:
            if not ok:
                raise ConfigError(f"algorithm.{key} = {getattr(self, key)!r} is invalid: it must be {allowed}")


# ---- tensor-level operations (pure) --------------------------------------------------------------

def quantized_names(weights: Tensors, first_last: bool = False) -> list[str]:
    """Names of the tensors to quantize: weights with dim >= 2, without the first and last unless asked."""
    names = [n for n, t in weights.items() if t.is_floating_point() and t.dim() >= 2]
    return names if first_last else names[1:-1]


def init_centers(x: torch.Tensor, bits: int) -> torch.Tensor:
    """Initial sorted centers (released code): 1 bit, means of negatives / non-negatives; else linspace."""
    x = x.detach().flatten().float()
    if bits == 1:
        neg, pos = x[x < 0], x[x >= 0]
        lo = neg.mean() if neg.numel() else x.min()
        hi = pos.mean() if pos.numel() else x.max()
        return torch.stack([lo, hi]).sort().values
    return torch.linspace(float(x.min()), float(x.max()), 2 ** bits, device=x.device)


def assign(x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """Index of the nearest (sorted) center for every entry of x; ties go to the lower center."""
    return torch.bucketize(x, (c[1:] + c[:-1]) / 2)


def quantize(x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """Q_c(x): every entry replaced by its nearest center."""
    return c[assign(x, c)]


def prox(x: torch.Tensor, q: torch.Tensor, t: float, reg: str) -> torch.Tensor:
    """prox of t·R(·) around x, R = distance to the fixed targets q (ℓ1: soft-threshold; ℓ2: shrink)."""
    if reg == "l1":
        d = x - q
        return q + torch.sign(d) * torch.clamp(d.abs() - t, min=0.0)
    return (x + 2.0 * t * q) / (1.0 + 2.0 * t)


def center_step(c: torch.Tensor, x: torch.Tensor, grad: torch.Tensor, cfg: QuantConfig, lam: float) -> torch.Tensor:
    """One center update: clipped per-center gradient sums, optional prox term for λR, re-sorted."""
    idx = assign(x, c).flatten()
    zeros = torch.zeros_like(c)
    sums = _grad_sums(c, idx, grad)
    if cfg.center_prox and lam > 0 and cfg.reg == "l1":
        # subgradient of λR in c_j: −λ·Σ_{k∈j} sign(x_k − c_j), clipped together with f's sum (see module doc)
        sums = sums - lam * zeros.index_add(0, idx, torch.sign(x.flatten().to(c.dtype) - c[idx]))
    new = c - cfg.eta_c * sums.clamp(-cfg.clip, cfg.clip)
    if cfg.center_prox and lam > 0 and cfg.reg == "l2":
        members = torch.bincount(idx, minlength=c.numel()).to(c.dtype)
        new = (new + 2 * lam * cfg.eta_c * zeros.index_add(0, idx, x.flatten().to(c.dtype))) \
            / (1 + 2 * lam * cfg.eta_c * members)
    return new.sort().values


def _grad_sums(c: torch.Tensor, idx: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """Per-center sums of the gradients of the weights assigned to it."""
    return torch.zeros_like(c).index_add(0, idx.flatten(), grad.flatten().to(c.dtype))


def hard_quantize(weights: Tensors, centers: Tensors) -> Tensors:
    """A copy of ``weights`` with every tensor named in ``centers`` replaced by Q_c(x)."""
    return {n: quantize(t, centers[n]) if n in centers else t.clone() for n, t in weights.items()}


# ---- the learnable quantizer -----------------------------------------------------------------------

class Quantizer:
    """Per-tensor learnable centers for one model, and the relaxed proximal training step."""

    def __init__(self, cfg: QuantConfig, centers: Tensors, frozen: bool = False) -> None:
        self.cfg = cfg
        self.centers = centers
        self.frozen = frozen

    @classmethod
    def init(cls, cfg: QuantConfig, weights: Tensors) -> "Quantizer":
        names = quantized_names(weights, cfg.quantize_first_last)
        return cls(cfg, {n: init_centers(weights[n], cfg.bits) for n in names})

    def state(self) -> dict:
        return {"centers": {n: c.clone() for n, c in self.centers.items()}, "frozen": self.frozen}

    @classmethod
    def from_state(cls, cfg: QuantConfig, state: dict) -> "Quantizer":
        return cls(cfg, {n: c.clone() for n, c in state["centers"].items()}, bool(state["frozen"]))

    def lam(self, epoch: int) -> float:
        """λ(e) = λ0·(e + 1): the penalty grows linearly with the epochs trained."""
        return self.cfg.lam * (epoch + 1)

    def hard(self, weights: Tensors) -> Tensors:
        return hard_quantize(weights, self.centers)

    def _params(self, model: nn.Module) -> dict[str, nn.Parameter]:
        params = dict(model.named_parameters())
        return {n: params[n] for n in self.centers}

    @torch.no_grad()
    def freeze_(self, model: nn.Module) -> None:
        """Final hard quantization: x ← Q_c(x); from now on only the centers move the quantized tensors."""
        for n, p in self._params(model).items():
            p.copy_(quantize(p, self.centers[n]))
        self.frozen = True

    def step(self, model: nn.Module, opt: torch.optim.Optimizer, xb: torch.Tensor,
             loss_of: Callable[[torch.Tensor], torch.Tensor], lam: float) -> tuple[float, torch.Tensor]:
        """One step on a batch; ``loss_of(logits)`` is f. Returns (f at the step's first evaluation,
        the detached logits of the quantized model after the x-step, e.g. as a distillation teacher)."""
        params = self._params(model)
        if self.frozen:
            return self._frozen_step(model, params, opt, xb, loss_of)
        eta = float(opt.param_groups[0]["lr"])
        loss = self._backward(model, params, opt, xb, loss_of, swap=self.cfg.x_grad == "quantized")[0]
        opt.step()
        with torch.no_grad():
            for n, p in params.items():
                p.copy_(prox(p, quantize(p, self.centers[n]), lam * eta, self.cfg.reg))
        # the alternating order: centers move with the gradient at Q_c(x⁺) of the new latent x⁺
        _, logits = self._backward(model, params, opt, xb, loss_of, swap=True)
        with torch.no_grad():
            for n, p in params.items():
                if p.grad is not None:  # a tensor the loss does not use keeps its centers
                    self.centers[n] = center_step(self.centers[n], p, p.grad, self.cfg, lam)
        opt.zero_grad(set_to_none=True)
        return loss, logits

    def _backward(self, model, params, opt, xb, loss_of, *, swap: bool) -> tuple[float, torch.Tensor]:
        """Forward/backward with the quantized tensors temporarily set to Q_c(x) (if ``swap``);
        the gradients stay on the parameters and the latent x is restored (straight-through)."""
        latent = {n: p.detach().clone() for n, p in params.items()} if swap else {}
        with torch.no_grad():
            for n, x in latent.items():
                params[n].copy_(quantize(x, self.centers[n]))
        opt.zero_grad(set_to_none=True)
        logits = model(xb)
        loss = loss_of(logits)
        loss.backward()
        with torch.no_grad():
            for n, x in latent.items():
                params[n].copy_(x)
        return float(loss.detach()), logits.detach()

    def _frozen_step(self, model, params, opt, xb, loss_of) -> tuple[float, torch.Tensor]:
        loss, logits = self._backward(model, params, opt, xb, loss_of, swap=False)
        grads = {n: p.grad for n, p in params.items()}
        for p in params.values():
            p.grad = None  # the optimizer leaves the frozen tensors alone
        opt.step()
        with torch.no_grad():  # x sits on c, so R = 0: a plain clipped center step, x follows its center
            for n, p in params.items():
                c = self.centers[n]
                if grads[n] is None:
                    continue
                idx = assign(p, c)
                moved = c - self.cfg.eta_c * _grad_sums(c, idx, grads[n]).clamp(-self.cfg.clip, self.cfg.clip)
                p.copy_(moved[idx])
                self.centers[n] = moved.sort().values
        opt.zero_grad(set_to_none=True)
        return loss, logits


# ---- centralized training -----------------------------------------------------------------------------

def fit(model: nn.Module, quantizer: Quantizer, opt: torch.optim.Optimizer,
        batches: Callable[[int], object], epochs: int, freeze_epoch: int | None = None,
        loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None) -> list[float]:
    """Centralized quantized training (the paper's Algorithm 1): ``batches(e)`` yields (x, y) for epoch e;
    hard quantization (freeze) at ``freeze_epoch`` (default: after the last epoch). Mean loss per epoch.
    ``loss``: the task loss (default cross-entropy; in a federated run, ``ClientContext.loss``)."""
    task = nn.functional.cross_entropy if loss is None else loss
    losses = []
    for e in range(epochs):
        if freeze_epoch is not None and e == freeze_epoch and not quantizer.frozen:
            quantizer.freeze_(model)
        total, n = 0.0, 0
        for xb, yb in batches(e):
            value, _ = quantizer.step(model, opt, xb, lambda z, y=yb: task(z, y), quantizer.lam(e))
            total, n = total + value, n + 1
        losses.append(total / max(n, 1))
    if not quantizer.frozen:
        quantizer.freeze_(model)
    return losses


# ---- packed deployment format ---------------------------------------------------------------------------

def packed_size(weights: Tensors, centers: Tensors, bits: int) -> int:
    """The exact length of :func:`pack_model`'s output, by the format's formula."""
    size = 4 + 1 + 4 + 4  # magic, version, count, CRC32
    for n, t in weights.items():
        size += 2 + len(n.encode()) + 1 + 1 + 4 * t.dim()
        size += 1 + 4 * 2 ** bits + math.ceil(t.numel() * bits / 8) if n in centers else 4 * t.numel()
    return size


def pack_model(weights: Tensors, centers: Tensors, bits: int) -> bytes:
    """Serialise a model for deployment: b-bit center indices + fp32 centers for the quantized tensors,
    fp32 for the rest. The quantized tensors are quantized to their nearest centers on the way."""
    out = bytearray(MAGIC + struct.pack("<BI", VERSION, len(weights)))
    shifts = np.arange(bits - 1, -1, -1, dtype=np.int64)
    for n, t in weights.items():
        name = n.encode()
        out += struct.pack("<H", len(name)) + name
        out += struct.pack(f"<BB{t.dim()}I", int(n in centers), t.dim(), *t.shape)
        if n in centers:
            idx = assign(t.detach().float(), centers[n]).flatten().cpu().numpy().astype(np.int64)
            out += struct.pack("<B", bits) + centers[n].float().cpu().numpy().astype("<f4").tobytes()
            out += pack_bits(((idx[:, None] >> shifts) & 1).reshape(-1))
        else:
            out += t.detach().float().cpu().numpy().astype("<f4").tobytes()
    out += struct.pack("<I", zlib.crc32(out))
    return bytes(out)


def unpack_model(data: bytes) -> Tensors:
    """Inverse of :func:`pack_model`: the deployed (hard-quantized) float32 weights."""
    if len(data) < 13 or data[:4] != MAGIC or data[4] != VERSION:
        raise PayloadError("not a fedsqueeze packed model (bad magic or version)")
    if struct.unpack("<I", data[-4:])[0] != zlib.crc32(data[:-4]):
        raise PayloadError("packed model is corrupt (CRC32 mismatch)")
    pos, (count,) = 9, struct.unpack_from("<I", data, 5)
    out: Tensors = {}
    try:
        for _ in range(count):
            (ln,) = struct.unpack_from("<H", data, pos)
            name = data[pos + 2:pos + 2 + ln].decode()
            pos += 2 + ln
            kind, ndim = struct.unpack_from("<BB", data, pos)
            shape = struct.unpack_from(f"<{ndim}I", data, pos + 2)
            pos += 2 + 4 * ndim
            numel = math.prod(shape)
            if kind == 1:
                bits = data[pos]
                if not 1 <= bits <= 8:
                    raise PayloadError(f"packed model: tensor {name!r} has {bits} bits per index (1..8 allowed)")
                c = np.frombuffer(data, "<f4", 2 ** bits, pos + 1)
                pos += 1 + 4 * 2 ** bits
                nbytes = math.ceil(numel * bits / 8)
                b = unpack_bits(data[pos:pos + nbytes], numel * bits).reshape(numel, bits).astype(np.int64)
                idx = (b << np.arange(bits - 1, -1, -1)).sum(axis=1)
                arr = c[idx]
                pos += nbytes
            else:
                arr = np.frombuffer(data, "<f4", numel, pos)
                pos += 4 * numel
            out[name] = torch.from_numpy(np.array(arr, dtype=np.float32)).reshape(shape)
    except (struct.error, ValueError, IndexError) as e:
        raise PayloadError(f"packed model is truncated or malformed: {e}") from e
    if pos != len(data) - 4:
        raise PayloadError("packed model has trailing bytes")
    return out
