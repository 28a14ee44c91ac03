"""Trimap band (DeepLab Fig. 5): exact hand-counted bands and scores restricted to them."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.metrics.segmentation import confusion_matrix, segmentation_scores
from pipeline.metrics.trimap import plot_trimap, trimap_band, trimap_scores


def test_band_around_single_void_pixel_counts() -> None:
    label = np.zeros((9, 9), dtype=np.uint8)
    label[4, 4] = 255
    # width 1: the void pixel + its 4 neighbours (distance 1); diagonals are sqrt(2) away
    band1 = trimap_band(label, 1)
    assert band1.sum() == 5
    assert band1[3, 4] and band1[4, 5] and not band1[3, 3]
    # width 2: + 4 diagonals (sqrt 2) + 4 pixels two steps away (2); not (1, 2) = sqrt 5
    band2 = trimap_band(label, 2)
    assert band2.sum() == 13
    assert band2[3, 3] and band2[2, 4] and not band2[2, 3]
    assert trimap_band(label, 0).sum() == 1


def test_band_around_void_column_and_image_border() -> None:
    label = np.ones((5, 8), dtype=np.uint8)
    label[:, 0] = 255  # void along the left border: the band only grows rightwards
    assert (trimap_band(label, 1) & (label != 255)).sum() == 5
    assert (trimap_band(label, 2) & (label != 255)).sum() == 10
    assert np.array_equal(np.flatnonzero(trimap_band(label, 2).any(0)), [0, 1, 2])


def test_band_is_empty_without_void() -> None:
    assert not trimap_band(np.zeros((4, 4), dtype=np.uint8), 40).any()


def _boundary_case() -> tuple[np.ndarray, np.ndarray]:
    """Class 0 | void column 3 | class 1; the prediction is wrong in column 4 only."""
    label = np.zeros((5, 8), dtype=np.uint8)
    label[:, 3] = 255
    label[:, 4:] = 1
    pred = label.copy()
    pred[:, 3] = 0
    pred[:, 4] = 0
    return pred, label


def test_scores_inside_band_by_hand() -> None:
    pred, label = _boundary_case()
    res = trimap_scores([pred], [label], widths=[1, 2, 40], num_classes=2)
    # width 1: columns 2 (right) and 4 (wrong): hist [[5, 0], [5, 0]]
    assert res[1]["pixels"] == 10
    assert res[1]["pixel_acc"] == pytest.approx(0.5)
    assert res[1]["mean_iu"] == pytest.approx((5 / 10 + 0.0) / 2)
    # width 2: columns 1, 2, 4, 5: hist [[10, 0], [5, 5]]
    assert res[2]["pixels"] == 20
    assert res[2]["pixel_acc"] == pytest.approx(0.75)
    assert res[2]["mean_iu"] == pytest.approx((10 / 15 + 5 / 10) / 2)
    # width 40 covers every non-void pixel: equals the full-image score
    full = segmentation_scores(confusion_matrix(label, pred, 2))
    assert res[40]["pixels"] == 35
    assert res[40]["mean_iu"] == pytest.approx(full["mean_iu"])


def test_scores_match_bruteforce_over_several_images() -> None:
    rng = np.random.default_rng(0)
    labels, preds = [], []
    for _ in range(3):
        lab = rng.integers(0, 4, (30, 40)).astype(np.uint8)
        lab[rng.random((30, 40)) < 0.03] = 255
        labels.append(lab)
        preds.append(rng.integers(0, 4, (30, 40)).astype(np.uint8))
    labels.append(np.zeros((10, 10), dtype=np.uint8))  # no void: contributes nothing
    preds.append(np.ones((10, 10), dtype=np.uint8))
    widths = [1, 1.5, 2, 3, 7]
    res = trimap_scores(iter(preds), iter(labels), widths=widths, num_classes=4)
    for w in widths:
        hist = sum(
            confusion_matrix(np.where(trimap_band(lab, w), lab, 255), p, 4)
            for p, lab in zip(preds, labels)
        )
        want = segmentation_scores(hist)
        assert res[w]["pixels"] == hist.sum()
        assert res[w]["mean_iu"] == pytest.approx(want["mean_iu"])
        assert res[w]["pixel_acc"] == pytest.approx(want["pixel_acc"])


def test_scores_reject_bad_predictions() -> None:
    pred, label = _boundary_case()
    pred[0, 0] = 7
    with pytest.raises(ValueError, match="class indices"):
        trimap_scores([pred], [label], widths=[5], num_classes=2)


def test_plot_trimap_writes_png(tmp_path) -> None:
    pred, label = _boundary_case()
    curves = {
        "DCNN": trimap_scores([pred], [label], widths=range(1, 6), num_classes=2),
        "DCNN+CRF": trimap_scores([label.clip(0, 1)], [label], widths=range(1, 6), num_classes=2),
    }
    out = tmp_path / "plots" / "trimap.png"
    plot_trimap(curves, out)
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
    assert list(out.parent.iterdir()) == [out]  # no temporary left behind
