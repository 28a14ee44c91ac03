"""SBD (Hariharan et al. 2011) and the DeepLab ``train_aug`` set built from it.

Two training sets of the papers come from SBD, and they are easy to confuse:

* FCN trains on SBD ``train.txt`` (8,498 images), read straight from ``cls/<id>.mat`` as FCN's
  ``SBDDSegDataLayer`` does (``loadmat(f)["GTcls"][0]["Segmentation"][0]``: uint8 0..20, no
  void), and validates on ``seg11valid``: the 736 VOC2011 val images not in SBD train
  (:func:`build_seg11valid`; FCN ships the list; the images and labels are VOC's).
  :class:`VOCFCN` (dataset ``voc_fcn``) reads both splits, each as FCN's data layers do.
* DeepLab trains on ``train_aug`` (10,582 images) = SBD train + SBD val + VOC2012 train - VOC2012
  val, with labels in ``SegmentationClassAug`` PNGs: the VOC label (void borders) where VOC has
  one, the SBD label otherwise. :func:`build_train_aug` and :func:`write_segmentation_class_aug`
  rebuild both from the SBD and VOC releases, so nothing unofficial has to be downloaded;
  :class:`VOCAug` reads them.
"""

from __future__ import annotations

import functools
import io
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from pipeline.data.builtin.voc import VOC_CLASSES, voc_palette
from pipeline.data.datasets.base import (
    decode_image,
    decode_label,
    example_record,
    png_label_example,
    read_split_file,
    require_example_files,
    validate_label,
)
from pipeline.errors import DataError

SBD_SPLITS = ("train", "val", "trainval")


def sbd_dataset_dir(root: Path) -> Path:
    """The folder holding ``img/``, ``cls/``, ``train.txt`` (``benchmark_RELEASE/dataset``)."""
    root = Path(root)
    for candidate in (root, root / "dataset", root / "benchmark_RELEASE" / "dataset"):
        if (candidate / "cls").is_dir():
            return candidate
    raise DataError(f"no SBD layout (cls/ folder) in {root} or its benchmark_RELEASE/dataset")


def voc_dir(root: Path, year: str = "2012") -> Path:
    """The ``VOC<year>`` folder, given it or a folder holding ``VOCdevkit/VOC<year>``."""
    root = Path(root)
    for candidate in (root, root / f"VOC{year}", root / "VOCdevkit" / f"VOC{year}"):
        if (candidate / "ImageSets").is_dir() or (candidate / "JPEGImages").is_dir():
            return candidate
    raise DataError(f"no VOC{year} layout (ImageSets/, JPEGImages/) in {root}")


def read_id_list(path: Path, allow_empty: bool = False) -> list[str]:
    """Ids of a split list; DeepLab-style lines (``/JPEGImages/x.jpg /Seg.../x.png``) give ``x``.

    ``allow_empty`` is for lists that may legitimately be empty when combining lists (a slice of
    SBD with every image in val); a split to prepare must never be empty.
    """
    if allow_empty and path.is_file() and not path.read_text().strip():
        return []
    return [Path(token).stem if "/" in token else token for token in read_split_file(path)]


def load_sbd_label(path: Path) -> np.ndarray:
    """HxW uint8 class map of an SBD ``cls/*.mat``, exactly as FCN's SBDDSegDataLayer reads it."""
    import scipy.io

    if not path.is_file():
        raise DataError(f"missing SBD label file: {path}")
    try:
        mat = scipy.io.loadmat(str(path))
        label = mat["GTcls"][0]["Segmentation"][0]
    except Exception as exc:  # scipy raises ValueError/KeyError/IndexError/TypeError
        raise DataError(f"cannot read GTcls.Segmentation from {path}: {exc}") from exc
    label = np.asarray(label)
    if label.ndim != 2:
        raise DataError(f"GTcls.Segmentation in {path} has shape {label.shape}, expected HxW")
    return label.astype(np.uint8)


class SBD:
    """FCN's SBD reader: ``img/<id>.jpg`` + ``cls/<id>.mat``; splits train (8,498) / val (2,857).

    ``root`` is ``benchmark_RELEASE/dataset`` or a folder above it.
    """

    name = "sbd"
    classes = VOC_CLASSES
    num_classes = len(VOC_CLASSES)
    splits = SBD_SPLITS

    def list_ids(self, root: Path, split: str) -> list[str]:
        base = sbd_dataset_dir(root)
        if split == "trainval":
            ids = read_id_list(base / "train.txt", allow_empty=True)
            ids += read_id_list(base / "val.txt", allow_empty=True)
            if not ids:
                raise DataError(f"SBD train.txt and val.txt in {base} are both empty")
            return ids
        if split not in SBD_SPLITS:
            raise DataError(f"unknown SBD split {split!r} (one of {SBD_SPLITS}) for {base}")
        return read_id_list(base / f"{split}.txt")

    def example_files(self, root: Path, example_id: str) -> list[Path]:
        """The image and ``cls`` label of one example (checked up front by the download stage)."""
        base = sbd_dataset_dir(root)
        return [base / "img" / f"{example_id}.jpg", base / "cls" / f"{example_id}.mat"]

    def load_example(self, root: Path, example_id: str) -> dict[str, Any]:
        image_path, label_path = self.example_files(root, example_id)
        require_example_files(example_id, image_path, label_path)
        image_bytes = image_path.read_bytes()
        image = decode_image(image_bytes, str(image_path))
        label = load_sbd_label(label_path)
        return example_record(
            example_id,
            image_bytes,
            image,
            label,
            self.num_classes,
            str(label_path),
        )


class VOCAug:
    """DeepLab's augmented VOC: ``JPEGImages`` + ``SegmentationClassAug`` (palette or grey PNG).

    Splits come from ``ImageSets/Segmentation/<split>.txt`` (``train_aug`` 10,582, ``val``
    1,449), plain ids or DeepLab's two-path lines. When ``train_aug.txt`` is absent and
    ``sbd_root`` is given, the list is built from the SBD and VOC lists (:func:`build_train_aug`).
    """

    name = "voc_aug"
    classes = VOC_CLASSES
    num_classes = len(VOC_CLASSES)
    label_dir = "SegmentationClassAug"

    def __init__(self, sbd_root: str | Path | None = None) -> None:
        self.sbd_root = Path(sbd_root) if sbd_root is not None else None

    def list_ids(self, root: Path, split: str) -> list[str]:
        voc = voc_dir(root)
        path = voc / "ImageSets" / "Segmentation" / f"{split}.txt"
        if split == "train_aug" and not path.is_file() and self.sbd_root is not None:
            return build_train_aug_from(self.sbd_root, voc)
        return read_id_list(path)

    def example_files(self, root: Path, example_id: str) -> list[Path]:
        """The image and label files of one example (checked up front by the download stage)."""
        voc = voc_dir(root)
        return [
            voc / "JPEGImages" / f"{example_id}.jpg",
            voc / self.label_dir / f"{example_id}.png",
        ]

    def load_example(self, root: Path, example_id: str) -> dict[str, Any]:
        return png_label_example(
            example_id, *self.example_files(root, example_id), self.num_classes
        )


def build_train_aug(
    sbd_train: Iterable[str],
    sbd_val: Iterable[str],
    voc_train: Iterable[str],
    voc_val: Iterable[str],
) -> list[str]:
    """DeepLab's ``train_aug``: (SBD train | SBD val | VOC train) - VOC val, sorted."""
    return sorted((set(sbd_train) | set(sbd_val) | set(voc_train)) - set(voc_val))


def build_train_aug_from(sbd_root: Path, voc_root: Path) -> list[str]:
    """:func:`build_train_aug` from the lists on disk (SBD ``train/val.txt``, VOC ``train/val``)."""
    sbd = sbd_dataset_dir(sbd_root)
    seg = voc_dir(voc_root) / "ImageSets" / "Segmentation"
    return build_train_aug(
        read_id_list(sbd / "train.txt", allow_empty=True),
        read_id_list(sbd / "val.txt", allow_empty=True),
        read_id_list(seg / "train.txt"),
        read_id_list(seg / "val.txt"),
    )


def build_seg11valid(voc2011_val: Iterable[str], sbd_train: Iterable[str]) -> list[str]:
    """FCN's ``seg11valid``: VOC2011 seg val minus SBD train (736 of 1,111), in list order."""
    exclude = set(sbd_train)
    return [i for i in voc2011_val if i not in exclude]


FCN_SPLITS = ("train", "seg11valid")
SEG11VALID = Path("ImageSets") / "Segmentation" / "seg11valid.txt"
# where VOCFCN looks for SBD beside the VOC folder: the SBD archive's own layout, the shared
# fixtures' SBD/ folder, and FCN's data/sbdd/dataset
_SBD_BESIDE = ("benchmark_RELEASE/dataset", "SBD/benchmark_RELEASE/dataset", "sbdd/dataset")


@functools.lru_cache(maxsize=16)
def _cached_ids(path: str, inode: int, mtime_ns: int, size: int) -> frozenset[str]:
    return frozenset(read_id_list(Path(path), allow_empty=True))


def _id_set(path: Path) -> frozenset[str]:
    """The ids of a split list, read once per process (load_example runs once per id); keyed by
    inode, mtime and size, so a list rewritten in place or replaced atomically is read again."""
    if not path.is_file():
        raise DataError(f"split file not found: {path}")
    stat = path.stat()
    return _cached_ids(str(path), stat.st_ino, stat.st_mtime_ns, stat.st_size)


class VOCFCN:
    """FCN's PASCAL protocol: train on SBD ``train`` (8,498), validate on ``seg11valid`` (736).

    Each split is read as FCN's own data layers read it: an id of SBD ``train.txt`` gives
    SBD's ``img/<id>.jpg`` and ``cls/<id>.mat`` (``SBDDSegDataLayer``: no void), any other id
    VOC's ``JPEGImages/<id>.jpg`` and ``SegmentationClass/<id>.png`` (``VOCSegDataLayer``).

    ``root`` is a VOC folder holding every VOC2011 segmentation image (VOC2011 or VOC2012), with
    FCN's list at ``ImageSets/Segmentation/seg11valid.txt``. ``sbd_root`` is SBD's
    ``benchmark_RELEASE/dataset`` or a folder above it; by default SBD is looked for beside the
    VOC folder or beside its ``VOCdevkit`` (links followed): ``benchmark_RELEASE/dataset``,
    ``SBD/benchmark_RELEASE/dataset`` or ``sbdd/dataset``. Listing ``seg11valid`` checks that
    no listed id is in SBD train and that VOC has every listed image and label (DataErrors
    naming the files).
    """

    name = "voc_fcn"
    classes = VOC_CLASSES
    num_classes = len(VOC_CLASSES)
    splits = FCN_SPLITS

    def __init__(self, sbd_root: str | Path | None = None) -> None:
        self.sbd_root = Path(sbd_root) if sbd_root is not None else None

    def sbd_dir(self, root: Path) -> Path:
        """SBD's ``dataset`` folder for the VOC folder ``root`` (``sbd_root`` or beside it)."""
        if self.sbd_root is not None:
            return sbd_dataset_dir(self.sbd_root)
        voc = voc_dir(root)
        bases = [voc.parent, voc.parent.parent, voc.resolve().parent, voc.resolve().parent.parent]
        bases = list(dict.fromkeys(bases))
        for base in bases:
            for sub in _SBD_BESIDE:
                if (base / sub / "cls").is_dir():
                    return base / sub
        raise DataError(
            f"voc_fcn: no SBD beside {voc} (looked for {', '.join(_SBD_BESIDE)} in "
            f"{', '.join(str(b) for b in bases)}): set the sbd_root option "
            f"(data.voc_fcn.options.sbd_root)"
        )

    def list_ids(self, root: Path, split: str) -> list[str]:
        if split not in FCN_SPLITS:
            raise DataError(f"unknown voc_fcn split {split!r} (one of {FCN_SPLITS})")
        sbd_train = self.sbd_dir(root) / "train.txt"
        if split == "train":
            return read_id_list(sbd_train)
        voc = voc_dir(root)
        path = voc / SEG11VALID
        if not path.is_file():
            raise DataError(
                f"FCN's seg11valid list not found: {path}; it is FCN's data/pascal/seg11valid.txt "
                f"(sources.yaml entry fcn_seg11valid: `densepipe download fcn_seg11valid`)"
            )
        ids = read_id_list(path)
        if len(set(ids)) != len(ids):
            raise DataError(f"{path} lists some ids more than once")
        train_ids = _id_set(sbd_train)
        if len(build_seg11valid(ids, train_ids)) != len(ids):
            shared = [i for i in ids if i in train_ids]
            raise DataError(
                f"{path}: {len(shared)} listed id(s) are in SBD train {sbd_train} (e.g. "
                f"{shared[:3]}): FCN validates only on images it never trains on"
            )
        missing = [
            i
            for i in ids
            if not (voc / "JPEGImages" / f"{i}.jpg").is_file()
            or not (voc / "SegmentationClass" / f"{i}.png").is_file()
        ]
        if missing:
            raise DataError(
                f"{path}: {len(missing)} of {len(ids)} listed id(s) have no VOC image or label "
                f"in {voc} (JPEGImages/, SegmentationClass/), e.g. {missing[:3]}; the VOC2011 "
                f"or VOC2012 release has them all"
            )
        return ids

    def example_files(self, root: Path, example_id: str) -> list[Path]:
        """SBD's image + ``cls`` label for a train id, VOC's JPEG + PNG for a seg11valid id."""
        sbd = self.sbd_dir(root)
        if example_id in _id_set(sbd / "train.txt"):
            return SBD().example_files(sbd, example_id)
        voc = voc_dir(root)
        return [
            voc / "JPEGImages" / f"{example_id}.jpg",
            voc / "SegmentationClass" / f"{example_id}.png",
        ]

    def load_example(self, root: Path, example_id: str) -> dict[str, Any]:
        sbd = self.sbd_dir(root)
        if example_id in _id_set(sbd / "train.txt"):
            return SBD().load_example(sbd, example_id)
        return png_label_example(
            example_id, *self.example_files(root, example_id), self.num_classes
        )


def write_segmentation_class_aug(
    sbd_root: Path, voc_root: Path, out_dir: Path, ids: Iterable[str]
) -> int:
    """Write ``SegmentationClassAug/<id>.png`` (VOC palette) for ``ids``; return the count.

    As in DeepLab's release: the VOC ``SegmentationClass`` label where it exists (it keeps the
    void borders), else the SBD ``cls`` label. Existing files are left alone (resumable).
    """
    sbd = sbd_dataset_dir(sbd_root)
    voc_labels = voc_dir(voc_root) / "SegmentationClass"
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    palette = voc_palette()
    count = 0
    for example_id in ids:
        target = out_dir / f"{example_id}.png"
        count += 1
        if target.is_file():
            continue
        source = voc_labels / f"{example_id}.png"
        if source.is_file():
            label = decode_label(source.read_bytes(), str(source))
        else:
            source = sbd / "cls" / f"{example_id}.mat"
            label = load_sbd_label(source)
        validate_label(label, len(VOC_CLASSES), label.shape, str(source))
        png = Image.frombytes("P", (label.shape[1], label.shape[0]), np.ascontiguousarray(label))
        png.putpalette(palette)
        buf = io.BytesIO()
        png.save(buf, format="PNG")
        tmp = target.with_suffix(".png.tmp")
        tmp.write_bytes(buf.getvalue())
        tmp.replace(target)
    return count
