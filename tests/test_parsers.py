"""SBD / VOC-augmented parsers, the dataset registry, and corrupt-input errors.

Real-file tests use the shared fixtures (skipped when absent); the corrupt-input tests build
their own tiny layouts so they always run.
"""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.data.base import decode_image, decode_label
from pipeline.data.registry import dataset_names, get_dataset
from pipeline.data.sbd import (
    SBD,
    VOCAug,
    build_seg11valid,
    build_train_aug,
    build_train_aug_from,
    load_sbd_label,
    read_id_list,
    write_segmentation_class_aug,
)
from pipeline.errors import DataError, ParamsError

SBD_IDS = ("2008_000051", "2008_000195")


def _jpeg(h: int, w: int, seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(buf, format="JPEG")
    return buf.getvalue()


def _png(array: np.ndarray, mode: str = "L") -> bytes:
    im = Image.fromarray(array.astype(np.uint8))
    if mode == "P":
        im = Image.frombytes("P", im.size, array.astype(np.uint8).tobytes())
        im.putpalette([v for i in range(256) for v in (i, 0, 255 - i)])
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


# -- SBD on the real files ------------------------------------------------------------------
def test_sbd_mat_parse_values_and_record(shared_data: Path) -> None:
    root = shared_data / "SBD"
    ds = SBD()
    assert ds.list_ids(root, "val") == list(SBD_IDS)
    for example_id in SBD_IDS:
        mat = root / "benchmark_RELEASE/dataset/cls" / f"{example_id}.mat"
        label = load_sbd_label(mat)
        assert label.dtype == np.uint8 and label.max() <= 20 and 255 not in label
        record = ds.load_example(root, example_id)
        image = decode_image(record["image"], "x")
        assert (record["height"], record["width"]) == image.shape[:2] == label.shape
        np.testing.assert_array_equal(decode_label(record["label"], "x"), label)
    assert set(np.unique(load_sbd_label(mat))) == {0, 4, 15}


def test_sbd_trainval_and_unknown_split(shared_data: Path) -> None:
    ds = SBD()
    assert ds.list_ids(shared_data / "SBD", "trainval") == list(SBD_IDS)  # train.txt is empty
    with pytest.raises(DataError, match="train.txt"):
        ds.list_ids(shared_data / "SBD", "train")
    with pytest.raises(DataError, match="unknown SBD split"):
        ds.list_ids(shared_data / "SBD", "test")


def test_segmentation_class_aug_rebuilt_equals_release(shared_data: Path, tmp_path) -> None:
    """VOC label where VOC has one (void borders kept), SBD label otherwise: DeepLab's files."""
    ids = [*SBD_IDS, "2007_000129"]
    assert write_segmentation_class_aug(shared_data / "SBD", shared_data / "VOC2012", tmp_path, ids)
    for example_id in ids:
        ours = np.asarray(Image.open(tmp_path / f"{example_id}.png"))
        ref = np.asarray(
            Image.open(shared_data / "VOC2012/SegmentationClassAug" / f"{example_id}.png")
        )
        np.testing.assert_array_equal(ours, ref)
    assert 255 in np.asarray(Image.open(tmp_path / "2007_000129.png"))


# -- split lists --------------------------------------------------------------------------
def test_train_aug_and_seg11valid_lists(shared_data: Path) -> None:
    seg = shared_data / "VOC2012/ImageSets/Segmentation"
    train_aug = VOCAug().list_ids(shared_data / "VOC2012", "train_aug")
    val = read_id_list(seg / "val.txt")
    seg11 = read_id_list(seg / "seg11valid.txt")
    assert len(train_aug) == 10582 == len(set(train_aug))
    assert len(val) == 1449 and not set(train_aug) & set(val)
    assert len(seg11) == 736 and set(seg11) <= set(val)
    assert set(SBD_IDS) <= set(train_aug)  # SBD val images are in train_aug
    assert train_aug == sorted(train_aug)  # the order build_train_aug produces


def test_build_train_aug_counts_like_deeplab() -> None:
    """SBD 8,498 + 2,857 and VOC train 1,464 / val 1,449, overlapping as in the releases.

    SBD covers all but 676 of VOC2012's 2,913 trainval images (11,355 + 676 = 12,031 = train_aug
    + val), so train_aug = 11,355 + (new VOC train) - (SBD images in VOC val) = 10,582.
    """
    sbd_train = [f"s{i}" for i in range(8498)]
    sbd_val = [f"v{i}" for i in range(2857)]
    voc_val = sbd_train[:700] + sbd_val[:300] + [f"x{i}" for i in range(449)]
    voc_train = sbd_train[1000:2000] + sbd_val[500:737] + [f"t{i}" for i in range(227)]
    assert (len(voc_train), len(voc_val)) == (1464, 1449)
    ids = build_train_aug(sbd_train, sbd_val, voc_train, voc_val)
    assert len(ids) == 10582
    assert not set(ids) & set(voc_val) and ids == sorted(ids)
    assert build_seg11valid(["a", "b", "c"], ["b"]) == ["a", "c"]


def test_voc_aug_builds_train_aug_when_list_absent(tmp_path) -> None:
    sbd = tmp_path / "benchmark_RELEASE/dataset"
    (sbd / "cls").mkdir(parents=True)
    (sbd / "train.txt").write_text("a\nb\n")
    (sbd / "val.txt").write_text("c\nv1\n")
    seg = tmp_path / "VOCdevkit/VOC2012/ImageSets/Segmentation"
    seg.mkdir(parents=True)
    (seg / "train.txt").write_text("d\n")
    (seg / "val.txt").write_text("v1\nv2\n")
    assert build_train_aug_from(tmp_path, tmp_path) == ["a", "b", "c", "d"]
    assert VOCAug(sbd_root=tmp_path).list_ids(tmp_path, "train_aug") == ["a", "b", "c", "d"]
    with pytest.raises(DataError, match="train_aug.txt"):
        VOCAug().list_ids(tmp_path, "train_aug")


# -- VOCAug on tiny layouts ------------------------------------------------------------------
@pytest.fixture
def voc_aug_root(tmp_path) -> Path:
    root = tmp_path / "VOC2012"
    for sub in ("JPEGImages", "SegmentationClassAug", "ImageSets/Segmentation"):
        (root / sub).mkdir(parents=True)
    label = np.zeros((12, 16), np.uint8)
    label[3:6, 4:9] = 15
    label[0, :] = 255
    (root / "JPEGImages/grey.jpg").write_bytes(_jpeg(12, 16))
    (root / "SegmentationClassAug/grey.png").write_bytes(_png(label, "L"))
    (root / "JPEGImages/pal.jpg").write_bytes(_jpeg(12, 16, 1))
    (root / "SegmentationClassAug/pal.png").write_bytes(_png(label, "P"))
    (root / "ImageSets/Segmentation/train_aug.txt").write_text(
        "/JPEGImages/grey.jpg /SegmentationClassAug/grey.png\n"
        "/JPEGImages/pal.jpg /SegmentationClassAug/pal.png\n"
    )
    return root


def test_voc_aug_reads_indices_of_grey_and_palette_labels(voc_aug_root: Path) -> None:
    ds = VOCAug()
    assert ds.list_ids(voc_aug_root, "train_aug") == ["grey", "pal"]  # DeepLab list format
    labels = [decode_label(ds.load_example(voc_aug_root, i)["label"], i) for i in ("grey", "pal")]
    np.testing.assert_array_equal(labels[0], labels[1])
    assert set(np.unique(labels[0])) == {0, 15, 255}


def test_voc_aug_real_palette_label(shared_data: Path) -> None:
    record = VOCAug().load_example(shared_data / "VOC2012", "2011_000003")
    label = decode_label(record["label"], "x")
    assert label.shape == (record["height"], record["width"])
    assert set(np.unique(label)) <= set(range(21)) | {255}


# -- corrupt inputs: DataError naming the file ------------------------------------------------
def test_truncated_jpeg_names_file(voc_aug_root: Path) -> None:
    path = voc_aug_root / "JPEGImages/grey.jpg"
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(DataError, match=r"grey\.jpg"):
        VOCAug().load_example(voc_aug_root, "grey")


def test_label_of_wrong_size_names_file(voc_aug_root: Path) -> None:
    (voc_aug_root / "SegmentationClassAug/grey.png").write_bytes(_png(np.zeros((11, 16))))
    with pytest.raises(DataError, match=r"grey\.png.*size"):
        VOCAug().load_example(voc_aug_root, "grey")


def test_label_value_37_in_21_class_set_names_file(voc_aug_root: Path) -> None:
    label = np.zeros((12, 16), np.uint8)
    label[5, 5] = 37
    (voc_aug_root / "SegmentationClassAug/pal.png").write_bytes(_png(label, "P"))
    with pytest.raises(DataError, match=r"pal\.png.*\[37\]"):
        VOCAug().load_example(voc_aug_root, "pal")


def test_missing_split_id_names_file(voc_aug_root: Path) -> None:
    with pytest.raises(DataError, match=r"JPEGImages/absent\.jpg"):
        VOCAug().load_example(voc_aug_root, "absent")


def test_sbd_corrupt_mat_and_truncated_jpeg(shared_data: Path, tmp_path) -> None:
    base = tmp_path / "benchmark_RELEASE/dataset"
    (base / "img").mkdir(parents=True)
    (base / "cls").mkdir()
    src = shared_data / "SBD/benchmark_RELEASE/dataset"
    jpg = (src / "img/2008_000051.jpg").read_bytes()
    (base / "img/a.jpg").write_bytes(jpg[: len(jpg) // 3])
    (base / "cls/a.mat").write_bytes((src / "cls/2008_000051.mat").read_bytes())
    (base / "img/b.jpg").write_bytes(jpg)
    (base / "cls/b.mat").write_bytes(b"MATLAB 5.0 garbage")
    with pytest.raises(DataError, match=r"img/a\.jpg"):
        SBD().load_example(tmp_path, "a")
    with pytest.raises(DataError, match=r"cls/b\.mat"):
        SBD().load_example(tmp_path, "b")
    with pytest.raises(DataError, match=r"img/c\.jpg"):
        SBD().load_example(tmp_path, "c")
    # the right label for another image: size mismatch names the .mat
    (base / "img/d.jpg").write_bytes(_jpeg(20, 30))
    (base / "cls/d.mat").write_bytes((src / "cls/2008_000051.mat").read_bytes())
    with pytest.raises(DataError, match=r"cls/d\.mat.*size"):
        SBD().load_example(tmp_path, "d")


# -- registry ---------------------------------------------------------------------------------
def test_registry_builds_every_dataset_with_protocol() -> None:
    expected = {
        "voc": 21, "voc_aug": 21, "sbd": 21, "nyud": 40, "siftflow": 33, "siftflow_geo": 3,
        "bsds": 2, "context": 60, "context59": 60, "context33": 33,
    }  # fmt: skip
    assert set(dataset_names()) == set(expected)
    for name, num_classes in expected.items():
        ds = get_dataset(name)
        assert ds.num_classes == num_classes, name
        assert isinstance(ds.name, str) and callable(ds.list_ids) and callable(ds.load_example)
    assert get_dataset("bsds", min_annotators=1).min_annotators == 1
    assert get_dataset("context", classes=33).num_classes == 33


def test_registry_errors_name_the_problem() -> None:
    with pytest.raises(ParamsError, match="'nope'"):
        get_dataset("nope")
    with pytest.raises(ParamsError, match="bsds"):
        get_dataset("bsds", colour="red")
    with pytest.raises(ParamsError, match="task"):
        get_dataset("siftflow_geo", task="semantic")


def test_registry_imports_dataset_modules_lazily() -> None:
    code = (
        "import sys; import pipeline.data.registry as r; "
        "print(any(m in sys.modules for m in ('h5py', 'pipeline.data.nyud', 'pipeline.data.voc')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
