"""Geometry derived from the layer graph: coordinate maps, crop offsets, receptive fields."""

from __future__ import annotations

from fractions import Fraction

import pytest
import torch
from torch import nn

from pipeline.models import build_model, describe
from pipeline.models.geometry import CoordMap, Geometry, crop_offset, trace


def meta_model(name: str, num_classes: int = 21, **kw):
    with torch.device("meta"):
        return build_model(name, num_classes, **kw)


# --- coordinate maps of single layers ------------------------------------------------------


def test_conv3x3_pad1_is_identity_and_pad100_shifts() -> None:
    assert trace(nn.Conv2d(1, 1, 3, padding=1)).coord == CoordMap()
    # Caffe: output unit y sits at input x = y - 99 for conv1_1 (k=3, pad=100)
    assert trace(nn.Conv2d(1, 1, 3, padding=100)).coord == CoordMap(Fraction(1), Fraction(99))


def test_pool_and_deconv_maps() -> None:
    assert trace(nn.MaxPool2d(2, 2)).coord == CoordMap(Fraction(1, 2), Fraction(-1, 4))
    up = trace(nn.ConvTranspose2d(1, 1, 4, stride=2, bias=False))
    assert up.coord == CoordMap(Fraction(2), Fraction(3, 2))
    # a deconv undoes the stride of a pool of the same factor
    both = trace(nn.Sequential(nn.MaxPool2d(2, 2), nn.ConvTranspose2d(1, 1, 4, stride=2)))
    assert both.coord.scale == 1 and both.stride == 1


def test_dilation_and_inverse() -> None:
    g = trace(nn.Conv2d(1, 1, 3, padding=2, dilation=2))
    assert g.coord == CoordMap() and g.rf == 5
    m = CoordMap(Fraction(1, 8), Fraction(3, 7))
    assert m.then(m.inverse()) == CoordMap()


def test_unknown_module_is_refused() -> None:
    with pytest.raises(TypeError, match="AdaptiveAvgPool2d"):
        trace(nn.AdaptiveAvgPool2d(7))


def test_crop_offset_checks_alignment() -> None:
    half = Fraction(1, 2)
    assert crop_offset(CoordMap(half, Fraction(5)), CoordMap(half, Fraction(2))) == 3
    with pytest.raises(ValueError, match="scales"):
        crop_offset(CoordMap(half, Fraction(0)), CoordMap(Fraction(1), Fraction(0)))
    with pytest.raises(ValueError, match="misaligned"):
        crop_offset(CoordMap(Fraction(1), Fraction(1, 2)), CoordMap())
    with pytest.raises(ValueError, match="misaligned"):
        crop_offset(CoordMap(), CoordMap(Fraction(1), Fraction(3)))  # source starts too late


# --- receptive field and alignment checked against autograd ----------------------------------


def _probe_net() -> nn.Sequential:
    """Convs, average pools and a dilated conv with positive weights: gradients never cancel."""
    net = nn.Sequential(
        nn.Conv2d(1, 1, 3, padding=7),
        nn.AvgPool2d(2, 2),
        nn.Conv2d(1, 1, 5, padding=1),
        nn.AvgPool2d(3, 2, padding=1),
        nn.Conv2d(1, 1, 3, padding=3, dilation=2),
        nn.Conv2d(1, 1, 4, padding=0),
    )
    for m in net:
        if isinstance(m, nn.Conv2d):
            nn.init.constant_(m.weight, 1.0)
            nn.init.zeros_(m.bias)
    return net.double()


def test_receptive_field_and_centre_match_autograd() -> None:
    net = _probe_net()
    geom = trace(net)
    x = torch.zeros(1, 1, 1, 160, dtype=torch.float64, requires_grad=True)
    y = net(torch.nn.functional.pad(x, (0, 0, 40, 40)))
    unit = y.shape[-1] // 2
    y[0, 0, y.shape[-2] // 2, unit].backward()
    support = (x.grad[0, 0, 0] != 0).nonzero().flatten()
    assert int(support.max() - support.min() + 1) == geom.rf
    # the unit's receptive field is centred where the coordinate map says
    centre = Fraction(int(support.max() + support.min()), 2)
    assert centre == (unit - geom.coord.shift) / geom.coord.scale
    assert geom.stride == 4 and geom.depth == 4


# --- the reference FCN offsets, derived --------------------------------------------------------


@pytest.mark.parametrize(
    "name, offsets",
    [
        ("fcn32s", {"score": 19}),
        ("fcn16s", {"score_pool4": 5, "score": 27}),
        ("fcn8s", {"score_pool4": 5, "score_pool3": 9, "score": 31}),
        ("fcn8s-atonce", {"score_pool4": 5, "score_pool3": 9, "score": 31}),
    ],
)
def test_reference_crop_offsets_are_derived(name: str, offsets: dict[str, int]) -> None:
    assert meta_model(name).crop_offsets == offsets


def test_offsets_follow_the_padding() -> None:
    """Change conv1_1's padding and the derived offsets move with it: nothing is hard-coded."""
    model = meta_model("fcn32s")
    model.backbone.conv1_1.padding = (132, 132)
    up = trace(model.upscore, trace(model.trunk()))
    assert crop_offset(up.coord, CoordMap()) == 19 + 32
    model.backbone.conv1_1.padding = (68, 68)  # output would start 13 px inside the image
    up = trace(model.upscore, trace(model.trunk()))
    with pytest.raises(ValueError, match="misaligned"):
        crop_offset(up.coord, CoordMap())


def test_vgg16_fcn_table1_geometry() -> None:
    d = describe(meta_model("fcn32s"))
    assert (d["rf_size"], d["max_stride"], d["conv_layers"]) == (404, 32, 16)
    assert d["parameters_excluding_upsampling"] == 134_346_581


def test_geometry_defaults() -> None:
    g = Geometry()
    assert (g.rf, g.stride, g.depth) == (1, 1, 0)


# --- FCN Table 1 (phase 2 backbones) ----------------------------------------------------------


@pytest.mark.parametrize(
    "name, layers, rf, params_m",
    [("fcn32s", 16, 404, 134), ("fcn32s-alexnet", 8, 355, 57), ("fcn32s-googlenet", 22, 379, 6)],
)
def test_table1_from_the_module_graph(name: str, layers: int, rf: int, params_m: int) -> None:
    """Paper: AlexNet 8/355/57M, VGG16 16/404/134M, GoogLeNet 22/907/6M, all stride 32.

    GoogLeNet's 379 differs from 907 because torchvision's definition differs (next test).
    """
    d = describe(meta_model(name))
    assert (d["conv_layers"], d["rf_size"], d["max_stride"]) == (layers, rf, 32)
    assert round(d["parameters_excluding_upsampling"] / 1e6) == params_m


def test_original_googlenet_gives_the_papers_907() -> None:
    """torchvision's GoogLeNet has 3x3 convs where the original has 5x5 (pytorch/vision#906) and a
    2x2 pool4 where the original has 3x3.  Restoring both gives 715; the paper's 907 is that plus
    the 7x7 average pooling (6 x 32 px) -- which FCN-GoogLeNet discards, so 907 describes the
    classifier's units, not the FCN's."""
    m = meta_model("fcn32s-googlenet")
    for name, block in m.backbone.named_children():
        if name.startswith("inception"):
            conv = block.branch3[1].conv
            block.branch3[1].conv = nn.Conv2d(conv.in_channels, conv.out_channels, 5, padding=2)
    m.backbone.maxpool4 = nn.MaxPool2d(3, 2, ceil_mode=True)
    assert describe(m)["rf_size"] == 715
    with_avgpool = nn.Sequential(m.trunk()[:-2], nn.AvgPool2d(7, stride=1))
    assert trace(with_avgpool).rf == 907


def test_parallel_branches_must_align() -> None:
    from pipeline.models.backbones import googlenet_features

    block = googlenet_features(1 / 16, upto="inception3a", conv1_pad=3).inception3a
    block.branch2[1].conv.padding = (0, 0)  # a 3x3 branch without padding no longer lines up
    with pytest.raises(ValueError, match="misaligned"):
        trace(block)
