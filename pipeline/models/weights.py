"""The one place weights are loaded: fc -> conv conversion, ImageNet weights, staged init.

Every classifier (torchvision's ImageNet VGG16/AlexNet/GoogLeNet or the project's own
``VGG16Classifier``) goes through :func:`classifier_to_conv_state`, which renames its layers to the
Caffe names and reshapes each fully connected layer into the convolution it is equivalent to.
:func:`convolutionalize` and the FCN loaders both use it, so the test that a convolutionalized
classifier reproduces the classifier's logits also vouches for the weights the FCNs start from.
"""

from __future__ import annotations

import copy
import math
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pipeline.errors import DataError, DownloadError, ParamsError
from pipeline.models.backbones import (
    ALEXNET_CONV_NAMES,
    convolutionalize_googlenet,
    googlenet_conv_state,
)
from pipeline.models.vgg import VGG16_CONV_NAMES

__all__ = [
    "classifier_to_conv_state",
    "convolutionalize",
    "decimate_fc",
    "fc_to_conv",
    "imagenet_state_dict",
    "init_from_checkpoint",
    "load_backbone_weights",
    "load_pretrained",
    "load_state_strict",
    "load_vgg16_weights",
    "read_state_dict",
]

StateDict = Mapping[str, torch.Tensor]


def fc_to_conv(weight: torch.Tensor, in_channels: int) -> torch.Tensor:
    """A Linear weight ``(out, C*k*k)`` as the ``(out, C, k, k)`` conv it equals on a CxKxK input.

    torch.flatten orders features (C, H, W), which is exactly the conv weight's memory layout.
    """
    out_f, in_f = weight.shape
    k = math.isqrt(in_f // in_channels) if in_f % in_channels == 0 else 0
    if k * k * in_channels != in_f:
        raise ParamsError(
            f"fc layer with {in_f} inputs is not a square map of {in_channels} channels"
        )
    return weight.reshape(out_f, in_channels, k, k)


def _indexed_layers(state: StateDict, prefix: str) -> list[tuple[int, dict[str, torch.Tensor]]]:
    """``prefix.N.param`` entries grouped by N (a torchvision Sequential index), in order."""
    groups: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in state.items():
        if key.startswith(prefix + "."):
            idx, _, param = key[len(prefix) + 1 :].partition(".")
            if idx.isdigit():
                groups.setdefault(int(idx), {})[param] = value
    return sorted(groups.items())


def classifier_to_conv_state(
    state: StateDict, conv_names: Sequence[str], fc_names: Sequence[str] = ("fc6", "fc7", "fc8")
) -> OrderedDict[str, torch.Tensor]:
    """torchvision-layout classifier state (``features.N``, ``classifier.N``) -> Caffe-named convs.

    ``features`` convolutions are named ``conv_names`` in order; the ``classifier`` Linear layers
    become ``fc_names`` convolutions: the first over the last conv's channels with a square kernel
    (7x7 for VGG16, 6x6 for AlexNet), the others 1x1.
    """
    convs = _indexed_layers(state, "features")
    fcs = _indexed_layers(state, "classifier")
    if len(convs) != len(conv_names) or len(fcs) != len(fc_names):
        raise ParamsError(
            f"expected {len(conv_names)} conv and {len(fc_names)} fc layers in the classifier "
            f"state dict, found {len(convs)} and {len(fcs)}"
        )
    out: OrderedDict[str, torch.Tensor] = OrderedDict()
    for name, (_, params) in zip(conv_names, convs):
        for pname, value in params.items():
            out[f"{name}.{pname}"] = value
    channels = convs[-1][1]["weight"].shape[0]
    for name, (_, params) in zip(fc_names, fcs):
        out[f"{name}.weight"] = fc_to_conv(params["weight"], channels)
        out[f"{name}.bias"] = params["bias"]
        channels = params["weight"].shape[0]
    return out


def _layer_name(conv_name: str) -> str:
    """conv3_2 -> 3_2, conv5 -> 5 (for ReLU/pool names after a conv)."""
    return conv_name.removeprefix("conv")


def _arch_of(net: nn.Module) -> str:
    from torchvision.models import AlexNet, GoogLeNet

    if isinstance(net, GoogLeNet):
        return "googlenet"
    if isinstance(net, AlexNet):
        return "alexnet"
    convs = [m for m in getattr(net, "features", ()) if isinstance(m, nn.Conv2d)]
    if len(convs) == 13 and hasattr(net, "classifier"):
        return "vgg16"
    raise ParamsError(f"cannot convolutionalize {type(net).__name__}: not VGG16/AlexNet/GoogLeNet")


def convolutionalize(net: nn.Module) -> nn.Sequential:
    """The fully convolutional form of an ImageNet classifier: same weights, dense outputs.

    VGG16 (torchvision's or ``VGG16Classifier``) and AlexNet: the same features (torchvision's
    padding and floor pooling), then each Linear as a conv (fc6 7x7 resp. 6x6, fc7/fc8 1x1), no
    adaptive pooling (it is the identity at 224x224).  On a 224x224 input the result is a 1x1 map
    equal to the classifier's logits in eval mode.  GoogLeNet is handled in ``backbones``.
    """
    arch = _arch_of(net)
    if arch == "googlenet":
        return convolutionalize_googlenet(net)
    conv_names = ALEXNET_CONV_NAMES if arch == "alexnet" else VGG16_CONV_NAMES
    layers: OrderedDict[str, nn.Module] = OrderedDict()
    names = iter(conv_names)
    last = "0"
    for m in net.features:
        if isinstance(m, nn.Conv2d):
            name = next(names)
            last = _layer_name(name)
            layers[name] = copy.deepcopy(m)
        elif isinstance(m, nn.ReLU):
            layers[f"relu{last}"] = nn.ReLU(inplace=True)
        elif isinstance(m, nn.MaxPool2d):
            layers[f"pool{last.split('_')[0]}"] = copy.deepcopy(m)
        else:
            raise ParamsError(f"unexpected layer {m} in {type(net).__name__}.features")
    fc_index = 5
    for m in net.classifier:
        if isinstance(m, nn.Linear):
            fc_index += 1
            k = math.isqrt(m.in_features // max(1, _channels(layers)))
            in_ch = m.in_features // (k * k)
            layers[f"fc{fc_index}"] = nn.Conv2d(in_ch, m.out_features, k)
        elif isinstance(m, nn.ReLU):
            layers[f"relu{fc_index}"] = nn.ReLU(inplace=True)
        elif isinstance(m, nn.Dropout):
            layers[f"drop{fc_index}"] = nn.Dropout(m.p)
        else:
            raise ParamsError(f"unexpected layer {m} in {type(net).__name__}.classifier")
    dense = nn.Sequential(layers)
    fc_names = [n for n in layers if n.startswith("fc")]
    state = classifier_to_conv_state(net.state_dict(), conv_names, fc_names)
    dense.load_state_dict(state, strict=True)
    return dense


def _channels(layers: Mapping[str, nn.Module]) -> int:
    """Output channels of the last conv so far (fc layers included)."""
    convs = [m for m in layers.values() if isinstance(m, nn.Conv2d)]
    return convs[-1].out_channels


def _copy_into(module: nn.Module, state: Mapping[str, torch.Tensor], what: str) -> list[str]:
    """Copy ``state`` into ``module``'s same-named tensors, failing on any shape mismatch."""
    own = module.state_dict()
    loaded = []
    with torch.no_grad():
        for key, value in state.items():
            if key not in own:
                continue
            if own[key].shape != value.shape:
                raise ParamsError(
                    f"{what}: {key} has shape {tuple(value.shape)} in the weights but "
                    f"{tuple(own[key].shape)} in the model (wrong width or architecture?)"
                )
            own[key].copy_(value)
            loaded.append(key)
    return loaded


def load_vgg16_weights(fcn_model: nn.Module, vgg_state_dict: StateDict) -> list[str]:
    """Load VGG16 classifier weights (torchvision or ``VGG16Classifier``) into an FCN-VGG16.

    Feature convs by Caffe name, fc6/fc7 reshaped into convs; fc8 is dropped (the FCN is
    "decapitated") and the zero score layers stay zero.  Returns the FCN keys that were loaded.
    """
    state = classifier_to_conv_state(vgg_state_dict, VGG16_CONV_NAMES)
    if getattr(fcn_model, "fc_decimation", False):  # DeepLab's smaller fc6/fc7
        fc6 = fcn_model.head.fc6
        state = decimate_fc(state, fc6.kernel_size[0], fc6.out_channels)
    return _load_classifier(fcn_model, state)


def decimate_fc(
    conv_state: StateDict, fc6_kernel: int, fc_channels: int
) -> OrderedDict[str, torch.Tensor]:
    """DeepLab Section 3.2: fit the classifier's fc6/fc7 to a smaller fc6 by simple decimation.

    fc6's ``K x K`` taps are subsampled every ``(K - 1)/(k - 1)``-th (7x7 -> 4x4: 0, 2, 4, 6;
    7x7 -> 3x3: 0, 3, 6), so with input stride ``4 (K - 1)/(k - 1)`` the kept taps sit where they
    sat in the classifier (DeepLab-4x4, LargeFOV).  Channels are decimated to ``fc_channels``
    by keeping every ``n``-th filter (4096 -> 1024: every 4th), fc6's outputs and fc7's inputs
    and outputs alike.  fc8 (the ImageNet classes) is dropped.
    """
    w6, b6 = conv_state["fc6.weight"], conv_state["fc6.bias"]
    w7, b7 = conv_state["fc7.weight"], conv_state["fc7.bias"]
    big = w6.shape[-1]
    if fc6_kernel == big:
        tap = 1
    elif fc6_kernel > 1 and fc6_kernel < big and (big - 1) % (fc6_kernel - 1) == 0:
        tap = (big - 1) // (fc6_kernel - 1)
    else:
        raise ParamsError(
            f"cannot decimate a {big}x{big} fc6 to {fc6_kernel}x{fc6_kernel}: "
            f"{big - 1} is not a multiple of {fc6_kernel - 1}"
        )
    if w6.shape[0] % fc_channels or w7.shape[0] % fc_channels:
        raise ParamsError(
            f"cannot decimate fc6/fc7 from {w6.shape[0]}/{w7.shape[0]} to {fc_channels} "
            "channels: not a whole step (wrong width?)"
        )
    s6, s7 = w6.shape[0] // fc_channels, w7.shape[0] // fc_channels
    out = OrderedDict((k, v) for k, v in conv_state.items() if not k.startswith("fc8."))
    out["fc6.weight"] = w6[::s6, :, ::tap, ::tap].contiguous()
    out["fc6.bias"] = b6[::s6].contiguous()
    out["fc7.weight"] = w7[::s7, ::s6].contiguous()
    out["fc7.bias"] = b7[::s7].contiguous()
    return out


def _load_classifier(fcn_model: nn.Module, conv_state: StateDict) -> list[str]:
    backbone_state = {k: v for k, v in conv_state.items() if not k.startswith("fc")}
    head_state = {k: v for k, v in conv_state.items() if k.startswith(("fc6.", "fc7."))}
    loaded = [f"backbone.{k}" for k in _copy_into(fcn_model.backbone, backbone_state, "backbone")]
    loaded += [f"head.{k}" for k in _copy_into(fcn_model.head, head_state, "head")]
    bb = fcn_model.backbone
    expected = [f"backbone.{k}" for k, _ in bb.named_parameters()]
    expected += [
        f"backbone.{k}"
        for k, _ in bb.named_buffers()
        if k.endswith(("running_mean", "running_var"))
    ]
    missing = sorted(set(expected) - set(loaded))
    if missing:
        raise ParamsError(f"pretrained weights do not cover backbone layers: {missing[:6]}")
    return loaded


def load_backbone_weights(fcn_model: nn.Module, classifier_state: StateDict) -> list[str]:
    """ImageNet-classifier weights into any FCN, dispatching on ``fcn_model.arch``; a late-fusion
    net gets them in each stream, an RGB-D net's extra conv1_1 input (:func:`widen_input`)."""
    streams = getattr(fcn_model, "streams", None)
    if streams is not None:
        loaded = []
        for name, stream in streams.items():
            loaded += [
                f"streams.{name}.{k}" for k in load_backbone_weights(stream, classifier_state)
            ]
        return loaded
    classifier_state = widen_input(fcn_model, classifier_state)
    arch = getattr(fcn_model, "arch", None)
    if arch == "vgg16":
        return load_vgg16_weights(fcn_model, classifier_state)
    if arch == "alexnet":
        return _load_classifier(
            fcn_model, classifier_to_conv_state(classifier_state, ALEXNET_CONV_NAMES)
        )
    if arch == "googlenet":
        return _load_classifier(fcn_model, googlenet_conv_state(classifier_state))
    raise ParamsError(f"no ImageNet weights known for architecture {arch!r}")


def widen_input(model: nn.Module, state: StateDict) -> StateDict:
    """Give a 3-channel first conv the extra input channels ``model`` takes (RGB-D: depth).

    The depth filter starts as the mean of the pretrained colour filters (cross-modal
    initialisation: depth edges start out seen like intensity edges), so training begins from
    the RGB net's features; a zero depth channel leaves the RGB net's output unchanged.
    """
    first = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    key = next((k for k in state if k.endswith("conv1_1.weight") or k == "features.0.weight"), None)
    if first is None or key is None or state[key].shape[1] == first.in_channels:
        return state
    weight = state[key]
    extra = first.in_channels - weight.shape[1]
    if extra < 0:
        raise ParamsError(
            f"pretrained {key} takes {weight.shape[1]} input channels, "
            f"the model {first.in_channels}"
        )
    mean = weight.mean(dim=1, keepdim=True)
    state = dict(state)
    state[key] = torch.cat([weight, mean.expand(-1, extra, -1, -1)], dim=1)
    return state


_IMAGENET = {
    "vgg16": "VGG16_Weights",
    "alexnet": "AlexNet_Weights",
    "googlenet": "GoogLeNet_Weights",
}


def imagenet_state_dict(arch: str) -> dict[str, torch.Tensor]:
    """torchvision's ImageNet weights for ``arch``, via its own cached, hash-checked download."""
    import torchvision.models as tvm

    if arch not in _IMAGENET:
        raise ParamsError(f"no ImageNet weights for {arch!r}; known: {sorted(_IMAGENET)}")
    weights = getattr(tvm, _IMAGENET[arch]).IMAGENET1K_V1
    try:
        return weights.get_state_dict(progress=False, check_hash=True)
    except Exception as exc:  # network, truncation, hash mismatch
        raise DownloadError(
            f"could not get torchvision {arch} ImageNet weights from {weights.url} "
            f"(cache: $TORCH_HOME/hub/checkpoints): {exc}"
        ) from exc


def read_state_dict(
    path: str | Path | None, key: str = "model.pretrained"
) -> dict[str, torch.Tensor]:
    """A state dict from a file: plain, or wrapped as ``{"state_dict"|"model": ...}``; DDP prefix
    ``module.`` removed. Errors name ``key``, the params key the path came from."""
    if not isinstance(path, str | Path) or not str(path):
        raise ParamsError(f"{key} must be the path of a state-dict file, got {path!r}")
    path = Path(path)
    if not path.is_file():
        raise ParamsError(f"{key}: no such weights file {path}")
    try:
        obj: Any = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a file that is not a checkpoint
        first = (str(exc).strip().splitlines() or [""])[0]  # torch's messages run for pages
        why = f"{type(exc).__name__}: {first}" if first else type(exc).__name__
        raise ParamsError(f"{key}: cannot read {path} as a torch state dict ({why})") from exc
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(obj, Mapping) and key in obj and isinstance(obj[key], Mapping):
            obj = obj[key]
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ParamsError(f"{key}: {path} does not hold a state dict of tensors")
    return {k.removeprefix("module."): v for k, v in obj.items()}


def _is_classifier_state(state: StateDict) -> bool:
    return any(k.startswith("classifier.") for k in state) or "fc.weight" in state


def load_pretrained(model: nn.Module, pretrained: str | Path | None) -> list[str]:
    """``None``: nothing; ``"imagenet"``: torchvision weights; a path: a classifier state dict
    (torchvision layout, e.g. a pretrained ``VGG16Classifier``) or an FCN checkpoint (staged)."""
    if pretrained is None:
        return []
    if pretrained == "imagenet":
        if getattr(model, "width", 1.0) != 1.0:
            raise ParamsError("model.pretrained='imagenet' needs model.width=1.0")
        loaded = load_backbone_weights(model, imagenet_state_dict(model.arch))
        if model.arch == "googlenet":  # torchvision's transform_input=True for these weights
            model.backbone.transform_input.set_torchvision_googlenet()
        return loaded
    state = read_state_dict(pretrained)
    if _is_classifier_state(state):
        return load_backbone_weights(model, state)
    return init_from_checkpoint(model, state)["copied"]


def init_from_checkpoint(
    model: nn.Module, source: nn.Module | StateDict, *, strict_shapes: bool = True
) -> dict[str, list[str]]:
    """Copy every tensor whose name (and shape) also exists in ``source``: 32s -> 16s -> 8s.

    New layers (skip scores, new deconvolutions) keep their zero/bilinear init, so the finer net
    starts out computing exactly what the coarser one did.  Returns copied/skipped/unused keys.
    """
    state = source.state_dict() if isinstance(source, nn.Module) else source
    own = model.state_dict()
    copied, skipped = [], []
    with torch.no_grad():
        for key, target in own.items():
            if key not in state:
                skipped.append(key)
                continue
            value = state[key]
            if value.shape != target.shape:
                if strict_shapes:
                    raise ParamsError(
                        f"checkpoint {key} has shape {tuple(value.shape)}, "
                        f"model needs {tuple(target.shape)}"
                    )
                skipped.append(key)
                continue
            target.copy_(value)
            copied.append(key)
    if not copied:
        raise ParamsError("checkpoint shares no layer with the model: wrong file or architecture?")
    unused = sorted(set(state) - set(own))
    return {"copied": copied, "skipped": skipped, "unused": unused}


def load_state_strict(model: nn.Module, state: StateDict, source: str) -> None:
    """Every tensor of a trained ``model`` from ``state``; weights of another model (or of other
    classes, width or options) are a DataError naming ``source`` and the first disagreements,
    instead of torch's page-long report."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [
        f"{k} {tuple(state[k].shape)} (model {tuple(v.shape)})"
        for k, v in own.items()
        if k in state and state[k].shape != v.shape
    ]
    problems = [
        f"{len(found)} {what}: {', '.join(found[:3])}{', ...' if len(found) > 3 else ''}"
        for what, found in (
            ("missing", missing),
            ("unexpected", unexpected),
            ("of another shape", shapes),
        )
        if found
    ]
    if problems:
        name = getattr(model, "name", type(model).__name__)
        classes, width = getattr(model, "num_classes", "?"), getattr(model, "width", "?")
        raise DataError(
            f"{source} does not hold weights of this {name} ({classes} classes, width {width}): "
            f"tensors {'; '.join(problems)}"
        )
    model.load_state_dict(state)
