"""Model library: one obvious way to build a model, ``build_model(name, num_classes, ...)``.

>>> model = build_model("fcn8s", 21, width=1 / 16)
>>> groups = param_groups(model, lr=1e-14, weight_decay=5e-4)
>>> deeplab = build_model("deeplab-largefov", 21, width=1 / 8)
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pipeline.errors import DataError, ParamsError
from pipeline.models.backbones import build_fcn32s
from pipeline.models.deeplab import VARIANTS as _DEEPLAB_VARIANTS
from pipeline.models.deeplab import DeepLab, deeplab_vgg16
from pipeline.models.fcn import FCN, MODALITIES, LateFusion, param_groups, vgg16_fcn
from pipeline.models.geometry import describe
from pipeline.models.pixelnet import PixelNet, pixelnet_vgg16
from pipeline.models.vgg import VGG16Classifier
from pipeline.models.weights import (
    convolutionalize,
    init_from_checkpoint,
    load_pretrained,
    load_state_strict,
    load_vgg16_weights,
    read_state_dict,
)

__all__ = [
    "FCN",
    "DeepLab",
    "LateFusion",
    "MODALITIES",
    "PixelNet",
    "VGG16Classifier",
    "build_model",
    "convolutionalize",
    "describe",
    "init_from_checkpoint",
    "list_models",
    "load_weights_file",
    "load_vgg16_weights",
    "param_groups",
]


def _fixed(name: str, num_classes: int, **kw: Any) -> FCN:
    model = vgg16_fcn(name, num_classes, **kw)
    model.freeze_all_but_score()
    return model


_REGISTRY: dict[str, Callable[..., nn.Module]] = {
    "fcn32s": partial(vgg16_fcn, "fcn32s"),
    "fcn16s": partial(vgg16_fcn, "fcn16s", skips=("pool4",)),
    "fcn8s": partial(vgg16_fcn, "fcn8s", skips=("pool4", "pool3")),
    "fcn8s-atonce": partial(vgg16_fcn, "fcn8s-atonce", skips=("pool4", "pool3"), atonce=True),
    "fcn32s-fixed": partial(_fixed, "fcn32s-fixed"),
    "fcn-pool5": partial(vgg16_fcn, "fcn-pool5", pool_only="pool5"),
    "fcn-pool4": partial(vgg16_fcn, "fcn-pool4", pool_only="pool4"),
    "fcn-pool3": partial(vgg16_fcn, "fcn-pool3", pool_only="pool3"),
    "fcn32s-alexnet": partial(build_fcn32s, "alexnet", "fcn32s-alexnet"),
    "fcn32s-googlenet": partial(build_fcn32s, "googlenet", "fcn32s-googlenet"),
}
_DEEPLAB_NAMES = [v + msc for v in _DEEPLAB_VARIANTS for msc in ("", "-msc")]
_REGISTRY.update({n: partial(deeplab_vgg16, n) for n in _DEEPLAB_NAMES})
_REGISTRY["pixelnet"] = pixelnet_vgg16  # options: layers, mlp, sampling (pixelnet.py)

#: every option some model takes; ``_MODEL_OPTIONS`` says which (default: the FCN ones)
_OPTIONS = ("dropout", "learn_upsampling", "fixed_upsampling", "pretrained", "msc_train_new_only")
_OPTIONS += ("layers", "mlp", "sampling")  # PixelNet
_OPTIONS += ("modality", "extra_heads")  # FCN-VGG16: NYUD inputs, SIFT Flow's geometric head
_FCN_OPTIONS = ("dropout", "learn_upsampling", "fixed_upsampling", "pretrained")
_FCN_OPTIONS += ("modality", "extra_heads")
_MODEL_OPTIONS: dict[str, tuple[str, ...]] = {
    n: ("dropout", "pretrained", *(("msc_train_new_only",) if n.endswith("-msc") else ()))
    for n in _DEEPLAB_NAMES
}
_MODEL_OPTIONS["pixelnet"] = ("dropout", "pretrained", "layers", "mlp", "sampling")
for _name in ("fcn32s-alexnet", "fcn32s-googlenet"):
    _MODEL_OPTIONS[_name] = _FCN_OPTIONS[:4]


def list_models() -> list[str]:
    """Names accepted by :func:`build_model`."""
    return sorted(_REGISTRY)


def build_model(name: str, num_classes: int, *, width: float = 1.0, **options: Any) -> nn.Module:
    """Build a registered model; raises ParamsError (naming the choices) on bad input.

    Options: ``dropout`` (0.5), ``learn_upsampling`` (None = paper: final fixed, intermediate
    learned; True all; False none), ``fixed_upsampling`` (True freezes all), ``pretrained``
    (None, "imagenet" = torchvision weights, or a path to a classifier or FCN state dict);
    DeepLab ``-msc`` models: ``msc_train_new_only`` (True: only the MSc layers learn, Section 4.3).
    DeepLab models take ``dropout`` and ``pretrained`` (fc6/fc7 decimated from the classifier).
    Builds on the current default device, so ``with torch.device("meta"):`` costs no memory.
    """
    if name not in _REGISTRY:
        raise ParamsError(f"model.name: unknown model {name!r}; known models: {list_models()}")
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ParamsError(f"model.num_classes must be a positive integer, got {num_classes!r}")
    if isinstance(width, bool) or not isinstance(width, int | float) or not width > 0:
        raise ParamsError(f"model.width must be a positive number, got {width!r}")
    unknown = sorted(set(options) - set(_OPTIONS))
    if unknown:
        raise ParamsError(f"model: unknown option(s) {unknown}; known options: {list(_OPTIONS)}")
    allowed = _MODEL_OPTIONS.get(name, _FCN_OPTIONS)
    foreign = sorted(set(options) - set(allowed))
    if foreign:
        raise ParamsError(
            f"model: option(s) {foreign} do not apply to {name!r}; it takes {list(allowed)}"
        )
    pretrained = options.pop("pretrained", None)
    if pretrained is not None and not isinstance(pretrained, str | Path):
        raise ParamsError(
            f"model.pretrained must be null, 'imagenet' or a path, got {pretrained!r}"
        )
    dropout = options.get("dropout", 0.5)
    if isinstance(dropout, bool) or not isinstance(dropout, int | float) or not 0 <= dropout < 1:
        raise ParamsError(f"model.dropout must be in [0, 1), got {dropout!r}")
    model = _REGISTRY[name](num_classes, width=float(width), **options)
    load_pretrained(model, pretrained)
    return model


def width_of_weights(name: str, state: Mapping[str, torch.Tensor], **options: Any) -> float:
    """The channel scale a state dict of model ``name`` was trained at: its first convolution's
    outputs over the full-width model's (64 for every VGG16, AlexNet and GoogLeNet trunk)."""
    with torch.device("meta"):  # the full-width net without allocating it
        full = build_model(name, 1, **options)
    key = next(f"{n}.weight" for n, m in full.named_modules() if isinstance(m, nn.Conv2d))
    if key not in state or getattr(state[key], "ndim", 0) != 4:
        raise DataError(f"the weights have no {key} (4-D): not a {name!r} state dict")
    return state[key].shape[0] / full.state_dict()[key].shape[0]


def load_weights_file(
    name: str,
    path: str | Path,
    num_classes: int,
    *,
    width: float | None = None,
    key: str = "--weights",
    **options: Any,
) -> nn.Module:
    """Model ``name`` with every tensor from a trained state dict file (``width`` None: read off
    the weights); a file of another model is a DataError naming it (see ``load_state_strict``).
    A ``pretrained`` option is dropped: the file's weights replace whatever it would load."""
    options.pop("pretrained", None)
    state = read_state_dict(path, key)
    if width is None:
        width = width_of_weights(name, state, **options)
    model = build_model(name, num_classes, width=width, **options)
    load_state_strict(model, state, f"{key} {path}")
    return model
