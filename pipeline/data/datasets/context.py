"""PASCAL-Context (Mottaghi et al. 2014): whole-scene labels of PASCAL VOC 2010, 59 or 33 classes.

The release labels every pixel with one of 459 classes (``trainval/<id>.mat``, ``LabelMap``,
names in ``labels.txt``). The tasks keep a subset, matched by *name* as FCN's
``pascalcontext_layers.py`` does: names lose their spaces, and three task names are renamed to
the full-list names first (diningtable -> table, bedcloth -> bedclothes, clothes -> cloth).

* 59-class task (FCN): classes 1..59 in ``59_labels.txt`` order, everything else 0 =
  background, so 60 outputs and no void.
* 33-class task (``33_labels.txt``: the 20 VOC classes + 13 scene classes): classes 0..32,
  everything else void 255 (the 33-class labelling has no background class).

Images and splits come from VOC2010: ``JPEGImages`` and ``ImageSets/Main/{train,val}.txt``
(4,998 / 5,105), as in FCN (train on train, evaluate on val).
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.data.datasets.base import (
    VOID,
    decode_image,
    example_record,
    read_split_file,
    require_example_files,
)
from pipeline.errors import DataError

CONTEXT_59 = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat",
    "chair", "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant",
    "sheep", "sofa", "train", "tvmonitor", "bag", "bed", "bench", "book", "building",
    "cabinet", "ceiling", "clothes", "computer", "cup", "door", "fence", "floor", "flower",
    "food", "grass", "ground", "keyboard", "light", "mountain", "mouse", "curtain", "platform",
    "sign", "plate", "road", "rock", "shelves", "sidewalk", "sky", "snow", "bedcloth", "track",
    "tree", "truck", "wall", "water", "window", "wood",
)  # fmt: skip
CONTEXT_33 = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
    "train", "tvmonitor", "sky", "grass", "ground", "road", "building", "tree", "water",
    "mountain", "wall", "floor", "track", "keyboard", "ceiling",
)  # fmt: skip
# FCN: task names -> names in the full 459-class list
FCN_RENAMES = {"diningtable": "table", "bedcloth": "bedclothes", "clothes": "cloth"}
NUM_FULL_CLASSES = 459
SPLITS = ("train", "val", "trainval")

_FULL_LIST = ("labels.txt", "classes-459.txt")
_TASK_LISTS = {59: ("59_labels.txt", "classes-59.txt"), 33: ("33_labels.txt", "classes-33.txt")}


def read_name_list(path: Path) -> list[tuple[int, str]]:
    """``index: name`` lines (PASCAL-Context's label lists) as (index, name) pairs."""
    if not path.is_file():
        raise DataError(f"PASCAL-Context class list not found: {path}")
    pairs = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        index, sep, name = line.partition(":")
        if not sep or not index.strip().isdigit():
            raise DataError(f"{path} line {number} is not 'index: name': {line!r}")
        pairs.append((int(index), name.strip()))
    return pairs


def _key(name: str) -> str:
    """FCN compares names with spaces removed, after its three renames."""
    name = FCN_RENAMES.get(name, name)
    return name.replace(" ", "")


def task_lut(full_names: list[str], task_names: list[str], num_classes: int) -> np.ndarray:
    """Lookup table full label (0..459) -> task label.

    59 task: ``task_names`` without background map to 1..59, the rest to 0 (background).
    33 task: ``task_names`` map to 0..32, the rest to 255 (void).
    """
    keys = [_key(n) for n in full_names]
    names = [n for n in task_names if n != "background"]
    if num_classes == 59:
        lut, first = np.zeros(len(full_names) + 1, np.uint8), 1
    else:
        lut, first = np.full(len(full_names) + 1, VOID, np.uint8), 0
    for offset, name in enumerate(names):
        key = _key(name)
        if key not in keys:
            raise DataError(f"PASCAL-Context task class {name!r} is not in the 459-class list")
        lut[keys.index(key) + 1] = first + offset
    return lut


@functools.lru_cache(maxsize=8)
def _lut_from_files(full_path: str, task_path: str | None, num_classes: int) -> np.ndarray:
    full = read_name_list(Path(full_path))
    if [i for i, _ in full] != list(range(1, len(full) + 1)):
        raise DataError(f"{full_path} is not numbered 1..{len(full)}")
    if task_path is None:
        task = list(CONTEXT_59 if num_classes == 59 else CONTEXT_33)
    else:
        task = [name for _, name in sorted(read_name_list(Path(task_path)))]
    expected = num_classes + (1 if "background" in task else 0)
    if len(task) != expected:
        raise DataError(f"{task_path} lists {len(task)} classes, expected {num_classes}")
    return task_lut([name for _, name in full], task, num_classes)


class PascalContext:
    """PASCAL-Context with ``num_classes_task`` 59 (60 outputs incl. background) or 33.

    ``root`` holds ``trainval/`` and ``labels.txt`` (+ ``59_labels.txt``/``33_labels.txt``;
    the shared fixtures' ``classes-459.txt``/``classes-59.txt`` also work). ``voc_root`` is
    the VOC2010 folder; by default ``VOC2010`` or ``VOCdevkit/VOC2010`` in ``root`` or beside it.
    """

    splits = SPLITS

    def __init__(self, classes: int = 59, voc_root: str | Path | None = None) -> None:
        if classes not in (59, 33):
            raise ValueError(f"PASCAL-Context task has 59 or 33 classes, not {classes}")
        self.task = classes
        self.name = f"context{classes}"
        self.classes = CONTEXT_59 if classes == 59 else CONTEXT_33
        self.num_classes = len(self.classes)
        self.voc_root = Path(voc_root) if voc_root is not None else None

    def voc_dir(self, root: Path) -> Path:
        root = Path(root)
        if self.voc_root is not None:
            candidates = [self.voc_root]
        else:
            candidates = [
                b / s for b in (root, root.parent) for s in ("VOC2010", "VOCdevkit/VOC2010")
            ]
        for candidate in candidates:
            if (candidate / "JPEGImages").is_dir():
                return candidate
        raise DataError(f"VOC2010 (JPEGImages) not found: tried {', '.join(map(str, candidates))}")

    def label_lut(self, root: Path) -> np.ndarray:
        root = Path(root)
        full = next((root / n for n in _FULL_LIST if (root / n).is_file()), None)
        if full is None:
            raise DataError(f"PASCAL-Context 459-class list not found: {root / _FULL_LIST[0]}")
        task = next((root / n for n in _TASK_LISTS[self.task] if (root / n).is_file()), None)
        return _lut_from_files(str(full), str(task) if task else None, self.task)

    def list_ids(self, root: Path, split: str) -> list[str]:
        if split not in SPLITS:
            raise DataError(f"unknown PASCAL-Context split {split!r} (one of {SPLITS})")
        main = self.voc_dir(root) / "ImageSets" / "Main"
        if split == "trainval":
            return read_split_file(main / "train.txt") + read_split_file(main / "val.txt")
        return read_split_file(main / f"{split}.txt")

    def load_example(self, root: Path, example_id: str) -> dict[str, Any]:
        import scipy.io

        root = Path(root)
        image_path = self.voc_dir(root) / "JPEGImages" / f"{example_id}.jpg"
        label_path = root / "trainval" / f"{example_id}.mat"
        require_example_files(example_id, image_path, label_path)
        image_bytes = image_path.read_bytes()
        image = decode_image(image_bytes, str(image_path))
        try:
            full = np.asarray(scipy.io.loadmat(str(label_path))["LabelMap"])
        except Exception as exc:
            raise DataError(f"cannot read LabelMap from {label_path}: {exc}") from exc
        if full.ndim != 2:
            raise DataError(f"LabelMap in {label_path} has shape {full.shape}, expected HxW")
        lut = self.label_lut(root)
        if full.dtype.kind not in "iub" and not np.array_equal(full, np.round(full)):
            raise DataError(f"LabelMap in {label_path} has non-integer values (NaN or fractions)")
        if full.size and (full.min() < 0 or full.max() >= len(lut)):
            raise DataError(
                f"LabelMap in {label_path} has values in [{full.min()}, {full.max()}], "
                f"expected 0 (unlabelled) or 1..{len(lut) - 1} (the classes of labels.txt)"
            )
        label = lut[full.astype(np.int64)]
        return example_record(
            example_id,
            image_bytes,
            image,
            label,
            self.num_classes,
            str(label_path),
        )
