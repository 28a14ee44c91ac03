"""Built-in, deterministic synthetic edge data in the real BSDS500 on-disk layout.

Why: the tiny profile must exercise the edge-detection path (BSDS parser, consensus labels,
every annotator kept for the benchmark) with no download. The generator writes exactly what
``BSR_bsds500.tgz`` holds: ``BSR/BSDS500/data/images/{train,val,test}/<id>.jpg`` and
``groundTruth/<split>/<id>.mat`` with a ``groundTruth`` cell of 4-6 annotator structs, each with
``Segmentation`` (uint16 segment ids from 1) and ``Boundaries`` (logical, the one-pixel borders of
that segmentation, as BSDS's ``seg2bdry`` draws them).

A scene is a textured background cut by a wavy horizon plus a few textured shapes, rendered
with the VOC generator's shape/colour/texture code (:mod:`pipeline.data.builtin.voc`). Annotators
see the same scene but disagree slightly, as BSDS's humans do: each one shifts the horizon by
a pixel or ignores it, grows/shrinks or shifts each shape by a pixel, and skips a shape
now and then. Every fifth image is portrait (BSDS mixes 481x321 and 321x481). Image ``i``
depends only on ``(seed, i)``.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

from pipeline.data.builtin.voc import SHAPES, paint_object, shape_mask, textured_background
from pipeline.runtime.fsutil import atomic_path
from pipeline.runtime.progress import progress_bar

SPLITS = ("train", "val", "test")
ID_OFFSET = 100000  # BSDS ids are 2-6 digit numbers; ours are 6 digits from here


@dataclass(frozen=True)
class BSDSBuiltinSpec:
    """What the generator makes (counts per split, landscape size, annotators per image)."""

    num_train: int = 60
    num_val: int = 20
    num_test: int = 0
    height: int = 96
    width: int = 128
    min_annotators: int = 4
    max_annotators: int = 6
    max_objects: int = 4
    seed: int = 0

    def __post_init__(self) -> None:
        if not 1 <= self.min_annotators <= self.max_annotators:
            raise ValueError(
                f"need 1 <= min_annotators <= max_annotators, got "
                f"{self.min_annotators}, {self.max_annotators}"
            )
        if min(self.height, self.width) < 16:
            raise ValueError(f"images must be at least 16x16, got {self.width}x{self.height}")
        for key in ("num_train", "num_val", "num_test"):
            if getattr(self, key) < 0:
                raise ValueError(f"{key} must be >= 0, got {getattr(self, key)}")

    def split_indices(self) -> dict[str, range]:
        a, b = self.num_train, self.num_train + self.num_val
        return {"train": range(0, a), "val": range(a, b), "test": range(b, b + self.num_test)}


@dataclass(frozen=True)
class _Shape:
    shape: str
    style: int  # class style of pipeline.data.builtin.voc (colour, texture)
    cy: float
    cx: float
    r: float


def segmentation_boundaries(seg: np.ndarray) -> np.ndarray:
    """One-pixel boundaries of a segmentation (``seg2bdry``-like): 1 where a pixel's segment
    differs from its right or lower neighbour's."""
    bdry = np.zeros(seg.shape, bool)
    bdry[:, :-1] |= seg[:, :-1] != seg[:, 1:]
    bdry[:-1, :] |= seg[:-1, :] != seg[1:, :]
    return bdry


def _relabel(seg: np.ndarray) -> np.ndarray:
    """Consecutive segment ids from 1, in order of first appearance (uint16)."""
    _, first, inverse = np.unique(seg, return_index=True, return_inverse=True)
    order = np.argsort(np.argsort(first))
    return (order[inverse].reshape(seg.shape) + 1).astype(np.uint16)


def _scene(spec: BSDSBuiltinSpec, index: int) -> tuple[tuple[int, int], np.ndarray, list[_Shape]]:
    rng = np.random.default_rng([spec.seed, index])
    h, w = (spec.width, spec.height) if index % 5 == 4 else (spec.height, spec.width)
    # horizon row per column: a smooth wave across the image
    base = rng.uniform(0.35, 0.65) * h
    amp, freq, phase = rng.uniform(0, 0.08) * h, rng.uniform(0.5, 2.0), rng.uniform(0, 2 * np.pi)
    horizon = base + amp * np.sin(phase + freq * 2 * np.pi * np.arange(w) / w)
    shapes = []
    for _ in range(int(rng.integers(1, spec.max_objects + 1))):
        style = int(rng.integers(1, len(SHAPES) + 1))
        r = rng.uniform(0.12, 0.22) * min(h, w)
        cy = rng.uniform(r, h - r)
        cx = rng.uniform(r, w - r)
        shapes.append(_Shape(SHAPES[style - 1], style, cy, cx, r))
    return (h, w), horizon, shapes


def render_bsds_example(
    spec: BSDSBuiltinSpec, index: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Image ``index``: HxWx3 uint8 RGB, (n, H, W) uint16 segmentations, (n, H, W) uint8 boundaries
    for its n annotators."""
    (h, w), horizon, shapes = _scene(spec, index)
    rng = np.random.default_rng([spec.seed, index, 1])
    rows = np.arange(h)[:, None]
    sky = rows < horizon[None, :]
    image = np.where(sky[..., None], textured_background(rng, h, w), textured_background(rng, h, w))
    for s in shapes:
        paint_object(image, shape_mask(s.shape, h, w, s.cy, s.cx, s.r), s.style, rng)
    image = np.clip(image, 0, 255).astype(np.uint8)

    n = int(rng.integers(spec.min_annotators, spec.max_annotators + 1))
    segs = []
    for a in range(n):
        arng = np.random.default_rng([spec.seed, index, 100 + a])
        seg = np.zeros((h, w), np.int32)
        if arng.random() >= 0.15:  # most annotators draw the horizon, some a pixel off
            offset = 0 if arng.random() < 0.75 else int(arng.choice([-1, 1]))
            seg[rows < horizon[None, :] + offset] = 1
        for k, s in enumerate(shapes):
            if arng.random() < 0.15:  # this annotator skips the shape
                continue
            mask = shape_mask(s.shape, h, w, s.cy, s.cx, s.r)
            grow = arng.random()
            if grow < 0.1:
                mask = ndimage.binary_dilation(mask)
            elif grow < 0.2:
                mask = ndimage.binary_erosion(mask)
            if arng.random() < 0.15:
                dy, dx = arng.integers(-1, 2, 2)
                mask = np.roll(mask, (int(dy), int(dx)), axis=(0, 1))
            seg[mask] = 2 + k
        segs.append(_relabel(seg))
    segmentations = np.stack(segs)
    boundaries = np.stack([segmentation_boundaries(s) for s in segs]).astype(np.uint8)
    return image, segmentations, boundaries


MAT_HEADER = b"MATLAB 5.0 MAT-file, Platform: densepipe builtin BSDS, Created on: 1970-01-01"


def _write_ground_truth(path: Path, segmentations: np.ndarray, boundaries: np.ndarray) -> None:
    """``groundTruth``: a 1 x n MATLAB cell of structs with Segmentation and Boundaries.

    The MAT header's 116 text bytes carry a creation date; a fixed text keeps files identical
    from run to run (so DVC caches them).
    """
    import scipy.io

    cell = np.empty((1, len(segmentations)), dtype=object)
    for k, (seg, bdry) in enumerate(zip(segmentations, boundaries, strict=True)):
        cell[0, k] = {"Segmentation": seg.astype(np.uint16), "Boundaries": bdry.astype(bool)}
    buf = io.BytesIO()
    scipy.io.savemat(buf, {"groundTruth": cell})
    data = buf.getvalue()
    path.write_bytes(MAT_HEADER.ljust(116, b" ") + data[116:])


def bsds_example_id(index: int) -> str:
    return str(ID_OFFSET + index)


def write_builtin_bsds(root: Path, spec: BSDSBuiltinSpec, progress: bool = True) -> Path:
    """Write the dataset to ``root/BSR/BSDS500/data`` atomically and return that folder."""
    final = Path(root) / "BSR"
    splits = spec.split_indices()
    total = sum(len(r) for r in splits.values())
    with atomic_path(final) as tmp:
        data = tmp / "BSDS500" / "data"
        bar = progress_bar(total=total, desc="builtin BSDS", disable=not progress, unit="img")
        for split, indices in splits.items():
            (data / "images" / split).mkdir(parents=True)
            (data / "groundTruth" / split).mkdir(parents=True)
            for i in indices:
                image_id = bsds_example_id(i)
                image, segs, bounds = render_bsds_example(spec, i)
                Image.fromarray(image).save(data / "images" / split / f"{image_id}.jpg", quality=92)
                _write_ground_truth(data / "groundTruth" / split / f"{image_id}.mat", segs, bounds)
                bar.update()
        bar.close()
    return final / "BSDS500" / "data"
