"""Structured (channel) pruning bookkeeping: which output channels can go, what they take with them,
and what a pruned model costs.

A ``ChannelGroup`` is the set of output channels of one conv/linear layer (the *producer*): removing
channel j removes row j of every tensor in ``rows`` (the layer's weight and bias, a following
batch norm) and the input slice(s) of channel j in the *consumer* layer's weight (dim 1; after a
flatten each channel feeds ``per_channel`` consecutive input features). Keep decisions are
``{producer name: bool tensor of its channels}``.

Models declare their groups with a ``channel_groups()`` method (ResNet: the inner channel of each
block); otherwise the encoder must be a plain chain (conv/linear layers, each feeding the next,
with element-wise activations, pooling and flattening between them, as in every zoo model), and
each encoder layer's channels form a group whose consumer is the next layer (the head's for the last).

Zeroing a pruned channel's rows (and batch-norm scale and shift) makes the layer output exactly
zero there, so the zeroed model computes what the physically smaller model would.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from fedsqueeze.codecs.base import Tensors
from fedsqueeze.models.flops import layer_flops

Keep = dict[str, torch.Tensor]  # producer layer -> bool mask over its output channels
_BN_KEYS = ("weight", "bias", "running_mean", "running_var")


@dataclass(frozen=True)
class ChannelGroup:
    layer: str                   # producer conv/linear module name
    channels: int
    rows: tuple[str, ...]        # state keys whose dim 0 indexes these channels
    consumer: str | None = None  # module whose weight's dim 1 reads these channels
    per_channel: int = 1         # consumer input features per channel (H*W after a flatten)


def channel_groups(model: nn.Module) -> list[ChannelGroup]:
    """The prunable channel groups of a model's encoder (declared, or derived for a plain chain)."""
    declared = getattr(model, "channel_groups", None)
    if callable(declared):
        return list(declared())
    layers: list[tuple[str, nn.Module, list[str]]] = []  # (name, module, row keys)
    for name, module in model.named_modules():
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            rows = [f"{name}.weight"] + ([f"{name}.bias"] if module.bias is not None else [])
            layers.append((name, module, rows))
        elif isinstance(module, nn.modules.batchnorm._BatchNorm) and layers:
            prev = layers[-1][1]
            if module.num_features == _out_units(prev):
                layers[-1][2].extend(f"{name}.{k}" for k in _BN_KEYS)
    groups = []
    for i, (name, module, rows) in enumerate(layers):
        if not name.startswith("encoder."):
            continue
        out = _out_units(module)
        consumer, per = None, 1
        if i + 1 < len(layers):
            consumer, nxt = layers[i + 1][0], layers[i + 1][1]
            fan_in = nxt.in_features if isinstance(nxt, nn.Linear) else nxt.in_channels
            if fan_in % out or (isinstance(nxt, nn.Conv2d) and (fan_in != out or nxt.groups != 1)):
                raise ValueError(f"cannot derive prunable channels: {consumer} (fan-in {fan_in}) does not read "
                                 f"the {out} channels of {name}; give the model a channel_groups() method")
            per = fan_in // out
        groups.append(ChannelGroup(name, out, tuple(rows), consumer, per))
    return groups


def _out_units(module: nn.Module) -> int:
    return module.out_features if isinstance(module, nn.Linear) else module.out_channels


def keep_all(groups: list[ChannelGroup]) -> Keep:
    return {g.layer: torch.ones(g.channels, dtype=torch.bool) for g in groups}


def tensor_masks(shapes: dict[str, torch.Size], groups: list[ChannelGroup], keep: Keep) -> dict[str, torch.Tensor]:
    """Per state key (among ``shapes``) touched by pruning: a bool mask of the coordinates kept."""
    masks: dict[str, torch.Tensor] = {}

    def narrow(key: str, mask: torch.Tensor, dim: int) -> None:
        if key not in shapes:
            return
        shape = shapes[key]
        view = [1] * len(shape)
        view[dim] = shape[dim]
        m = mask.reshape(view).expand(shape)
        masks[key] = masks[key] & m if key in masks else m

    for g in groups:
        k = keep[g.layer]
        for key in g.rows:
            narrow(key, k, 0)
        if g.consumer is not None:
            narrow(f"{g.consumer}.weight", k.repeat_interleave(g.per_channel), 1)
    return masks


def apply_masks(tensors: Tensors, masks: dict[str, torch.Tensor]) -> Tensors:
    """Tensors with the coordinates outside their masks set to zero (untouched keys pass through)."""
    return {k: torch.where(masks[k].to(v.device), v, torch.zeros((), dtype=v.dtype, device=v.device)) if k in masks else v
            for k, v in tensors.items()}


class CostModel:
    """The cost of a pruned model as a fraction of the unpruned one: sum over terms of
    amount x (kept share of the term's output group) x (kept share of its input group)."""

    def __init__(self, terms: list[tuple[float, str | None, str | None]], groups: list[ChannelGroup]) -> None:
        self.terms = terms
        self.channels = {g.layer: g.channels for g in groups}
        self.total = float(sum(t[0] for t in terms)) or 1.0

    def fraction(self, kept: dict[str, int]) -> float:
        def share(g: str | None) -> float:
            return 1.0 if g is None else kept[g] / self.channels[g]
        return sum(a * share(o) * share(i) for a, o, i in self.terms) / self.total

    @classmethod
    def flops(cls, model: nn.Module, input_shape: tuple[int, ...], groups: list[ChannelGroup]) -> "CostModel":
        """Conv/linear multiply–accumulates of the whole model (encoder and head)."""
        by_consumer = {g.consumer: g.layer for g in groups if g.consumer}
        own = {g.layer for g in groups}
        terms = [(float(f.macs), name if name in own else None, by_consumer.get(name))
                 for name, f in layer_flops(model, input_shape).items()]
        return cls(terms, groups)

    @classmethod
    def size(cls, shapes: dict[str, torch.Size], groups: list[ChannelGroup]) -> "CostModel":
        """Number of values among ``shapes`` (e.g. the encoder's tensors, what is uploaded)."""
        row_of = {key: g.layer for g in groups for key in g.rows}
        col_of = {f"{g.consumer}.weight": g.layer for g in groups if g.consumer}
        terms = [(float(torch.Size(s).numel()), row_of.get(k), col_of.get(k)) for k, s in shapes.items()]
        return cls(terms, groups)
