"""PASCAL VOC2012 segmentation layout (also what the built-in generator writes).

Labels are palette PNGs: class indices are read directly (never the colours); 255 is void.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipeline.data.base import decode_image, decode_label, read_split_file, validate_label
from pipeline.data.builtin import VOC_CLASSES
from pipeline.errors import DataError


class VOC:
    """``root`` is the ``VOC2012`` folder (``VOCdevkit/VOC2012``)."""

    name = "voc"
    classes = VOC_CLASSES
    num_classes = len(VOC_CLASSES)
    label_dir = "SegmentationClass"

    def list_ids(self, root: Path, split: str) -> list[str]:
        return read_split_file(Path(root) / "ImageSets" / "Segmentation" / f"{split}.txt")

    def load_example(self, root: Path, example_id: str) -> dict[str, Any]:
        root = Path(root)
        image_path = root / "JPEGImages" / f"{example_id}.jpg"
        label_path = root / self.label_dir / f"{example_id}.png"
        for path in (image_path, label_path):
            if not path.is_file():
                raise DataError(f"missing file for id {example_id!r}: {path}")
        image_bytes, label_bytes = image_path.read_bytes(), label_path.read_bytes()
        image = decode_image(image_bytes, str(image_path))
        label = decode_label(label_bytes, str(label_path))
        validate_label(label, self.num_classes, image.shape[:2], str(label_path))
        return {
            "id": example_id,
            "image": image_bytes,
            "label": label_bytes,
            "height": image.shape[0],
            "width": image.shape[1],
        }
