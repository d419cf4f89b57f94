"""VGG-11 for 32x32 images (Simonyan, Zisserman. "Very Deep Convolutional Networks for Large-Scale
Image Recognition", ICLR 2015, configuration A), in its CIFAR form: eight 3x3 convolutions (padding 1)
64-M-128-M-256-256-M-512-512-M-512-512-M (M = 2x2 max pooling), each followed by batch norm (option
``batch_norm``, default true) and ReLU; a 32x32 input leaves 512 x 1 x 1 features, and the classifier
is one fully connected layer (the CIFAR variant drops ImageNet's 4096-4096 classifier). 9.2 M
parameters with batch norm and 10 classes.

Batch norm is on by default: SPATL trains VGG-11 beside ResNet-20, whose zoo entry always has batch
norm; convolutions then carry no bias (batch norm's shift replaces it), as in ResNet-20.
``batch_norm = false`` gives the original VGG (biased convolutions, no normalisation).
``width`` scales every convolution's channel count (64 -> width): 64 is the paper's, a small width
makes tiny test models.

Split for SPATL/FedPer: ``encoder`` = the convolution stack + flatten, ``head`` = the fc. The encoder
is a plain chain, so every convolution's output channels are prunable (``fedsqueeze.models.pruning``
derives the groups; the last one's consumer is the head).
"""
from __future__ import annotations

from torch import nn

from fedsqueeze.models.zoo import SplitModel, _check_sizes, _require_image, _spatial_after

# Channel counts in units of the first layer's (64); "M" = 2x2 max pooling.
VGG11_LAYOUT = (1, "M", 2, "M", 4, 4, "M", 8, 8, "M", 8, 8, "M")


class VGG11(SplitModel):
    """VGG-11 (CIFAR variant: 8 conv3x3 layers 64..512, batch norm, 5 pools, one fc head)."""

    def __init__(self, input_shape: tuple[int, ...], num_classes: int, batch_norm: bool = True,
                 width: int = 64) -> None:
        super().__init__()
        _require_image("vgg11", input_shape)
        _check_sizes("vgg11", width=width)
        if not isinstance(batch_norm, bool):
            from fedsqueeze.errors import ConfigError
            raise ConfigError(f"model 'vgg11': option batch_norm = {batch_norm!r} must be true or false")
        layers: list[nn.Module] = []
        in_ch, pools = input_shape[0], 0
        for item in VGG11_LAYOUT:
            if item == "M":
                layers.append(nn.MaxPool2d(2, ceil_mode=True))
                pools += 1
                continue
            out = width * int(item)
            layers.append(nn.Conv2d(in_ch, out, 3, padding=1, bias=not batch_norm))
            if batch_norm:
                layers.append(nn.BatchNorm2d(out))
            layers.append(nn.ReLU())
            in_ch = out
        layers.append(nn.Flatten())
        self.encoder = nn.Sequential(*layers)
        self.head = nn.Linear(in_ch * _spatial_after(input_shape, pools), num_classes)
