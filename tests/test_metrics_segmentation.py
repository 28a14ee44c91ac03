import numpy as np
import pytest

from pipeline.metrics.segmentation import confusion_matrix, segmentation_scores


def test_confusion_ignores_void_and_counts_pairs():
    truth = np.array([[0, 1, 255], [2, 2, 1]])
    pred = np.array([[0, 2, 1], [2, 0, 1]])
    hist = confusion_matrix(truth, pred, 3)
    expected = np.zeros((3, 3), int)
    for t, p in [(0, 0), (1, 2), (2, 2), (2, 0), (1, 1)]:
        expected[t, p] += 1
    np.testing.assert_array_equal(hist, expected)


def test_scores_on_hand_made_matrix():
    # truth rows, prediction columns
    hist = np.array([[8, 2, 0], [1, 3, 0], [0, 0, 0]])  # class 2 absent from truth and pred
    s = segmentation_scores(hist)
    assert s["pixel_acc"] == pytest.approx(11 / 14)
    assert s["mean_acc"] == pytest.approx((8 / 10 + 3 / 4) / 2)
    iu0, iu1 = 8 / (10 + 9 - 8), 3 / (4 + 5 - 3)
    assert s["mean_iu"] == pytest.approx((iu0 + iu1) / 2)
    assert s["fw_iu"] == pytest.approx(10 / 14 * iu0 + 4 / 14 * iu1)
    assert s["per_class_iu"][2] is None


def test_class_absent_from_truth_but_predicted_scores_zero():
    hist = np.array([[5, 1], [0, 0]])  # class 1 predicted once, never true
    s = segmentation_scores(hist)
    assert s["per_class_iu"][1] == 0.0
    assert s["mean_iu"] == pytest.approx((5 / 6 + 0.0) / 2)
    assert s["mean_acc"] == pytest.approx(5 / 6)  # class 1 has no truth pixels: dropped
