"""DeepLab v1 models: Table 2 structure and sizes, output geometry, fc6 decimation, MSc, solver."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pipeline.errors import ParamsError
from pipeline.models import (
    VGG16Classifier,
    build_model,
    describe,
    init_from_checkpoint,
    list_models,
    load_vgg16_weights,
    param_groups,
)
from pipeline.models import weights as weights_mod
from pipeline.models.deeplab import MSC_TAPS, VOID, subsample_labels, upsample_scores
from pipeline.models.fcn import param_groups as fcn_param_groups

SMALL = 1 / 8
BASES = ("deeplab", "deeplab-7x7", "deeplab-4x4", "deeplab-largefov")
ALL = (*BASES, *(b + "-msc" for b in BASES))


def meta_model(name: str, num_classes: int = 21, **kw):
    with torch.device("meta"):
        return build_model(name, num_classes, **kw)


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def msc_extra(num_classes: int) -> int:
    """The Section 4.3 additions at full width, counted from the text: per tap a 128 3x3 conv
    and a 128 1x1 conv; a bias-free classifier over the 5 x 128 concatenated channels."""
    tap_channels = (3, 64, 128, 256, 512)  # input image, pool1 .. pool4
    mlps = sum(c * 9 * 128 + 128 + 128 * 128 + 128 for c in tap_channels)
    return mlps + 5 * 128 * num_classes


# --- registry and options ----------------------------------------------------------------------


def test_registry_has_every_variant() -> None:
    assert set(ALL) <= set(list_models())


@pytest.mark.parametrize(
    "name, options, match",
    [
        ("deeplab-largefov", {"msc_train_new_only": False}, "msc_train_new_only"),
        ("deeplab-largefov", {"learn_upsampling": True}, "do not apply"),
        ("deeplab-largefov-msc", {"msc_train_new_only": "yes"}, "true or false"),
        ("deeplab-largefov", {"dropout": 1.0}, "dropout"),
        ("fcn32s", {"msc_train_new_only": True}, "do not apply"),
    ],
)
def test_bad_options_raise_params_error(name: str, options: dict, match: str) -> None:
    with pytest.raises(ParamsError, match=match):
        meta_model(name, **options)


# --- Table 2: structure, parameters, field of view ---------------------------------------------

# (fc6 kernel, input stride, receptive field, exact #parameters at 21 classes)
TABLE2 = {
    "deeplab-7x7": (7, 4, 224, 134_346_581),
    "deeplab": (4, 4, 128, 65_140_565),  # DeepLab-CRF
    "deeplab-4x4": (4, 8, 224, 65_140_565),
    "deeplab-largefov": (3, 12, 224, 20_505_429),
}
#: convolutional-mode receptive field from the module graph (every layer's extent)
CONV_RF = {"deeplab-7x7": 419, "deeplab": 323, "deeplab-4x4": 419, "deeplab-largefov": 419}


@pytest.mark.parametrize("name", BASES)
def test_table2_row(name: str) -> None:
    kernel, input_stride, fov, count = TABLE2[name]
    m = meta_model(name)
    assert m.head.fc6.kernel_size == (kernel, kernel)
    assert m.head.fc6.dilation == (input_stride, input_stride)
    assert n_params(m) == count
    d = describe(m)
    assert d["parameters"] == count and d["field_of_view"] == fov
    assert d["output_stride"] == 8 and d["max_stride"] == 8 and d["conv_layers"] == 16
    assert d["rf_size"] == CONV_RF[name]


def test_parameter_counts_decompose_as_the_paper_says() -> None:
    """134.3M vs 65.1M vs 20.5M: only fc6's kernel and the fc6/fc7 width differ."""
    conv = 14_714_688  # VGG16 conv1_1 .. conv5_3

    def fcs(k: int, c: int) -> int:
        return 512 * k * k * c + c + c * c + c + c * 21 + 21

    assert TABLE2["deeplab-7x7"][3] == conv + fcs(7, 4096)
    assert TABLE2["deeplab"][3] == conv + fcs(4, 4096)
    assert TABLE2["deeplab-largefov"][3] == conv + fcs(3, 1024)


@pytest.mark.parametrize("base", BASES)
def test_msc_adds_640_channels_and_their_mlps(base: str) -> None:
    m = meta_model(base + "-msc")
    assert n_params(m) == TABLE2[base][3] + msc_extra(21)
    assert m.fc8_msc.in_channels == 5 * 128 and m.fc8_msc.bias is None
    assert tuple(m.msc) == MSC_TAPS
    strides = {t: m.msc[t].conv.stride[0] for t in MSC_TAPS}
    assert strides == {"data": 8, "pool1": 4, "pool2": 2, "pool3": 1, "pool4": 1}
    assert all(m.msc[t].conv.kernel_size == (3, 3) for t in MSC_TAPS)
    assert all(m.msc[t].fc.kernel_size == (1, 1) for t in MSC_TAPS)
    assert describe(m)["rf_size"] == CONV_RF[base]


def test_msc_exact_counts() -> None:
    assert n_params(meta_model("deeplab-largefov-msc")) == 21_711_445
    assert n_params(meta_model("deeplab-msc")) == 66_346_581
    assert n_params(meta_model("deeplab-7x7-msc")) == 135_552_597


def test_release_layout() -> None:
    bb = meta_model("deeplab-largefov").backbone
    assert bb.conv1_1.padding == (1, 1)
    for i in (1, 2, 3):
        p = bb.get_submodule(f"pool{i}")
        assert (p.kernel_size, p.stride, p.padding, p.ceil_mode) == (3, 2, 1, True)
    for i in (4, 5):
        p = bb.get_submodule(f"pool{i}")
        assert (p.kernel_size, p.stride, p.padding) == (3, 1, 1)
    for i in (1, 2, 3):
        c = bb.get_submodule(f"conv5_{i}")
        assert c.dilation == (2, 2) and c.padding == (2, 2)
        assert bb.get_submodule(f"conv4_{i}").dilation == (1, 1)


def test_width_and_dropout_options() -> None:
    m = meta_model("deeplab-largefov-msc", 5, width=SMALL, dropout=0.25)
    assert m.head.fc6.out_channels == 128 and m.head.fc7.out_channels == 128
    assert meta_model("deeplab-7x7", width=SMALL).head.fc6.out_channels == 512
    assert m.backbone.conv5_3.out_channels == 64 and m.fc8.out_channels == 5
    assert all(m.msc[t].fc.out_channels == 16 for t in MSC_TAPS)
    assert m.fc8_msc.in_channels == 5 * 16
    drops = [mod.p for mod in m.modules() if isinstance(mod, nn.Dropout)]
    assert len(drops) == 2 + 2 * len(MSC_TAPS) and set(drops) == {0.25}


# --- output geometry ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def small_msc() -> nn.Module:
    torch.manual_seed(0)
    m = build_model("deeplab-largefov-msc", 3, width=SMALL, dropout=0.0)
    with torch.no_grad():  # make the MSc branches count in the output
        m.fc8_msc.weight.normal_(0, 0.1)
    return m


@pytest.mark.parametrize("size", [(33, 40), (49, 41), (57, 64), (65, 71)])
def test_training_output_is_stride_8_and_eval_output_is_input_sized(
    small_msc: nn.Module, size: tuple[int, int]
) -> None:
    x = torch.randn(1, 3, *size)
    with torch.no_grad():
        coarse = small_msc.train()(x)
        full = small_msc.eval()(x)
    # units sit on pixels 0, 8, 16, ...; ceil-rounded pooling adds a unit until the last pixel
    # is covered: h = ceil((H - 1)/8) + 1
    expected = tuple(math.ceil((s - 1) / 8) + 1 for s in size)
    assert coarse.shape == (1, 3, *expected)
    assert all(8 * (h - 1) >= s - 1 > 8 * (h - 2) for h, s in zip(expected, size))
    assert full.shape == (1, 3, *size)
    # eval = the same coarse scores (dropout 0) interpolated: pixel 8i holds unit i
    on_units = full[..., ::8, ::8]
    a, b = on_units.shape[-2:]
    torch.testing.assert_close(on_units, coarse[..., :a, :b], rtol=1e-5, atol=1e-5)


def test_upsampling_places_unit_i_on_pixel_8i() -> None:
    """A linear ramp over units must come back as the same ramp over pixels (x / 8)."""
    h, w = 6, 7
    ii, jj = torch.meshgrid(torch.arange(h).float(), torch.arange(w).float(), indexing="ij")
    scores = (0.5 * ii - 2.0 * jj)[None, None]
    for H, W in ((41, 49), (36, 44), (34, 42)):  # 8k+1 and not
        up = upsample_scores(scores, (H, W), 8)
        yy, xx = torch.meshgrid(torch.arange(H).float(), torch.arange(W).float(), indexing="ij")
        torch.testing.assert_close(up[0, 0], 0.5 * yy / 8 - 2.0 * xx / 8)
    # for H = 8(h - 1) + 1 this is exactly Caffe's Interp (align_corners=True to that size)
    ref = F.interpolate(scores, size=(41, 49), mode="bilinear", align_corners=True)
    torch.testing.assert_close(upsample_scores(scores, (41, 49), 8), ref)
    with pytest.raises(RuntimeError, match="do not cover"):
        upsample_scores(scores, (42, 49), 8)


def test_labels_are_subsampled_at_the_score_units() -> None:
    labels = torch.arange(50 * 44).reshape(1, 50, 44) % 21
    sub = subsample_labels(labels, (8, 7), 8)  # 50 -> 8 units: the 8th (pixel 56) is off-image
    assert sub.shape == (1, 8, 7)
    assert torch.equal(sub[:, :7, :6], labels[:, 0:49:8, 0:41:8])
    assert (sub[:, 7, :] == VOID).all() and (sub[:, :, 6] == VOID).all()
    m = build_model("deeplab-largefov", 21, width=1 / 16).train()
    scores = m(torch.randn(1, 3, 50, 44))
    assert m.subsample_labels(labels, scores).shape == scores.shape[:1] + scores.shape[2:]


# --- fc6 decimation (Section 3.2) --------------------------------------------------------------


@pytest.fixture(scope="module")
def classifier_state() -> dict[str, torch.Tensor]:
    torch.manual_seed(3)
    return VGG16Classifier(num_classes=10, width=SMALL).state_dict()


@pytest.mark.parametrize(
    "name, tap, channel_step",
    [("deeplab-largefov", 3, 4), ("deeplab", 2, 1), ("deeplab-4x4", 2, 1), ("deeplab-7x7", 1, 1)],
)
def test_fc6_decimation_takes_the_expected_slices(
    classifier_state: dict[str, torch.Tensor], name: str, tap: int, channel_step: int
) -> None:
    m = build_model(name, 21, width=SMALL)
    loaded = load_vgg16_weights(m, classifier_state)
    assert {"head.fc6.weight", "head.fc7.bias", "backbone.conv5_3.weight"} <= set(loaded)
    assert not any(k.startswith("fc8") for k in loaded)
    c_in = classifier_state["features.28.weight"].shape[0]
    fc6 = classifier_state["classifier.0.weight"].reshape(-1, c_in, 7, 7)
    fc7 = classifier_state["classifier.3.weight"]
    kept = list(range(0, 7, tap))
    assert len(kept) == m.head.fc6.kernel_size[0]
    expected6 = fc6[::channel_step][:, :, kept][:, :, :, kept]
    assert torch.equal(m.head.fc6.weight, expected6)
    assert torch.equal(m.head.fc6.bias, classifier_state["classifier.0.bias"][::channel_step])
    expected7 = fc7[::channel_step, ::channel_step].reshape(m.head.fc7.weight.shape)
    assert torch.equal(m.head.fc7.weight, expected7)
    assert torch.equal(m.head.fc7.bias, classifier_state["classifier.3.bias"][::channel_step])
    assert torch.equal(m.backbone.conv5_1.weight, classifier_state["features.24.weight"])


def test_largefov_keeps_every_fourth_filter_by_value(classifier_state) -> None:
    """Independent of slicing syntax: filter j of LargeFOV's fc6 is the classifier's 4j-th,
    tap (a, b) its (3a, 3b)-th."""
    m = build_model("deeplab-largefov", 21, width=SMALL)
    load_vgg16_weights(m, classifier_state)
    c_in = classifier_state["features.28.weight"].shape[0]
    lin = classifier_state["classifier.0.weight"]
    for j, a, b, c in ((0, 0, 0, 0), (5, 1, 2, 3), (127, 2, 2, c_in - 1)):
        assert m.head.fc6.weight[j, c, a, b] == lin[4 * j, c * 49 + 3 * a * 7 + 3 * b]
    assert m.head.fc7.weight[7, 9, 0, 0] == classifier_state["classifier.3.weight"][28, 36]


def test_pretrained_path_and_imagenet_go_through_decimation(
    tmp_path, monkeypatch, classifier_state
) -> None:
    path = tmp_path / "vgg.pt"
    torch.save(classifier_state, path)
    m = build_model("deeplab-largefov-msc", 21, width=SMALL, pretrained=str(path))
    assert m.head.fc6.weight.shape == (128, 64, 3, 3)
    assert torch.equal(m.head.fc6.bias, classifier_state["classifier.0.bias"][::4])

    import torchvision

    with torch.device("meta"):
        tv = torchvision.models.vgg16(weights=None)
    calls = []

    def fake(arch: str) -> dict:
        calls.append(arch)
        return tv.state_dict()

    monkeypatch.setattr(weights_mod, "imagenet_state_dict", fake)
    full = meta_model("deeplab-largefov")
    loaded = weights_mod.load_pretrained(full, "imagenet")  # 7x7x512x4096 -> 3x3x512x1024
    assert calls == ["vgg16"] and len(loaded) == 30 and "head.fc6.weight" in loaded
    assert weights_mod.load_pretrained(meta_model("deeplab"), "imagenet")


def test_impossible_decimations_are_refused(classifier_state) -> None:
    state = weights_mod.classifier_to_conv_state(classifier_state, weights_mod.VGG16_CONV_NAMES)
    with pytest.raises(ParamsError, match="5x5"):
        weights_mod.decimate_fc(state, 5, 512)
    with pytest.raises(ParamsError, match="channels"):
        weights_mod.decimate_fc(state, 3, 300)


# --- MSc: concatenation, initialisation from the plain net, freezing ---------------------------


def test_msc_classifier_is_one_conv_over_the_concatenation(small_msc: nn.Module) -> None:
    x = torch.randn(2, 3, 41, 49)
    m = small_msc.eval()
    with torch.no_grad():
        main, extra = m.features(x)
        cat = torch.cat([main, extra], 1)
        weight = torch.cat([m.fc8.weight, m.fc8_msc.weight], 1)
        ref = F.conv2d(cat, weight, m.fc8.bias)
        torch.testing.assert_close(m.coarse_scores(x), ref, rtol=1e-5, atol=1e-5)
    assert extra.shape[1] == 5 * 16 and extra.shape[-2:] == main.shape[-2:]
    assert extra.abs().sum() > 0


def test_msc_starts_from_the_trained_plain_net(tmp_path) -> None:
    torch.manual_seed(4)
    base = build_model("deeplab-largefov", 4, width=1 / 16).eval()
    with torch.no_grad():
        base.fc8.weight.normal_(0, 0.1)
    msc = build_model("deeplab-largefov-msc", 4, width=1 / 16).eval()
    report = init_from_checkpoint(msc, base)
    assert set(report["copied"]) == set(base.state_dict())
    assert report["skipped"] and all(k.startswith(("msc.", "fc8_msc.")) for k in report["skipped"])
    x = torch.randn(1, 3, 45, 38)
    with torch.no_grad():
        torch.testing.assert_close(msc(x), base(x))  # fc8_msc starts at zero
        msc.fc8_msc.weight.fill_(0.01)
        assert not torch.allclose(msc(x), base(x))
    # the same through build_model(pretrained=<checkpoint>)
    ckpt = tmp_path / "largefov.pt"
    torch.save({"model": base.state_dict()}, ckpt)
    again = build_model("deeplab-largefov-msc", 4, width=1 / 16, pretrained=ckpt).eval()
    assert torch.equal(again.fc8.weight, base.fc8.weight)
    assert torch.equal(again.head.fc6.weight, base.head.fc6.weight)


def test_msc_trains_only_the_new_weights_by_default() -> None:
    m = meta_model("deeplab-largefov-msc")
    trainable = {n for n, p in m.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith(("msc.", "fc8_msc.")) for n in trainable)
    assert sum(p.numel() for p in m.parameters() if p.requires_grad) == msc_extra(21)
    everything = meta_model("deeplab-largefov-msc", msc_train_new_only=False)
    assert all(p.requires_grad for p in everything.parameters())
    assert all(p.requires_grad for p in meta_model("deeplab-largefov").parameters())


# --- solver: classifier at 10x ----------------------------------------------------------------


def test_param_groups_put_the_classifier_at_10x() -> None:
    m = build_model("deeplab-largefov", 21, width=1 / 16)
    groups = {g["name"]: g for g in param_groups(m, lr=1e-3, weight_decay=5e-4)}
    assert set(groups) == {"weights", "biases", "head_weights", "head_biases"}
    assert groups["weights"]["lr"] == pytest.approx(1e-3)
    assert groups["biases"]["lr"] == pytest.approx(2e-3)
    assert groups["head_weights"]["lr"] == pytest.approx(1e-2)
    assert groups["head_biases"]["lr"] == pytest.approx(2e-2)
    assert groups["head_weights"]["weight_decay"] == 5e-4
    assert groups["head_biases"]["weight_decay"] == 0.0
    assert [id(p) for p in groups["head_weights"]["params"]] == [id(m.fc8.weight)]
    assert [id(p) for p in groups["head_biases"]["params"]] == [id(m.fc8.bias)]
    ids = sorted(id(p) for g in groups.values() for p in g["params"])
    assert ids == sorted(id(p) for p in m.parameters())
    torch.optim.SGD(list(groups.values()), lr=1e-3, momentum=0.9)
    # a DataParallel/DDP wrapper is looked through
    wrapped = {g["name"] for g in fcn_param_groups(nn.DataParallel(m), 1e-3, 5e-4)}
    assert wrapped == set(groups)


def test_msc_param_groups_hold_only_the_new_layers() -> None:
    m = build_model("deeplab-largefov-msc", 21, width=1 / 16)
    groups = {g["name"]: g for g in param_groups(m, lr=1e-3, weight_decay=5e-4)}
    assert [id(p) for p in groups["head_weights"]["params"]] == [id(m.fc8_msc.weight)]
    assert "head_biases" not in groups  # fc8's bias is frozen; fc8_msc has none
    n = sum(p.numel() for g in groups.values() for p in g["params"])
    assert n == sum(p.numel() for k, p in m.named_parameters() if k.startswith(("msc", "fc8_msc")))


def test_fcn_groups_are_unchanged() -> None:
    m = build_model("fcn32s", 4, width=1 / 16)
    assert [g["name"] for g in param_groups(m, 1e-10, 5e-4)] == ["weights", "biases"]
