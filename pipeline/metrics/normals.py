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


class NormalErrorAccumulator:
    """:func:`normal_errors` over many images without keeping every pixel's error.

    Mean, RMSE and the within-threshold shares are exact running sums; the median comes from a
    histogram of 0.001-degree bins (exact to half a bin), so a whole test set (654 NYUDv2
    frames x 240k pixels) needs only 180,000 counters.
    """

    BIN_DEG = 0.001

    def __init__(self) -> None:
        self.n = 0
        self.total = 0.0
        self.total_sq = 0.0
        self.within = dict.fromkeys(THRESHOLDS_DEG, 0)
        self.hist = np.zeros(int(round(180.0 / self.BIN_DEG)) + 1, np.int64)

    def add(self, pred: np.ndarray, gt: np.ndarray, valid: np.ndarray | None = None) -> np.ndarray:
        """Add one image (``(..., 3)`` prediction and truth); returns its per-pixel errors."""
        err = angular_errors(pred, gt, valid)
        self.n += err.size
        self.total += float(err.sum())
        self.total_sq += float(np.square(err).sum())
        for t in THRESHOLDS_DEG:
            self.within[t] += int(np.count_nonzero(err < t))
        bins = np.minimum(np.floor(err / self.BIN_DEG).astype(np.int64), self.hist.size - 1)
        self.hist += np.bincount(bins, minlength=self.hist.size)
        return err

    def median(self) -> float:
        """The median error: the centre of the bin holding the middle pixel(s)."""
        cum = np.cumsum(self.hist)
        lo = int(np.searchsorted(cum, (self.n + 1) // 2))  # the lower middle (odd: the middle)
        hi = int(np.searchsorted(cum, self.n // 2 + 1))  # the upper middle
        return float((lo + hi + 1) * self.BIN_DEG / 2)

    def scores(self) -> dict[str, float]:
        """The keys of :func:`normal_errors`."""
        out: dict[str, float] = {"n_pixels": float(self.n)}
        if self.n == 0:
            nan = float("nan")
            out.update(mean=nan, median=nan, rmse=nan)
            out.update({f"within_{t:g}": nan for t in THRESHOLDS_DEG})
            return out
        out["mean"] = self.total / self.n
        out["median"] = self.median()
        out["rmse"] = float(np.sqrt(self.total_sq / self.n))
        for t in THRESHOLDS_DEG:
            out[f"within_{t:g}"] = 100.0 * self.within[t] / self.n
        return out
