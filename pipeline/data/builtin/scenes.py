"""Class appearance for the built-in scene datasets (SIFT Flow, PASCAL-Context): class map -> image.

Why: a network trained on the built-in sets must be able to learn every class, from colour and
texture as on real photographs, without any class being one exact colour. Each class has a
:class:`Look` (a base colour, a texture and its contrast); an image jitters each class's colour,
adds a smooth lighting field over the whole frame and per-pixel noise. The generators compose a
class map (which class each pixel shows) and call :func:`paint_classes`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from pipeline.data.builtin.voc import TEXTURES, texture_pattern

#: the VOC generator's patterns plus ``speckle`` (random dots), ``blotch`` (smooth random
#: patches: foliage, rock, hide) and ``vgrad`` (darker towards the top: sky)
SCENE_TEXTURES = (*TEXTURES, "speckle", "blotch", "vgrad")


@dataclass(frozen=True)
class Look:
    """A class's appearance: RGB base colour, texture (``SCENE_TEXTURES``), its strength
    (0: none, 1: the pattern's dark parts black) and period in pixels."""

    rgb: tuple[int, int, int]
    texture: str = "plain"
    contrast: float = 0.2
    period: int = 3

    def __post_init__(self) -> None:
        if self.texture not in SCENE_TEXTURES:
            raise ValueError(f"texture {self.texture!r} is not one of {SCENE_TEXTURES}")
        if not 0.0 <= self.contrast <= 1.0:
            raise ValueError(f"contrast must be in [0, 1], got {self.contrast}")


def smooth_field(rng: np.random.Generator, height: int, width: int, cell: int = 8) -> np.ndarray:
    """HxW smooth random field, about unit variance, features ``cell`` pixels wide."""
    low = rng.normal(0.0, 1.0, (height // cell + 2, width // cell + 2))
    zoom = (height / low.shape[0], width / low.shape[1])
    return ndimage.zoom(low, zoom, order=1)[:height, :width]


def pattern(look: Look, height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """HxW float pattern in [0, 1] of ``look``'s texture (its period jittered by one pixel)."""
    period = max(2, look.period + int(rng.integers(-1, 2)))
    if look.texture == "speckle":
        return (rng.random((height, width)) < 0.3).astype(np.float64)
    if look.texture == "blotch":
        return (smooth_field(rng, height, width, cell=max(2, period)) > 0).astype(np.float64)
    if look.texture == "vgrad":
        rows = np.linspace(1.0, 0.0, height)[:, None]
        return np.broadcast_to(rows, (height, width)).astype(np.float64)
    phase = int(rng.integers(0, period))
    return texture_pattern(look.texture, height, width, period, phase).astype(np.float64)


def paint_classes(
    classes: np.ndarray, looks: Mapping[int, Look], rng: np.random.Generator
) -> np.ndarray:
    """HxWx3 uint8 image of the HxW class map ``classes``: every class present painted with its
    look (colour jittered per image), a smooth lighting field and pixel noise on top."""
    height, width = classes.shape
    image = np.zeros((height, width, 3))
    for value in np.unique(classes):
        look = looks[int(value)]
        mask = classes == value
        colour = np.asarray(look.rgb, np.float64) * rng.normal(1.0, 0.06) + rng.normal(0, 7, 3)
        tex = pattern(look, height, width, rng)[mask]
        image[mask] = colour[None, :] * (1.0 - look.contrast * tex[:, None])
    light = 10.0 * smooth_field(rng, height, width, cell=16)[..., None]
    image += light + rng.normal(0.0, 5.0, (height, width, 3))
    return np.clip(np.round(image), 0, 255).astype(np.uint8)


def ellipse(height: int, width: int, cy: float, cx: float, ry: float, rx: float) -> np.ndarray:
    """HxW mask of an axis-aligned ellipse (at least the centre pixel)."""
    yy, xx = np.mgrid[0:height, 0:width]
    mask = ((yy - cy) / max(ry, 0.5)) ** 2 + ((xx - cx) / max(rx, 0.5)) ** 2 <= 1.0
    mask[int(np.clip(round(cy), 0, height - 1)), int(np.clip(round(cx), 0, width - 1))] = True
    return mask


def rect(height: int, width: int, y0: float, y1: float, x0: float, x1: float) -> np.ndarray:
    """HxW mask of rows [y0, y1) x columns [x0, x1) (rounded, clipped; at least one pixel)."""
    mask = np.zeros((height, width), bool)
    r0, c0 = int(np.clip(round(y0), 0, height - 1)), int(np.clip(round(x0), 0, width - 1))
    r1, c1 = int(np.clip(round(y1), r0 + 1, height)), int(np.clip(round(x1), c0 + 1, width))
    mask[r0:r1, c0:c1] = True
    return mask


def void_blobs(
    rng: np.random.Generator, height: int, width: int, count: int, radius: tuple[float, float]
) -> np.ndarray:
    """HxW mask of ``count`` small random discs: the unlabelled spots annotators leave."""
    mask = np.zeros((height, width), bool)
    for _ in range(count):
        r = rng.uniform(*radius)
        mask |= ellipse(height, width, rng.uniform(0, height), rng.uniform(0, width), r, r)
    return mask
