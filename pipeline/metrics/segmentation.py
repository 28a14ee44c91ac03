"""Segmentation scores with the FCN reference definitions (``score.py`` of the Caffe release).

The confusion matrix is accumulated with ``bincount`` over pixels whose truth is a valid class
(255 = void is ignored). Means use ``nanmean`` over classes: a class absent from both truth and
prediction is dropped; a class absent from truth but predicted has IU 0. (torchvision uses a
plain mean; other ports drop classes absent from truth; FCN's definition is ours.)
"""

from __future__ import annotations

import numpy as np


def confusion_matrix(truth: np.ndarray, pred: np.ndarray, num_classes: int) -> np.ndarray:
    """``hist[t, p]`` = pixels of true class t predicted as p; void/out-of-range truth ignored."""
    truth = np.asarray(truth).ravel().astype(np.int64)
    pred = np.asarray(pred).ravel().astype(np.int64)
    keep = (truth >= 0) & (truth < num_classes)
    return np.bincount(num_classes * truth[keep] + pred[keep], minlength=num_classes**2).reshape(
        num_classes, num_classes
    )


def segmentation_scores(hist: np.ndarray) -> dict:
    """pixel_acc, mean_acc, mean_iu, fw_iu and per-class IU (NaN where undefined).

    ``mean_iu_fg`` leaves class 0 (background) out, as FCN Table 8 reports.
    """
    hist = np.asarray(hist, dtype=np.float64)
    diag = np.diag(hist)
    rows = hist.sum(axis=1)  # truth
    cols = hist.sum(axis=0)  # prediction
    total = hist.sum()
    with np.errstate(divide="ignore", invalid="ignore"):
        pixel_acc = diag.sum() / total if total else float("nan")
        class_acc = diag / rows
        iu = diag / (rows + cols - diag)
        freq = rows / total if total else np.zeros_like(rows)
    seen = freq > 0
    return {
        "pixel_acc": float(pixel_acc),
        "mean_acc": float(np.nanmean(class_acc)) if np.isfinite(class_acc).any() else float("nan"),
        "mean_iu": float(np.nanmean(iu)) if np.isfinite(iu).any() else float("nan"),
        "fw_iu": float((freq[seen] * iu[seen]).sum()),
        "mean_iu_fg": float(np.nanmean(iu[1:])) if np.isfinite(iu[1:]).any() else float("nan"),
        "per_class_iu": [None if np.isnan(v) else float(v) for v in iu],
    }
