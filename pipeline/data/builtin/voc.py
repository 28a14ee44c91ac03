"""Built-in, deterministic synthetic data in the real VOC2012 on-disk layout.

Why: a fresh clone must run the whole DAG on 2 CPU cores in minutes, with no download. The
generator writes exactly what the real VOC2012 tarball holds (``JPEGImages/*.jpg``, palette
``SegmentationClass/*.png`` with a 255 void band around object borders,
``ImageSets/Segmentation/{train,val}.txt``), so every later stage runs the code path real data
takes. Each object class has its own shape, colour and texture cue on a textured background, so
a small network learns it within a minute or two. Image ``i`` depends only on ``(seed, i)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

from pipeline.runtime.fsutil import atomic_path
from pipeline.runtime.progress import progress_bar

VOC_CLASSES = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat",
    "chair", "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant",
    "sheep", "sofa", "train", "tvmonitor",
)  # fmt: skip

SHAPES = ("disc", "square", "triangle", "ring", "cross", "diamond", "hbar", "vbar")
TEXTURES = ("plain", "hstripes", "vstripes", "checker", "dots")


def voc_palette() -> list[int]:
    """The standard PASCAL VOC colour map (``labelcolormap`` of the devkit), index 255 white."""
    palette = []
    for index in range(256):
        r = g = b = 0
        c = index
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        palette += [r, g, b]
    palette[255 * 3 : 256 * 3] = [224, 224, 192]
    return palette


@dataclass(frozen=True)
class BuiltinSpec:
    """What the generator makes: ``num_object_classes`` classes (VOC indices 1..K)."""

    num_train: int = 300
    num_val: int = 100
    size: int = 64
    num_object_classes: int = 5
    max_objects: int = 3
    void_width: int = 1
    seed: int = 0


def _class_style(k: int) -> tuple[str, np.ndarray, str]:
    """Class k (1-based) gets a fixed shape, hue and texture."""
    hue = (k * 0.61803398875) % 1.0
    rgb = np.array(_hsv_to_rgb(hue, 0.85, 0.95)) * 255
    return SHAPES[(k - 1) % len(SHAPES)], rgb, TEXTURES[(k - 1) % len(TEXTURES)]


def _hsv_to_rgb(h: float, s: float, v: float) -> tuple[float, float, float]:
    i = int(h * 6) % 6
    f = h * 6 - int(h * 6)
    p, q, t = v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)
    return [(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)][i]


def shape_mask(shape: str, height: int, width: int, cy: float, cx: float, r: float) -> np.ndarray:
    """Boolean HxW mask of one of :data:`SHAPES`, centred at (cy, cx) with radius r."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    dy, dx = yy - cy, xx - cx
    if shape == "disc":
        return dy**2 + dx**2 <= r**2
    if shape == "square":
        return (np.abs(dy) <= r * 0.85) & (np.abs(dx) <= r * 0.85)
    if shape == "triangle":
        return (dy <= r * 0.8) & (dy >= -r) & (np.abs(dx) <= (dy + r) * 0.6)
    if shape == "ring":
        d2 = dy**2 + dx**2
        return (d2 <= r**2) & (d2 >= (0.5 * r) ** 2)
    if shape == "cross":
        return ((np.abs(dy) <= r * 0.3) & (np.abs(dx) <= r)) | (
            (np.abs(dx) <= r * 0.3) & (np.abs(dy) <= r)
        )
    if shape == "diamond":
        return np.abs(dy) + np.abs(dx) <= r
    if shape == "hbar":
        return (np.abs(dy) <= r * 0.4) & (np.abs(dx) <= r)
    return (np.abs(dx) <= r * 0.4) & (np.abs(dy) <= r)  # vbar


def texture_pattern(texture: str, height: int, width: int, period: int, phase: int) -> np.ndarray:
    """HxW 0/1 pattern of one of :data:`TEXTURES` (``plain`` is all zeros)."""
    yy, xx = np.mgrid[0:height, 0:width]
    if texture == "hstripes":
        return ((yy + phase) // period) % 2
    if texture == "vstripes":
        return ((xx + phase) // period) % 2
    if texture == "checker":
        return ((yy // period) + (xx // period)) % 2
    if texture == "dots":
        return (((yy + phase) % (2 * period)) < period // 2 + 1) & (
            ((xx + phase) % (2 * period)) < period // 2 + 1
        )
    return np.zeros((height, width), bool)


def textured_background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """HxWx3 float image: a random base colour, a smooth colour field and fine noise."""
    low = rng.normal(0, 1, (3, height // 8 + 2, width // 8 + 2))
    zoom = (height / low.shape[1], width / low.shape[2])
    field = np.stack([ndimage.zoom(c, zoom, order=3)[:height, :width] for c in low], -1)
    base = rng.uniform(60, 190, 3)
    return base + 25 * field + rng.normal(0, 10, (height, width, 3))


def paint_object(image: np.ndarray, mask: np.ndarray, k: int, rng: np.random.Generator) -> None:
    """Paint class ``k``'s colour and texture (with jitter and noise) into ``image`` at ``mask``."""
    _, rgb, texture = _class_style(k)
    colour = np.clip(rgb + rng.normal(0, 18, 3), 0, 255)
    height, width = mask.shape
    tex = texture_pattern(texture, height, width, int(rng.integers(2, 4)), int(rng.integers(0, 4)))
    obj = colour * (1 - 0.45 * tex[..., None])
    image[mask] = obj[mask] + rng.normal(0, 8, (int(mask.sum()), 3))


def render_example(spec: BuiltinSpec, index: int) -> tuple[np.ndarray, np.ndarray]:
    """Image ``index``: HxWx3 uint8 RGB and HxW uint8 label (0 background, 255 void band)."""
    rng = np.random.default_rng([spec.seed, index])
    n = spec.size
    image = textured_background(rng, n, n)
    label = np.zeros((n, n), np.uint8)
    for _ in range(rng.integers(1, spec.max_objects + 1)):
        k = int(rng.integers(1, spec.num_object_classes + 1))
        r = rng.uniform(0.12, 0.25) * n
        cy, cx = rng.uniform(r * 0.7, n - r * 0.7, 2)
        mask = shape_mask(_class_style(k)[0], n, n, cy, cx, r)
        paint_object(image, mask, k, rng)
        label[mask] = k
    if spec.void_width > 0:
        # VOC marks object borders void: here the outer side of every boundary, void_width wide
        size = 2 * spec.void_width + 1
        label[label < ndimage.maximum_filter(label, size=size)] = 255
    return np.clip(image, 0, 255).astype(np.uint8), label


def write_builtin_voc(root: Path, spec: BuiltinSpec, progress: bool = True) -> Path:
    """Write the dataset to ``root/VOCdevkit/VOC2012`` atomically and return that folder."""
    final = Path(root) / "VOCdevkit"
    palette = voc_palette()
    with atomic_path(final) as tmp:
        voc = tmp / "VOC2012"
        for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
            (voc / sub).mkdir(parents=True)
        splits = {
            "train": range(spec.num_train),
            "val": range(spec.num_train, spec.num_train + spec.num_val),
        }
        total = spec.num_train + spec.num_val
        bar = progress_bar(total=total, desc="builtin data", disable=not progress, unit="img")
        for split, indices in splits.items():
            ids = []
            for i in indices:
                image_id = f"2000_{i:06d}"
                image, label = render_example(spec, i)
                Image.fromarray(image).save(voc / "JPEGImages" / f"{image_id}.jpg", quality=92)
                png = Image.fromarray(label, mode="P")
                png.putpalette(palette)
                png.save(voc / "SegmentationClass" / f"{image_id}.png")
                ids.append(image_id)
                bar.update()
            (voc / "ImageSets/Segmentation" / f"{split}.txt").write_text("\n".join(ids) + "\n")
        bar.close()
    return final / "VOC2012"
