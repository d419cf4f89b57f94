"""FLOPs of conv and linear layers, counted as multiply–accumulates per input sample.

The pruning literature SPATL builds on (AMC, GNN-RL) reports "FLOPs" as multiply–accumulates of
the conv and linear layers; so does this counter. Biases, normalisation, activations and pooling
are not counted (they are a few percent of the total for the models in the zoo).

    Conv (any dimension):  MACs = (output elements per sample) x (in_channels / groups) x prod(kernel)
    Linear:                MACs = (output elements per sample) x in_features

Shapes come from one forward pass of a zero input of the given shape (batch 1), so any model
that runs counts correctly, whatever its strides, padding or flattening.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class LayerFlops:
    name: str
    macs: int
    in_units: int    # input channels (conv) or in_features (linear)
    out_units: int   # output channels or out_features


def layer_flops(model: nn.Module, input_shape: tuple[int, ...]) -> dict[str, LayerFlops]:
    """Per conv/linear module (by qualified name, in execution order): its MACs for one sample."""
    found: dict[str, LayerFlops] = {}
    hooks = []

    def hook(name: str):
        def record(module: nn.Module, inputs, output: torch.Tensor) -> None:
            per_sample = output.numel() // output.shape[0]
            if isinstance(module, nn.Linear):
                found[name] = LayerFlops(name, per_sample * module.in_features, module.in_features,
                                         module.out_features)
            else:
                k = math.prod(module.kernel_size)
                found[name] = LayerFlops(name, per_sample * (module.in_channels // module.groups) * k,
                                         module.in_channels, module.out_channels)
        return record

    for name, module in model.named_modules():
        if isinstance(module, (nn.Linear, nn.modules.conv._ConvNd)):
            hooks.append(module.register_forward_hook(hook(name)))
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            p = next(model.parameters(), None)
            model(torch.zeros(1, *input_shape, device=p.device if p is not None else None))
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    return found


def count_flops(model: nn.Module, input_shape: tuple[int, ...]) -> int:
    """Total conv + linear multiply–accumulates of one forward pass of one sample."""
    return sum(f.macs for f in layer_flops(model, input_shape).values())
