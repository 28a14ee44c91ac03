"""The one interface every dataset implements, so preparation and training never special-case one.

A dataset lists the ids of a split and loads one example as a flat record of *encoded* bytes
(the original JPEG/PNG where possible) plus its size. ``pipeline.data.prepare`` turns those
records into Parquet shards with Ray Data; the training loader decodes them.

Prepared-data schema (one row per example; extra modality columns are optional):

    id: string            the dataset's own id (e.g. "2008_000123", "5001")
    image: binary         encoded image (JPEG or PNG), RGB
    label: binary         encoded single-channel PNG of class indices, 255 = void
    height, width: int32  image size (the label has the same size)
    image_sha256: string  added by prepare, not the parser: sha256 of the decoded RGB pixels
                          (pipeline.data.leakage)
    <extras>: binary      e.g. depth (16-bit PNG, mm), hha (PNG), normals (16-bit PNG, see
                          pipeline.data.encodings.normals.normals_to_png), geo_label (PNG),
                          boundaries
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from PIL import Image

from pipeline.errors import DataError

VOID = 255


class Dataset(Protocol):
    """What ``prepare`` needs from a dataset."""

    name: str
    num_classes: int

    def list_ids(self, root: Path, split: str) -> list[str]: ...

    def load_example(self, root: Path, example_id: str) -> dict[str, Any]: ...


@dataclass(frozen=True)
class DatasetInfo:
    """Static facts about a dataset (class names, default splits)."""

    name: str
    classes: tuple[str, ...]
    splits: tuple[str, ...] = ("train", "val")
    extras: tuple[str, ...] = field(default_factory=tuple)

    @property
    def num_classes(self) -> int:
        return len(self.classes)


def read_split_file(path: Path) -> list[str]:
    """Read an ImageSets-style list (one id per line); a missing file is a DataError."""
    if not path.is_file():
        raise DataError(f"split file not found: {path}")
    ids = [line.split()[0] for line in path.read_text().splitlines() if line.strip()]
    if not ids:
        raise DataError(f"split file is empty: {path}")
    return ids


def decode_image(data: bytes, source: str) -> np.ndarray:
    """Decode an encoded image to HxWx3 uint8 RGB; a corrupt file is a DataError naming it."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            return np.asarray(im.convert("RGB"))
    except Exception as exc:  # PIL raises many types for corrupt data
        raise DataError(f"cannot decode image {source}: {exc}") from exc


def decode_label(data: bytes, source: str) -> np.ndarray:
    """Decode a label PNG to HxW uint8 class indices (palette indices, never colours)."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            if im.mode not in ("P", "L"):
                raise ValueError(f"label mode {im.mode!r}, expected palette 'P' or grey 'L'")
            return np.asarray(im)
    except Exception as exc:
        raise DataError(f"cannot decode label {source}: {exc}") from exc


def decode_uint16(data: bytes, source: str) -> np.ndarray:
    """Decode a single-channel 8/16-bit PNG (depth in mm) to HxW uint16."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            if im.mode not in ("I;16", "I", "L"):
                raise ValueError(f"mode {im.mode!r}, expected a 16-bit single-channel PNG")
            return np.asarray(im).astype(np.uint16)
    except Exception as exc:
        raise DataError(f"cannot decode {source}: {exc}") from exc


def encode_png(array: np.ndarray) -> bytes:
    """Encode a uint8 (HxW or HxWx3) or uint16 (HxW) array losslessly as PNG."""
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def validate_label(label: np.ndarray, num_classes: int, size: tuple[int, int], source: str) -> None:
    """A label must match the image size and hold values in [0, num_classes) or 255."""
    if label.shape[:2] != size:
        raise DataError(
            f"label {source} has size {label.shape[1]}x{label.shape[0]}, "
            f"image is {size[1]}x{size[0]}"
        )
    bad = (label >= num_classes) & (label != VOID)
    if bad.any():
        values = sorted({int(v) for v in np.unique(label[bad])})[:5]
        raise DataError(
            f"label {source} has values {values} outside [0, {num_classes}) and void {VOID}"
        )


def example_record(
    example_id: str,
    image_bytes: bytes,
    image: np.ndarray,
    label: np.ndarray,
    num_classes: int,
    label_source: str,
    **extras: Any,
) -> dict[str, Any]:
    """Validate ``label`` against the image, then build the prepared row (label as PNG)."""
    validate_label(label, num_classes, image.shape[:2], label_source)
    return {
        "id": example_id,
        "image": image_bytes,
        "label": encode_png(label),
        "height": image.shape[0],
        "width": image.shape[1],
        **extras,
    }


def require_example_files(example_id: str, *paths: Path) -> None:
    """Fail before any decoding when one of an example's files is missing (names id and path)."""
    for path in paths:
        if not path.is_file():
            raise DataError(f"missing file for id {example_id!r}: {path}")


def check_example_files(dataset: Any, root: Path, split: str, ids: list[str]) -> None:
    """Every listed example's files exist (the parser's ``example_files``), checked up front:
    one DataError with the count and the first few missing, before any decoding or Ray work."""
    files = getattr(dataset, "example_files", None)
    if files is None:
        return
    missing: dict[str, list[Path]] = {}
    for example_id in ids:
        absent = [p for p in files(root, example_id) if not p.is_file()]
        if absent:
            missing[example_id] = absent
    if missing:
        first = "; ".join(f"{i}: {', '.join(map(str, ps))}" for i, ps in list(missing.items())[:3])
        raise DataError(
            f"{dataset.name} split {split!r}: {len(missing)} of {len(ids)} listed example(s) "
            f"have missing files (first: {first}); the split list and the files must match"
        )


def read_example_file(path: Path, example_id: str) -> bytes:
    """The bytes of one example's file; a missing file names the id and the path."""
    require_example_files(example_id, path)
    return path.read_bytes()


def png_label_example(
    example_id: str, image_path: Path, label_path: Path, num_classes: int
) -> dict[str, Any]:
    """The prepared row of a JPEG + PNG-label example (VOC's layout), the PNG kept as it is.

    The label is decoded (palette and grey PNGs alike) only to be validated against the image.
    """
    image_bytes = read_example_file(image_path, example_id)
    label_bytes = read_example_file(label_path, example_id)
    image = decode_image(image_bytes, str(image_path))
    label = decode_label(label_bytes, str(label_path))
    validate_label(label, num_classes, image.shape[:2], str(label_path))
    return {
        "id": example_id,
        "image": image_bytes,
        "label": label_bytes,
        "height": image.shape[0],
        "width": image.shape[1],
    }
