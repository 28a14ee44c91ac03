"""SBD / VOC-augmented / FCN-protocol parsers, the dataset registry, and corrupt-input errors.

Real-file tests use the shared fixtures (skipped when absent); the corrupt-input tests build
their own tiny layouts so they always run.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.data.datasets.base import decode_image, decode_label
from pipeline.data.datasets.registry import dataset_names, get_dataset
from pipeline.data.datasets.sbd import (
    SBD,
    VOCFCN,
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


# -- VOCFCN (FCN's protocol) on tiny layouts -------------------------------------------------
def _sbd_mat(path: Path, label: np.ndarray) -> None:
    import scipy.io

    scipy.io.savemat(path, {"GTcls": {"Segmentation": label.astype(np.uint8)}})


@pytest.fixture
def voc_fcn_root(tmp_path) -> Path:
    """VOC2012 (two seg11valid ids) with SBD beside it (two train ids), as in FCN's data/."""
    voc = tmp_path / "VOC2012"
    for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (voc / sub).mkdir(parents=True)
    sbd = tmp_path / "benchmark_RELEASE/dataset"
    (sbd / "img").mkdir(parents=True)
    (sbd / "cls").mkdir()
    voc_label = np.zeros((12, 16), np.uint8)
    voc_label[3:6, 4:9] = 15
    voc_label[2, 4:9] = 255
    for seed, i in enumerate(("v1", "v2")):
        (voc / f"JPEGImages/{i}.jpg").write_bytes(_jpeg(12, 16, seed))
        (voc / f"SegmentationClass/{i}.png").write_bytes(_png(voc_label, "P"))
    sbd_label = np.zeros((10, 14), np.uint8)
    sbd_label[2:7, 3:8] = 3
    for seed, i in enumerate(("s1", "s2")):
        (sbd / f"img/{i}.jpg").write_bytes(_jpeg(10, 14, 10 + seed))
        _sbd_mat(sbd / f"cls/{i}.mat", sbd_label)
    # s1 is in VOC too, with another label: as in FCN, an SBD train id reads SBD's .mat
    (voc / "JPEGImages/s1.jpg").write_bytes(_jpeg(10, 14, 10))
    (voc / "SegmentationClass/s1.png").write_bytes(_png(np.full((10, 14), 7), "P"))
    (sbd / "train.txt").write_text("s1\ns2\n")
    (voc / "ImageSets/Segmentation/seg11valid.txt").write_text("v1\nv2\n")
    return voc


def test_voc_fcn_reads_sbd_train_from_mat_and_seg11valid_from_voc(voc_fcn_root: Path) -> None:
    ds = get_dataset("voc_fcn")
    assert isinstance(ds, VOCFCN) and ds.num_classes == 21
    assert ds.sbd_dir(voc_fcn_root) == voc_fcn_root.parent / "benchmark_RELEASE/dataset"
    assert ds.list_ids(voc_fcn_root, "train") == ["s1", "s2"]
    assert ds.list_ids(voc_fcn_root, "seg11valid") == ["v1", "v2"]
    for example_id in ("s1", "s2"):
        record = ds.load_example(voc_fcn_root, example_id)
        label = decode_label(record["label"], example_id)
        assert (record["height"], record["width"]) == label.shape == (10, 14)
        assert set(np.unique(label)) == {0, 3}  # the .mat, not VOC's s1.png (all 7); no void
    record = ds.load_example(voc_fcn_root, "v1")
    src = voc_fcn_root / "SegmentationClass/v1.png"
    assert record["label"] == src.read_bytes()  # VOC's palette PNG as is
    assert set(np.unique(decode_label(record["label"], "v1"))) == {0, 15, 255}
    # sbd_root given explicitly: the dataset folder or a folder above it
    explicit = VOCFCN(sbd_root=voc_fcn_root.parent)
    assert explicit.list_ids(voc_fcn_root, "train") == ["s1", "s2"]


def test_voc_fcn_rereads_a_replaced_sbd_train_list(voc_fcn_root: Path) -> None:
    """The per-process id cache must not hide a list replaced on disk (atomically, as this
    project writes files), even one of the same size and modification time."""
    train = voc_fcn_root.parent / "benchmark_RELEASE/dataset/train.txt"
    ds = VOCFCN()
    assert decode_label(ds.load_example(voc_fcn_root, "s1")["label"], "s1").max() == 3
    stat = train.stat()
    new = train.with_name("train.txt.new")
    new.write_text("s2\nsX\n")  # same size as "s1\ns2\n"
    os.utime(new, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    os.replace(new, train)
    assert decode_label(ds.load_example(voc_fcn_root, "s1")["label"], "s1").max() == 7  # VOC's


def test_voc_fcn_errors_name_the_file(voc_fcn_root: Path, tmp_path) -> None:
    ds = VOCFCN()
    seg11 = voc_fcn_root / "ImageSets/Segmentation/seg11valid.txt"
    with pytest.raises(DataError, match="unknown voc_fcn split 'val'"):
        ds.list_ids(voc_fcn_root, "val")
    seg11.write_text("v1\ns2\n")  # an id FCN trains on
    with pytest.raises(DataError, match=r"seg11valid\.txt: 1 listed id.*SBD train.*'s2'"):
        ds.list_ids(voc_fcn_root, "seg11valid")
    seg11.write_text("v1\nv1\n")
    with pytest.raises(DataError, match=r"seg11valid\.txt lists some ids more than once"):
        ds.list_ids(voc_fcn_root, "seg11valid")
    (voc_fcn_root / "SegmentationClass/v2.png").unlink()
    seg11.write_text("v1\nv2\nv3\n")
    with pytest.raises(DataError, match=r"seg11valid\.txt: 2 of 3 listed id.*no VOC image"):
        ds.list_ids(voc_fcn_root, "seg11valid")
    seg11.unlink()
    with pytest.raises(DataError, match=r"seg11valid\.txt.*fcn_seg11valid"):
        ds.list_ids(voc_fcn_root, "seg11valid")
    (voc_fcn_root.parent / "benchmark_RELEASE/dataset/cls/s2.mat").unlink()
    with pytest.raises(DataError, match=r"cls/s2\.mat"):
        ds.load_example(voc_fcn_root, "s2")
    lone = tmp_path / "elsewhere" / "VOCdevkit" / "VOC2012"
    (lone / "JPEGImages").mkdir(parents=True)
    with pytest.raises(DataError, match=r"no SBD beside .*data\.voc_fcn\.options\.sbd_root"):
        ds.list_ids(lone, "train")
    with pytest.raises(DataError, match=r"no SBD layout"):
        VOCFCN(sbd_root=lone).list_ids(voc_fcn_root, "train")


def test_voc_fcn_on_the_real_sbd_and_voc_files(shared_data: Path, tmp_path) -> None:
    """Real SBD .mat files read as FCN's train split, real VOC files as its val split.

    The fixtures' SBD train.txt is empty (both images are SBD val), so sbd_root is a copy of
    its layout whose img/ and cls/ link to the real files and whose train.txt lists them.
    """
    real = shared_data / "SBD/benchmark_RELEASE/dataset"
    sbd = tmp_path / "benchmark_RELEASE/dataset"
    sbd.mkdir(parents=True)
    for sub in ("img", "cls"):
        (sbd / sub).symlink_to(real / sub, target_is_directory=True)
    (sbd / "train.txt").write_text("\n".join(SBD_IDS) + "\n")
    voc = shared_data / "VOC2012"
    ds = VOCFCN(sbd_root=tmp_path)
    assert ds.list_ids(voc, "train") == list(SBD_IDS)
    for example_id in SBD_IDS:
        record = ds.load_example(voc, example_id)
        label = decode_label(record["label"], example_id)
        np.testing.assert_array_equal(label, load_sbd_label(real / f"cls/{example_id}.mat"))
        assert label.max() <= 20 and 255 not in label
        assert (record["height"], record["width"]) == label.shape
    # by default SBD is found beside the VOC folder, as the fixtures lay it out (SBD/...)
    default = VOCFCN()
    assert default.sbd_dir(voc) == real
    record = default.load_example(voc, "2007_000129")  # a seg11valid id
    label = decode_label(record["label"], "x")
    np.testing.assert_array_equal(
        label, np.asarray(Image.open(voc / "SegmentationClass/2007_000129.png"))
    )
    assert 255 in label  # VOC's void borders: FCN's VOCSegDataLayer reads them as is
    # the real 736-id list passes the SBD check; the 4-image slice lacks most of its images
    with pytest.raises(DataError, match=r"seg11valid\.txt: \d+ of 736 listed id.*no VOC image"):
        default.list_ids(voc, "seg11valid")


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
        "voc": 21, "voc_aug": 21, "voc_fcn": 21, "sbd": 21, "nyud": 40, "siftflow": 33,
        "siftflow_geo": 3, "bsds": 2, "context": 60, "context59": 60, "context33": 33,
    }  # fmt: skip
    assert set(dataset_names()) == set(expected)
    for name, num_classes in expected.items():
        ds = get_dataset(name)
        assert ds.num_classes == num_classes, name
        assert isinstance(ds.name, str) and callable(ds.list_ids) and callable(ds.load_example)
    assert get_dataset("bsds", min_annotators=1).min_annotators == 1
    assert get_dataset("context", classes=33).num_classes == 33
    assert get_dataset("context33", classes=33).num_classes == 33  # restating a fixed option


def test_registry_errors_name_the_problem() -> None:
    with pytest.raises(ParamsError, match="'nope'"):
        get_dataset("nope")
    with pytest.raises(ParamsError, match="bsds"):
        get_dataset("bsds", colour="red")
    with pytest.raises(ParamsError, match="task"):
        get_dataset("siftflow_geo", task="semantic")
    with pytest.raises(ParamsError, match="'context59' fixes classes=59"):
        get_dataset("context59", classes=33)


def test_registry_imports_dataset_modules_lazily() -> None:
    code = (
        "import sys; import pipeline.data.datasets.registry as r; "
        "print(any(m in sys.modules for m in "
        "('h5py', 'pipeline.data.datasets.nyud', 'pipeline.data.datasets.voc')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
