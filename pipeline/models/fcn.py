"""Fully convolutional networks (Long, Shelhamer & Darrell): FCN-32s/16s/8s and their variants.

One class, :class:`FCN`, builds every variant from a backbone (an ``nn.Sequential`` whose named
children can be tapped), an optional fc head and a list of skips.  Every upsampling factor,
deconvolution kernel and crop offset is derived from the layer geometry (``geometry.py``), so the
reference offsets (19; 5 and 27; 5, 9 and 31) come out of the definition instead of being typed in.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel as _DDP

from pipeline.errors import ParamsError
from pipeline.models import geometry
from pipeline.models.upsample import BilinearUpsample
from pipeline.models.vgg import VGG16_FC, fc_head, scaled, vgg16_features

__all__ = [
    "FCN",
    "MODALITIES",
    "LateFusion",
    "Scale",
    "Skip",
    "crop",
    "param_groups",
    "resolve_upsampling",
    "vgg16_fcn",
]


#: input modalities of the FCN-VGG16 nets (FCN Table 5); the loader builds the channels
MODALITIES = ("rgb", "hha", "rgbd", "rgb-hha")


class Scale(nn.Module):
    """A fixed constant factor: the at-once net's pool4 x 0.01 and pool3 x 0.0001 (not learned)."""

    def __init__(self, factor: float) -> None:
        super().__init__()
        self.factor = float(factor)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.factor

    def extra_repr(self) -> str:
        return f"factor={self.factor:g}"


geometry.register_pointwise(Scale)


@dataclass(frozen=True)
class Skip:
    """A skip stream: score ``tap`` (a backbone child with ``channels`` outputs), scaled first."""

    tap: str
    channels: int
    scale: float = 1.0


def crop(x: torch.Tensor, offset: int, size: Sequence[int]) -> torch.Tensor:
    """``x[..., offset:offset+h, offset:offset+w]`` (Caffe ``Crop`` with axis 2), checked.

    ``size`` is used as given, not cast to ``int``: while tracing for export its entries are
    traced sizes, and a cast would freeze the crop to the example's size.
    """
    h, w = size[0], size[1]
    if x.shape[-2] < offset + h or x.shape[-1] < offset + w:
        raise RuntimeError(
            f"cannot crop {h}x{w} at offset {offset} from {tuple(x.shape[-2:])}: input too small"
        )
    return x[..., offset : offset + h, offset : offset + w]


def resolve_upsampling(
    learn_upsampling: bool | None = None, fixed_upsampling: bool = False
) -> tuple[bool, bool]:
    """(intermediate learned, final learned).

    Default is the paper's: final fixed bilinear, intermediate (2x) ones learned.
    ``learn_upsampling=True`` learns all; ``False`` or ``fixed_upsampling=True`` freezes all (the
    released Caffe nets, ``lr_mult: 0``).
    """
    if fixed_upsampling and learn_upsampling:
        raise ParamsError("model.learn_upsampling=True contradicts model.fixed_upsampling=True")
    if fixed_upsampling or learn_upsampling is False:
        return False, False
    if learn_upsampling:
        return True, True
    return True, False


def _zero_conv1x1(in_channels: int, out_channels: int) -> nn.Conv2d:
    """A score layer: zero-initialised so that a new stream starts by changing nothing."""
    conv = nn.Conv2d(in_channels, out_channels, 1)
    nn.init.zeros_(conv.weight)
    nn.init.zeros_(conv.bias)
    return conv


def _prefix(seq: nn.Sequential, upto: str) -> list[tuple[str, nn.Module]]:
    items: list[tuple[str, nn.Module]] = []
    for name, child in seq.named_children():
        items.append((name, child))
        if name == upto:
            return items
    raise ParamsError(f"backbone has no layer {upto!r}")


def _integer_factor(ratio: Fraction, what: str) -> int:
    if ratio.denominator != 1 or ratio < 1:
        raise ValueError(f"{what}: stride ratio {ratio} is not a whole upsampling factor")
    return int(ratio)


def _aligned_kernel(
    geom: geometry.Geometry, factor: int, target: geometry.CoordMap, *, upsampled_is_source: bool
) -> tuple[int, geometry.Geometry, int]:
    """Kernel ``2f`` (else ``2f - 1``, FCN-AlexNet's 63) whose output grid aligns with ``target``.

    Returns (kernel size, geometry after the upsampling, crop offset).
    """
    errors = []
    for k in (2 * factor, 2 * factor - 1):
        probe = nn.ConvTranspose2d(1, 1, k, stride=factor, bias=False, device="meta")
        up = geometry.trace(probe, geom)
        try:
            if upsampled_is_source:
                off = geometry.crop_offset(up.coord, target)
            else:
                off = geometry.crop_offset(target, up.coord)
        except ValueError as exc:
            errors.append(f"k={k}: {exc}")
            continue
        return k, up, off
    raise ValueError(f"no aligned {factor}x upsampling kernel: {'; '.join(errors)}")


@dataclass(frozen=True)
class _Stage:
    up: str
    tap: str
    scale: str | None
    score: str
    offset: int


class FCN(nn.Module):
    """Backbone -> (fc head) -> ``score_fr`` -> [2x up + cropped skip score]* -> up -> crop.

    Module names follow the Caffe nets (``score_fr``, ``score_pool4``, ``upscore2``,
    ``upscore_pool4``, ``upscore8`` ...), so staged initialisation can copy by name.
    ``crop_offsets`` holds the derived offsets keyed by the cropped layer ("score" = final crop).

    ``extra_heads`` ({label column: classes}, e.g. SIFT Flow's ``{"geo_label": 3}``) adds a whole
    second score path per entry on the same trunk (its modules prefixed ``<column>_``), as FCN's
    two-headed SIFT Flow net does: ``forward`` returns the main head's scores, ``forward_heads``
    every head's, keyed by the label column it learns ("label" for the main one).
    ``modality`` records what the input channels hold (the loader builds them from it).
    """

    def __init__(
        self,
        backbone: nn.Sequential,
        num_classes: int,
        *,
        head_tap: str,
        head_channels: int,
        head: nn.Module | None = None,
        skips: Sequence[Skip] = (),
        learn_intermediate: bool = True,
        learn_final: bool = False,
        name: str = "fcn",
        arch: str = "vgg16",
        width: float = 1.0,
        extra_heads: dict[str, int] | None = None,
        modality: str = "rgb",
    ) -> None:
        super().__init__()
        self.name, self.arch, self.num_classes, self.width = name, arch, num_classes, width
        self.modality = modality
        self.extra_heads = dict(extra_heads or {})
        self.backbone = backbone
        self.head = head if head is not None else nn.Identity()
        self.head_tap = head_tap
        self._prefixes = {"label": "", **{col: f"{col}_" for col in self.extra_heads}}
        classes = {"label": num_classes, **self.extra_heads}
        for column, prefix in self._prefixes.items():
            self.add_module(f"{prefix}score_fr", _zero_conv1x1(head_channels, classes[column]))

        identity = geometry.CoordMap()
        current = geometry.trace(self.trunk())
        self.crop_offsets: dict[str, int] = {}
        stages: list[_Stage] = []
        up_name = "upscore2"
        for skip in skips:
            skip_geom = geometry.trace(backbone, upto=skip.tap)
            factor = _integer_factor(current.stride / skip_geom.stride, f"skip {skip.tap}")
            scale_name = None
            if skip.scale != 1.0:
                scale_name = f"scale_{skip.tap}"
                self.add_module(scale_name, Scale(skip.scale))
            score_name = f"score_{skip.tap}"
            k, current, off = _aligned_kernel(
                current, factor, skip_geom.coord, upsampled_is_source=False
            )
            for column, prefix in self._prefixes.items():
                n = classes[column]
                self.add_module(prefix + score_name, _zero_conv1x1(skip.channels, n))
                up = BilinearUpsample(n, factor, kernel_size=k, learnable=learn_intermediate)
                self.add_module(prefix + up_name, up)
            self.crop_offsets[score_name] = off
            stages.append(_Stage(up_name, skip.tap, scale_name, score_name, off))
            up_name = f"upscore_{skip.tap}"
        factor = _integer_factor(current.stride, "final upsampling")
        k, _, off = _aligned_kernel(current, factor, identity, upsampled_is_source=True)
        self.final_name = "upscore" if not skips else f"upscore{factor}"
        for column, prefix in self._prefixes.items():
            up = BilinearUpsample(classes[column], factor, kernel_size=k, learnable=learn_final)
            self.add_module(prefix + self.final_name, up)
        self.crop_offsets["score"] = off
        self._stages = tuple(stages)
        self._taps = frozenset([head_tap, *(s.tap for s in skips)])

    def trunk(self) -> nn.Sequential:
        """Input -> coarse scores (``score_fr``), sharing this model's modules (for geometry)."""
        layers = OrderedDict(_prefix(self.backbone, self.head_tap))
        layers["head"] = self.head
        layers["score_fr"] = self.score_fr
        return nn.Sequential(layers)

    def _features(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        taps: dict[str, torch.Tensor] = {}
        for name, layer in self.backbone.named_children():
            x = layer(x)
            if name in self._taps:
                taps[name] = x
                if len(taps) == len(self._taps):
                    break
        return taps

    def _score(self, taps: dict[str, torch.Tensor], size, prefix: str = "") -> torch.Tensor:
        """One head's score path: ``score_fr``, the skip fusions, the final upsampling + crop."""
        score = getattr(self, prefix + "score_fr")(self.head(taps[self.head_tap]))
        for st in self._stages:
            score = getattr(self, prefix + st.up)(score)
            feat = taps[st.tap]
            if st.scale is not None:
                feat = getattr(self, st.scale)(feat)
            skip = getattr(self, prefix + st.score)(feat)
            score = score + crop(skip, st.offset, score.shape[-2:])
        score = getattr(self, prefix + self.final_name)(score)
        return crop(score, self.crop_offsets["score"], size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._score(self._features(x), x.shape[-2:])

    def forward_heads(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Every head's scores at input size, keyed by the label column it is trained on."""
        taps = self._features(x)
        return {col: self._score(taps, x.shape[-2:], p) for col, p in self._prefixes.items()}

    def upsampling_layers(self) -> dict[str, BilinearUpsample]:
        """The deconvolutions by name, coarse to fine (the last one is the final upsampling)."""
        return {n: m for n, m in self.named_children() if isinstance(m, BilinearUpsample)}

    def freeze_all_but_score(self) -> None:
        """FCN-32s-fixed: only the class scoring layer learns."""
        scores = tuple(f"{prefix}score_fr." for prefix in self._prefixes.values())
        for name, p in self.named_parameters():
            p.requires_grad_(name.startswith(scores))


def vgg16_fcn(
    name: str,
    num_classes: int,
    *,
    width: float = 1.0,
    dropout: float = 0.5,
    learn_upsampling: bool | None = None,
    fixed_upsampling: bool = False,
    skips: Iterable[str] = (),
    atonce: bool = False,
    pool_only: str | None = None,
    modality: str = "rgb",
    extra_heads: dict[str, int] | None = None,
) -> nn.Module:
    """An FCN-VGG16 variant: ``skips`` from ("pool4", "pool3"); ``pool_only`` for FCN-poolX.

    ``modality`` (FCN Table 5): ``rgb``; ``hha`` (the same net on HHA images); ``rgbd`` (early
    fusion: conv1_1 takes 4 channels); ``rgb-hha`` (late fusion: a :class:`LateFusion` of an
    RGB and an HHA net). ``extra_heads``: more score paths on the trunk (SIFT Flow's geometry).
    """
    if modality not in MODALITIES:
        raise ParamsError(f"model_options.modality: unknown {modality!r}; known: {MODALITIES}")
    if modality == "rgb-hha":
        kw = dict(width=width, dropout=dropout, learn_upsampling=learn_upsampling,
                  fixed_upsampling=fixed_upsampling, skips=skips, atonce=atonce,
                  pool_only=pool_only, extra_heads=extra_heads)  # fmt: skip
        color = vgg16_fcn(name, num_classes, modality="rgb", **kw)
        depth = vgg16_fcn(name, num_classes, modality="hha", **kw)
        return LateFusion(color, depth, name=name)
    extra_heads = _check_heads(extra_heads)
    in_channels = 4 if modality == "rgbd" else 3
    learn_mid, learn_final = resolve_upsampling(learn_upsampling, fixed_upsampling)
    skip_scale = {"pool4": 0.01, "pool3": 0.0001} if atonce else {}
    channels = {"pool3": scaled(256, width), "pool4": scaled(512, width)}
    skip_list = [Skip(t, channels[t], skip_scale.get(t, 1.0)) for t in skips]
    if pool_only is not None:
        backbone = vgg16_features(width, upto=pool_only, in_channels=in_channels)
        head, head_tap = None, pool_only
        head_channels = scaled(256 if pool_only == "pool3" else 512, width)
    else:
        backbone = vgg16_features(width, in_channels=in_channels)
        fc = scaled(VGG16_FC, width)
        head, head_tap, head_channels = fc_head(scaled(512, width), fc, 7, dropout), "pool5", fc
    return FCN(
        backbone,
        num_classes,
        head_tap=head_tap,
        head_channels=head_channels,
        head=head,
        skips=skip_list,
        learn_intermediate=learn_mid,
        learn_final=learn_final,
        name=name,
        arch="vgg16",
        width=width,
        extra_heads=extra_heads,
        modality=modality,
    )


def _check_heads(extra_heads) -> dict[str, int]:
    if extra_heads is None:
        return {}
    if not isinstance(extra_heads, dict) or not all(
        isinstance(k, str) and k and k != "label" and isinstance(v, int) and not isinstance(v, bool)
        and v > 0 for k, v in extra_heads.items()
    ):  # fmt: skip
        raise ParamsError(
            "model_options.extra_heads must map label columns to class counts, e.g. "
            f"{{geo_label: 3}}, got {extra_heads!r}"
        )
    return dict(extra_heads)


class LateFusion(nn.Module):
    """FCN's RGB-HHA net (Table 5): two FCN streams, scores 0.5 x colour + 0.5 x HHA.

    The input has 6 channels (RGB then HHA, each normalised by the loader); the two streams see
    their own three and are trained end to end through the averaged scores. Staged
    initialisation copies by name (``color.*``, ``hha.*``), pretrained classifier weights go into
    both streams.
    """

    def __init__(self, color: FCN, hha: FCN, *, name: str) -> None:
        super().__init__()
        self.name, self.arch, self.width = name, color.arch, color.width
        self.num_classes, self.modality = color.num_classes, "rgb-hha"
        self.extra_heads = color.extra_heads
        self.streams = nn.ModuleDict({"color": color, "hha": hha})

    def trunk(self) -> nn.Sequential:
        """The colour stream's coarse path (both streams share its geometry)."""
        return self.streams["color"].trunk()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 0.5 * self.streams["color"](x[:, :3]) + 0.5 * self.streams["hha"](x[:, 3:])

    def forward_heads(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        color = self.streams["color"].forward_heads(x[:, :3])
        hha = self.streams["hha"].forward_heads(x[:, 3:])
        return {k: 0.5 * color[k] + 0.5 * hha[k] for k in color}


def param_groups(
    model: nn.Module, lr: float, weight_decay: float, *, bias_lr_mult: float = 2.0
) -> list[dict[str, Any]]:
    """SGD groups as in Caffe's FCN solver: biases at 2x lr without decay; frozen params left out.

    A model may ask for a faster classifier: ``model.head_lr_mult`` (e.g. DeepLab's 10: lr 1e-3,
    1e-2 for fc8, Caffe ``lr_mult`` 10/20) applies to parameters whose names start with one of
    ``model.head_prefixes``; they get groups "head_weights"/"head_biases".  Extra ``name`` keys
    ("weights"/"biases"/...) are kept by torch optimizers and help logging.  A DDP/DataParallel
    wrapper is looked through.
    """
    core = model.module if isinstance(model, nn.DataParallel | _DDP) else model
    head_mult = float(getattr(core, "head_lr_mult", 1.0))
    prefixes = tuple(getattr(core, "head_prefixes", ()))
    buckets: dict[tuple[bool, bool], list[nn.Parameter]] = {
        (h, b): [] for h in (False, True) for b in (False, True)
    }
    for pname, p in core.named_parameters():
        if not p.requires_grad:
            continue
        is_head = bool(prefixes) and pname.startswith(prefixes)
        buckets[(is_head, pname.endswith("bias"))].append(p)
    groups: list[dict[str, Any]] = []
    for is_head, mult, prefix in ((False, 1.0, ""), (True, head_mult, "head_")):
        weights, biases = buckets[(is_head, False)], buckets[(is_head, True)]
        if weights:
            groups.append(
                {
                    "name": f"{prefix}weights",
                    "params": weights,
                    "lr": lr * mult,
                    "weight_decay": weight_decay,
                }
            )
        if biases:
            groups.append(
                {
                    "name": f"{prefix}biases",
                    "params": biases,
                    "lr": lr * mult * bias_lr_mult,
                    "weight_decay": 0.0,
                }
            )
    return groups
