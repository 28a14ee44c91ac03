"""SIFT Flow parser: FCN's label conventions, splits, .mat (binary and Octave text) and PNG."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import scipy.io

from pipeline.data.datasets.base import VOID, decode_label
from pipeline.data.datasets.siftflow import (
    ABSENT_FROM_TEST,
    EVAL_CLASSES,
    SIFTFLOW_CLASSES,
    UNANNOTATED,
    SIFTFlow,
    geometric_to_schema,
    load_mat_s,
    semantic_to_schema,
)
from pipeline.errors import DataError


def _slice_ids(root: Path) -> list[str]:
    return sorted(p.stem for p in (root / "Images").glob("*.jpg"))


def test_label_conventions_match_fcn() -> None:
    raw = np.array([[0, 1, 33]])
    np.testing.assert_array_equal(semantic_to_schema(raw), [[VOID, 0, 32]])
    geo = np.array([[-1, 0, 1, 2, 3]])
    np.testing.assert_array_equal(geometric_to_schema(geo), [[VOID, VOID, 0, 1, 2]])
    assert len(SIFTFLOW_CLASSES) == 33 and len(EVAL_CLASSES) == 30
    assert {SIFTFLOW_CLASSES[i] for i in range(33)} - {
        SIFTFLOW_CLASSES[i] for i in EVAL_CLASSES
    } == set(ABSENT_FROM_TEST)


def test_real_class_names_match_fcn_list(shared_data: Path) -> None:
    text = (shared_data / "SIFTFlow/classes_fcn.txt").read_text().splitlines()
    names = [line.split()[1] for line in text if line[:2].isdigit()][:33]
    assert tuple(names) == SIFTFLOW_CLASSES


def test_real_splits(shared_data: Path) -> None:
    root = shared_data / "SIFTFlow"
    ds = SIFTFlow()
    trainval, test = ds.list_ids(root, "trainval"), ds.list_ids(root, "test")
    assert len(trainval) == 2486 == len(set(trainval)) and len(test) == 200
    assert not set(trainval) & set(test) and not set(UNANNOTATED) & set(trainval)
    assert len(trainval) + len(test) + len(UNANNOTATED) == 2688
    # the original TestSet1.txt (Windows paths) gives the same 200 ids as FCN's test.txt
    assert sorted(SIFTFlow._test_set1(root)) == sorted(test)


def test_real_labels_mat_text_equals_png_and_range(shared_data: Path) -> None:
    root = shared_data / "SIFTFlow"
    mat_ds, png_ds = SIFTFlow(label_format="mat"), SIFTFlow(label_format="png")
    for example_id in _slice_ids(root)[:8]:
        raw = load_mat_s(root / "SemanticLabels/labels" / f"{example_id}.mat")  # Octave text
        assert raw.shape == (256, 256) and raw.min() >= 0 and raw.max() <= 33
        a = mat_ds.load_example(root, example_id)
        b = png_ds.load_example(root, example_id)
        assert (a["height"], a["width"]) == (256, 256) and "geo_label" not in a
        la, lb = decode_label(a["label"], "a"), decode_label(b["label"], "b")
        np.testing.assert_array_equal(la, lb)
        np.testing.assert_array_equal(la, semantic_to_schema(raw))
        assert set(np.unique(la)) <= set(range(33)) | {VOID}


def test_classes_present_in_test_excludes_absent_classes(shared_data: Path, tmp_path) -> None:
    src = shared_data / "SIFTFlow"
    for sub in ("Images", "SemanticLabels"):
        (tmp_path / sub).symlink_to(src / sub, target_is_directory=True)
    full_test = SIFTFlow().list_ids(src, "test")
    in_slice = [i for i in full_test if i in set(_slice_ids(src))]
    assert in_slice
    (tmp_path / "test.txt").write_text("\n".join(in_slice) + "\n")
    present = SIFTFlow().classes_present(tmp_path, "test")
    assert present and set(present) <= set(EVAL_CLASSES)


@pytest.fixture
def geo_root(shared_data: Path, tmp_path) -> Path:
    """A SiftFlowDataset-style root: nested image folder, binary .mat labels, GeoLabels."""
    src = shared_data / "SIFTFlow"
    sub = "spatial_envelope_256x256_static_8outdoorcategories"
    for folder in (f"Images/{sub}", f"SemanticLabels/{sub}", f"GeoLabels/{sub}"):
        (tmp_path / folder).mkdir(parents=True)
    example_id = "coast_n203085"
    shutil.copy(src / "Images" / f"{example_id}.jpg", tmp_path / f"Images/{sub}")
    semantic = load_mat_s(src / "SemanticLabels/labels" / f"{example_id}.mat")
    scipy.io.savemat(
        tmp_path / f"SemanticLabels/{sub}/{example_id}.mat", {"S": semantic.astype(np.int32)}
    )
    geo = np.ones((256, 256), np.int16)
    geo[100:, :] = 2
    geo[200:, :100] = 3
    geo[:5, :5] = -1
    scipy.io.savemat(tmp_path / f"GeoLabels/{sub}/{example_id}.mat", {"S": geo})
    (tmp_path / "test.txt").write_text(f"{example_id}\n")
    return tmp_path


def test_geometric_labels_from_binary_mat(geo_root: Path) -> None:
    record = SIFTFlow().load_example(geo_root, "coast_n203085")
    geo = decode_label(record["geo_label"], "geo")
    assert geo[0, 0] == VOID and geo[50, 50] == 0 and geo[150, 50] == 1 and geo[250, 50] == 2
    assert set(np.unique(decode_label(record["label"], "x"))) <= set(range(33)) | {VOID}
    geo_ds = SIFTFlow(task="geometric")
    assert geo_ds.num_classes == 3 and geo_ds.name == "siftflow_geo"
    np.testing.assert_array_equal(
        decode_label(geo_ds.load_example(geo_root, "coast_n203085")["label"], "g"), geo
    )
    assert geo_ds.classes_present(geo_root, "test") == [0, 1, 2]
    assert "geo_label" not in SIFTFlow(geometric=False).load_example(geo_root, "coast_n203085")


def test_corrupt_siftflow_inputs_name_the_file(geo_root: Path) -> None:
    sub = "spatial_envelope_256x256_static_8outdoorcategories"
    path = geo_root / f"SemanticLabels/{sub}/coast_n203085.mat"
    scipy.io.savemat(path, {"S": np.full((256, 256), 37, np.int32)})
    with pytest.raises(DataError, match=r"coast_n203085\.mat.*\[37\]"):
        SIFTFlow().load_example(geo_root, "coast_n203085")
    scipy.io.savemat(path, {"S": np.zeros((200, 256), np.int32)})
    with pytest.raises(DataError, match=r"coast_n203085\.mat.*size"):
        SIFTFlow().load_example(geo_root, "coast_n203085")
    scipy.io.savemat(path, {"T": np.zeros((256, 256), np.int32)})
    with pytest.raises(DataError, match=r"coast_n203085\.mat has no label matrix"):
        SIFTFlow().load_example(geo_root, "coast_n203085")
    with pytest.raises(DataError, match=r"Images/.*/street_x\.jpg"):
        SIFTFlow().load_example(geo_root, "street_x")
    (geo_root / f"GeoLabels/{sub}/coast_n203085.mat").unlink()
    path.unlink()
    with pytest.raises(DataError, match=r"SemanticLabels/.*coast_n203085\.mat"):
        SIFTFlow().load_example(geo_root, "coast_n203085")
