"""ResNet-20 for small images (He, Zhang, Ren, Sun. "Deep Residual Learning for Image Recognition",
CVPR 2016, §4.2): conv3x3-16, three stages of three basic blocks (16, 32, 64 channels, stride 2 at
the start of stages 2 and 3), global average pooling, fc. 0.27 M parameters at width 16.

Split for SPATL/FedPer: ``encoder`` = stem + stages + pooling, ``head`` = the final fc.
Shortcuts use the paper's option A (identity; stride-2 subsampling and zero-padded channels where
the shape changes), so they carry no parameters. ``depth`` = 6n + 2 gives the family (20, 32, 44...).

Prunable channels (``channel_groups``): the inner channels of each basic block (conv1 + bn1 rows,
conv2 input slices). The block outputs feed the residual sums and are left whole, as in channel
pruning of ResNets generally (AMC, GNN-RL).
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from fedsqueeze.models.zoo import SplitModel, _require_image


class BasicBlock(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.stride, self.pad = stride, out_ch - in_ch

    def shortcut(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride > 1:
            x = x[:, :, ::self.stride, ::self.stride]
        if self.pad:
            x = F.pad(x, (0, 0, 0, 0, self.pad // 2, self.pad - self.pad // 2))
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNetEncoder(nn.Module):
    def __init__(self, in_ch: int, width: int, blocks: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_ch, width, 3, 1, 1, bias=False)
        self.bn = nn.BatchNorm2d(width)
        layers: list[nn.Module] = []
        ch = width
        for stage in range(3):
            out = width * 2 ** stage
            for b in range(blocks):
                layers.append(BasicBlock(ch, out, 2 if stage > 0 and b == 0 else 1))
                ch = out
        self.blocks = nn.Sequential(*layers)
        self.out_channels = ch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(F.relu(self.bn(self.conv(x))))
        return F.adaptive_avg_pool2d(x, 1)


class ResNet(SplitModel):
    """ResNet-20 (CIFAR variant, option-A shortcuts): encoder = conv stack + pooling, head = fc."""

    def __init__(self, input_shape: tuple[int, ...], num_classes: int, depth: int = 20, width: int = 16) -> None:
        super().__init__()
        _require_image("resnet20", input_shape)
        if depth < 8 or (depth - 2) % 6:
            from fedsqueeze.errors import ConfigError
            raise ConfigError(f"model.options.depth = {depth} must be 6n + 2 with n >= 1 (20, 32, 44, 56, ...)")
        self.encoder = ResNetEncoder(input_shape[0], width, (depth - 2) // 6)
        self.head = nn.Linear(self.encoder.out_channels, num_classes)

    def channel_groups(self):
        """The prunable inner channel of every basic block (see ``fedsqueeze.models.pruning``)."""
        from fedsqueeze.models.pruning import ChannelGroup

        groups = []
        for i, block in enumerate(self.encoder.blocks):
            p = f"encoder.blocks.{i}"
            groups.append(ChannelGroup(
                layer=f"{p}.conv1", channels=block.conv1.out_channels,
                rows=(f"{p}.conv1.weight",) + tuple(f"{p}.bn1.{k}" for k in ("weight", "bias", "running_mean",
                                                                           "running_var")),
                consumer=f"{p}.conv2"))
        return groups
