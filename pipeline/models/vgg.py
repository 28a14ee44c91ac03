"""VGG16 in two forms: the FCN trunk (Caffe names, pad 100, ceil pooling) and a classifier.

``VGG16Classifier`` mirrors torchvision's VGG16 module layout (``features.N``, ``avgpool``,
``classifier.N``) at any ``width``, so the project can pretrain a tiny one on built-in data and
hand it to exactly the same convolutionalization code as torchvision's ImageNet VGG16.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

#: conv channels per block of VGG16 (configuration "D")
VGG16_BLOCKS: tuple[tuple[int, ...], ...] = (
    (64, 64),
    (128, 128),
    (256, 256, 256),
    (512, 512, 512),
    (512, 512, 512),
)
VGG16_FC = 4096
#: Caffe layer names of the 13 convolutions, in order
VGG16_CONV_NAMES: tuple[str, ...] = tuple(
    f"conv{b + 1}_{i + 1}" for b, block in enumerate(VGG16_BLOCKS) for i in range(len(block))
)
POOL_NAMES: tuple[str, ...] = tuple(f"pool{b + 1}" for b in range(len(VGG16_BLOCKS)))


def scaled(channels: int, width: float) -> int:
    """A channel count times ``width`` (at least 1): width=1/8 gives 8..64 convs and fc 512."""
    return max(1, int(round(channels * width)))


def vgg16_features(
    width: float = 1.0,
    *,
    conv1_pad: int = 100,
    ceil_mode: bool = True,
    upto: str | None = None,
    in_channels: int = 3,
) -> nn.Sequential:
    """VGG16 conv1_1 .. pool5 with Caffe names; pooling stops after layer ``upto`` (e.g. "pool4").

    ``conv1_pad=100`` and ``ceil_mode=True`` (Caffe pooling rounds up) are the reference FCN;
    ``conv1_pad=1, ceil_mode=False`` is the ImageNet classifier.
    """
    layers: OrderedDict[str, nn.Module] = OrderedDict()
    in_ch = in_channels  # 4: RGB-D early fusion (FCN Table 5)
    for b, block in enumerate(VGG16_BLOCKS, start=1):
        for i, ch in enumerate(block, start=1):
            out_ch = scaled(ch, width)
            pad = conv1_pad if (b, i) == (1, 1) else 1
            layers[f"conv{b}_{i}"] = nn.Conv2d(in_ch, out_ch, 3, padding=pad)
            layers[f"relu{b}_{i}"] = nn.ReLU(inplace=True)
            in_ch = out_ch
        layers[f"pool{b}"] = nn.MaxPool2d(2, stride=2, ceil_mode=ceil_mode)
        if upto == f"pool{b}":
            break
    else:
        if upto is not None:
            raise ValueError(f"upto must be one of {POOL_NAMES}, got {upto!r}")
    features = nn.Sequential(layers)
    init_convs(features)
    return features


def fc_head(
    in_channels: int,
    fc_channels: int,
    kernel_size: int,
    dropout: float,
    *,
    padding: int = 0,
    dilation: int = 1,
) -> nn.Sequential:
    """fc6 (``kernel_size`` conv; FCN: no padding) and fc7 (1x1), each + ReLU and dropout."""
    head = nn.Sequential(
        OrderedDict(
            fc6=nn.Conv2d(
                in_channels, fc_channels, kernel_size, padding=padding, dilation=dilation
            ),
            relu6=nn.ReLU(inplace=True),
            drop6=nn.Dropout(dropout),
            fc7=nn.Conv2d(fc_channels, fc_channels, 1),
            relu7=nn.ReLU(inplace=True),
            drop7=nn.Dropout(dropout),
        )
    )
    for m in (head.fc6, head.fc7):
        nn.init.normal_(m.weight, 0.0, 0.01)
        nn.init.zeros_(m.bias)
    return head


def init_convs(module: nn.Module) -> None:
    """torchvision's VGG init for training from scratch (He normal, zero bias)."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)


class VGG16Classifier(nn.Module):
    """A width-scaled VGG16 ImageNet-style classifier with torchvision's exact module layout.

    Keeps torchvision's ``AdaptiveAvgPool2d((7, 7))``: it is the identity on 224x224 inputs (where
    fc6 is exactly a 7x7 convolution over pool5, as in the FCN), and lets small built-in images
    (e.g. 64x64, pool5 2x2) be used for pretraining without changing fc6's shape.  Same state-dict
    keys as ``torchvision.models.vgg16`` so one conversion path serves both.
    """

    def __init__(self, num_classes: int = 1000, width: float = 1.0, dropout: float = 0.5) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        in_ch = 3
        for block in VGG16_BLOCKS:
            for ch in block:
                out_ch = scaled(ch, width)
                layers += [nn.Conv2d(in_ch, out_ch, 3, padding=1), nn.ReLU(inplace=True)]
                in_ch = out_ch
            layers.append(nn.MaxPool2d(2, 2))
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d((7, 7))
        fc = scaled(VGG16_FC, width)
        self.classifier = nn.Sequential(
            nn.Linear(in_ch * 7 * 7, fc),
            nn.ReLU(True),
            nn.Dropout(dropout),
            nn.Linear(fc, fc),
            nn.ReLU(True),
            nn.Dropout(dropout),
            nn.Linear(fc, num_classes),
        )
        init_convs(self.features)
        for m in self.classifier:
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.avgpool(self.features(x))
        return self.classifier(torch.flatten(x, 1))
