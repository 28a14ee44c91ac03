"""FCN beyond PASCAL (FCN Tables 5-7): NYUD input modalities, RGB-HHA late fusion, SIFT Flow's
two-headed net, and the loader building their inputs and targets."""

import io

import numpy as np
import pytest
import torch
from PIL import Image

from pipeline.data.loader import (
    HHA_MEAN,
    LOG_DEPTH_MEAN,
    Augment,
    InputSpec,
    batch_to_tensors,
    decode_rows,
)
from pipeline.errors import DataError, ParamsError
from pipeline.models import LateFusion, build_model
from pipeline.models.weights import load_backbone_weights, widen_input
from pipeline.training.loop import LossModule, TrainConfig
from pipeline.training.losses import pixel_loss


def _png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def _rows(h=20, w=24, n=2, seed=0) -> dict:
    """Prepared-style rows with depth (uint16 mm), HHA and a geometric label column."""
    rng = np.random.default_rng(seed)
    cols = {k: [] for k in ("id", "image", "label", "depth", "hha", "geo_label", "height", "width")}
    for i in range(n):
        cols["id"].append(f"r{i}")
        cols["image"].append(_png(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)))
        cols["label"].append(_png(rng.integers(0, 5, (h, w), dtype=np.uint8)))
        depth = rng.integers(500, 6000, (h, w)).astype(np.uint16)
        depth[0, :3] = 0  # a hole
        cols["depth"].append(_png(depth))
        cols["hha"].append(_png(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)))
        cols["geo_label"].append(_png(rng.integers(0, 3, (h, w), dtype=np.uint8)))
        cols["height"].append(h)
        cols["width"].append(w)
    return {k: np.asarray(v, dtype=object) for k, v in cols.items()}


def test_late_fusion_of_identical_streams_equals_either_and_splits_the_gradient():
    torch.manual_seed(0)
    net = build_model("fcn32s", 5, width=1 / 16, modality="rgb-hha")
    assert isinstance(net, LateFusion)
    color, hha = net.streams["color"], net.streams["hha"]
    for p in color.parameters():  # score layers start at zero: give them something to say
        p.data.normal_(0, 0.1)
    hha.load_state_dict(color.state_dict())
    net.eval()  # dropout off: the streams are then the same function
    x3 = torch.randn(1, 3, 33, 41)
    fused = net(torch.cat([x3, x3], 1))
    assert torch.allclose(fused, color(x3), atol=1e-6)
    fused.sum().backward()
    single = build_model("fcn32s", 5, width=1 / 16).eval()
    single.load_state_dict(color.state_dict())
    single(x3).sum().backward()
    for (name, a), b, c in zip(color.named_parameters(), hha.parameters(), single.parameters()):
        if c.grad is None or not c.grad.abs().sum():
            continue
        assert torch.allclose(a.grad, 0.5 * c.grad, atol=1e-6, rtol=1e-4), name
        assert torch.allclose(b.grad, 0.5 * c.grad, atol=1e-6, rtol=1e-4), name


def test_rgbd_net_reproduces_the_rgb_net_when_depth_is_zero():
    torch.manual_seed(0)
    classifier = build_model("fcn32s", 5, width=1 / 16)  # any VGG16 weights will do
    for p in classifier.parameters():
        p.data.normal_(0, 0.05)
    state = {k.removeprefix("backbone."): v for k, v in classifier.state_dict().items()}
    rgb = build_model("fcn32s", 5, width=1 / 16)
    rgbd = build_model("fcn32s", 5, width=1 / 16, modality="rgbd")
    rgb.load_state_dict(classifier.state_dict())
    rgb.eval(), rgbd.eval()
    widened = widen_input(rgbd, {k: v for k, v in state.items() if k.startswith("conv")})
    w = widened["conv1_1.weight"]
    assert w.shape[1] == 4
    # the depth filter starts as the mean of the colour filters
    assert torch.allclose(w[:, 3], w[:, :3].mean(1))
    own = rgbd.state_dict()
    for k, v in classifier.state_dict().items():
        own[k] = widened["conv1_1.weight"] if k == "backbone.conv1_1.weight" else v
    rgbd.load_state_dict(own)
    x = torch.randn(1, 3, 37, 29)
    zero_depth = torch.cat([x, torch.zeros(1, 1, 37, 29)], 1)
    assert torch.allclose(rgbd(zero_depth), rgb(x), atol=1e-5)
    assert not torch.allclose(rgbd(torch.cat([x, torch.ones(1, 1, 37, 29)], 1)), rgb(x))


def test_rgbd_and_late_fusion_take_imagenet_layout_classifier_weights():
    from pipeline.models.vgg import VGG16Classifier

    torch.manual_seed(0)
    classifier = VGG16Classifier(5, width=1 / 16)
    state = classifier.state_dict()
    rgbd = build_model("fcn32s", 5, width=1 / 16, modality="rgbd")
    loaded = load_backbone_weights(rgbd, state)
    assert "backbone.conv1_1.weight" in loaded
    w = rgbd.backbone.conv1_1.weight
    assert torch.equal(w[:, :3], state["features.0.weight"])
    fusion = build_model("fcn16s", 5, width=1 / 16, modality="rgb-hha")
    loaded = load_backbone_weights(fusion, state)
    assert any(k.startswith("streams.color.") for k in loaded)
    assert any(k.startswith("streams.hha.") for k in loaded)
    conv = fusion.streams["hha"].backbone.conv1_1.weight
    assert torch.equal(conv, state["features.0.weight"])


def test_two_headed_loss_is_the_sum_of_the_single_head_losses():
    torch.manual_seed(0)
    net = build_model("fcn16s", 6, width=1 / 16, extra_heads={"geo_label": 3})
    for p in net.parameters():
        p.data.normal_(0, 0.05)
    net.eval()  # dropout off, so the two computations see the same features
    x = torch.randn(2, 3, 32, 40)
    y = torch.stack([torch.randint(0, 6, (2, 32, 40)), torch.randint(0, 3, (2, 32, 40))], 1)
    y[0, 1, :4] = 255  # void geometry
    config = TrainConfig(model="fcn16s", num_classes=6, out_dir="/tmp", loss_reduction="pixel")
    total, norm = LossModule(net, config)(x, y)
    both = total / norm
    # the same trunk as two single-headed nets: semantic (main names), geometric (renamed)
    sem = build_model("fcn16s", 6, width=1 / 16)
    geo = build_model("fcn16s", 3, width=1 / 16)
    state = net.state_dict()
    sem.load_state_dict({k: v for k, v in state.items() if not k.startswith("geo_label_")})
    shared = {k: v for k, v in state.items() if k.startswith(("backbone.", "head."))}
    heads = {k.removeprefix("geo_label_"): v for k, v in state.items() if "geo_label_" in k}
    geo.load_state_dict({**shared, **heads})
    sem.eval(), geo.eval()
    expected = sum(
        total / norm
        for total, norm in (
            pixel_loss(sem(x), y[:, 0], "softmax", "pixel"),
            pixel_loss(geo(x), y[:, 1], "softmax", "pixel"),
        )
    )
    assert torch.allclose(both, expected, rtol=1e-5)
    assert set(net.forward_heads(x)) == {"label", "geo_label"}


def test_new_models_parameter_counts_match_an_independent_count():
    """Full width, counted from the layer shapes by hand (not from the modules)."""
    convs = [(3, 64), (64, 64), (64, 128), (128, 128), (128, 256), (256, 256), (256, 256)]
    convs += [(256, 512), (512, 512), (512, 512), (512, 512), (512, 512), (512, 512)]

    def conv(cin, cout, k):
        return cin * cout * k * k + cout

    trunk = sum(conv(a, b, 3) for a, b in convs) + conv(512, 4096, 7) + conv(4096, 4096, 1)

    def fcn32s(n):  # score_fr + fixed 64x64 final deconvolution (no bias)
        return trunk + conv(4096, n, 1) + n * n * 64 * 64

    def fcn16s(n):  # + score_pool4, upscore2 (4x4), upscore16 (32x32)
        return trunk + conv(4096, n, 1) + conv(512, n, 1) + n * n * (4 * 4 + 32 * 32)

    with torch.device("meta"):
        count = {
            (m, mod): sum(p.numel() for p in build_model(m, 40, modality=mod).parameters())
            for m in ("fcn32s", "fcn16s")
            for mod in ("rgb", "rgbd", "hha", "rgb-hha")
        }
        sift = build_model("fcn16s", 33, extra_heads={"geo_label": 3})
        sift_count = sum(p.numel() for p in sift.parameters())
    assert count["fcn32s", "rgb"] == fcn32s(40) == count["fcn32s", "hha"]
    assert count["fcn32s", "rgbd"] == fcn32s(40) + 64 * 3 * 3  # conv1_1's depth filters
    assert count["fcn32s", "rgb-hha"] == 2 * fcn32s(40)
    assert count["fcn16s", "rgb-hha"] == 2 * fcn16s(40)
    geo_head = conv(4096, 3, 1) + conv(512, 3, 1) + 3 * 3 * (4 * 4 + 32 * 32)
    assert sift_count == fcn16s(33) + geo_head


def test_unknown_modality_and_bad_heads_are_params_errors():
    with pytest.raises(ParamsError, match="modality"):
        build_model("fcn32s", 5, width=1 / 16, modality="rgbdx")
    with pytest.raises(ParamsError, match="extra_heads"):
        build_model("fcn32s", 5, width=1 / 16, extra_heads={"geo_label": 0})
    with pytest.raises(ParamsError, match="do not apply"):
        build_model("fcn32s-alexnet", 5, width=1 / 16, modality="rgbd")


def test_loader_builds_each_modality_as_fcn_nyud_layers():
    rows = _rows()
    rgb, _ = batch_to_tensors(rows, InputSpec())
    hha, _ = batch_to_tensors(rows, InputSpec(modality="hha"))
    rgbd, _ = batch_to_tensors(rows, InputSpec(modality="rgbd"))
    both, _ = batch_to_tensors(rows, InputSpec(modality="rgb-hha"))
    assert rgb.shape[1] == 3 and hha.shape[1] == 3 and rgbd.shape[1] == 4 and both.shape[1] == 6
    raw_hha = np.asarray(Image.open(io.BytesIO(rows["hha"][0])), np.float32)
    assert np.allclose(
        hha[0].numpy(), (raw_hha - np.asarray(HHA_MEAN)).transpose(2, 0, 1), atol=1e-4
    )
    assert torch.equal(both[:, :3], rgb) and torch.equal(both[:, 3:], hha)
    depth = np.asarray(Image.open(io.BytesIO(rows["depth"][0])), np.float32)
    expected = np.where(depth > 0, np.log(np.maximum(depth, 1)) - LOG_DEPTH_MEAN, 0)
    assert torch.equal(rgbd[:, :3], rgb)
    assert np.allclose(rgbd[0, 3].numpy(), expected, atol=1e-5)
    assert rgbd[0, 3, 0, 0] == 0  # missing depth enters as the mean


def test_augmentation_moves_every_channel_and_head_label_together():
    rows = _rows(h=16, w=20, n=1)
    spec = InputSpec(modality="rgb-hha", extra_labels=("geo_label",))
    plain = decode_rows(rows, spec=spec)[0]
    assert plain[0].shape == (16, 20, 6) and plain[1].shape == (16, 20, 2)
    rng = np.random.default_rng(0)
    while True:  # find a draw that mirrors
        seed = int(rng.integers(1 << 30))
        if np.random.default_rng(seed).random() < 0.5:
            break
    ((image, label),) = decode_rows(
        rows, Augment(mirror=True), np.random.default_rng(seed), spec=spec
    )
    assert np.array_equal(image, plain[0][:, ::-1]) and np.array_equal(label, plain[1][:, ::-1])
    ((image, label),) = decode_rows(
        rows, Augment(scales=(0.5,)), np.random.default_rng(0), spec=spec
    )
    assert image.shape == (8, 10, 6) and label.shape == (8, 10, 2)
    assert set(np.unique(label[..., 1])) <= {0, 1, 2}
    rgbd = InputSpec(modality="rgbd")
    ((image, _),) = decode_rows(rows, Augment(scales=(0.5,)), np.random.default_rng(0), spec=rgbd)
    assert image.shape == (8, 10, 4) and image.dtype == np.float32
    x, y = batch_to_tensors(rows, spec)
    assert x.shape == (1, 6, 16, 20) and y.shape == (1, 2, 16, 20)


def test_a_depth_model_on_rows_without_depth_names_the_column():
    rows = _rows(n=1)
    del rows["depth"]
    with pytest.raises(DataError, match="'depth' column"):
        batch_to_tensors(rows, InputSpec(modality="rgbd"))
    del rows["geo_label"]
    with pytest.raises(DataError, match="geo_label"):
        batch_to_tensors(rows, InputSpec(extra_labels=("geo_label",)))


def test_describe_reports_the_new_models(capsys):
    import json

    from pipeline.cli import main

    counts = {}
    for option in ("modality=rgb", "modality=rgbd", "modality=rgb-hha"):
        assert main(["describe", "fcn32s", "--num-classes", "40", "--option", option]) == 0
        out = json.loads(capsys.readouterr().out)
        assert out["rf_size"] == 404 and out["max_stride"] == 32
        counts[option] = out["parameters_excluding_upsampling"]
    assert counts["modality=rgbd"] - counts["modality=rgb"] == 64 * 3 * 3
    assert counts["modality=rgb-hha"] == 2 * counts["modality=rgb"]
    assert main(["describe", "fcn16s", "--option", "oops"]) == 2
    assert "KEY=VALUE" in capsys.readouterr().err


def test_a_model_reading_columns_its_dataset_lacks_is_refused_before_training(tmp_path):
    """An RGB-D model on VOC (no depth), a two-headed one without geo_label: ParamsErrors
    naming the experiment and the column, from the prepared schema alone."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    import yaml
    from tests_helpers import REPO

    from pipeline.experiment import check_input_columns, train_config
    from pipeline.params import Params

    data = yaml.safe_load((REPO / "params.yaml").read_text())
    train = data["experiments"]["all"]["train"]
    train["fcn32s-voc-rgbd"] = {**train["fcn32s"], "model_options": {"modality": "rgbd"}}
    train["fcn32s-nyud-geo"] = {
        **train["fcn32s-nyud-rgb"],
        "model_options": {"extra_heads": {"geo_label": 3}},
    }
    params = Params(data)
    for dataset, columns in (
        ("voc_fcn", ["id", "image", "label"]),
        ("nyud", ["id", "image", "label", "depth", "hha"]),
    ):
        folder = tmp_path / "data" / "prepared" / dataset / "train"
        folder.mkdir(parents=True)
        pq.write_table(pa.table({c: ["x"] for c in columns}), folder / "part-00000-0.parquet")
    config = train_config(params, "fcn32s-voc-rgbd", root=tmp_path)
    with pytest.raises(ParamsError, match=r"experiments.fcn32s-voc-rgbd.*\['depth'\].*'voc_fcn'"):
        check_input_columns(params, "fcn32s-voc-rgbd", config, root=tmp_path)
    config = train_config(params, "fcn32s-nyud-geo", root=tmp_path)
    with pytest.raises(ParamsError, match=r"\['geo_label'\].*'nyud'"):
        check_input_columns(params, "fcn32s-nyud-geo", config, root=tmp_path)
    for ok in ("fcn32s-nyud-rgbd", "fcn32s-nyud-rgb-hha", "fcn32s"):
        check_input_columns(params, ok, train_config(params, ok, root=tmp_path), root=tmp_path)
