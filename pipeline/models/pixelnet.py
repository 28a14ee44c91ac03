"""PixelNet (Bansal, Chen, Russell, Gupta & Ramanan 2016): sampled hypercolumns + an MLP.

A VGG16 trunk (ImageNet layout: pad-1 convs, floor pooling, no pad 100) gives feature maps
at strides 1..32; a pixel's *hypercolumn* is the concatenation of every tapped layer's feature
at that pixel, bilinearly interpolated, and a multi-layer perceptron maps it to K outputs.

* Training (sparse): only the sampled pixels' hypercolumns are built, by gathering the four
  nearest units of each layer "on demand", and the MLP runs as matrix products on the K x D
  matrix.  Gradients flow through the gather into the trunk.  No dense upsampled grid exists,
  which is where the memory and speed of Table 4 come from.
* Test (dense): the same MLP as 1x1 convolutions over the upsampled hypercolumn grid, built
  and consumed in bands of output rows so memory stays bounded on large images.  Both paths
  run the very same layers (:class:`~pipeline.models.fastlinear.OneDNNLinear`: on a CPU, the
  products go through oneDNN, which unlike torch's fp32 matmul uses AVX-512 on AMD CPUs too).

Where a layer's units sit in the image comes from :mod:`pipeline.models.geometry`, so the
mapping is derived, not typed in: with pad-1 3x3 convs and 2x2/2 pooling a unit ``j`` at
stride ``s`` is centred on pixel ``s*j + (s-1)/2``, i.e. pixel ``x`` is at ``(x - (s-1)/2)/s``
(the reference's formula).  ``conv-7`` (the paper's name for VGG's fc7 as a convolution) is the
optional top tap: fc6 is a 7x7 convolution with padding 3 (the paper's footnote 2: it keeps
the grid aligned) and fc7 a 1x1 convolution on pool5, stride 32; both load ImageNet weights.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pipeline.errors import ParamsError
from pipeline.models import geometry
from pipeline.models.fastlinear import OneDNNLinear
from pipeline.models.sampling import SamplingConfig, allocate, sample_pixels, valid_pixels
from pipeline.models.vgg import VGG16_CONV_NAMES, VGG16_FC, scaled, vgg16_features

__all__ = [
    "DEFAULT_LAYERS",
    "TASKS",
    "PixelNet",
    "Tap",
    "pixelnet_vgg16",
    "predict_edges_dense",
    "sample_features",
    "upsample_full",
    "upsample_rows",
]

#: the paper's conv-{1_2, 2_2, 3_3, 4_3, 5_3, 7}
DEFAULT_LAYERS: tuple[str, ...] = ("conv1_2", "conv2_2", "conv3_3", "conv4_3", "conv5_3", "fc7")
LAYER_CHOICES: tuple[str, ...] = (*VGG16_CONV_NAMES, "fc6", "fc7")
TASKS = ("segmentation", "edges", "normals")
#: the paper's MLP init: Gaussian, sigma 1e-3, "from scratch"
MLP_INIT_STD = 1e-3


@dataclass(frozen=True)
class Tap:
    """A tapped layer: its channels and where its unit ``u`` sits: ``u = scale * x + shift``."""

    name: str
    channels: int
    stride: int
    scale: float
    shift: float


def axis_coords(
    pos: torch.Tensor, tap: Tap, size: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Bilinear taps along one axis: lower index, upper index and the upper weight.

    Positions outside the first/last unit centre are clamped (border replicate), as
    ``F.interpolate(..., align_corners=False)`` does.
    """
    u = (pos.to(torch.float32) * tap.scale + tap.shift).clamp(0, size - 1)
    i0 = u.floor().long().clamp(0, max(size - 2, 0))
    i1 = (i0 + 1).clamp(max=size - 1)
    return i0, i1, u - i0


def sample_features(feature: torch.Tensor, points: torch.Tensor, tap: Tap) -> torch.Tensor:
    """``(K, C)``: ``feature`` (B x C x h x w) bilinearly interpolated at ``(image, y, x)`` rows.

    Gathers the four nearest units per point in one indexing op from a B x h x w x C view (no
    copy for a channels_last map), so backward scatters into one map-sized gradient (four
    separate gathers would each build one: 4x the memory on conv1_2) and the trunk learns.
    """
    h, w = feature.shape[-2:]
    b, y, x = points[:, 0], points[:, 1], points[:, 2]
    y0, y1, wy = axis_coords(y, tap, h)
    x0, x1, wx = axis_coords(x, tap, w)
    f = feature.permute(0, 2, 3, 1)
    wy, wx = wy.to(f.dtype)[:, None], wx.to(f.dtype)[:, None]
    corners = f[b[:, None], torch.stack([y0, y0, y1, y1], 1), torch.stack([x0, x1, x0, x1], 1)]
    weights = torch.cat([(1 - wy) * (1 - wx), (1 - wy) * wx, wy * (1 - wx), wy * wx], 1)
    return torch.bmm(weights[:, None, :], corners)[:, 0]  # K x 4 corners -> K x C


def _is_half_pixel(tap: Tap) -> bool:
    """Unit ``j`` centred on pixel ``s*j + (s-1)/2``: torch's ``align_corners=False`` grid."""
    return (
        tap.scale * tap.stride == 1 and abs(tap.shift + (tap.stride - 1) / (2 * tap.stride)) < 1e-9
    )


def upsample_rows(feature: torch.Tensor, tap: Tap, rows: range, width: int) -> torch.Tensor:
    """``(B, len(rows), width, C)``: the image-resolution feature grid on output ``rows`` only.

    Bilinear with the same coordinates as :func:`sample_features`, so a dense grid and a sampled
    pixel always agree.  Every VGG tap is on the half-pixel grid, where this is
    ``F.interpolate(align_corners=False)`` of just the source rows the band needs (fast, also
    backwards, and channels_last); any other grid uses an explicit separable gather.
    """
    h, w = feature.shape[-2:]
    s = tap.stride
    r = torch.arange(rows.start, rows.stop, device=feature.device)
    if len(r) == 0:
        return feature.new_zeros((feature.shape[0], 0, width, feature.shape[1]))
    if not _is_half_pixel(tap):
        f = feature.permute(0, 2, 3, 1)
        y0, y1, wy = axis_coords(r, tap, h)
        x0, x1, wx = axis_coords(torch.arange(width, device=r.device), tap, w)
        band = torch.lerp(f[:, y0], f[:, y1], wy.to(f.dtype)[None, :, None, None])
        return torch.lerp(band[:, :, x0], band[:, :, x1], wx.to(f.dtype)[None, None, :, None])
    y0, _, _ = axis_coords(r[:1], tap, h)
    _, y1, _ = axis_coords(r[-1:], tap, h)
    lo, hi = int(y0), int(y1)
    slab = feature[:, :, lo : hi + 1]
    if s > 1:  # output row q of the slab is image row q + lo*s (half-pixel grids shift whole)
        slab = F.interpolate(slab, scale_factor=s, mode="bilinear", align_corners=False)
    # rows/columns past the last unit centre (floor pooling dropped them) replicate the border
    q0, q1 = rows.start - lo * s, rows.stop - lo * s
    avail = slab.shape[2]
    if q0 >= avail:
        slab = slab[:, :, avail - 1 :].expand(-1, -1, q1 - q0, -1)
    else:
        slab = slab[:, :, q0 : min(q1, avail)]
    extra_rows, extra_cols = q1 - q0 - slab.shape[2], width - slab.shape[3]
    if extra_rows or extra_cols:
        slab = F.pad(slab, (0, extra_cols, 0, extra_rows), mode="replicate")
    return slab.permute(0, 2, 3, 1)


def upsample_full(feature: torch.Tensor, tap: Tap, image: torch.Tensor) -> torch.Tensor:
    """``(B, C, H, W)``: :func:`upsample_rows` over every row of ``image`` (H x W), in ops a
    trace keeps size-generic: the map gains one replicated unit at its bottom and right, is
    upsampled by the tap's stride on the half-pixel grid, then cut to the image. Pixels past the
    last unit centre thus take the border unit's value, as ``upsample_rows`` gives them (floor
    pooling leaves at most ``stride - 1`` of them, so the extra unit always covers the image).
    """
    if not _is_half_pixel(tap):
        raise ValueError(f"{tap.name}: units off the half-pixel grid, no one-pass upsampling")
    if tap.stride > 1:
        feature = F.pad(feature, (0, 1, 0, 1), mode="replicate")
        feature = F.interpolate(
            feature, scale_factor=tap.stride, mode="bilinear", align_corners=False
        )
    return feature[..., : image.shape[-2], : image.shape[-1]]


def _conv_head(in_channels: int, fc_channels: int, dropout: float) -> nn.Sequential:
    """VGG's fc6/fc7 as convolutions on pool5: fc6 7x7 with padding 3 (aligned), fc7 1x1."""
    head = nn.Sequential(
        OrderedDict(
            fc6=nn.Conv2d(in_channels, fc_channels, 7, padding=3),
            relu6=nn.ReLU(inplace=True),
            drop6=nn.Dropout(dropout),
            fc7=nn.Conv2d(fc_channels, fc_channels, 1),
            relu7=nn.ReLU(inplace=True),
        )
    )
    for m in (head.fc6, head.fc7):
        nn.init.normal_(m.weight, 0.0, 0.01)
        nn.init.zeros_(m.bias)
    return head


def _mlp(in_features: int, hidden: Sequence[int], out_features: int, dropout: float):
    layers: list[nn.Module] = []
    for d in hidden:
        layers += [OneDNNLinear(in_features, d), nn.ReLU(inplace=True), nn.Dropout(dropout)]
        in_features = d
    layers.append(OneDNNLinear(in_features, out_features))
    mlp = nn.Sequential(*layers)
    for m in mlp:
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0.0, MLP_INIT_STD)
            nn.init.zeros_(m.bias)
    return mlp


def _check_layers(layers: Sequence[str]) -> tuple[str, ...]:
    if isinstance(layers, str) or not isinstance(layers, Sequence) or not layers:
        raise ParamsError(f"model.layers must be a non-empty list of layer names, got {layers!r}")
    bad = [n for n in layers if n not in LAYER_CHOICES]
    if bad:
        raise ParamsError(f"model.layers: unknown layer(s) {bad}; choose from {LAYER_CHOICES}")
    if len(set(layers)) != len(layers):
        raise ParamsError(f"model.layers lists a layer twice: {list(layers)}")
    return tuple(layers)


def _check_mlp(mlp: Sequence[int]) -> tuple[int, ...]:
    if isinstance(mlp, str) or not isinstance(mlp, Sequence):
        raise ParamsError(f"model.mlp must be a list of hidden sizes, got {mlp!r}")
    if any(isinstance(d, bool) or not isinstance(d, int) or d < 1 for d in mlp):
        raise ParamsError(f"model.mlp sizes must be positive integers, got {list(mlp)}")
    return tuple(mlp)


class PixelNet(nn.Module):
    """VGG16 trunk -> hypercolumn of ``layers`` -> MLP (``mlp`` hidden sizes) -> K outputs.

    ``forward(x)`` is the dense prediction (B x K x H x W, computed in row bands of about
    ``tile_pixels`` pixels); ``forward(x, points)`` the sparse one (len(points) x K).
    ``training_loss`` is the hook the training loop uses instead of the dense pixel loss.
    """

    def __init__(
        self,
        num_classes: int,
        *,
        width: float = 1.0,
        layers: Sequence[str] = DEFAULT_LAYERS,
        mlp: Sequence[int] = (VGG16_FC, VGG16_FC),
        dropout: float = 0.5,
        sampling: SamplingConfig | Mapping[str, Any] | None = None,
        tile_pixels: int = 8192,
        name: str = "pixelnet",
    ) -> None:
        super().__init__()
        self.name, self.arch, self.num_classes, self.width = name, "vgg16", num_classes, width
        self.layers = _check_layers(layers)
        self.hidden = _check_mlp(mlp)
        self.sampling = SamplingConfig.from_options(sampling)
        self.tile_pixels = int(tile_pixels)
        wants_head = any(n in ("fc6", "fc7") for n in self.layers)
        deepest = max(
            (LAYER_CHOICES.index(n) for n in self.layers if n in VGG16_CONV_NAMES), default=-1
        )
        features = vgg16_features(width, conv1_pad=1, ceil_mode=False)
        keep: list[tuple[str, nn.Module]] = []
        last_conv = "conv5_3" if wants_head else VGG16_CONV_NAMES[deepest]
        for child_name, child in features.named_children():
            keep.append((child_name, child))
            if wants_head and child_name == "pool5":
                break
            if not wants_head and child_name == "relu" + last_conv.removeprefix("conv"):
                break
        self.backbone = nn.Sequential(OrderedDict(keep))
        conv5 = scaled(512, width)
        fc = scaled(VGG16_FC, width)
        self.head: nn.Module = _conv_head(conv5, fc, dropout) if wants_head else nn.Identity()
        self.taps = self._derive_taps()
        self.hypercolumn_channels = sum(t.channels for t in self.taps)
        self.mlp = _mlp(
            self.hypercolumn_channels, [scaled(d, width) for d in self.hidden], num_classes, dropout
        )

    # -- geometry ------------------------------------------------------------------------------

    def _derive_taps(self) -> tuple[Tap, ...]:
        """Each tapped layer's channels and coordinate map, traced from the modules themselves."""
        found: dict[str, Tap] = {}
        geom = geometry.Geometry()
        channels = 3
        stages = [(n, m) for n, m in self.backbone.named_children()]
        if isinstance(self.head, nn.Sequential):
            stages += list(self.head.named_children())
        for child_name, child in stages:
            geom = geometry.trace(child, geom)
            if isinstance(child, nn.Conv2d):
                channels = child.out_channels
            # a conv's tap is its ReLU output (Caffe's in-place ReLU overwrites the conv blob)
            tap_name = {"relu6": "fc6", "relu7": "fc7"}.get(child_name)
            if child_name.startswith("relu") and tap_name is None:
                tap_name = "conv" + child_name.removeprefix("relu")
            if tap_name in self.layers:
                stride = geom.stride
                if stride.denominator != 1:
                    raise ValueError(f"{tap_name}: non-integer stride {stride}")
                found[tap_name] = Tap(
                    tap_name,
                    channels,
                    int(stride),
                    float(geom.coord.scale),
                    float(geom.coord.shift),
                )
        return tuple(found[n] for n in self.layers)

    @property
    def max_stride(self) -> int:
        return max(t.stride for t in self.taps)

    def trunk(self) -> nn.Sequential:
        """Input -> deepest tapped layer, sharing this model's modules (for ``describe``)."""
        layers = OrderedDict(self.backbone.named_children())
        if isinstance(self.head, nn.Sequential):
            layers.update(self.head.named_children())
        return nn.Sequential(layers)

    def describe_extra(self) -> dict[str, int | str]:
        """PixelNet columns for ``describe``: it predicts at every pixel (output stride 1)."""
        return {
            "hypercolumn": "+".join(self.layers),
            "hypercolumn_channels": self.hypercolumn_channels,
            "mlp_fc_layers": len(self.hidden) + 1,
            "output_stride": 1,
        }

    # -- features ------------------------------------------------------------------------------

    def features(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """The tapped feature maps of a batch (B x 3 x H x W) by layer name."""
        need = self.min_input_size
        if x.shape[-2] < need or x.shape[-1] < need:
            raise ValueError(
                f"input {tuple(x.shape[-2:])} is smaller than the trunk's {need}-pixel pooling"
            )
        wanted = set(self.layers)
        out: dict[str, torch.Tensor] = {}
        children = list(self.backbone.named_children())
        if isinstance(self.head, nn.Sequential):
            children += list(self.head.named_children())
        for child_name, child in children:
            x = child(x)
            tap = {"relu6": "fc6", "relu7": "fc7"}.get(child_name)
            if tap is None and child_name.startswith("relu"):
                tap = "conv" + child_name.removeprefix("relu")
            if tap in wanted:
                out[tap] = x
                if len(out) == len(wanted):
                    break
        return out

    def _pools(self) -> list[str]:
        return [n for n, m in self.backbone.named_children() if isinstance(m, nn.MaxPool2d)]

    @property
    def min_input_size(self) -> int:
        """The smallest height and width the trunk takes: floor-mode pooling leaves one unit."""
        return 2 ** len(self._pools())

    def hypercolumns(self, feats: Mapping[str, torch.Tensor], points: torch.Tensor) -> torch.Tensor:
        """``(K, D)`` hypercolumns at ``(image, y, x)`` points (on-demand interpolation)."""
        points = points.to(next(iter(feats.values())).device)
        return torch.cat([sample_features(feats[t.name], points, t) for t in self.taps], 1)

    def dense_hypercolumns(
        self, feats: Mapping[str, torch.Tensor], size: tuple[int, int], rows: range | None = None
    ) -> torch.Tensor:
        """``(B, T, W, D)`` hypercolumn grid on output ``rows`` (all rows by default)."""
        height, width = size
        rows = range(height) if rows is None else rows
        return torch.cat([upsample_rows(feats[t.name], t, rows, width) for t in self.taps], 3)

    def mlp_dense(self, grid: torch.Tensor) -> torch.Tensor:
        """The MLP as 1x1 convolutions over a (B, T, W, D) grid -> (B, K, T, W) scores.

        A 1x1 convolution over a channels-last grid is one matrix product over its pixels, so
        the grid goes through the very layers the sampled path uses (same kernels on both paths,
        which is what makes Table 4's comparison about sampling alone); the scores come back as
        a channels_last view (no copy).
        """
        return self.mlp(grid).permute(0, 3, 1, 2)

    # -- predictions ---------------------------------------------------------------------------

    def forward(self, x: torch.Tensor, points: torch.Tensor | None = None) -> torch.Tensor:
        """Dense scores B x K x H x W, or, given ``(image, y, x)`` points, K x num_classes."""
        feats = self.features(x)
        if points is not None:
            return self.mlp(self.hypercolumns(feats, points))
        return self._dense_from(feats, tuple(x.shape[-2:]), self.tile_pixels)

    def _dense_from(
        self, feats: Mapping[str, torch.Tensor], size: tuple[int, int], tile_pixels: int
    ) -> torch.Tensor:
        height, width = size
        batch = next(iter(feats.values())).shape[0]
        step = max(1, int(tile_pixels) // max(1, batch * width))
        bands = []
        for r0 in range(0, height, step):
            grid = self.dense_hypercolumns(feats, size, range(r0, min(height, r0 + step)))
            bands.append(self.mlp_dense(grid).contiguous())
        return torch.cat(bands, 2)

    def predict_dense(self, x: torch.Tensor, tile_pixels: int | None = None) -> torch.Tensor:
        """Dense scores in row bands of about ``tile_pixels`` pixels (default ``tile_pixels``);
        ``tile_pixels >= B*H*W`` is one untiled pass."""
        tile = self.tile_pixels if tile_pixels is None else tile_pixels
        return self._dense_from(self.features(x), tuple(x.shape[-2:]), tile)

    def predict_dense_traceable(self, x: torch.Tensor) -> torch.Tensor:
        """:meth:`predict_dense` in one pass of size-generic tensor ops (no row bands, no Python
        arithmetic on sizes), so a trace of it (TorchScript, ONNX) holds for every input size.
        Memory grows with the image: the whole hypercolumn grid exists at once."""
        feats = self.features(x)
        grid = torch.cat([upsample_full(feats[t.name], t, x) for t in self.taps], 1)
        return self.mlp(grid.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)

    def forward_masked(self, x: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
        """The naive "mask before the MLP" baseline of Table 4: the dense hypercolumn grid is
        built, then only the points go through the MLP (same result as ``forward(x, points)``)."""
        grid = self.dense_hypercolumns(self.features(x), tuple(x.shape[-2:]))
        points = points.to(grid.device)
        return self.mlp(grid[points[:, 0], points[:, 1], points[:, 2]])

    # -- training ------------------------------------------------------------------------------

    def sample(
        self,
        y: torch.Tensor,
        task: str = "segmentation",
        generator: torch.Generator | np.random.Generator | None = None,
    ) -> torch.Tensor:
        """Training points for targets ``y`` by the model's ``sampling`` settings.

        The positive share applies to edges only (positives: label 1).
        """
        if task not in TASKS:
            raise ValueError(f"unknown task {task!r}; known: {TASKS}")
        if isinstance(generator, np.random.Generator):  # the training loop's numpy rng
            seed = int(generator.integers(2**63 - 1))
            generator = torch.Generator().manual_seed(seed)
        cfg = self.sampling
        valid = valid_pixels(y)
        counts = allocate(cfg.per_image, valid.shape[0], cfg.spread)
        if task == "edges" and cfg.positive_share is not None:
            return sample_pixels(
                valid,
                counts,
                positive=y == 1,
                positive_share=cfg.positive_share,
                generator=generator,
            )
        return sample_pixels(valid, counts, generator=generator)

    def training_loss(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        *,
        task: str = "segmentation",
        generator: torch.Generator | np.random.Generator | None = None,
        reduction: str = "pixel",
        scorer: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(loss_sum, normaliser)`` over sampled pixels, as
        ``pipeline.training.losses.pixel_loss``.

        ``segmentation``: softmax cross-entropy, y B x H x W (255 void, never sampled);
        ``edges``: sigmoid cross-entropy on 1 output, y in {0, 1, 255}, positives weighted by
        |neg|/|all| and negatives by |pos|/|all| of the batch's samples (HED's balancing);
        ``normals``: 3 outputs unit-normalised, loss ``1 - cos`` to y (B x 3 x H x W, NaN or
        zero where missing).  ``reduction``: ``pixel`` divides by the number of samples,
        ``image`` by the number of images.  ``scorer(x, points)`` replaces ``self`` for the
        forward pass (pass the DDP wrapper so data-parallel hooks run).
        """
        if reduction not in ("pixel", "image"):
            raise ValueError(f"unknown loss reduction {reduction!r} (image, pixel)")
        n_images = x.shape[0]
        points = self.sample(y, task, generator)
        used = torch.unique(points[:, 0]) if len(points) else points[:0, 0]
        if 0 < len(used) < n_images:  # "single" spread: only run the trunk where samples are
            remap = torch.full((n_images,), -1, dtype=torch.long)
            remap[used] = torch.arange(len(used))
            x, y = x[used.to(x.device)], y[used.to(y.device)]
            points = torch.cat([remap[points[:, 0]][:, None], points[:, 1:]], 1)
        if reduction == "pixel":
            norm = torch.tensor(float(max(len(points), 1)), device=x.device)
        else:
            norm = torch.tensor(float(n_images), device=x.device)
        if len(points) == 0:  # nothing labelled: a zero loss that still reaches every weight
            zero = sum(p.sum() for p in self.parameters() if p.requires_grad) * 0.0
            return zero, norm
        scores = (scorer or self)(x, points).float()
        pd = points.to(y.device)
        if task == "segmentation":
            target = y[pd[:, 0], pd[:, 1], pd[:, 2]].long().to(scores.device)
            total = F.cross_entropy(scores, target, reduction="sum")
        elif task == "edges":
            target = (y[pd[:, 0], pd[:, 1], pd[:, 2]] == 1).float().to(scores.device)
            n_pos = target.sum()
            n_all = float(len(target))
            weight = torch.where(target > 0, (n_all - n_pos) / n_all, n_pos / n_all)
            bce = F.binary_cross_entropy_with_logits(scores[:, 0], target, reduction="none")
            total = (weight * bce).sum()
        elif task == "normals":
            target = y[pd[:, 0], :, pd[:, 1], pd[:, 2]].float().to(scores.device)
            pred = F.normalize(scores[:, :3], dim=1, eps=1e-8)
            cos = (pred * F.normalize(target, dim=1)).sum(1)
            total = (1.0 - cos).sum()
        else:  # sample() already rejected it
            raise AssertionError(task)
        return total, norm


def pixelnet_vgg16(
    num_classes: int,
    *,
    width: float = 1.0,
    layers: Sequence[str] = DEFAULT_LAYERS,
    mlp: Sequence[int] = (VGG16_FC, VGG16_FC),
    dropout: float = 0.5,
    sampling: Mapping[str, Any] | None = None,
    name: str = "pixelnet",
) -> PixelNet:
    """The registry's ``pixelnet``: MLP hidden sizes are full-width numbers scaled by ``width``
    like every other layer (4096 -> 512 at width 1/8); ``mlp=()`` is the linear fc-1."""
    return PixelNet(
        num_classes,
        width=width,
        layers=layers,
        mlp=mlp,
        dropout=dropout,
        sampling=sampling,
        name=name,
    )


def predict_edges_dense(model: PixelNet, image: torch.Tensor) -> np.ndarray:
    """H x W float32 edge probabilities in [0, 1]: sigmoid of the tiled dense output.

    ``image`` is a preprocessed 3 x H x W (or 1 x 3 x H x W) tensor; the result feeds
    ``pipeline.metrics.nms.edge_nms`` and the BSDS evaluator's prediction files.
    """
    if model.num_classes != 1:
        raise ValueError(f"edge prediction needs a 1-output model, got {model.num_classes}")
    x = image[None] if image.dim() == 3 else image
    if x.dim() != 4 or x.shape[0] != 1:
        raise ValueError(f"expected one 3 x H x W image, got {tuple(image.shape)}")
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            scores = model.predict_dense(x.to(device))
    finally:
        model.train(was_training)
    return torch.sigmoid(scores[0, 0].float()).cpu().numpy()
