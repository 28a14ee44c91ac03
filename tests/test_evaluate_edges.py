"""Edge evaluation of models and of Canny through one path, and multi-scale training augmentation.

A tiny synthetic BSDS-style table: 64x64 images whose red channel draws three separate straight
segments (away from the border band that NMS fades), every annotator marking them. A "model" that
reads the red channel is then a perfect edge detector; shifting or blurring its output must
score worse.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
import torch
from scipy import ndimage as ndi

from pipeline.data.datasets.base import VOID, encode_png
from pipeline.data.datasets.bsds import stack_png
from pipeline.data.loader import Augment, InputSpec, decode_rows
from pipeline.errors import DataError
from pipeline.evaluation.edges import (
    evaluate_canny,
    evaluate_edge_maps,
    evaluate_edge_model,
    predict_edge_maps,
    row_boundaries,
    summary,
)

SIZE = 64


def _segments(offset: int) -> np.ndarray:
    edges = np.zeros((SIZE, SIZE), np.uint8)
    lo, hi = 16 + offset, 44 + offset
    edges[lo, lo:hi] = 1  # straight segments that do not touch: thinning leaves them alone
    edges[lo + 6 : hi, hi] = 1
    edges[hi, lo : hi - 6] = 1
    return edges


def _table(n: int = 2, annotators: int = 3, void: bool = False) -> pa.Table:
    rows = {k: [] for k in ("id", "image", "label", "height", "width", "boundaries")}
    rows["num_annotators"] = []
    for i in range(n):
        edges = _segments(i * 2)
        image = np.full((SIZE, SIZE, 3), 60, np.uint8)
        ramp = np.linspace(0.1, 1.0, SIZE)[None, :]  # edge strength grows left to right
        image[..., 0] = np.round(edges * ramp * 255).astype(np.uint8)
        image[..., 1] = np.where(edges > 0, 60, 200)  # a visible step for Canny too
        label = edges.copy()
        if void:
            label[0, :] = VOID
        rows["id"].append(f"im{i}")
        rows["image"].append(encode_png(image))
        rows["label"].append(encode_png(label))
        rows["height"].append(SIZE)
        rows["width"].append(SIZE)
        rows["boundaries"].append(stack_png(np.stack([edges] * annotators)))
        rows["num_annotators"].append(annotators)
    return pa.table(rows)


class RedChannel(torch.nn.Module):
    """Edge probability = red channel of caffe-normalised input (BGR - mean): a perfect model
    whose confidence ramps along x, so the PR curve spans recall 0.1..1 at precision 1."""

    def __init__(self, shift: int = 0, blur: float = 0.0) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.ones(()))
        self.shift, self.blur = shift, blur

    def predict_dense(self, x: torch.Tensor) -> torch.Tensor:
        red = x[:, 2:3] + InputSpec().mean_bgr[2]  # back to 0..255
        if self.blur:
            red = torch.from_numpy(ndi.gaussian_filter(red.numpy(), (0, 0, self.blur, self.blur)))
            red = red / red.amax() * 255
        if self.shift:
            red = torch.roll(red, (self.shift, self.shift), dims=(-2, -1))
        prob = (red / 255).clamp(1e-4, 1 - 1e-4)
        return torch.logit(prob) * self.weight

    forward = predict_dense


def test_row_boundaries_unstacks_every_annotator() -> None:
    from pipeline.data.loader import iter_rows

    row = next(iter_rows(_table(1, annotators=4)))
    maps = row_boundaries(row)
    assert maps.shape == (4, SIZE, SIZE)
    assert set(np.unique(maps)) == {0, 1}


def test_perfect_model_scores_one_and_worse_models_less(ray_local) -> None:
    table = _table()
    spec = InputSpec()
    perfect = evaluate_edge_model(RedChannel(), table, spec, n_thresholds=9, nms=False)
    assert perfect["n_images"] == 2
    assert perfect["ods"]["f"] == pytest.approx(1.0, abs=5e-3)  # the matcher is randomised
    assert perfect["ois"]["f"] == pytest.approx(1.0, abs=5e-3)
    assert perfect["ap"] > 0.75
    assert {r["id"] for r in perfect["images"]} == {"im0", "im1"}
    assert perfect["settings"]["scales"] == [1.0]
    flat = summary(perfect)
    assert flat["ods"] == perfect["ods"]["f"] and flat["ap"] == perfect["ap"]
    assert flat["n_images"] == 2 and flat["n_thresholds"] == 9
    # NMS keeps the one-pixel lines (segment ends may lose a pixel to the border of the ridge)
    after_nms = evaluate_edge_model(RedChannel(), table, spec, n_thresholds=5, num_cpus=2)
    assert after_nms["settings"]["nms"] is True
    assert after_nms["ods"]["f"] > 0.95
    shifted = evaluate_edge_model(RedChannel(shift=3), table, spec, n_thresholds=5)
    assert shifted["ods"]["f"] < 0.2
    blurred = evaluate_edge_model(RedChannel(blur=3.0), table, spec, n_thresholds=5, nms=False)
    assert blurred["ods"]["f"] < perfect["ods"]["f"] - 0.02  # thinning recovers most of it


def test_multiscale_test_averages_back_to_full_size(ray_local) -> None:
    table = _table(1)
    maps = dict(predict_edge_maps(RedChannel(), table, InputSpec(), scales=(0.5, 1.0)))
    assert maps["im0"].shape == (SIZE, SIZE)
    assert 0.0 <= maps["im0"].min() and maps["im0"].max() <= 1.0
    single = dict(predict_edge_maps(RedChannel(), table, InputSpec()))["im0"]
    twice = dict(predict_edge_maps(RedChannel(), table, InputSpec(), scales=(1.0, 1.0)))["im0"]
    np.testing.assert_allclose(twice, single, atol=1e-6)  # an average, not a sum
    assert np.corrcoef(maps["im0"].ravel(), single.ravel())[0, 1] > 0.5
    res = evaluate_edge_model(RedChannel(), table, InputSpec(), n_thresholds=3, scales=(0.5, 1.0))
    assert res["settings"]["scales"] == [0.5, 1.0]
    assert res["ods"]["f"] > 0.3  # the half-scale pass blurs the 1-px lines


def test_canny_goes_through_the_same_evaluator(ray_local, tmp_path) -> None:
    table = _table()
    res = evaluate_canny(table, n_thresholds=3, sigma=1.0, out_dir=tmp_path)
    assert res["settings"]["name"] == "canny" and res["settings"]["nms"] is False
    assert 0.0 < res["ods"]["f"] <= 1.0
    assert (tmp_path / "canny.json").is_file()
    assert (tmp_path / "canny_pr_curve.png").stat().st_size > 0
    assert (tmp_path / "canny_examples.png").stat().st_size > 0


def test_edge_maps_are_checked(ray_local) -> None:
    table = _table(1)
    with pytest.raises(DataError, match="not a row"):
        evaluate_edge_maps([("nope", np.zeros((SIZE, SIZE)))], table, n_thresholds=1)
    with pytest.raises(DataError, match="edge map"):
        evaluate_edge_maps([("im0", np.zeros((SIZE, 3)))], table, n_thresholds=1)
    with pytest.raises(DataError, match="in \\[0, 1\\]"):
        evaluate_edge_maps([("im0", np.full((SIZE, SIZE), 2.0))], table, n_thresholds=1)
    with pytest.raises(DataError, match="no edge maps"):
        evaluate_edge_maps([], table, n_thresholds=1)


# -- multi-scale training augmentation ---------------------------------------------------------


def _batch(table: pa.Table) -> dict:
    data = table.to_pydict()
    return {k: np.asarray(v, dtype=object) for k, v in data.items()}


def test_augment_scales_from_params_dict() -> None:
    assert Augment(**{"scales": [0.5, 1]}).scales == (0.5, 1.0)
    assert Augment().scales == ()
    with pytest.raises(ValueError, match="positive"):
        Augment(scales=[0.0])
    with pytest.raises(ValueError, match="list of numbers"):
        Augment(scales=["half"])


def test_multiscale_augment_keeps_edge_labels_binary_and_shapes_consistent() -> None:
    batch = _batch(_table(3, void=True))
    augment = Augment(mirror=True, scales=(0.5, 1.0), edge_labels=True)
    seen = set()
    for seed in range(12):
        pairs = decode_rows(batch, augment, np.random.default_rng(seed))
        sizes = {p[0].shape[:2] for p in pairs}
        assert len(sizes) == 1  # one scale per batch
        for image, label in pairs:
            assert image.shape[:2] == label.shape
            assert image.dtype == np.uint8 and label.dtype == np.uint8
            assert set(np.unique(label)) <= {0, 1, VOID}
            assert (label == 1).any()
        seen.add(sizes.pop())
    assert seen == {(SIZE // 2, SIZE // 2), (SIZE, SIZE)}


def test_no_scales_leaves_the_rng_stream_alone() -> None:
    """Existing mirror/jitter runs stay reproducible: no draw is made when scales is empty."""
    batch = _batch(_table(2))
    a = decode_rows(batch, Augment(mirror=True, jitter=4), np.random.default_rng(3))
    b = decode_rows(batch, Augment(mirror=True, jitter=4, scales=()), np.random.default_rng(3))
    for (ia, la), (ib, lb) in zip(a, b):
        assert np.array_equal(ia, ib) and np.array_equal(la, lb)


def test_shrinking_edge_labels_keeps_every_line() -> None:
    """Nearest neighbour at 0.5x drops 1-px lines on the rows it skips; ``edge_labels`` does not."""
    from pipeline.data.loader import rescale

    image = np.zeros((SIZE, SIZE, 3), np.uint8)
    label = np.zeros((SIZE, SIZE), np.uint8)
    label[16, 8:40] = 1  # even row and column: skipped by 0.5x nearest neighbour
    label[20:50, 30] = 1
    label[60, 4:20] = VOID
    _, nearest = rescale(image, label, 0.5)
    assert not (nearest == 1).any()
    small_image, small = rescale(image, label, 0.5, edge_labels=True)
    assert small.shape == small_image.shape[:2] == (SIZE // 2, SIZE // 2)
    assert set(np.unique(small)) == {0, 1, VOID}
    assert (small[8, 4:20] == 1).all() and (small[10:25, 15] == 1).all()
    assert (small[30, 2:10] == VOID).all()
    _, same = rescale(image, label, 1.0, edge_labels=True)
    assert np.array_equal(same, label)
