"""Edge-map operators that run before the BSDS benchmark: structured-edge NMS and a Canny baseline.

``edge_nms`` is a vectorised numpy port of the NMS step of Dollar's Structured Edge toolbox
(``edgesEvalImg.m`` with ``nms=1``: ``convTri(E, 1)``, orientation from second derivatives of
``convTri(E, 4)``, then ``edgesNmsMex(E, O, r=1, s=5, m=1.01)``). Learned edge detectors
(PixelNet, HED) produce thick soft maps; NMS makes them thin before thresholding, which is how
their published BSDS numbers were obtained.

``canny_edges`` turns scikit-image's Canny into a *soft* map so that it can be swept over
thresholds by the same evaluator as the learned models (see its docstring).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi


def conv_tri(image: np.ndarray, r: float) -> np.ndarray:
    """Dollar's ``convTri``: separable triangle filter of radius ``r``, symmetric padding.

    For ``0 < r <= 1`` the filter is ``[1 p 1] / (2 + p)`` with ``p = 12 / r / (r + 2) - 2``
    (a fractional-radius triangle), as in the toolbox.
    """
    if r <= 0:
        return image
    if r <= 1:
        p = 12.0 / r / (r + 2.0) - 2.0
        kernel = np.array([1.0, p, 1.0]) / (2.0 + p)
    else:
        r = int(round(r))
        kernel = np.concatenate([np.arange(1, r + 2), np.arange(r, 0, -1)]).astype(np.float64)
        kernel /= (r + 1) ** 2
    # scipy's "reflect" (d c b a | a b c d) is MATLAB's 'symmetric' padding.
    out = ndi.convolve1d(image, kernel, axis=0, mode="reflect")
    return ndi.convolve1d(out, kernel, axis=1, mode="reflect")


def _gradient2(image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Dollar's ``gradient2``: central differences inside, one-sided at borders; returns (x, y)."""
    gy, gx = np.gradient(image)
    return gx, gy


def edge_orientation(edge_map: np.ndarray) -> np.ndarray:
    """Edge-normal orientation in [0, pi) from second derivatives of a smoothed edge map."""
    ox, oy = _gradient2(conv_tri(edge_map, 4))
    oxx, _ = _gradient2(ox)
    oxy, oyy = _gradient2(oy)
    # The toolbox uses sign(-oxy), which is 0 where oxy == 0 exactly and then calls a perfectly
    # horizontal edge "vertical" (nothing is suppressed). We count 0 as +1 there; real maps
    # almost never hit oxy == 0 exactly, so results elsewhere are unchanged.
    sign = np.where(oxy > 0, -1.0, 1.0)
    return np.mod(np.arctan(oyy * sign / (oxx + 1e-5)), np.pi)


def _bilinear(image: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Bilinear sample with the clamping of ``edgesNmsMex`` (coordinates kept inside the image)."""
    h, w = image.shape
    x = np.clip(x, 0.0, w - 1.001)
    y = np.clip(y, 0.0, h - 1.001)
    x0 = x.astype(np.intp)
    y0 = y.astype(np.intp)
    dx = x - x0
    dy = y - y0
    return (
        image[y0, x0] * (1 - dx) * (1 - dy)
        + image[y0, x0 + 1] * dx * (1 - dy)
        + image[y0 + 1, x0] * (1 - dx) * dy
        + image[y0 + 1, x0 + 1] * dx * dy
    )


def edge_nms(
    edge_map: np.ndarray,
    r: int = 1,
    s: int = 5,
    m: float = 1.01,
    smooth: bool = True,
) -> np.ndarray:
    """Suppress non-maxima along the edge normal; returns a float64 map of the same shape.

    ``r``: radius of the suppression along the normal; ``s``: width of the border band that
    is linearly faded out (noisy estimates near the border); ``m``: a pixel is kept unless a
    neighbour on the normal is stronger than ``m`` times it (``m > 1`` keeps plateaus).
    ``smooth`` applies ``convTri(E, 1)`` first, as the toolbox's evaluation does.
    A uint8 map is read as ``value / 255``.
    """
    edge = np.asarray(edge_map)
    if edge.ndim != 2:
        raise ValueError(f"edge_nms expects a 2-D map, got shape {edge.shape}")
    edge = edge / 255.0 if edge.dtype == np.uint8 else edge.astype(np.float64)
    if smooth:
        edge = conv_tri(edge, 1)
    ori = edge_orientation(edge)
    h, w = edge.shape
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float64)
    cos_o, sin_o = np.cos(ori), np.sin(ori)
    keep = edge != 0
    scaled = edge * m
    for d in range(-r, r + 1):
        if d == 0:
            continue
        neighbour = _bilinear(edge, xs + d * cos_o, ys + d * sin_o)
        keep &= ~(scaled < neighbour)
    out = np.where(keep, edge, 0.0)
    # Fade out a band of width s at the border (s clamped to half the image size).
    s = min(s, w // 2, h // 2)
    if s > 0:
        col = np.minimum(np.arange(w), np.arange(w)[::-1])
        row = np.minimum(np.arange(h), np.arange(h)[::-1])
        out *= np.minimum(row / s, 1.0)[:, None] * np.minimum(col / s, 1.0)[None, :]
    return out


def canny_edges(
    image_rgb: np.ndarray,
    sigma: float = 2.0,
    low_fraction: float = 0.0,
) -> np.ndarray:
    """Canny baseline as a soft edge map in [0, 1] (float64, same height and width).

    Canny itself is binary; the benchmark needs a strength to sweep. We keep Canny's thin
    non-maximum-suppressed ridges (``skimage.feature.canny`` with hysteresis thresholds
    ``low_fraction`` of the maximum gradient, 0 by default so every ridge survives) and
    weight each ridge pixel by its Gaussian-smoothed gradient magnitude, divided by the
    image's maximum. Thresholding this map at t is Canny with a single (no-hysteresis)
    threshold t relative to the strongest edge, so the evaluator's threshold sweep traces
    Canny's PR curve. Colour input is converted with ``rgb2gray``.
    """
    from skimage.color import rgb2gray
    from skimage.feature import canny
    from skimage.util import img_as_float

    image = np.asarray(image_rgb)
    gray = rgb2gray(image[..., :3]) if image.ndim == 3 else img_as_float(image)
    gray = np.asarray(gray, dtype=np.float64)
    smoothed = ndi.gaussian_filter(gray, sigma, mode="nearest")
    magnitude = np.hypot(ndi.sobel(smoothed, axis=0), ndi.sobel(smoothed, axis=1))
    peak = float(magnitude.max())
    if peak <= 0:
        return np.zeros(gray.shape, dtype=np.float64)
    # canny's thresholds are absolute sobel magnitudes: scale the fraction to this image.
    threshold = low_fraction * peak
    ridges = canny(
        gray, sigma=sigma, low_threshold=threshold, high_threshold=threshold, mode="nearest"
    )
    return np.where(ridges, magnitude / peak, 0.0)
