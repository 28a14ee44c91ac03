"""The FCN model library: registry, reference structure, sizes, staged init, weight loading."""

from __future__ import annotations

import importlib

import pytest
import torch
from torch import nn

from pipeline.errors import DownloadError, ParamsError
from pipeline.models import (
    VGG16Classifier,
    build_model,
    convolutionalize,
    init_from_checkpoint,
    list_models,
    load_vgg16_weights,
    param_groups,
)
from pipeline.models import weights as weights_mod
from pipeline.models.upsample import BilinearUpsample, bilinear_weight, upsample_filt

TINY = 1 / 16
VGG_NETS = ("fcn32s", "fcn16s", "fcn8s", "fcn8s-atonce")


def meta_model(name: str, num_classes: int = 21, **kw):
    with torch.device("meta"):
        return build_model(name, num_classes, **kw)


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# --- registry ---------------------------------------------------------------------------------


def test_registry_names() -> None:
    names = list_models()
    for n in (*VGG_NETS, "fcn32s-fixed", "fcn-pool5", "fcn-pool4", "fcn-pool3"):
        assert n in names


def test_unknown_model_lists_known_names() -> None:
    with pytest.raises(ParamsError, match="fcn8s-atonce") as err:
        build_model("fcn4s", 21)
    assert "fcn4s" in str(err.value)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"num_classes": 0}, "num_classes"),
        ({"width": 0}, "width"),
        ({"colour": "red"}, "colour"),
        ({"dropout": 1.5}, "dropout"),
        ({"learn_upsampling": True, "fixed_upsampling": True}, "contradicts"),
        ({"pretrained": 3}, "pretrained"),
    ],
)
def test_bad_options_raise_params_error(kwargs: dict, match: str) -> None:
    kwargs = {"num_classes": 21, "width": TINY, **kwargs}
    with pytest.raises(ParamsError, match=match):
        build_model("fcn32s", **kwargs)


# --- reference structure ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, count",
    [("fcn32s", 136_152_917), ("fcn16s", 134_815_994), ("fcn8s", 134_489_759)],
)
def test_reference_parameter_counts(name: str, count: int) -> None:
    assert n_params(meta_model(name)) == count


def test_fcn32s_count_splits_into_learned_and_fixed_deconv() -> None:
    m = meta_model("fcn32s")
    assert sum(p.numel() for p in m.parameters() if p.requires_grad) == 134_346_581
    assert m.upscore.weight.numel() == 21 * 21 * 64 * 64 == 1_806_336
    assert n_params(meta_model("fcn8s-atonce")) == n_params(meta_model("fcn8s"))


def test_vgg_trunk_matches_caffe_definition() -> None:
    m = meta_model("fcn8s")
    convs = [(n, c) for n, c in m.backbone.named_children() if isinstance(c, nn.Conv2d)]
    assert len(convs) == 13
    assert m.backbone.conv1_1.padding == (100, 100)
    assert all(c.padding == (1, 1) and c.kernel_size == (3, 3) for _, c in convs[1:])
    pools = [c for c in m.backbone.children() if isinstance(c, nn.MaxPool2d)]
    assert len(pools) == 5 and all(p.ceil_mode and p.kernel_size == 2 for p in pools)
    fc6, fc7 = m.head.fc6, m.head.fc7
    assert (fc6.kernel_size, fc6.padding, fc6.out_channels) == ((7, 7), (0, 0), 4096)
    assert (fc7.kernel_size, fc7.out_channels) == ((1, 1), 4096)
    kinds = [type(c).__name__ for c in m.head.children()]
    assert kinds == ["Conv2d", "ReLU", "Dropout", "Conv2d", "ReLU", "Dropout"]
    assert m.head.drop6.p == m.head.drop7.p == 0.5
    assert meta_model("fcn32s", dropout=0.2).head.drop7.p == 0.2


def test_width_scales_every_channel() -> None:
    m = meta_model("fcn8s", width=0.125)
    firsts = [m.backbone.get_submodule(f"conv{b}_1").out_channels for b in range(1, 6)]
    assert firsts == [8, 16, 32, 64, 64]
    assert m.head.fc6.out_channels == m.head.fc7.out_channels == 512
    assert m.score_pool4.in_channels == 64 and m.score_pool3.in_channels == 32


@pytest.mark.parametrize("name", VGG_NETS)
def test_score_layers_zero_and_deconvs_bilinear(name: str) -> None:
    m = build_model(name, 5, width=TINY)
    scores = [c for n, c in m.named_children() if n.startswith("score_")]
    assert len(scores) == {"fcn32s": 1, "fcn16s": 2}.get(name, 3)
    for c in scores:
        assert c.weight.abs().sum() == 0 and c.bias.abs().sum() == 0
    for up in m.upsampling_layers().values():
        assert up.bias is None
        assert torch.equal(up.weight.detach(), bilinear_weight(5, up.kernel_size[0]))


def test_upsampling_names_kernels_and_learnability() -> None:
    m = meta_model("fcn8s")
    ups = m.upsampling_layers()
    assert {n: (u.kernel_size[0], u.stride[0]) for n, u in ups.items()} == {
        "upscore2": (4, 2),
        "upscore_pool4": (4, 2),
        "upscore8": (16, 8),
    }
    assert [u.weight.requires_grad for u in ups.values()] == [True, True, False]
    assert all(
        u.weight.requires_grad
        for u in meta_model("fcn8s", learn_upsampling=True).upsampling_layers().values()
    )
    for kw in ({"learn_upsampling": False}, {"fixed_upsampling": True}):
        ups = meta_model("fcn16s", **kw).upsampling_layers().values()
        assert not any(u.weight.requires_grad for u in ups)
    assert list(meta_model("fcn32s").upsampling_layers()) == ["upscore"]
    assert meta_model("fcn32s").upscore.kernel_size == (64, 64)


def test_atonce_scales_skips() -> None:
    m = meta_model("fcn8s-atonce")
    assert (m.scale_pool4.factor, m.scale_pool3.factor) == (0.01, 0.0001)
    assert not hasattr(meta_model("fcn8s"), "scale_pool4")
    # the scale really is applied: same weights, the at-once pool4 score is 100x smaller
    a = build_model("fcn8s-atonce", 1, width=TINY).eval()
    b = build_model("fcn8s", 1, width=TINY).eval()
    nn.init.constant_(a.score_pool4.weight, 1.0)
    b.load_state_dict(a.state_dict())
    x = torch.randn(1, 3, 40, 40)
    with torch.no_grad():
        pa = a.score_pool4(a.scale_pool4(a._features(x)["pool4"]))
        pb = b.score_pool4(b._features(x)["pool4"])
    assert pb.abs().max() > 0
    torch.testing.assert_close(pa * 100, pb, rtol=1e-5, atol=1e-6)


def test_upsample_filt_values() -> None:
    assert torch.allclose(upsample_filt(4)[0], torch.tensor([0.25, 0.75, 0.75, 0.25]) * 0.25)
    assert torch.allclose(upsample_filt(3)[1], torch.tensor([0.5, 1.0, 0.5]))
    w = bilinear_weight(3, 4)
    assert w[0, 1].abs().sum() == 0 and torch.equal(w[2, 2], upsample_filt(4))


def test_bilinear_upsample_interpolates_linearly() -> None:
    """A 2x deconv of a ramp is the ramp at half steps (away from the zero-padded borders)."""
    up = BilinearUpsample(1, 2)
    ramp = torch.arange(8, dtype=torch.float32).expand(1, 1, 8, 8).contiguous() * 3.0
    with torch.no_grad():
        out = up(ramp)[0, 0, 6]
    # output unit j sits at input (j - 1.5) / 2
    expected = (torch.arange(out.numel()) - 1.5) / 2 * 3.0
    torch.testing.assert_close(out[2:-2], expected[2:-2])


# --- forward sizes -----------------------------------------------------------------------------


ALL_VGG = (*VGG_NETS, "fcn32s-fixed", "fcn-pool5", "fcn-pool4", "fcn-pool3")
BIG = ((375, 500), (500, 500), (224, 224), (500, 353), (512, 512))


@pytest.mark.parametrize("name", ALL_VGG)
def test_output_has_input_size_for_every_size(name: str) -> None:
    """Every height and width 1..100 (non-square) and large sizes, full width.

    Runs the real forward on ``meta`` tensors: the same modules, pooling rounding and checked
    crops, but shapes only, so 100+ sizes cost well under a second.
    """
    m = meta_model(name, 3).eval()
    for s in range(1, 101):
        h, w = s, 101 - s
        assert m(torch.empty(1, 3, h, w, device="meta")).shape == (1, 3, h, w), (h, w)
    for h, w in BIG:
        assert m(torch.empty(1, 3, h, w, device="meta")).shape == (1, 3, h, w)


@pytest.mark.parametrize("name", ["fcn32s", "fcn16s", "fcn8s-atonce", "fcn-pool3"])
def test_real_forward_has_input_size(name: str) -> None:
    """Real tiny forwards at the pooling-rounding edges agree with the meta sweep."""
    m = build_model(name, 3, width=1 / 64).eval()
    with torch.no_grad():
        for h, w in ((1, 1), (1, 100), (31, 33), (32, 64), (63, 65), (97, 2)):
            out = m(torch.randn(1, 3, h, w))
            assert out.shape == (1, 3, h, w) and torch.isfinite(out).all()
    with torch.no_grad():
        assert build_model(name, 3, width=1 / 64).eval()(torch.zeros(1, 3, 375, 500)).shape == (
            1,
            3,
            375,
            500,
        )


def test_batched_forward_and_backward() -> None:
    m = build_model("fcn8s", 4, width=TINY)
    out = m(torch.randn(2, 3, 37, 45))
    assert out.shape == (2, 4, 37, 45)
    out.sum().backward()
    assert m.score_fr.weight.grad is not None and m.upscore8.weight.grad is None


# --- staged initialisation ---------------------------------------------------------------------


def _randomised(name: str, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    m = build_model(name, 4, width=TINY).eval()
    with torch.no_grad():
        for n, p in m.named_parameters():
            if n.startswith("score") or n.startswith("upscore2"):
                p.add_(torch.randn_like(p) * 0.1)
    return m


@pytest.mark.parametrize("coarse, fine", [("fcn32s", "fcn16s"), ("fcn16s", "fcn8s")])
def test_staged_init_copies_everything_and_adds_exactly_zero(coarse: str, fine: str) -> None:
    """The finer net computes the coarser net's scores; its new skips add exactly nothing.

    (Its output is *not* bit-identical to the coarser net's: 2x-then-16x bilinear interpolation
    cuts the corners of 32x interpolation at every coarse sample, see test below.)
    """
    src = _randomised(coarse, 0)
    dst = build_model(fine, 4, width=TINY).eval()
    report = init_from_checkpoint(dst, src)
    assert "score_fr.weight" in report["copied"] and "backbone.conv1_1.weight" in report["copied"]
    new = {
        "fcn16s": {"score_pool4", "upscore2", "upscore16"},
        "fcn8s": {"score_pool3", "upscore_pool4", "upscore8"},
    }[fine]
    assert {k.split(".")[0] for k in report["skipped"]} == new
    if fine == "fcn8s":  # the learned 16s skip and 2x upsampling carry over
        assert torch.equal(dst.upscore2.weight, src.upscore2.weight)
        assert torch.equal(dst.score_pool4.weight, src.score_pool4.weight)
    x = torch.randn(1, 3, 61, 83)
    with torch.no_grad():
        torch.testing.assert_close(dst.trunk()(x), src.trunk()(x), rtol=0, atol=0)
        # the fine net's output equals the coarse net's fused scores pushed through its new path
        fused = _coarse_fused(src, x)
        fused = (dst.upscore_pool4 if fine == "fcn8s" else dst.upscore2)(fused)
        final = dst.upsampling_layers()[dst.final_name]
        expected = final(fused)
        off = dst.crop_offsets["score"]
        expected = expected[..., off : off + 61, off : off + 83]
        torch.testing.assert_close(dst(x), expected, rtol=0, atol=0)


def _coarse_fused(src: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The coarse net's last fused score map (before its final upsampling)."""
    taps = src._features(x)
    score = src.score_fr(src.head(taps["pool5"]))
    if src.name == "fcn16s":
        up = src.upscore2(score)
        skip = src.score_pool4(taps["pool4"])
        off = src.crop_offsets["score_pool4"]
        score = up + skip[..., off : off + up.shape[-2], off : off + up.shape[-1]]
    return score


def test_staged_output_equals_coarse_output_where_interpolation_agrees() -> None:
    """On constant coarse scores 16s-from-32s reproduces 32s except within the border ramps."""
    src = build_model("fcn32s", 2, width=TINY).eval()
    with torch.no_grad():
        src.score_fr.bias.copy_(torch.tensor([1.5, -2.0]))  # weights stay zero: constant scores
    dst = build_model("fcn16s", 2, width=TINY).eval()
    init_from_checkpoint(dst, src)
    x = torch.randn(1, 3, 150, 150)
    with torch.no_grad():
        a, b = src(x), dst(x)
    inner = slice(24, 150 - 24)
    torch.testing.assert_close(a[..., inner, inner], b[..., inner, inner])
    assert not torch.allclose(a, b)  # the borders differ: the two are not the same function


def test_staged_init_refuses_wrong_shapes_and_unrelated_state() -> None:
    dst = build_model("fcn16s", 4, width=TINY)
    with pytest.raises(ParamsError, match="score_fr.weight"):
        init_from_checkpoint(dst, build_model("fcn32s", 5, width=TINY))
    report = init_from_checkpoint(dst, build_model("fcn32s", 5, width=TINY), strict_shapes=False)
    assert "score_fr.weight" in report["skipped"]
    with pytest.raises(ParamsError, match="shares no layer"):
        init_from_checkpoint(dst, {"foo.weight": torch.zeros(1)})


# --- parameter groups and freezing -------------------------------------------------------------


def test_param_groups_follow_caffe_solver() -> None:
    m = build_model("fcn16s", 4, width=TINY)
    groups = param_groups(m, lr=1e-3, weight_decay=5e-4)
    by_name = {g["name"]: g for g in groups}
    assert by_name["weights"]["lr"] == 1e-3 and by_name["weights"]["weight_decay"] == 5e-4
    assert by_name["biases"]["lr"] == 2e-3 and by_name["biases"]["weight_decay"] == 0.0
    ids = [id(p) for g in groups for p in g["params"]]
    trainable = [p for p in m.parameters() if p.requires_grad]
    assert sorted(ids) == sorted(id(p) for p in trainable)
    assert id(m.upscore16.weight) not in ids and id(m.upscore2.weight) in ids
    bias_ids = {id(p) for p in by_name["biases"]["params"]}
    assert bias_ids == {id(p) for n, p in m.named_parameters() if n.endswith(".bias")}
    torch.optim.SGD(groups, lr=1e-3, momentum=0.99)  # accepted as is


def test_fcn32s_fixed_learns_only_the_score_layer() -> None:
    m = meta_model("fcn32s-fixed")
    trainable = {n for n, p in m.named_parameters() if p.requires_grad}
    assert trainable == {"score_fr.weight", "score_fr.bias"}
    groups = param_groups(m, 1e-10, 5e-4)
    assert sum(p.numel() for g in groups for p in g["params"]) == 4096 * 21 + 21


def test_truncated_pool_nets_have_no_deeper_layers() -> None:
    for name, last, stride in (
        ("fcn-pool5", "pool5", 32),
        ("fcn-pool4", "pool4", 16),
        ("fcn-pool3", "pool3", 8),
    ):
        m = meta_model(name)
        assert list(m.backbone.named_children())[-1][0] == last
        assert isinstance(m.head, nn.Identity)
        assert m.upscore.stride == (stride, stride) and not m.upscore.weight.requires_grad


# --- convolutionalization and weight loading --------------------------------------------------


@pytest.fixture(scope="module")
def tv_vgg16() -> nn.Module:
    import torchvision

    torch.manual_seed(0)
    return torchvision.models.vgg16(weights=None).eval()


def test_convolutionalize_torchvision_vgg16(tv_vgg16: nn.Module) -> None:
    dense = convolutionalize(tv_vgg16).eval()
    assert dense.fc6.kernel_size == (7, 7) and dense.fc6.padding == (0, 0)
    assert dense.fc8.out_channels == 1000 and dense.conv1_1.padding == (1, 1)
    assert not dense.pool5.ceil_mode
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        logits = tv_vgg16(x)
        out = dense(x)
    assert out.shape == (1, 1000, 1, 1)
    torch.testing.assert_close(out.flatten(1), logits, rtol=1e-4, atol=1e-4)
    del dense


def test_convolutionalize_inhouse_classifier_gives_dense_logits() -> None:
    torch.manual_seed(1)
    clf = VGG16Classifier(num_classes=10, width=TINY).eval()
    dense = convolutionalize(clf).eval()
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(dense(x).flatten(1), clf(x), rtol=1e-4, atol=1e-5)
        # and it is dense: a larger image gives a map of logits (one per 32 px step)
        assert dense(torch.randn(1, 3, 288, 320)).shape == (1, 10, 3, 4)


def test_load_vgg16_weights_uses_the_same_conversion() -> None:
    torch.manual_seed(2)
    clf = VGG16Classifier(num_classes=10, width=TINY)
    fcn = build_model("fcn8s", 21, width=TINY)
    loaded = load_vgg16_weights(fcn, clf.state_dict())
    assert len(loaded) == 2 * 15  # 13 convs + fc6 + fc7, weight and bias
    dense = convolutionalize(clf)
    for name in ("conv1_1", "conv3_2", "conv5_3"):
        assert torch.equal(
            fcn.backbone.get_submodule(name).weight, dense.get_submodule(name).weight
        )
    assert torch.equal(fcn.head.fc6.weight, dense.fc6.weight)
    assert torch.equal(fcn.head.fc7.bias, dense.fc7.bias)
    assert fcn.head.fc6.weight.shape == (256, 32, 7, 7)
    assert fcn.score_fr.weight.abs().sum() == 0 and fcn.score_pool3.weight.abs().sum() == 0
    # fc6 really is the Linear: flatten order (C, H, W) = conv weight layout
    torch.testing.assert_close(fcn.head.fc6.weight.flatten(1), clf.classifier[0].weight)


def test_wrong_width_weights_are_refused() -> None:
    clf = VGG16Classifier(num_classes=10, width=1 / 8)
    fcn = build_model("fcn32s", 21, width=TINY)
    with pytest.raises(ParamsError, match="conv1_1.weight"):
        load_vgg16_weights(fcn, clf.state_dict())


def test_pretrained_paths(tmp_path) -> None:
    clf = VGG16Classifier(num_classes=10, width=TINY)
    path = tmp_path / "vgg.pt"
    torch.save({"state_dict": clf.state_dict()}, path)
    m = build_model("fcn-pool4", 21, width=TINY, pretrained=str(path))
    assert torch.equal(m.backbone.conv4_3.weight, clf.features[21].weight)
    # an FCN checkpoint (e.g. a trained 32s, saved from DDP) initialises the next stage
    src = _randomised("fcn32s", 3)
    ckpt = tmp_path / "fcn32s.pt"
    torch.save({"module." + k: v for k, v in src.state_dict().items()}, ckpt)
    m16 = build_model("fcn16s", 4, width=TINY, pretrained=ckpt)
    assert torch.equal(m16.score_fr.weight, src.score_fr.weight)
    with pytest.raises(ParamsError, match="no such weights file"):
        build_model("fcn32s", 4, width=TINY, pretrained=tmp_path / "missing.pt")
    with pytest.raises(ParamsError, match="width"):
        build_model("fcn32s", 4, width=TINY, pretrained="imagenet")


def test_imagenet_weights_go_through_torchvision(monkeypatch, tv_vgg16: nn.Module) -> None:
    """Full-width torchvision VGG16 weights into a full-width FCN (on ``meta``: shapes are checked,
    no 0.5 GB copy; the values path is the tiny-width test above, the same code)."""
    calls = []

    def fake(arch: str) -> dict:
        calls.append(arch)
        return {k: v.to("meta") for k, v in tv_vgg16.state_dict().items()}

    monkeypatch.setattr(weights_mod, "imagenet_state_dict", fake)
    m = meta_model("fcn8s", pretrained="imagenet")
    assert calls == ["vgg16"]
    loaded = weights_mod.load_pretrained(m, "imagenet")
    assert len(loaded) == 30 and "head.fc6.weight" in loaded
    assert not any(k.startswith(("score", "upscore")) for k in loaded)
    monkeypatch.setattr(weights_mod, "imagenet_state_dict", lambda arch: {"x": torch.zeros(1)})
    with pytest.raises(ParamsError):
        meta_model("fcn32s", pretrained="imagenet")


def test_imagenet_download_failure_is_a_download_error(monkeypatch) -> None:
    api = importlib.import_module("torchvision.models._api")
    seen = {}

    def boom(url, *args, **kwargs):
        seen.update(kwargs, url=url)
        raise OSError("no network")

    monkeypatch.setattr(api, "load_state_dict_from_url", boom)
    with pytest.raises(DownloadError, match="vgg16"):
        weights_mod.imagenet_state_dict("vgg16")
    assert seen["check_hash"] is True and seen["url"].endswith("vgg16-397923af.pth")


# --- phase 2: FCN-AlexNet and FCN-GoogLeNet ---------------------------------------------------


def test_alexnet_fcn_structure_and_derived_63x63_deconv() -> None:
    m = meta_model("fcn32s-alexnet")
    assert m.backbone.conv1.padding == (100, 100) and m.backbone.pool5.ceil_mode
    assert m.head.fc6.kernel_size == (6, 6) and m.head.fc6.in_channels == 256
    # as in Caffe's voc-fcn-alexnet: a 64x64 kernel cannot be aligned, 63x63 gives offset 18
    assert m.upscore.kernel_size == (63, 63) and m.crop_offsets == {"score": 18}


@pytest.mark.parametrize("name", ["fcn32s-alexnet", "fcn32s-googlenet"])
def test_backbone_fcn_sizes_and_real_forward(name: str) -> None:
    m = meta_model(name, 3).eval()
    # every size 1..100 appears once, as height or as width (the nets treat both axes alike)
    for s in range(1, 51):
        assert m(torch.empty(1, 3, s, 101 - s, device="meta")).shape == (1, 3, s, 101 - s)
    for h, w in BIG:
        assert m(torch.empty(1, 3, h, w, device="meta")).shape == (1, 3, h, w)
    tiny = build_model(name, 3, width=TINY).eval()
    with torch.no_grad():
        assert tiny(torch.randn(1, 3, 45, 70)).shape == (1, 3, 45, 70)


@pytest.fixture(scope="module")
def tv_alexnet() -> nn.Module:
    import torchvision

    torch.manual_seed(0)
    return torchvision.models.alexnet(weights=None).eval()


@pytest.fixture(scope="module")
def tv_googlenet() -> nn.Module:
    import torchvision

    torch.manual_seed(0)
    net = torchvision.models.googlenet(
        weights=None, aux_logits=True, init_weights=True, transform_input=True
    ).eval()
    with torch.no_grad():  # non-trivial BN statistics, so misplaced buffers would show
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    return net


def test_convolutionalize_alexnet_and_googlenet(tv_alexnet, tv_googlenet) -> None:
    x = torch.randn(1, 3, 224, 224)
    for net in (tv_alexnet, tv_googlenet):
        dense = convolutionalize(net).eval()
        with torch.no_grad():
            logits, out = net(x), dense(x)
        assert out.shape == (1, 1000, 1, 1)
        torch.testing.assert_close(out.flatten(1), logits, rtol=1e-4, atol=1e-5)
    assert convolutionalize(tv_alexnet).fc6.kernel_size == (6, 6)


def test_alexnet_imagenet_layout_loads_into_fcn(monkeypatch, tv_alexnet) -> None:
    monkeypatch.setattr(weights_mod, "imagenet_state_dict", lambda arch: tv_alexnet.state_dict())
    m = build_model("fcn32s-alexnet", 21, pretrained="imagenet").eval()
    torch.testing.assert_close(m.head.fc6.weight.flatten(1), tv_alexnet.classifier[1].weight)
    # with torchvision's padding and pooling restored the trunk computes torchvision's features
    m.backbone.conv1.padding = (2, 2)
    for pool in ("pool1", "pool2", "pool5"):
        m.backbone.get_submodule(pool).ceil_mode = False
    x = torch.randn(1, 3, 131, 131)
    with torch.no_grad():
        torch.testing.assert_close(m.backbone(x), tv_alexnet.features(x))


def test_googlenet_imagenet_layout_loads_into_fcn(monkeypatch, tv_googlenet) -> None:
    monkeypatch.setattr(weights_mod, "imagenet_state_dict", lambda arch: tv_googlenet.state_dict())
    m = build_model("fcn32s-googlenet", 21, pretrained="imagenet").eval()
    assert not any(k.startswith(("backbone.aux", "backbone.fc")) for k in m.state_dict())
    assert torch.allclose(m.backbone.transform_input.scale, torch.tensor([0.458, 0.448, 0.45]))
    m.backbone.conv1.conv.padding = (3, 3)
    feats = {}
    tv_googlenet.inception5b.register_forward_hook(lambda mod, i, o: feats.update(out=o))
    x = torch.randn(1, 3, 160, 160)
    with torch.no_grad():
        tv_googlenet(x)
        torch.testing.assert_close(m.backbone(x), feats["out"])
    assert m.score_fr.in_channels == 1024 and m.score_fr.weight.abs().sum() == 0
