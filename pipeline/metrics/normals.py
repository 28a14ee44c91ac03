"""Surface-normal accuracy as PixelNet (and Eigen & Fergus, Wang et al.) report it on NYUDv2.

Angular error per valid pixel between predicted and true normals, both normalised to unit
length (networks output unnormalised vectors). Reported: mean, median and RMSE of the error in
degrees, and the percentage of pixels with error within 11.25, 22.5 and 30 degrees.
"""

from __future__ import annotations

import numpy as np

THRESHOLDS_DEG = (11.25, 22.5, 30.0)
_EPS = 1e-12


def angular_errors(pred: np.ndarray, gt: np.ndarray, valid: np.ndarray | None = None) -> np.ndarray:
    """Per-pixel angle in degrees between ``pred`` and ``gt`` (``(..., 3)``), valid pixels only.

    Truth vectors of zero length are missing data and are dropped even if ``valid`` says
    otherwise; a zero-length prediction counts as 90 degrees (it points nowhere).
    """
    pred = np.asarray(pred, dtype=np.float64)
    gt = np.asarray(gt, dtype=np.float64)
    if pred.shape != gt.shape or pred.shape[-1:] != (3,):
        raise ValueError(f"pred and gt must both be (..., 3); got {pred.shape} and {gt.shape}")
    mask = np.ones(gt.shape[:-1], dtype=bool) if valid is None else np.asarray(valid, dtype=bool)
    if mask.shape != gt.shape[:-1]:
        raise ValueError(f"valid must have shape {gt.shape[:-1]}, got {mask.shape}")
    gt_norm = np.linalg.norm(gt, axis=-1)
    mask = mask & (gt_norm > _EPS) & np.isfinite(gt).all(axis=-1)
    p = pred[mask]
    g = gt[mask] / gt_norm[mask][:, None]
    p_norm = np.linalg.norm(p, axis=-1)
    p = p / np.maximum(p_norm, _EPS)[:, None]
    cos = np.clip(np.sum(p * g, axis=-1), -1.0, 1.0)
    return np.degrees(np.arccos(cos))


def normal_errors(pred: np.ndarray, gt: np.ndarray, valid: np.ndarray) -> dict[str, float]:
    """Mean, median, RMSE (degrees) and % within 11.25 / 22.5 / 30 degrees over valid pixels.

    Keys: ``mean``, ``median``, ``rmse``, ``within_11.25``, ``within_22.5``, ``within_30``
    (percentages in [0, 100]) and ``n_pixels``. All scores are NaN when no pixel is valid.
    """
    err = angular_errors(pred, gt, valid)
    out: dict[str, float] = {"n_pixels": float(err.size)}
    if err.size == 0:
        nan = float("nan")
        out.update(mean=nan, median=nan, rmse=nan)
        out.update({f"within_{t:g}": nan for t in THRESHOLDS_DEG})
        return out
    out["mean"] = float(err.mean())
    out["median"] = float(np.median(err))
    out["rmse"] = float(np.sqrt(np.mean(err**2)))
    for t in THRESHOLDS_DEG:
        out[f"within_{t:g}"] = float(100.0 * np.mean(err < t))
    return out
