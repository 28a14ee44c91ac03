"""Surface-normal metrics on hand-made normals with known angles."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.metrics.normals import angular_errors, normal_errors

ANGLES = np.array([0.0, 10.0, 20.0, 25.0, 40.0, 90.0, 180.0])


def _rotated(angles_deg: np.ndarray, axis: np.ndarray) -> np.ndarray:
    """Unit vectors at the given angles from ``axis`` (rotating towards an orthogonal vector)."""
    axis = axis / np.linalg.norm(axis)
    other = np.cross(axis, [1.0, 0.0, 0.0] if abs(axis[0]) < 0.9 else [0.0, 1.0, 0.0])
    other /= np.linalg.norm(other)
    a = np.radians(angles_deg)[:, None]
    return np.cos(a) * axis + np.sin(a) * other


def test_known_angles_give_known_scores() -> None:
    axis = np.array([0.3, -0.5, 0.8])
    gt = np.tile(axis, (len(ANGLES), 1)) * 7.0  # unnormalised truth
    scale = np.linspace(0.1, 5.0, len(ANGLES))[:, None]  # unnormalised predictions
    pred = _rotated(ANGLES, axis) * scale
    res = normal_errors(pred, gt, np.ones(len(ANGLES), dtype=bool))
    assert res["n_pixels"] == len(ANGLES)
    assert res["mean"] == pytest.approx(ANGLES.mean(), abs=1e-6)
    assert res["median"] == pytest.approx(25.0, abs=1e-6)
    assert res["rmse"] == pytest.approx(np.sqrt(np.mean(ANGLES**2)), abs=1e-6)
    assert res["within_11.25"] == pytest.approx(100 * 2 / 7)
    assert res["within_22.5"] == pytest.approx(100 * 3 / 7)
    assert res["within_30"] == pytest.approx(100 * 4 / 7)


def test_valid_mask_and_missing_truth_are_excluded() -> None:
    h, w = 4, 5
    gt = np.zeros((h, w, 3))
    gt[..., 2] = 1.0
    pred = np.zeros((h, w, 3))
    pred[..., 0] = 1.0  # 90 degrees everywhere ...
    pred[:2, :, :] = [0.0, np.sin(np.radians(15)), np.cos(np.radians(15))]  # ... 15 in rows 0-1
    valid = np.zeros((h, w), dtype=bool)
    valid[:2] = True
    valid[2, 0] = True  # one 90-degree pixel ...
    gt[2, 0] = 0.0  # ... whose truth is missing (zero vector): dropped anyway
    res = normal_errors(pred, gt, valid)
    assert res["n_pixels"] == 2 * w
    assert res["mean"] == pytest.approx(15.0) and res["median"] == pytest.approx(15.0)
    assert res["within_11.25"] == 0.0 and res["within_22.5"] == 100.0
    valid[3, 3] = True  # now a real 90-degree pixel counts
    res = normal_errors(pred, gt, valid)
    assert res["mean"] == pytest.approx((15.0 * 2 * w + 90.0) / (2 * w + 1))


def test_dot_products_are_clipped_for_identical_and_opposite_vectors() -> None:
    v = np.array([[0.1, 0.2, 0.3], [1e3, -2e3, 5e2]])
    err = angular_errors(v * 3.0, v)
    assert np.isfinite(err).all()
    np.testing.assert_allclose(err, 0.0, atol=1e-5)
    np.testing.assert_allclose(angular_errors(-v, v), 180.0, atol=1e-5)


def test_zero_prediction_counts_as_ninety_degrees_and_empty_is_nan() -> None:
    gt = np.array([[0.0, 0.0, 1.0]])
    assert angular_errors(np.zeros((1, 3)), gt)[0] == pytest.approx(90.0)
    res = normal_errors(gt, gt, np.zeros(1, dtype=bool))
    assert res["n_pixels"] == 0 and np.isnan(res["mean"]) and np.isnan(res["within_30"])


def test_shape_errors() -> None:
    with pytest.raises(ValueError, match="3"):
        normal_errors(np.zeros((4, 2)), np.zeros((4, 2)), np.ones(4, dtype=bool))
    with pytest.raises(ValueError, match="valid"):
        normal_errors(np.zeros((4, 3)), np.ones((4, 3)), np.ones(5, dtype=bool))
