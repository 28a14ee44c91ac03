"""Synthetic CRF inputs for tests and benchmarks: images, DCNN-like softmax maps, labels."""

from __future__ import annotations

import numpy as np
from scipy import ndimage


def _interp_matrix(n_out: int, n_in: int) -> np.ndarray:
    """Bilinear (half-pixel centres) resampling as an n_out x n_in matrix."""
    pos = np.clip((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0, n_in - 1)
    lo = np.floor(pos).astype(int)
    hi = np.minimum(lo + 1, n_in - 1)
    frac = (pos - lo).astype(np.float32)
    m = np.zeros((n_out, n_in), dtype=np.float32)
    m[np.arange(n_out), lo] += 1 - frac
    m[np.arange(n_out), hi] += frac
    return m


def _resize(x: np.ndarray, h: int, w: int) -> np.ndarray:
    """Bilinear resize of the last two axes (separable matmuls: much faster than ndimage.zoom)."""
    ry = _interp_matrix(h, x.shape[-2])
    rx = _interp_matrix(w, x.shape[-1])
    return ry @ x.astype(np.float32) @ rx.T


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, ...], scale: float) -> np.ndarray:
    """Unit-variance noise smooth over ~``scale`` px in the last two axes (made at low res)."""
    *lead, h, w = shape
    f = max(1, int(scale // 2))
    small = rng.normal(size=(*lead, -(-h // f), -(-w // f)))
    sigma = (0,) * len(lead) + (scale / f, scale / f)
    small = ndimage.gaussian_filter(small, sigma, mode="wrap")
    small /= small.std() + 1e-12
    return _resize(small, h, w)


def synthetic_example(
    height: int = 375,
    width: int = 500,
    num_classes: int = 21,
    seed: int = 0,
    regions: int = 12,
    blur: float = 10.0,
    noise: float = 0.35,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A realistic (image, probs, label) triple for tests and benchmarks.

    The label is a warped Voronoi partition (irregular boundaries) of ``regions`` segments,
    ~40% background; the image gives each segment a colour plus smooth shading and fine texture;
    the scores imitate a stride-8 DCNN: the label sampled every 8 px, one-hot, bilinearly
    upsampled, blurred (``blur`` px), plus smooth noise (std ``noise`` in logits), softmax.
    Real score maps are smooth like these; white-noise scores make pydensecrf ~3x slower.
    """
    rng = np.random.default_rng(seed)
    h, w, c = height, width, num_classes
    ys, xs = rng.uniform(0, h, regions), rng.uniform(0, w, regions)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    warp = _smooth_noise(rng, (2, h, w), 12.0) * 6.0
    dist = (yy[None] + warp[0][None] - ys[:, None, None]) ** 2 + (
        xx[None] + warp[1][None] - xs[:, None, None]
    ) ** 2
    region = dist.argmin(0)
    cls = rng.integers(1, c, regions)
    cls[rng.random(regions) < 0.4] = 0
    label = cls[region].astype(np.uint8)
    colours = rng.integers(30, 226, (regions, 3)).astype(np.float32)
    img = colours[region]
    img += np.moveaxis(_smooth_noise(rng, (3, h, w), 20.0), 0, -1) * 3.0
    img += ndimage.gaussian_filter(rng.normal(size=(h, w, 3)), (1.5, 1.5, 0)) * 40
    image = np.clip(img, 0, 255).astype(np.uint8)
    probs = synthetic_scores(label, c, seed=seed, blur=blur, noise=noise)
    return image, probs, label


def synthetic_scores(
    label: np.ndarray, num_classes: int, seed: int = 0, blur: float = 10.0, noise: float = 0.35
) -> np.ndarray:
    """DCNN-like softmax scores for a label map (CxHxW float32), as in ``synthetic_example``.

    Void (255) pixels take their nearest labelled pixel's class (a DCNN predicts a class there).
    """
    rng = np.random.default_rng(seed + 7919)
    h, w = label.shape
    void = label >= num_classes
    if void.all():
        raise ValueError("label has no valid pixel")
    if void.any():
        nearest = ndimage.distance_transform_edt(void, return_distances=False, return_indices=True)
        label = label[tuple(nearest)]
    coarse = label[4::8, 4::8]
    onehot = (coarse[None] == np.arange(num_classes)[:, None, None]).astype(np.float32)
    onehot = ndimage.gaussian_filter(onehot, (0, blur / 8, blur / 8), mode="nearest")
    logits = 5.0 * _resize(onehot, h, w)
    logits += _smooth_noise(rng, (num_classes, h, w), 20.0) * noise
    logits -= logits.max(0, keepdims=True)
    probs = np.exp(logits)
    probs /= probs.sum(0, keepdims=True)
    return probs.astype(np.float32)
