"""PASCAL VOC2012 segmentation layout (also what the built-in generator writes).

Labels are palette PNGs: class indices are read directly (never the colours); 255 is void.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipeline.data.builtin.voc import VOC_CLASSES
from pipeline.data.datasets.base import png_label_example, read_split_file


class VOC:
    """``root`` is the ``VOC2012`` folder (``VOCdevkit/VOC2012``)."""

    name = "voc"
    classes = VOC_CLASSES
    num_classes = len(VOC_CLASSES)
    label_dir = "SegmentationClass"

    def list_ids(self, root: Path, split: str) -> list[str]:
        return read_split_file(Path(root) / "ImageSets" / "Segmentation" / f"{split}.txt")

    def example_files(self, root: Path, example_id: str) -> list[Path]:
        """The image and label files of one example (checked up front by the download stage)."""
        root = Path(root)
        return [
            root / "JPEGImages" / f"{example_id}.jpg",
            root / self.label_dir / f"{example_id}.png",
        ]

    def load_example(self, root: Path, example_id: str) -> dict[str, Any]:
        return png_label_example(
            example_id, *self.example_files(root, example_id), self.num_classes
        )
