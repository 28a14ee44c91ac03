"""BSDS500 for edge detection: images, every annotator's ground truth, consensus edge labels.

Layout (``BSR/BSDS500/data``): ``images/{train,val,test}/<id>.jpg`` (200/100/200) and
``groundTruth/<split>/<id>.mat`` holding one struct per annotator (4-9 of them):
``m["groundTruth"][0, k]["Boundaries"][0, 0]`` (binary) and ``["Segmentation"][0, 0]``.

Record: ``label`` = consensus edges (1 where at least ``min_annotators`` annotators mark a
boundary, 0 elsewhere; with ``ignore_ambiguous`` the pixels marked by some but too few become
void 255, the way HED/RCF ignore uncertain pixels). The benchmark needs every annotator, so the
extras keep them: ``boundaries`` (uint8 0/1) and ``segmentations`` (uint16) as PNGs of the
annotator maps stacked vertically (``n*H x W``, see :func:`unstack`), plus ``num_annotators``.

:class:`HEDAugment` is HED's training augmentation (16 rotations with the largest inscribed
crop, flips, scales 0.5/1/1.5 = 96 variants per image) as a Ray Data ``flat_map`` function.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from pipeline.data.datasets.base import (
    VOID,
    decode_image,
    decode_label,
    encode_png,
    example_record,
)
from pipeline.errors import DataError

SPLITS = ("train", "val", "test", "trainval")
EDGE_CLASSES = ("non-edge", "edge")


def bsds_data_dir(root: Path) -> Path:
    """The folder holding ``images/`` and ``groundTruth/`` (``BSR/BSDS500/data``)."""
    root = Path(root)
    for candidate in (root, root / "data", root / "BSDS500" / "data", root / "BSR/BSDS500/data"):
        if (candidate / "images").is_dir():
            return candidate
    raise DataError(f"no BSDS500 layout (images/ folder) in {root} or its BSR/BSDS500/data")


def load_ground_truth(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """All annotators of one ``groundTruth`` file: boundaries (n,H,W) uint8 0/1, segs uint16."""
    import scipy.io

    if not path.is_file():
        raise DataError(f"missing BSDS ground truth: {path}")
    try:
        gt = scipy.io.loadmat(str(path))["groundTruth"]
        n = gt.shape[1]
        bounds = [np.asarray(gt[0, k]["Boundaries"][0, 0]) for k in range(n)]
        segs = [np.asarray(gt[0, k]["Segmentation"][0, 0]) for k in range(n)]
    except Exception as exc:
        msg = f"cannot read groundTruth{{k}}.Boundaries/.Segmentation from {path}: {exc}"
        raise DataError(msg) from exc
    if n == 0:
        raise DataError(f"{path} has no annotator")
    shapes = {b.shape for b in bounds} | {s.shape for s in segs}
    if len(shapes) != 1 or len(next(iter(shapes))) != 2:
        raise DataError(f"annotator maps in {path} differ in size or are not HxW: {shapes}")
    boundaries = np.stack(bounds).astype(np.uint8)
    if boundaries.max(initial=0) > 1:
        raise DataError(f"boundary maps in {path} are not binary (max {boundaries.max()})")
    segmentations = np.stack(segs)
    if segmentations.min(initial=0) < 0 or segmentations.max(initial=0) > 65535:
        raise DataError(f"segment ids in {path} do not fit uint16")
    return boundaries, segmentations.astype(np.uint16)


def consensus_edges(
    boundaries: np.ndarray, min_annotators: int = 3, ignore_ambiguous: bool = False
) -> np.ndarray:
    """HxW uint8: 1 where >= k annotators mark an edge (k capped at their number), else 0/255."""
    count = boundaries.astype(np.int32).sum(axis=0)
    k = max(1, min(int(min_annotators), boundaries.shape[0]))
    label = (count >= k).astype(np.uint8)
    if ignore_ambiguous:
        label[(count > 0) & (count < k)] = VOID
    return label


def stack_png(maps: np.ndarray) -> bytes:
    """(n, H, W) uint8/uint16 maps -> one lossless PNG of size n*H x W."""
    n, h, w = maps.shape
    return encode_png(np.ascontiguousarray(maps.reshape(n * h, w)))


def unstack(png: bytes, height: int) -> np.ndarray:
    """Inverse of :func:`stack_png`: the (n, height, W) annotator maps."""
    with Image.open(io.BytesIO(png)) as im:
        array = np.asarray(im)
    if array.ndim != 2 or array.shape[0] % height:
        raise DataError(f"stacked annotator PNG of shape {array.shape} is not n x {height} rows")
    return array.reshape(array.shape[0] // height, height, array.shape[1])


class BSDS:
    """BSDS500 edges: ``label`` = consensus of ``min_annotators`` (default 3) annotators."""

    name = "bsds"
    classes = EDGE_CLASSES
    num_classes = len(EDGE_CLASSES)
    splits = SPLITS

    def __init__(self, min_annotators: int = 3, ignore_ambiguous: bool = False) -> None:
        if int(min_annotators) < 1:
            raise ValueError(f"min_annotators must be >= 1, got {min_annotators}")
        self.min_annotators = int(min_annotators)
        self.ignore_ambiguous = ignore_ambiguous

    def list_ids(self, root: Path, split: str) -> list[str]:
        data = bsds_data_dir(root)
        if split not in SPLITS:
            raise DataError(f"unknown BSDS split {split!r} (one of {SPLITS}) for {data}")
        if split == "trainval":
            return self.list_ids(root, "train") + self.list_ids(root, "val")
        folder = data / "images" / split
        ids = sorted(p.stem for p in folder.glob("*.jpg"))
        if not ids:
            raise DataError(f"no BSDS images in {folder}")
        return ids

    @staticmethod
    def _locate(data: Path, example_id: str) -> tuple[str, Path]:
        for split in ("train", "val", "test"):
            path = data / "images" / split / f"{example_id}.jpg"
            if path.is_file():
                return split, path
        raise DataError(f"missing file for id {example_id!r}: {data}/images/*/{example_id}.jpg")

    def example_files(self, root: Path, example_id: str) -> list[Path]:
        """The image and its ground truth (checked up front by the download stage)."""
        data = bsds_data_dir(root)
        split, image_path = self._locate(data, example_id)
        return [image_path, data / "groundTruth" / split / f"{example_id}.mat"]

    def load_example(self, root: Path, example_id: str) -> dict[str, Any]:
        image_path, gt_path = self.example_files(root, example_id)
        image_bytes = image_path.read_bytes()
        image = decode_image(image_bytes, str(image_path))
        boundaries, segmentations = load_ground_truth(gt_path)
        label = consensus_edges(boundaries, self.min_annotators, self.ignore_ambiguous)
        return example_record(
            example_id,
            image_bytes,
            image,
            label,
            self.num_classes,
            str(gt_path),
            boundaries=stack_png(boundaries),
            segmentations=stack_png(segmentations),
            num_annotators=int(boundaries.shape[0]),
        )


# -- HED augmentation ------------------------------------------------------------------------
def largest_rotated_rect(w: int, h: int, angle_deg: float) -> tuple[int, int]:
    """Size of the largest axis-aligned rectangle inside a w x h image rotated by the angle."""
    a = math.radians(angle_deg)
    sin_a, cos_a = abs(math.sin(a)), abs(math.cos(a))
    long_side, short_side = (w, h) if w >= h else (h, w)
    if short_side <= 2.0 * sin_a * cos_a * long_side or abs(sin_a - cos_a) < 1e-10:
        x = 0.5 * short_side  # half-constrained: two corners touch the longer side
        wr, hr = (x / sin_a, x / cos_a) if w >= h else (x / cos_a, x / sin_a)
    else:
        cos_2a = cos_a * cos_a - sin_a * sin_a
        wr, hr = (w * cos_a - h * sin_a) / cos_2a, (h * cos_a - w * sin_a) / cos_2a
    return max(1, int(math.floor(wr + 1e-6))), max(1, int(math.floor(hr + 1e-6)))


def _center_crop(im: Image.Image, w: int, h: int) -> Image.Image:
    left, top = (im.width - w) // 2, (im.height - h) // 2
    return im.crop((left, top, left + w, top + h))


@dataclass(frozen=True)
class HEDAugment:
    """HED's augmentation of one prepared BSDS row into ``angles x flips x scales`` rows.

    Images are resampled bilinearly; edge labels are resampled as edge coverage, kept where
    coverage > ``edge_threshold`` (times the scale when shrinking) and thinned to one pixel
    (so lines neither break nor thicken); void is resampled nearest. Right angles at scale 1
    are exact transposes. Output rows have the schema columns plus ``source_id``, ``angle``,
    ``flip``, ``scale``; the per-annotator extras are dropped (they serve evaluation, which is
    never augmented).
    Use as ``ds.flat_map(HEDAugment())``.
    """

    angles: int = 16
    flips: bool = True
    scales: tuple[float, ...] = (0.5, 1.0, 1.5)
    edge_threshold: float = 0.25
    image_format: str = "JPEG"
    jpeg_quality: int = 95

    def variants(self) -> list[tuple[float, bool, float]]:
        """(angle in degrees, flipped, scale) of every output row, in output order."""
        flips = (False, True) if self.flips else (False,)
        angles = [i * 360.0 / self.angles for i in range(self.angles)]
        return [(a, f, s) for a in angles for f in flips for s in self.scales]

    def __call__(self, row: dict[str, Any]) -> list[dict[str, Any]]:
        source = f"row {row.get('id')!r}"
        image = Image.fromarray(decode_image(row["image"], source))
        label = decode_label(row["label"], source)
        maps = (
            image,
            Image.fromarray((label == 1).astype(np.float32)),  # edge coverage, mode F
            Image.fromarray((label == VOID).astype(np.uint8) * 255),
        )
        out, rotated, flipped = [], {}, {}
        for angle, flip, scale in self.variants():
            if angle not in rotated:
                rotated = {angle: self._rotate(maps, angle)}
                flipped = {}
            if flip not in flipped:
                ims = rotated[angle]
                if flip:
                    ims = tuple(im.transpose(Image.Transpose.FLIP_LEFT_RIGHT) for im in ims)
                flipped[flip] = ims
            out.append(self._finish(row["id"], flipped[flip], angle, flip, scale))
        return out

    @staticmethod
    def _rotate(maps: tuple[Image.Image, ...], angle: float) -> tuple[Image.Image, ...]:
        """Rotate counter-clockwise and crop the largest inscribed rectangle (HED)."""
        if angle % 360 == 0:
            return maps
        if angle % 90 == 0:
            op = {90: Image.Transpose.ROTATE_90, 180: Image.Transpose.ROTATE_180}.get(
                int(angle) % 360, Image.Transpose.ROTATE_270
            )
            return tuple(im.transpose(op) for im in maps)
        w, h = largest_rotated_rect(maps[0].width, maps[0].height, angle)
        image, edge, void = maps
        return (
            _center_crop(image.rotate(angle, Image.BILINEAR, expand=True), w, h),
            _center_crop(edge.rotate(angle, Image.BILINEAR, expand=True), w, h),
            _center_crop(void.rotate(angle, Image.NEAREST, expand=True), w, h),
        )

    def _finish(
        self, example_id: str, maps: tuple[Image.Image, ...], angle: float, flip: bool, scale: float
    ) -> dict[str, Any]:
        image, edge, void = maps
        if scale != 1.0:
            size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
            image = image.resize(size, Image.BILINEAR)
            edge = edge.resize(size, Image.BILINEAR)
            void = void.resize(size, Image.NEAREST)
        exact = angle % 90 == 0 and scale == 1.0  # pure transposes: labels unchanged
        # downscaling spreads a 1-px line's coverage over 1/scale rows: lower the bar with it
        threshold = 0.5 if exact else self.edge_threshold * min(1.0, scale)
        edges = np.asarray(edge) > threshold
        if not exact:
            from skimage.morphology import thin

            edges = thin(edges)
        label = np.where(edges, 1, np.where(np.asarray(void) > 127, VOID, 0)).astype(np.uint8)
        buf = io.BytesIO()
        if self.image_format.upper() == "JPEG":
            image.save(buf, format="JPEG", quality=self.jpeg_quality)
        else:
            image.save(buf, format=self.image_format)
        tag = f"r{angle:g}_{'f' if flip else 'n'}_s{scale:g}"
        return {
            "id": f"{example_id}_{tag}",
            "image": buf.getvalue(),
            "label": encode_png(label),
            "height": label.shape[0],
            "width": label.shape[1],
            "source_id": example_id,
            "angle": float(angle),
            "flip": bool(flip),
            "scale": float(scale),
        }
