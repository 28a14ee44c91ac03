"""DeepLab v1 (Chen et al., ICLR 2015): VGG16 made dense with the 'hole' (atrous) algorithm.

Layout as in the release's train.prototxt: conv1_1 pad 1 (no FCN-style 100 padding); pool1-3
3x3 stride 2 pad 1 and pool4/pool5 3x3 stride 1 pad 1 (Caffe rounds pooled sizes up:
``ceil_mode=True``); conv5_x dilation 2; fc6 with dilation ("input stride") 4, 8 or 12; fc7 1x1;
dropout after both; ``fc8`` 1x1 to the classes.  Output stride 8, and every score unit ``i``
sits exactly on input pixel ``8 i`` (both facts are derived from the modules, not typed in).

Table 2 variants: ``deeplab`` (DeepLab-CRF: fc6 4x4, input stride 4), ``deeplab-7x7`` (7x7, 4),
``deeplab-4x4`` (4x4, 8) and ``deeplab-largefov`` (3x3, 12, fc6/fc7 1024 channels).  The ``-msc``
variants add the multi-scale features of Section 4.3.

``forward`` returns the coarse stride-8 scores in training mode (DeepLab's loss is computed
against labels subsampled by 8: :func:`subsample_labels`) and, in eval mode, the scores
bilinearly interpolated to the input size the way the release does it: Caffe's ``Interp`` layer
(zoom 8: ``h -> 8 (h - 1) + 1``, corners aligned), then cropped to the image.
"""

from __future__ import annotations

import functools
from collections import OrderedDict
from collections.abc import Sequence
from fractions import Fraction

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.errors import ParamsError
from pipeline.models import geometry
from pipeline.models.anysize import pad_bottom_right
from pipeline.models.vgg import VGG16_BLOCKS, fc_head, scaled, vgg16_features

__all__ = [
    "MSC_TAPS",
    "DeepLab",
    "deeplab_vgg16",
    "deeplab_vgg16_features",
    "subsample_labels",
    "upsample_scores",
]

#: where the Section 4.3 MLPs attach: the input image and the first four max-pooling outputs
MSC_TAPS: tuple[str, ...] = ("data", "pool1", "pool2", "pool3", "pool4")
#: channels of both MSc MLP layers (128 3x3 filters, then 128 1x1 filters)
MSC_CHANNELS = 128
#: Caffe's ignore label, given to label positions that lie outside the image
VOID = 255


def deeplab_vgg16_features(width: float = 1.0) -> nn.Sequential:
    """VGG16 conv1_1 .. pool5 with DeepLab's pooling and conv5 dilation 2 (Caffe names)."""
    layers: OrderedDict[str, nn.Module] = OrderedDict()
    in_ch = 3
    for b, block in enumerate(VGG16_BLOCKS, start=1):
        dilation = 2 if b == 5 else 1  # after two stride-1 pools: 'hole' 2 keeps the FOV
        for i, ch in enumerate(block, start=1):
            out_ch = scaled(ch, width)
            layers[f"conv{b}_{i}"] = nn.Conv2d(
                in_ch, out_ch, 3, padding=dilation, dilation=dilation
            )
            layers[f"relu{b}_{i}"] = nn.ReLU(inplace=True)
            in_ch = out_ch
        stride = 2 if b <= 3 else 1  # skip subsampling after pool4 and pool5 (Section 3.1)
        layers[f"pool{b}"] = nn.MaxPool2d(3, stride=stride, padding=1, ceil_mode=True)
    features = nn.Sequential(layers)
    for m in features.modules():  # training from scratch; pretrained weights overwrite it
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            nn.init.zeros_(m.bias)
    return features


def _fc_head(
    in_channels: int, channels: int, kernel_size: int, dilation: int, dropout: float
) -> nn.Sequential:
    """fc6 (``kernel_size`` with holes, 'same' padding) and fc7 (1x1), each + ReLU + dropout."""
    extent = (kernel_size - 1) * dilation + 1
    if extent % 2 == 0:
        raise ParamsError(
            f"fc6 {kernel_size}x{kernel_size} with input stride {dilation} spans {extent} units: "
            "an even extent cannot be centred"
        )
    return fc_head(
        in_channels, channels, kernel_size, dropout, padding=extent // 2, dilation=dilation
    )


def _msc_mlp(in_channels: int, channels: int, stride: int, dropout: float) -> nn.Sequential:
    """Section 4.3's two-layer MLP: 3x3 conv (strided onto the stride-8 grid), then 1x1."""
    mlp = nn.Sequential(
        OrderedDict(
            conv=nn.Conv2d(in_channels, channels, 3, stride=stride, padding=1),
            relu=nn.ReLU(inplace=True),
            drop=nn.Dropout(dropout),
            fc=nn.Conv2d(channels, channels, 1),
            relu_fc=nn.ReLU(inplace=True),
            drop_fc=nn.Dropout(dropout),
        )
    )
    for m in (mlp.conv, mlp.fc):
        nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        nn.init.zeros_(m.bias)
    return mlp


def upsample_scores(scores: torch.Tensor, size: Sequence[int], stride: int) -> torch.Tensor:
    """Coarse scores whose unit ``i`` sits on pixel ``stride * i`` -> scores at every pixel.

    This is the release's ``Interp`` layer (``zoom_factor`` = stride: ``h -> stride (h - 1) + 1``
    with ``align_corners=True`` arithmetic), followed by the crop to the image that its test
    scripts do.  For any input size each pixel ``x`` gets the bilinear value at unit ``x/stride``;
    resizing ``h`` units straight to the image size would stretch the grid unless
    ``size = stride (h - 1) + 1``.  ``size`` is not cast to ``int`` (traced sizes while exporting
    must stay traced, see ``pipeline.models.fcn.crop``).
    """
    h, w = scores.shape[-2:]
    full = ((h - 1) * stride + 1, (w - 1) * stride + 1)
    H, W = size[0], size[1]
    if full[0] < H or full[1] < W:
        raise RuntimeError(f"{h}x{w} scores at stride {stride} do not cover a {H}x{W} image")
    if full != (h, w):
        scores = F.interpolate(scores, size=full, mode="bilinear", align_corners=True)
    return scores[..., :H, :W]


def subsample_labels(
    labels: torch.Tensor, size: Sequence[int], stride: int, void: int = VOID
) -> torch.Tensor:
    """Labels at the score units (pixel ``stride * i``): DeepLab's 'ground truth subsampled by 8'.

    Units that lie beyond the image (ceil-rounded pooling adds one when ``(H - 1) % 8 != 0``) get
    ``void``.  For ``H = 8k + 1`` (the release's 321 / 513 crops) this is the release's label
    shrinking exactly: every unit falls on a labelled pixel.
    """
    h, w = int(size[0]), int(size[1])
    sub = labels[..., ::stride, ::stride][..., :h, :w]
    pad_h, pad_w = h - sub.shape[-2], w - sub.shape[-1]
    if pad_h or pad_w:
        sub = F.pad(sub, (0, pad_w, 0, pad_h), value=void)
    return sub


@functools.cache
def _imagenet_cell() -> int:
    """Pixels per pool5 unit of the ImageNet VGG16 (32): the cell one fc6 tap stood for."""
    with torch.device("meta"):
        g = geometry.trace(vgg16_features(1 / 64, conv1_pad=1, ceil_mode=False))
    return int(g.stride)


class DeepLab(nn.Module):
    """DeepLab-VGG16: ``backbone`` (conv1_1..pool5) -> ``head`` (fc6, fc7) -> ``fc8``.

    With ``msc=True`` the Section 4.3 MLPs (``msc.<tap>``) run on the input and pool1..pool4, and
    their 5 x 128 channels are concatenated to fc7's before the classifier.  The classifier over
    the concatenation is kept as two convolutions, ``fc8`` (fc7's channels, with the bias) and
    ``fc8_msc`` (the 640 new channels, no bias): ``fc8(cat) = fc8(fc7) + fc8_msc(msc)`` exactly,
    so 'only the newly added weights are adjusted' is a per-tensor freeze and a trained non-MSc
    checkpoint loads by name.  (The release sums per-branch score layers instead; same function,
    five redundant bias vectors.)  ``fc8_msc`` starts at zero: the MSc net starts out computing
    exactly what the net it was initialised from did.

    Attributes for the solver: ``head_lr_mult = 10`` for ``head_prefixes`` (fc8, fc8_msc), as
    in the paper (lr 0.001, 0.01 for the final classifier; Caffe lr_mult 10/20).
    """

    head_lr_mult: float = 10.0
    head_prefixes: tuple[str, ...] = ("fc8.", "fc8_msc.")
    #: pretrained classifiers are fitted to fc6/fc7 by decimation (weights.decimate_fc)
    fc_decimation: bool = True

    def __init__(
        self,
        num_classes: int,
        *,
        fc6_kernel: int,
        fc6_dilation: int,
        fc_channels: int = 4096,
        width: float = 1.0,
        dropout: float = 0.5,
        msc: bool = False,
        msc_train_new_only: bool = True,
        name: str = "deeplab",
    ) -> None:
        super().__init__()
        self.name, self.arch, self.num_classes, self.width = name, "vgg16", num_classes, width
        self.backbone = deeplab_vgg16_features(width)
        fc = scaled(fc_channels, width)
        self.head = _fc_head(scaled(512, width), fc, fc6_kernel, fc6_dilation, dropout)
        self.fc8 = nn.Conv2d(fc, num_classes, 1)
        nn.init.normal_(self.fc8.weight, 0.0, 0.01)
        nn.init.zeros_(self.fc8.bias)

        g = geometry.trace(self.trunk())
        stride = g.stride
        if stride.denominator != 1 or g.coord != geometry.CoordMap(1 / stride, Fraction(0)):
            raise ValueError(f"score grid {g.coord} is not pixel = {stride} x unit")
        self.output_stride = int(stride)

        self.msc_taps: tuple[str, ...] = MSC_TAPS if msc else ()
        self._msc_strides: dict[str, int] = {}
        if msc:
            channels = {"data": 3}
            channels.update(
                {f"pool{b}": scaled(blk[-1], width) for b, blk in enumerate(VGG16_BLOCKS, 1)}
            )
            mlps = nn.ModuleDict()
            for tap in MSC_TAPS:
                tap_geom = (
                    geometry.Geometry()
                    if tap == "data"
                    else geometry.trace(self.backbone, upto=tap)
                )
                s = stride / tap_geom.stride
                if s.denominator != 1:
                    raise ValueError(f"{tap}: stride {tap_geom.stride} does not divide {stride}")
                mlps[tap] = _msc_mlp(channels[tap], scaled(MSC_CHANNELS, width), int(s), dropout)
                if geometry.trace(mlps[tap], tap_geom).coord != g.coord:
                    raise ValueError(f"MSc branch {tap} is misaligned with the score grid")
                self._msc_strides[tap] = int(s)
            self.msc = mlps
            msc_channels = len(MSC_TAPS) * scaled(MSC_CHANNELS, width)
            self.fc8_msc = nn.Conv2d(msc_channels, num_classes, 1, bias=False)
            nn.init.zeros_(self.fc8_msc.weight)
            if msc_train_new_only:
                self.train_new_only()

    # --- structure -----------------------------------------------------------------------------

    def trunk(self) -> nn.Sequential:
        """Input -> coarse scores along the main path, sharing this model's modules (geometry)."""
        layers = OrderedDict(self.backbone.named_children())
        layers["head"] = self.head
        layers["fc8"] = self.fc8
        return nn.Sequential(layers)

    def train_new_only(self) -> None:
        """Section 4.3: only the MSc weights learn; the rest keeps the values it was given."""
        for pname, p in self.named_parameters():
            p.requires_grad_(pname.startswith(("msc.", "fc8_msc.")))

    def field_of_view(self) -> int:
        """Table 2's 'receptive field': the image span of fc6's taps, each tap standing for one
        32-pixel pool5 cell of the ImageNet VGG16 (224 for its 7x7 fc6).

        ``(k_eff - 1) x stride + 32``: 7x7 at input stride 4 -> 224, 4x4 at 4 -> 128,
        4x4 at 8 -> 224, 3x3 at 12 -> 224.  The convolutional-mode receptive field (every layer's
        extent, ``describe()["rf_size"]``) is larger.
        """
        fc6 = self.head.fc6
        extent = (fc6.kernel_size[0] - 1) * fc6.dilation[0] + 1
        stride = geometry.trace(self.backbone).stride
        return int((extent - 1) * stride) + _imagenet_cell()

    def describe_extra(self) -> dict[str, int | str]:
        """Table 2 columns for ``geometry.describe``."""
        fc6 = self.head.fc6
        return {
            "fc6_kernel": fc6.kernel_size[0],
            "fc6_input_stride": fc6.dilation[0],
            "field_of_view": self.field_of_view(),
            "msc": ",".join(self.msc_taps) or "none",
        }

    # --- forward -------------------------------------------------------------------------------

    def _msc_branch(self, tap: str, x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
        """One MLP, output on exactly the score grid.

        A strided conv rounds down where ceil-mode pooling rounds up: for inputs other than
        ``8k + 1`` the last (off-image) unit is computed on zero padding instead of missing.
        (Sizes stay traced values while exporting: no ``int`` casts, no Python ``max``.)
        """
        s = self._msc_strides[tap]
        mlp = self.msc[tap]
        k, p = mlp.conv.kernel_size[0], mlp.conv.padding[0]
        need_h = (size[0] - 1) * s + k - 2 * p - x.shape[-2]
        need_w = (size[1] - 1) * s + k - 2 * p - x.shape[-1]
        return mlp(pad_bottom_right(x, need_h, need_w))[..., : size[0], : size[1]]

    def features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(fc7 output, concatenated MSc features or None), both on the stride-8 grid."""
        taps: dict[str, torch.Tensor] = {"data": x} if self.msc_taps else {}
        h = x
        for name, layer in self.backbone.named_children():
            h = layer(h)
            if name in self.msc_taps:
                taps[name] = h
        main = self.head(h)
        if not self.msc_taps:
            return main, None
        size = main.shape[-2:]
        extra = torch.cat([self._msc_branch(t, taps[t], size) for t in self.msc_taps], dim=1)
        return main, extra

    def coarse_scores(self, x: torch.Tensor) -> torch.Tensor:
        """Class scores on the stride-8 grid (what the loss sees)."""
        main, extra = self.features(x)
        score = self.fc8(main)
        if extra is not None:
            score = score + self.fc8_msc(extra)
        return score

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        score = self.coarse_scores(x)
        if self.training:
            return score
        return upsample_scores(score, x.shape[-2:], self.output_stride)

    def subsample_labels(self, labels: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        """Training targets for coarse ``scores`` (see :func:`subsample_labels`)."""
        return subsample_labels(labels, scores.shape[-2:], self.output_stride)

    # --- initialisation ------------------------------------------------------------------------


#: Table 2: fc6 kernel size, input stride (dilation) and fc6/fc7 channels of each variant
VARIANTS: dict[str, tuple[int, int, int]] = {
    "deeplab": (4, 4, 4096),  # DeepLab-CRF
    "deeplab-7x7": (7, 4, 4096),
    "deeplab-4x4": (4, 8, 4096),
    "deeplab-largefov": (3, 12, 1024),
}


def deeplab_vgg16(
    name: str,
    num_classes: int,
    *,
    width: float = 1.0,
    dropout: float = 0.5,
    msc_train_new_only: bool | None = None,
) -> DeepLab:
    """A registered DeepLab variant: ``name`` from :data:`VARIANTS`, optionally with ``-msc``."""
    base = name.removesuffix("-msc")
    msc = base != name
    if base not in VARIANTS:
        raise ParamsError(f"model.name: unknown DeepLab variant {name!r}")
    if msc_train_new_only is not None and not msc:
        raise ParamsError(f"model.msc_train_new_only only applies to -msc models, not {name!r}")
    if msc_train_new_only is not None and not isinstance(msc_train_new_only, bool):
        raise ParamsError(
            f"model.msc_train_new_only must be true or false, got {msc_train_new_only!r}"
        )
    kernel, dilation, channels = VARIANTS[base]
    return DeepLab(
        num_classes,
        fc6_kernel=kernel,
        fc6_dilation=dilation,
        fc_channels=channels,
        width=width,
        dropout=dropout,
        msc=msc,
        msc_train_new_only=True if msc_train_new_only is None else msc_train_new_only,
        name=name,
    )
