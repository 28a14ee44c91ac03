"""PixelNet: sampling geometry, sparse vs dense agreement, tiling, gradients, losses, edges."""

from __future__ import annotations

import math
import threading

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pipeline.errors import ParamsError
from pipeline.models import VGG16Classifier, build_model, geometry, param_groups
from pipeline.models.pixelnet import (
    PixelNet,
    Tap,
    predict_edges_dense,
    sample_features,
    upsample_rows,
)
from pipeline.models.sampling import valid_pixels
from pipeline.training.reproducible import make_reproducible

W = 1 / 8


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """One intra-op thread: on a shared 2-core machine OpenMP spinning makes 2 threads ~50x
    slower for these tiny models."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny(num_classes: int = 5, **kw) -> PixelNet:
    torch.manual_seed(0)
    kw.setdefault("mlp", (256,))
    return build_model("pixelnet", num_classes, width=W, **kw)


def _randomise_mlp(model: PixelNet) -> None:
    """The paper's sigma=1e-3 init makes outputs ~0: use larger weights for comparisons."""
    for m in model.mlp:
        if isinstance(m, torch.nn.Linear):
            torch.nn.init.normal_(m.weight, 0, 1 / math.sqrt(m.in_features))
            torch.nn.init.normal_(m.bias, 0, 0.1)


def all_points(b: int, h: int, w: int) -> torch.Tensor:
    grid = torch.stack(
        torch.meshgrid(torch.arange(b), torch.arange(h), torch.arange(w), indexing="ij")
    )
    return grid.reshape(3, -1).T


# --- geometry: the x_s = (x - (s-1)/2)/s mapping -------------------------------------------


def test_taps_follow_the_reference_mapping() -> None:
    model = tiny()
    assert [t.name for t in model.taps] == [
        "conv1_2",
        "conv2_2",
        "conv3_3",
        "conv4_3",
        "conv5_3",
        "fc7",
    ]
    assert [t.stride for t in model.taps] == [1, 2, 4, 8, 16, 32]
    for t in model.taps:
        assert t.scale == 1 / t.stride
        assert t.shift == pytest.approx(-(t.stride - 1) / (2 * t.stride))
    # the trunk really is the pad-1 ImageNet layout (no pad 100) with an aligned 7x7 pad-3 fc6
    assert model.backbone.conv1_1.padding == (1, 1)
    assert model.head.fc6.kernel_size == (7, 7) and model.head.fc6.padding == (3, 3)
    g = geometry.trace(model.backbone, upto="relu3_3")
    assert g.coord.shift == geometry.Fraction(-3, 8)


def test_unit_centres_on_a_real_trunk() -> None:
    """An impulse at pixel p reaches pool-stage unit j only if its window covers p: the
    derived centre s*j + (s-1)/2 must lie within the support of unit j's receptive field."""
    model = tiny(layers=("conv3_3",))
    tap = model.taps[0]
    with torch.no_grad():
        for m in model.backbone.modules():
            if isinstance(m, torch.nn.Conv2d):  # centre-tap identity-ish convs: rf stays a point
                m.weight.zero_()
                m.weight[:, :, 1, 1] = 1.0
                m.bias.zero_()
        for p in (0, 5, 10, 27):
            x = torch.zeros(1, 3, 32, 32)
            x[0, :, p, p] = 1.0
            feat = model.features(x)["conv3_3"][0, 0]
            j = int(feat.sum(0).argmax())  # unit whose pooling windows contain p
            assert tap.stride * j <= p < tap.stride * (j + 1)
            centre = tap.stride * j + (tap.stride - 1) / 2
            assert abs(centre - p) <= (tap.stride - 1) / 2


@pytest.mark.parametrize("stride,h,w", [(1, 7, 5), (2, 6, 4), (4, 5, 3), (8, 3, 4), (32, 2, 3)])
def test_sampled_feature_equals_dense_upsampled(stride: int, h: int, w: int) -> None:
    torch.manual_seed(stride)
    tap = Tap("t", 6, stride, 1 / stride, -(stride - 1) / (2 * stride))
    feat = torch.randn(2, 6, h, w)
    H, W_ = h * stride + stride // 2, w * stride + (stride + 1) // 2  # not a multiple of s
    # independent reference: torch's half-pixel bilinear upsampling, border replicated
    ref = F.interpolate(feat, scale_factor=stride, mode="bilinear", align_corners=False)
    ref = F.pad(ref, (0, W_ - w * stride, 0, H - h * stride), mode="replicate")
    pts = all_points(2, H, W_)
    sampled = sample_features(feat, pts, tap)
    dense = ref.permute(0, 2, 3, 1)[pts[:, 0], pts[:, 1], pts[:, 2]]
    torch.testing.assert_close(sampled, dense, atol=1e-5, rtol=1e-5)
    grid = upsample_rows(feat, tap, range(H), W_)
    torch.testing.assert_close(grid, ref.permute(0, 2, 3, 1), atol=1e-5, rtol=1e-5)
    for r0, r1 in ((0, 1), (1, 1 + stride), (3, H), (H - 1, H)):  # bands, incl. past the last unit
        band = upsample_rows(feat, tap, range(r0, r1), W_)
        torch.testing.assert_close(band, grid[:, r0:r1], atol=1e-5, rtol=1e-5)
    # channels_last input gives the same (the gather reads a no-copy view)
    cl = sample_features(feat.contiguous(memory_format=torch.channels_last), pts, tap)
    torch.testing.assert_close(cl, sampled)


def test_off_grid_tap_dense_equals_sampled() -> None:
    """A grid not on torch's half-pixel convention takes the explicit gather path."""
    tap = Tap("t", 4, 4, 0.25, -0.2)
    feat = torch.randn(2, 4, 5, 6)
    grid = upsample_rows(feat, tap, range(2, 21), 26)
    pts = all_points(2, 21, 26)
    pts = pts[pts[:, 1] >= 2]
    dense = grid[pts[:, 0], pts[:, 1] - 2, pts[:, 2]]
    torch.testing.assert_close(sample_features(feat, pts, tap), dense, atol=1e-5, rtol=1e-5)


def test_sampling_gradient_is_the_interpolation_adjoint() -> None:
    tap = Tap("t", 2, 4, 0.25, -0.375)
    feat = torch.randn(1, 2, 3, 4, dtype=torch.float64, requires_grad=True)
    pts = torch.tensor([[0, 0, 0], [0, 5, 7], [0, 11, 15], [0, 3, 9]])
    assert torch.autograd.gradcheck(lambda f: sample_features(f, pts, tap), (feat,))


def test_gather_gradient_is_bit_identical_while_other_threads_work() -> None:
    """The hypercolumn gather's backward sums many points into one map: with 2 threads torch
    does it with atomic adds in arrival order unless deterministic kernels are on, and a busy
    thread beside training (Ray Data's prefetch) then changes the sum's last bits."""
    tap = Tap("t", 64, 1, 1.0, 0.0)
    g = torch.Generator().manual_seed(0)
    feat = torch.randn(2, 64, 48, 48, generator=g, requires_grad=True)
    pts = torch.stack(
        [
            torch.randint(0, 2, (6000,)),
            torch.randint(0, 48, (6000,)),
            torch.randint(0, 48, (6000,)),
        ],
        1,
    )
    upstream = torch.randn(6000, 64, generator=g)
    stop = threading.Event()

    def busy() -> None:
        while not stop.is_set():
            a = np.random.default_rng(0).random((200, 200))
            (a @ a).sum()

    before = torch.are_deterministic_algorithms_enabled(), torch.get_num_threads()
    torch.set_num_threads(2)  # the race needs two (this module runs with one)
    thread = threading.Thread(target=busy, daemon=True)
    thread.start()
    try:
        make_reproducible(0)
        grads = set()
        for _ in range(20):
            feat.grad = None
            (sample_features(feat, pts, tap) * upstream).sum().backward()
            grads.add(feat.grad.numpy().tobytes())
    finally:
        stop.set()
        thread.join()
        torch.use_deterministic_algorithms(before[0])
        torch.set_num_threads(before[1])
    assert len(grads) == 1


# --- model: sparse vs dense, tiling, gradients ---------------------------------------------


def test_sparse_and_dense_outputs_agree_at_sampled_pixels() -> None:
    model = tiny().eval()
    _randomise_mlp(model)
    x = torch.randn(2, 3, 70, 45)  # not multiples of 32: floor pooling and border clamping
    g = torch.Generator().manual_seed(0)
    pts = torch.stack(
        [
            torch.randint(0, 2, (300,), generator=g),
            torch.randint(0, 70, (300,), generator=g),
            torch.randint(0, 45, (300,), generator=g),
        ],
        1,
    )
    with torch.no_grad():
        dense = model(x)
        sparse = model(x, pts)
        masked = model.forward_masked(x, pts)
    assert dense.shape == (2, 5, 70, 45)
    at_points = dense.permute(0, 2, 3, 1)[pts[:, 0], pts[:, 1], pts[:, 2]]
    assert at_points.std() > 0.1
    torch.testing.assert_close(sparse, at_points, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(masked, sparse, atol=1e-4, rtol=1e-4)


def test_tiled_dense_inference_equals_untiled() -> None:
    model = tiny(num_classes=3).eval()
    _randomise_mlp(model)
    x = torch.randn(1, 3, 67, 40)
    with torch.no_grad():
        whole = model.predict_dense(x, tile_pixels=10**9)
        tiled = model.predict_dense(x, tile_pixels=3 * 40 + 7)  # 3-row bands, last one short
        one_row = model.predict_dense(x, tile_pixels=1)
    torch.testing.assert_close(tiled, whole, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(one_row, whole, atol=1e-5, rtol=1e-5)


def test_gradients_reach_the_trunk() -> None:
    model = tiny(num_classes=4)
    x = torch.randn(2, 3, 48, 48)
    y = torch.randint(0, 4, (2, 48, 48))
    total, norm = model.training_loss(x, y, generator=torch.Generator().manual_seed(0))
    (total / norm).backward()
    for name in ("conv1_1", "conv3_1", "conv5_3"):
        grad = getattr(model.backbone, name).weight.grad
        assert grad is not None and grad.abs().sum() > 0, name
    assert model.head.fc6.weight.grad.abs().sum() > 0
    assert model.mlp[0].weight.grad.abs().sum() > 0


def test_too_small_input_is_an_error() -> None:
    with pytest.raises(ValueError, match="32-pixel"):
        tiny()(torch.randn(1, 3, 24, 64))
    shallow = tiny(layers=("conv1_2", "conv3_3"))
    assert shallow(torch.randn(1, 3, 24, 20)).shape == (1, 5, 24, 20)  # stride 4 trunk only
    assert not hasattr(shallow.backbone, "conv4_1")


# --- losses ------------------------------------------------------------------------------


def _fixed_scorer(scores_at):
    return lambda x, pts: scores_at(pts)


def test_segmentation_loss_is_cross_entropy_over_samples() -> None:
    model = tiny(num_classes=3, sampling={"per_image": 40})
    y = torch.randint(0, 3, (2, 32, 32))
    y[:, :8] = 255
    logits = torch.randn(2, 3, 32, 32)
    seen = []

    def scorer(x, pts):
        seen.append(pts)
        return logits.permute(0, 2, 3, 1)[pts[:, 0], pts[:, 1], pts[:, 2]]

    g = torch.Generator().manual_seed(0)
    total, norm = model.training_loss(torch.zeros(2, 3, 32, 32), y, generator=g, scorer=scorer)
    pts = seen[0]
    assert len(pts) == 80 and (y[pts[:, 0], pts[:, 1], pts[:, 2]] != 255).all()
    expected = F.cross_entropy(
        logits.permute(0, 2, 3, 1)[pts[:, 0], pts[:, 1], pts[:, 2]],
        y[pts[:, 0], pts[:, 1], pts[:, 2]],
        reduction="sum",
    )
    torch.testing.assert_close(total, expected)
    assert norm.item() == 80
    _, norm_img = model.training_loss(
        torch.zeros(2, 3, 32, 32), y, generator=g, scorer=scorer, reduction="image"
    )
    assert norm_img.item() == 2


def test_edge_loss_balances_positives_and_negatives() -> None:
    model = tiny(num_classes=1, sampling={"per_image": 100, "positive_share": 0.25})
    y = torch.zeros(1, 32, 32, dtype=torch.long)
    y[0, :, 16] = 1
    y[0, 0] = 255
    scores = torch.full((100, 1), 0.3)
    captured = []

    def scorer(x, pts):
        captured.append(pts)
        return scores

    total, norm = model.training_loss(torch.zeros(1, 3, 32, 32), y, task="edges", scorer=scorer)
    pts = captured[0]
    target = (y[pts[:, 0], pts[:, 1], pts[:, 2]] == 1).float()
    assert target.sum() == 25 and norm.item() == 100
    bce_pos = F.binary_cross_entropy_with_logits(torch.tensor(0.3), torch.tensor(1.0))
    bce_neg = F.binary_cross_entropy_with_logits(torch.tensor(0.3), torch.tensor(0.0))
    expected = 25 * 0.75 * bce_pos + 75 * 0.25 * bce_neg  # |neg|/|all| and |pos|/|all|
    torch.testing.assert_close(total, expected)


def test_normals_loss_is_one_minus_cosine() -> None:
    model = tiny(num_classes=3, sampling={"per_image": 50})
    g = torch.Generator().manual_seed(0)
    y = F.normalize(torch.randn(2, 3, 32, 32, generator=g), dim=1)
    y[0, :, :10] = float("nan")
    y[1, :, 5:] = 0.0
    valid = valid_pixels(y)

    def target_at(pts, scale):
        return scale * y[pts[:, 0], :, pts[:, 1], pts[:, 2]]

    x = torch.zeros(2, 3, 32, 32)
    same, n = model.training_loss(x, y, task="normals", scorer=lambda _, p: target_at(p, 4.0))
    assert same.item() == pytest.approx(0.0, abs=1e-4) and n.item() == 100
    opposite, _ = model.training_loss(x, y, task="normals", scorer=lambda _, p: target_at(p, -2.0))
    assert opposite.item() == pytest.approx(200.0, rel=1e-4)
    pts = model.sample(y, "normals", generator=g)
    assert valid[pts[:, 0], pts[:, 1], pts[:, 2]].all()


def test_single_image_spread_runs_the_trunk_on_one_image() -> None:
    model = tiny(num_classes=3, sampling={"per_image": 30, "spread": "single"})
    shapes = []

    def scorer(x, pts):
        shapes.append((x.shape[0], pts[:, 0].unique().tolist(), len(pts)))
        return torch.zeros(len(pts), 3, requires_grad=True)

    y = torch.randint(0, 3, (4, 32, 32))
    model.training_loss(torch.zeros(4, 3, 32, 32), y, scorer=scorer)
    assert shapes == [(1, [0], 120)]


def test_training_loss_decreases() -> None:
    model = tiny(
        num_classes=2,
        layers=("conv1_2", "conv2_2", "conv3_3"),
        dropout=0.0,
        sampling={"per_image": 200},
    )
    _randomise_mlp(model)
    x = torch.randn(2, 3, 32, 32)
    y = (x[:, 0] > 0).long()
    opt = torch.optim.Adam(model.parameters(), lr=5e-3)
    g = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(60):
        total, norm = model.training_loss(x, y, generator=g)
        opt.zero_grad()
        (total / norm).backward()
        opt.step()
        losses.append((total / norm).item())
    assert np.mean(losses[-5:]) < 0.5 * np.mean(losses[:5])


# --- registry and weights ----------------------------------------------------------------


def test_registry_options() -> None:
    m = build_model("pixelnet", 2, width=W, mlp=(), layers=["conv1_2", "conv5_3"], dropout=0.0)
    assert len([x for x in m.mlp if isinstance(x, torch.nn.Linear)]) == 1  # fc-1: linear
    assert m.hypercolumn_channels == 8 + 64
    fc3 = build_model("pixelnet", 2, width=W, mlp=[4096, 4096])
    assert [x.out_features for x in fc3.mlp if isinstance(x, torch.nn.Linear)] == [512, 512, 2]
    assert {g["name"] for g in param_groups(fc3, 1e-3, 5e-4)} == {"weights", "biases"}
    for bad in (
        {"layers": ["conv9_9"]},
        {"layers": []},
        {"mlp": [0]},
        {"sampling": {"per_image": -1}},
        {"learn_upsampling": True},
    ):
        with pytest.raises(ParamsError):
            build_model("pixelnet", 2, width=W, **bad)


def test_describe_and_numpy_generator() -> None:
    from pipeline.models import describe

    d = describe(tiny())
    assert d["max_stride"] == 32 and d["output_stride"] == 1 and d["conv_layers"] == 15
    assert d["hypercolumn_channels"] == 8 + 16 + 32 + 64 + 64 + 512
    model = tiny(sampling={"per_image": 10})
    y = torch.randint(0, 5, (2, 32, 32))
    a = model.sample(y, generator=np.random.default_rng(4))
    b = model.sample(y, generator=np.random.default_rng(4))
    assert torch.equal(a, b) and len(a) == 20


def test_pretrained_classifier_weights_load_into_trunk_and_conv7(tmp_path) -> None:
    torch.manual_seed(1)
    clf = VGG16Classifier(num_classes=10, width=W)
    path = tmp_path / "clf.pt"
    torch.save(clf.state_dict(), path)
    model = build_model("pixelnet", 4, width=W, pretrained=str(path))
    torch.testing.assert_close(model.backbone.conv1_1.weight, clf.features[0].weight)
    torch.testing.assert_close(model.backbone.conv5_3.bias, clf.features[28].bias)
    fc6 = clf.classifier[0].weight.reshape(model.head.fc6.weight.shape)
    torch.testing.assert_close(model.head.fc6.weight, fc6)
    torch.testing.assert_close(model.head.fc7.weight[:, :, 0, 0], clf.classifier[3].weight)
    # an interior fc7 unit sees exactly the classifier's fc6/fc7 on the 7x7 pool5 window
    model.eval()
    clf.eval()
    with torch.no_grad():
        x = torch.randn(1, 3, 224, 224)
        fc7 = model.features(x)["fc7"][0, :, 3, 3]
        pool5 = clf.features(x)
        ref = clf.classifier[4](
            clf.classifier[3](clf.classifier[1](clf.classifier[0](pool5.flatten(1))))
        )
    torch.testing.assert_close(fc7, ref[0], atol=1e-4, rtol=1e-4)


# --- edges -------------------------------------------------------------------------------


def _edge_scenes(n: int, size: int, seed: int):
    """Piecewise-constant rectangles on noise; label 1 on region boundaries."""
    g = torch.Generator().manual_seed(seed)
    xs, ys = [], []
    for _ in range(n):
        region = torch.zeros(size, size, dtype=torch.long)
        for k in range(1, 4):
            y0, x0 = torch.randint(0, size - 12, (2,), generator=g).tolist()
            h, w = torch.randint(8, size // 2, (2,), generator=g).tolist()
            region[y0 : y0 + h, x0 : x0 + w] = k
        colours = torch.rand(4, 3, generator=g) * 2 - 1
        img = colours[region].permute(2, 0, 1) + 0.05 * torch.randn(3, size, size, generator=g)
        edge = torch.zeros(size, size, dtype=torch.long)
        edge[:, 1:] |= (region[:, 1:] != region[:, :-1]).long()
        edge[1:, :] |= (region[1:, :] != region[:-1, :]).long()
        xs.append(img)
        ys.append(edge)
    return torch.stack(xs), torch.stack(ys)


def _auc(positive: np.ndarray, score: np.ndarray) -> float:
    """ROC AUC by the rank-sum (Mann-Whitney) formula."""
    from scipy.stats import rankdata

    ranks = rankdata(score.ravel())
    pos = positive.ravel()
    n_pos, n_neg = pos.sum(), (~pos).sum()
    return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def test_edge_training_smoke_and_dense_edge_map() -> None:
    from pipeline.metrics.nms import edge_nms

    torch.manual_seed(0)
    model = build_model(
        "pixelnet",
        1,
        width=W,
        layers=("conv1_2", "conv2_2", "conv3_3"),
        mlp=(512,),
        dropout=0.0,
        sampling={"per_image": 300, "positive_share": 0.5},
    )
    _randomise_mlp(model)
    held_out = [_edge_scenes(1, 40, seed=s) for s in (99, 100)]

    def aucs() -> list[float]:
        out = []
        for xt, yt in held_out:
            prob = predict_edges_dense(model, xt[0])
            assert prob.shape == (40, 40) and prob.dtype == np.float32
            assert 0.0 <= prob.min() and prob.max() <= 1.0
            out.append(_auc(yt[0].numpy() == 1, prob))
        return out

    before = aucs()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    g = torch.Generator().manual_seed(0)
    for step in range(60):
        x, y = _edge_scenes(4, 40, seed=step)  # fresh scenes: learn edges, not these images
        total, norm = model.training_loss(x, y, task="edges", generator=g)
        opt.zero_grad()
        (total / norm).backward()
        opt.step()
    after = aucs()
    assert min(after) > 0.85 and min(after) > max(before) + 0.1, (before, after)
    prob = predict_edges_dense(model, held_out[0][0][0])
    thin = edge_nms(prob)
    assert thin.shape == prob.shape and 0 < (thin > 0.1).sum() <= (prob > 0.1).sum()
