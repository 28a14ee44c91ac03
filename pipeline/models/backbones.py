"""FCN Table 1 backbones: FCN-AlexNet and FCN-GoogLeNet from torchvision's definitions.

Both keep torchvision's layers (so its ImageNet weights load through ``weights.py``), with the
FCN changes: conv1 padded by 100 and Caffe (ceil) pooling, fc layers as convolutions, the
classifier's last layer replaced by a zero ``score_fr``.  AlexNet's fc6 is a 6x6 conv; its final
deconvolution is 63x63 because a 64x64 one cannot be aligned (derived, as in Caffe's
FCN-AlexNet).  GoogLeNet keeps only the final loss head: the auxiliary classifiers and the
average pooling are discarded ("improves performance", FCN paper sec. 4.1), dropout is kept.
"""

from __future__ import annotations

import importlib
from collections import OrderedDict
from collections.abc import Mapping

import torch
from torch import nn

from pipeline.errors import ParamsError
from pipeline.models import geometry
from pipeline.models.fcn import FCN, resolve_upsampling
from pipeline.models.vgg import fc_head, init_convs, scaled

__all__ = [
    "ALEXNET_CONV_NAMES",
    "InputTransform",
    "alexnet_features",
    "build_fcn32s",
    "convolutionalize_googlenet",
    "googlenet_conv_state",
    "googlenet_features",
]

ALEXNET_CONV_NAMES = ("conv1", "conv2", "conv3", "conv4", "conv5")
_ALEXNET_CHANNELS = (64, 192, 384, 256, 256)

#: torchvision's Inception configurations: (in, 1x1, 3x3 reduce, 3x3, "5x5" reduce, "5x5", pool)
_INCEPTION = OrderedDict(
    inception3a=(192, 64, 96, 128, 16, 32, 32),
    inception3b=(256, 128, 128, 192, 32, 96, 64),
    inception4a=(480, 192, 96, 208, 16, 48, 64),
    inception4b=(512, 160, 112, 224, 24, 64, 64),
    inception4c=(512, 128, 128, 256, 24, 64, 64),
    inception4d=(512, 112, 144, 288, 32, 64, 64),
    inception4e=(528, 256, 160, 320, 32, 128, 128),
    inception5a=(832, 256, 160, 320, 32, 128, 128),
    inception5b=(832, 384, 192, 384, 48, 128, 128),
)
_POOL_AFTER = {"inception3b": ("maxpool3", 3), "inception4e": ("maxpool4", 2)}


def alexnet_features(
    width: float = 1.0, *, conv1_pad: int = 100, ceil_mode: bool = True
) -> nn.Sequential:
    """torchvision's AlexNet features with Caffe names (conv1..conv5, pool1/2/5)."""
    c = [scaled(ch, width) for ch in _ALEXNET_CHANNELS]
    layers = OrderedDict(
        conv1=nn.Conv2d(3, c[0], 11, stride=4, padding=conv1_pad),
        relu1=nn.ReLU(inplace=True),
        pool1=nn.MaxPool2d(3, 2, ceil_mode=ceil_mode),
        conv2=nn.Conv2d(c[0], c[1], 5, padding=2),
        relu2=nn.ReLU(inplace=True),
        pool2=nn.MaxPool2d(3, 2, ceil_mode=ceil_mode),
        conv3=nn.Conv2d(c[1], c[2], 3, padding=1),
        relu3=nn.ReLU(inplace=True),
        conv4=nn.Conv2d(c[2], c[3], 3, padding=1),
        relu4=nn.ReLU(inplace=True),
        conv5=nn.Conv2d(c[3], c[4], 3, padding=1),
        relu5=nn.ReLU(inplace=True),
        pool5=nn.MaxPool2d(3, 2, ceil_mode=ceil_mode),
    )
    features = nn.Sequential(layers)
    init_convs(features)
    return features


class InputTransform(nn.Module):
    """Per-channel ``x * scale + shift``; the identity unless torchvision GoogLeNet weights need it.

    torchvision's ImageNet GoogLeNet was ported with inputs in [-1, 1] and re-normalises
    ImageNet-normalised input (``transform_input=True``); the buffers are saved in checkpoints.
    """

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("scale", torch.ones(3))
        self.register_buffer("shift", torch.zeros(3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale.view(1, 3, 1, 1) + self.shift.view(1, 3, 1, 1)

    def set_torchvision_googlenet(self) -> None:
        """The affine map of ``torchvision.models.GoogLeNet._transform_input``."""
        mean = torch.tensor([0.485, 0.456, 0.406])
        std = torch.tensor([0.229, 0.224, 0.225])
        with torch.no_grad():
            self.scale.copy_(std / 0.5)
            self.shift.copy_((mean - 0.5) / 0.5)


geometry.register_pointwise(InputTransform)


def googlenet_features(
    width: float = 1.0, *, conv1_pad: int = 100, upto: str = "inception5b"
) -> nn.Sequential:
    """torchvision GoogLeNet conv1 .. inception5b (its module names), aux heads and avgpool cut."""
    # imported here, not at the top: torchvision costs every stage 1.6 s (it imports
    # torch._dynamo) and only the GoogLeNet experiments use it (the module, not the builder
    # function that torchvision.models.googlenet names)
    tv_googlenet = importlib.import_module("torchvision.models.googlenet")
    basic = tv_googlenet.BasicConv2d
    layers: OrderedDict[str, nn.Module] = OrderedDict(
        transform_input=InputTransform(),
        conv1=basic(3, scaled(64, width), kernel_size=7, stride=2, padding=conv1_pad),
        maxpool1=nn.MaxPool2d(3, stride=2, ceil_mode=True),
        conv2=basic(scaled(64, width), scaled(64, width), kernel_size=1),
        conv3=basic(scaled(64, width), scaled(192, width), kernel_size=3, padding=1),
        maxpool2=nn.MaxPool2d(3, stride=2, ceil_mode=True),
    )
    in_ch = scaled(192, width)
    for name, cfg in _INCEPTION.items():
        ch = [scaled(c, width) for c in cfg[1:]]
        layers[name] = tv_googlenet.Inception(in_ch, *ch)
        in_ch = ch[0] + ch[2] + ch[4] + ch[5]
        if name == upto:
            break
        if name in _POOL_AFTER:
            pool_name, k = _POOL_AFTER[name]
            layers[pool_name] = nn.MaxPool2d(k, stride=2, ceil_mode=True)
    features = nn.Sequential(layers)
    for m in features.modules():  # torchvision's GoogLeNet init
        if isinstance(m, nn.Conv2d):
            nn.init.trunc_normal_(m.weight, mean=0.0, std=0.01, a=-2, b=2)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    features.out_channels = in_ch
    return features


def build_fcn32s(
    arch: str,
    name: str,
    num_classes: int,
    *,
    width: float = 1.0,
    dropout: float | None = None,
    learn_upsampling: bool | None = None,
    fixed_upsampling: bool = False,
) -> FCN:
    """FCN-32s on AlexNet (dropout 0.5 after fc6/fc7) or GoogLeNet (dropout 0.4 before score)."""
    learn_mid, learn_final = resolve_upsampling(learn_upsampling, fixed_upsampling)
    if arch == "alexnet":
        backbone = alexnet_features(width)
        fc = scaled(4096, width)
        head = fc_head(scaled(256, width), fc, 6, 0.5 if dropout is None else dropout)
        head_tap, head_channels = "pool5", fc
    elif arch == "googlenet":
        backbone = googlenet_features(width)
        head = nn.Sequential(OrderedDict(drop=nn.Dropout(0.4 if dropout is None else dropout)))
        head_tap, head_channels = "inception5b", backbone.out_channels
    else:
        raise ParamsError(f"unknown backbone {arch!r}; known: alexnet, googlenet")
    return FCN(
        backbone,
        num_classes,
        head_tap=head_tap,
        head_channels=head_channels,
        head=head,
        learn_intermediate=learn_mid,
        learn_final=learn_final,
        name=name,
        arch=arch,
        width=width,
    )


def googlenet_conv_state(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """torchvision GoogLeNet state -> backbone keys (unchanged) + ``fc`` as a 1x1 conv; aux heads
    dropped."""
    if "fc.weight" not in state or "conv1.conv.weight" not in state:
        raise ParamsError("not a torchvision GoogLeNet state dict (no conv1.conv / fc weights)")
    out = {k: v for k, v in state.items() if not k.startswith(("aux1.", "aux2.", "fc."))}
    out["fc.weight"] = state["fc.weight"][:, :, None, None]
    out["fc.bias"] = state["fc.bias"]
    return out


def convolutionalize_googlenet(net: nn.Module) -> nn.Sequential:
    """torchvision GoogLeNet as a dense net: the 7x7 average pool and fc as a 1x1 conv.

    On 224x224 inputs (eval mode) it returns a 1x1 map equal to the classifier's logits.
    """
    fc = net.fc
    width = net.conv1.conv.out_channels / 64
    trunk = googlenet_features(width, conv1_pad=net.conv1.conv.padding[0])
    layers: OrderedDict[str, nn.Module] = OrderedDict(trunk.named_children())
    layers["avgpool"] = nn.AvgPool2d(7, stride=1)
    layers["dropout"] = nn.Dropout(net.dropout.p)
    layers["fc"] = nn.Conv2d(fc.in_features, fc.out_features, 1)
    dense = nn.Sequential(layers)
    state = googlenet_conv_state(net.state_dict())
    missing, unexpected = dense.load_state_dict(state, strict=False)
    bad = [k for k in missing if not k.startswith("transform_input.")]
    if bad or unexpected:
        raise ParamsError(f"GoogLeNet conversion mismatch: missing {bad}, unexpected {unexpected}")
    if net.transform_input:
        dense.transform_input.set_torchvision_googlenet()
    return dense
