"""Boundary accuracy in a trimap band around void pixels (DeepLab v1, Figure 5).

VOC annotates a ~5 px 'void' (255) band along object boundaries, so the pixels near void pixels
are the pixels near object boundaries. DeepLab reports mean IU and pixel accuracy restricted to
the band of width w around the void pixels, for w = 1..40, to show how much of the CRF's gain is
at the boundaries (curves only; the paper gives no table).

Width, precisely: a pixel is in the band of width ``w`` when the Euclidean distance between its
centre and the centre of the nearest void pixel is <= ``w`` (``distance_transform_edt``). So
width 1 adds the 4-neighbours of the void region, width 2 adds diagonal neighbours (sqrt 2) and
pixels 2 steps away in a row or column, and so on. Void pixels themselves (distance 0) are in the
mask but never scored, since their truth is void.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from pipeline.metrics.segmentation import segmentation_scores
from pipeline.runtime.fsutil import atomic_path

VOID = 255


def _void_distance(label: np.ndarray) -> np.ndarray:
    """Euclidean distance of each pixel to the nearest void pixel (inf when there is none)."""
    label = np.asarray(label)
    if label.ndim != 2:
        raise ValueError(f"label must be HxW, got shape {label.shape}")
    void = label == VOID
    if not void.any():
        return np.full(label.shape, np.inf)
    return ndimage.distance_transform_edt(~void)


def trimap_band(label: np.ndarray, width: float) -> np.ndarray:
    """Bool mask of pixels within Euclidean distance ``width`` of a void pixel (void included)."""
    if width < 0:
        raise ValueError(f"trimap width must be >= 0, got {width}")
    return _void_distance(label) <= width


def trimap_scores(
    preds: Iterable[np.ndarray],
    labels: Iterable[np.ndarray],
    widths: Iterable[float] = range(1, 41),
    num_classes: int = 21,
) -> dict[float, dict[str, Any]]:
    """Mean IU and pixel accuracy inside the band, per width, over a whole set of images.

    Confusion matrices are accumulated over all images per width (dataset-level IU, as for the
    full-image scores), with FCN's definitions (nanmean over classes). ``preds``/``labels`` may
    be generators: each pair is read once. A width whose band holds no scored pixel gets NaN.
    Returns ``{width: {"mean_iu", "pixel_acc", "mean_acc", "pixels"}}``.
    """
    widths = sorted(set(widths))
    if not widths:
        raise ValueError("trimap_scores needs at least one width")
    n = num_classes
    # hist per band increment (w_{k-1}, w_k], cumulated at the end: O(pixels), not O(pixels x W)
    inc = np.zeros((len(widths), n * n), dtype=np.int64)
    edges = np.asarray(widths, dtype=np.float64)
    for pred, label in zip(preds, labels, strict=True):
        pred = np.asarray(pred)
        label = np.asarray(label)
        if pred.shape != label.shape:
            raise ValueError(f"prediction {pred.shape} and label {label.shape} differ in shape")
        dist = _void_distance(label)
        truth = label.astype(np.int64)
        keep = (truth < n) & (dist <= edges[-1])
        if not keep.any():
            continue
        p = pred[keep].astype(np.int64)
        if p.size and (p.min() < 0 or p.max() >= n):
            raise ValueError(f"predictions must be class indices in [0, {n}), got {p.max()}")
        bucket = np.searchsorted(edges, dist[keep], side="left")
        inc += np.bincount(
            bucket * n * n + n * truth[keep] + p, minlength=len(widths) * n * n
        ).reshape(len(widths), n * n)
    cum = np.cumsum(inc, axis=0)
    out: dict[float, dict[str, Any]] = {}
    for k, w in enumerate(widths):
        hist = cum[k].reshape(n, n)
        scores = segmentation_scores(hist)
        out[w] = {
            "mean_iu": scores["mean_iu"],
            "pixel_acc": scores["pixel_acc"],
            "mean_acc": scores["mean_acc"],
            "pixels": int(hist.sum()),
        }
    return out


def plot_trimap(curves: Mapping[str, Mapping[float, Mapping[str, Any]]], path: str | Path) -> None:
    """Figure 5(b, c): pixel accuracy and mean IU (%) vs trimap width, one line per method.

    ``curves`` maps a method name (e.g. "DCNN", "DCNN+CRF") to a ``trimap_scores`` result.
    The file is written atomically (format from the suffix, e.g. .png or .pdf).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for name, result in curves.items():
        ws = sorted(result)
        for ax, key in zip(axes, ("pixel_acc", "mean_iu")):
            ax.plot(ws, [100 * result[w][key] for w in ws], marker=".", label=name)
    for ax, title in zip(axes, ("Pixelwise accuracy (%)", "Mean IOU (%)")):
        ax.set_xlabel("Trimap width (pixels)")
        ax.set_ylabel(title)
        ax.grid(True, alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fmt = path.suffix.lstrip(".") or "png"
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format=fmt, dpi=100)
    finally:
        plt.close(fig)
