"""PASCAL-Context parser: 459 -> 59 (+background) / 33 classes by name, FCN's renames."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import scipy.io
from PIL import Image

from pipeline.data.datasets.base import VOID, decode_label
from pipeline.data.datasets.context import (
    CONTEXT_33,
    CONTEXT_59,
    PascalContext,
    read_name_list,
    task_lut,
)
from pipeline.errors import DataError

# 1-based indices in the 459-class list (checked against the shared classes-459.txt below)
FULL = {"air conditioner": 3, "bedclothes": 19, "cloth": 80, "sky": 360, "table": 397}


def _names(shared_data: Path) -> list[str]:
    return [n for _, n in read_name_list(shared_data / "PASCAL-Context/classes-459.txt")]


def test_real_name_lists(shared_data: Path) -> None:
    full = _names(shared_data)
    assert len(full) == 459
    for name, index in FULL.items():
        assert full[index - 1] == name
    task59 = [n for _, n in read_name_list(shared_data / "PASCAL-Context/classes-59.txt")]
    assert tuple(task59) == CONTEXT_59 and len(CONTEXT_59) == 60
    lut59 = task_lut(full, task59, 59)
    assert sorted(set(lut59.tolist())) == list(range(60))  # every class found, once
    assert (np.bincount(lut59)[1:] == 1).all()
    lut33 = task_lut(full, list(CONTEXT_33), 33)
    assert sorted(set(lut33.tolist()) - {VOID}) == list(range(33))
    assert (np.bincount(lut33[lut33 != VOID]) == 1).all()  # each 33 class is one full class


def test_fcn_renames_and_background(shared_data: Path) -> None:
    full = _names(shared_data)
    lut59 = task_lut(full, list(CONTEXT_59), 59)
    assert lut59[FULL["table"]] == CONTEXT_59.index("diningtable")
    assert lut59[FULL["bedclothes"]] == CONTEXT_59.index("bedcloth")
    assert lut59[FULL["cloth"]] == CONTEXT_59.index("clothes")
    assert lut59[FULL["air conditioner"]] == 0 and lut59[0] == 0  # not in the 59: background
    lut33 = task_lut(full, list(CONTEXT_33), 33)
    assert lut33[FULL["table"]] == CONTEXT_33.index("diningtable") == 10
    assert lut33[FULL["sky"]] == 20
    assert lut33[FULL["air conditioner"]] == VOID and lut33[0] == VOID
    with pytest.raises(DataError, match="'unicorn'"):
        task_lut(full, ["background", "unicorn"], 59)


@pytest.fixture
def context_root(shared_data: Path, tmp_path) -> Path:
    root = tmp_path / "PASCAL-Context"
    (root / "trainval").mkdir(parents=True)
    shutil.copy(shared_data / "PASCAL-Context/classes-459.txt", root / "labels.txt")
    shutil.copy(shared_data / "PASCAL-Context/classes-59.txt", root / "59_labels.txt")
    voc = tmp_path / "VOCdevkit/VOC2010"
    (voc / "JPEGImages").mkdir(parents=True)
    (voc / "ImageSets/Main").mkdir(parents=True)
    (voc / "ImageSets/Main/train.txt").write_text("2008_000002\n")
    (voc / "ImageSets/Main/val.txt").write_text("2008_000003\n2008_000004\n")
    Image.new("RGB", (5, 3), (10, 20, 30)).save(voc / "JPEGImages/2008_000002.jpg")
    label_map = np.array(
        [[FULL["table"], FULL["sky"], 0, FULL["cloth"], 459]] + [[FULL["air conditioner"]] * 5] * 2,
        np.uint16,
    )
    scipy.io.savemat(root / "trainval/2008_000002.mat", {"LabelMap": label_map})
    return root


def test_context_records_59_and_33(context_root: Path) -> None:
    ds59 = PascalContext()
    assert ds59.name == "context59" and ds59.num_classes == 60
    assert ds59.list_ids(context_root, "train") == ["2008_000002"]
    assert len(ds59.list_ids(context_root, "val")) == 2
    record = ds59.load_example(context_root, "2008_000002")
    assert (record["height"], record["width"]) == (3, 5)
    label = decode_label(record["label"], "x")
    sky, wood = CONTEXT_59.index("sky"), CONTEXT_59.index("wood")
    assert label[0].tolist() == [11, sky, 0, CONTEXT_59.index("clothes"), 0]
    assert (label[1:] == 0).all() and wood == 59
    label33 = decode_label(
        PascalContext(classes=33).load_example(context_root, "2008_000002")["label"], "y"
    )
    assert label33[0].tolist() == [10, 20, VOID, VOID, VOID] and (label33[1:] == VOID).all()


def test_context_corrupt_inputs(context_root: Path) -> None:
    ds = PascalContext()
    scipy.io.savemat(
        context_root / "trainval/2008_000002.mat", {"LabelMap": np.full((3, 5), 460, np.uint16)}
    )
    with pytest.raises(DataError, match=r"2008_000002\.mat.*460"):
        ds.load_example(context_root, "2008_000002")
    scipy.io.savemat(context_root / "trainval/2008_000002.mat", {"LabelMap": np.zeros((4, 5))})
    with pytest.raises(DataError, match=r"2008_000002\.mat.*size"):
        ds.load_example(context_root, "2008_000002")
    with pytest.raises(DataError, match=r"JPEGImages/2008_000003\.jpg"):
        ds.load_example(context_root, "2008_000003")
    with pytest.raises(DataError, match="VOC2010"):
        PascalContext(voc_root=context_root / "nowhere").list_ids(context_root / "trainval", "val")
