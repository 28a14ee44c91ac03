"""Built-in SIFT Flow and PASCAL-Context: real layouts read by the real parsers, class statistics
like the real sets', learnable classes, the download stage's builtin source, bad label files."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import numpy as np
import pytest
import scipy.io
from scipy import ndimage

from pipeline.data.builtin.context import (
    CONTEXT_459,
    FEATURED,
    FULL_ONLY,
    ContextBuiltinSpec,
    write_builtin_context,
)
from pipeline.data.builtin.siftflow import SIFTFlowBuiltinSpec, write_builtin_siftflow
from pipeline.data.datasets.base import VOID, decode_image, decode_label
from pipeline.data.datasets.context import CONTEXT_33, CONTEXT_59, PascalContext, read_name_list
from pipeline.data.datasets.siftflow import (
    ABSENT_FROM_TEST,
    EVAL_CLASSES,
    SIFTFLOW_CLASSES,
    SUBDIR,
    SIFTFlow,
)
from pipeline.data.sources.acquire import acquire, check_splits, data_config
from pipeline.errors import DataError, ParamsError
from pipeline.metrics.segmentation import confusion_matrix, segmentation_scores
from pipeline.params import Params

SF_SPEC = SIFTFlowBuiltinSpec(num_trainval=36, num_test=12, height=64, width=64, seed=1)
CX_SPEC = ContextBuiltinSpec(num_train=72, num_val=16, height=64, width=80, seed=1)
# the real geometric classes of SIFT Flow's semantic ones (1 sky, 2 horizontal, 3 vertical)
SKY = {"sky", "sun", "moon"}
HORIZONTAL = {"road", "sidewalk", "crosswalk", "grass", "field", "sea", "sand", "river", "desert"}


def _digest(folder: Path) -> str:
    h = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        h.update(path.relative_to(folder).as_posix().encode() + path.read_bytes())
    return h.hexdigest()


@pytest.fixture(scope="module")
def siftflow_root(tmp_path_factory) -> Path:
    return write_builtin_siftflow(tmp_path_factory.mktemp("siftflow"), SF_SPEC, progress=False)


@pytest.fixture(scope="module")
def context_root(tmp_path_factory) -> Path:
    return write_builtin_context(tmp_path_factory.mktemp("context"), CX_SPEC, progress=False)


def _records(dataset, root: Path, split: str) -> list[dict]:
    return [dataset.load_example(root, i) for i in dataset.list_ids(root, split)]


def _nearest_mean_vs_majority(train: list[dict], test: list[dict], num_classes: int):
    """Mean IU of a nearest-class-mean classifier on 3x3-smoothed RGB (fit on ``train``) and of
    predicting the training set's most frequent class everywhere, both on ``test``."""

    def pixels(records):
        feats, labels = [], []
        for r in records:
            image = decode_image(r["image"], r["id"]).astype(np.float64)
            feats.append(ndimage.uniform_filter(image, size=(3, 3, 1)).reshape(-1, 3))
            labels.append(decode_label(r["label"], r["id"]).ravel())
        return np.concatenate(feats), np.concatenate(labels)

    x, y = pixels(train)
    keep = y != VOID
    x, y = x[keep], y[keep]
    classes = np.unique(y)
    means = np.stack([x[y == c].mean(0) for c in classes])
    tx, ty = pixels(test)
    pred = classes[((tx[:, None, :] - means[None]) ** 2).sum(-1).argmin(1)]
    majority = np.full_like(ty, np.bincount(y).argmax())
    ours = segmentation_scores(confusion_matrix(ty, pred, num_classes))["mean_iu"]
    base = segmentation_scores(confusion_matrix(ty, majority, num_classes))["mean_iu"]
    return ours, base


# -- SIFT Flow -----------------------------------------------------------------------------------
def test_siftflow_layout_splits_and_byte_identical_reruns(siftflow_root, tmp_path) -> None:
    assert siftflow_root.name == "SiftFlowDataset"
    for folder, ext in (("Images", "jpg"), ("SemanticLabels", "mat"), ("GeoLabels", "mat")):
        assert len(list((siftflow_root / folder / SUBDIR).glob(f"*.{ext}"))) == 48
    lines = (siftflow_root / "TestSet1.txt").read_text().splitlines()
    assert len(lines) == 12 and all(line.startswith(SUBDIR + "\\") for line in lines)
    ds = SIFTFlow()
    trainval, test = ds.list_ids(siftflow_root, "trainval"), ds.list_ids(siftflow_root, "test")
    assert len(trainval) == 36 and len(test) == 12 and not set(trainval) & set(test)
    assert {i.split("_")[0] for i in trainval} == {
        "coast", "forest", "highway", "insidecity", "mountain", "opencountry", "street",
        "tallbuilding",
    }  # fmt: skip
    again = write_builtin_siftflow(tmp_path, SF_SPEC, progress=False)
    assert _digest(again) == _digest(siftflow_root)
    other = write_builtin_siftflow(
        tmp_path / "b", SIFTFlowBuiltinSpec(num_trainval=2, num_test=1), False
    )
    assert _digest(other) != _digest(siftflow_root)


def test_siftflow_parser_reads_every_example(siftflow_root) -> None:
    semantic, geometric = SIFTFlow(), SIFTFlow(task="geometric")
    for split in ("trainval", "test"):
        for example_id in semantic.list_ids(siftflow_root, split):
            record = semantic.load_example(siftflow_root, example_id)  # validates the labels
            assert (record["height"], record["width"]) == (64, 64)
            geo = decode_label(record["geo_label"], example_id)
            label = decode_label(record["label"], example_id)
            assert set(np.unique(geo)) <= {0, 1, 2, VOID}
            assert ((label == VOID) == (geo == VOID)).all()
            only_geo = geometric.load_example(siftflow_root, example_id)["label"]
            np.testing.assert_array_equal(decode_label(only_geo, example_id), geo)


def test_siftflow_class_statistics_like_the_real_set(siftflow_root) -> None:
    ds = SIFTFlow()
    counts = {s: np.zeros(34, np.int64) for s in ("trainval", "test")}
    for split, count in counts.items():
        for example_id in ds.list_ids(siftflow_root, split):
            sem, _ = ds.read_raw_label(siftflow_root, "semantic", example_id)
            geo, _ = ds.read_raw_label(siftflow_root, "geometric", example_id)
            count += np.bincount(sem.ravel(), minlength=34)
            for value, name in enumerate(SIFTFLOW_CLASSES, 1):
                expected = 1 if name in SKY else 2 if name in HORIZONTAL else 3
                assert (geo[sem == value] == expected).all(), (example_id, name)
            assert (geo[sem == 0] == -1).all()
    assert (counts["trainval"][1:] > 0).all()  # all 33 classes
    absent = [SIFTFLOW_CLASSES.index(n) + 1 for n in ABSENT_FROM_TEST]
    assert (counts["test"][absent] == 0).all()
    assert set(ds.classes_present(siftflow_root, "test")) <= set(EVAL_CLASSES)
    total = counts["trainval"] + counts["test"]
    share = np.sort(total[1:] / total.sum())[::-1]
    print("SIFT Flow class shares (%):", np.round(100 * share, 2).tolist())
    assert share[:6].sum() > 0.6  # a few classes cover most pixels...
    assert (share < 0.01).sum() >= 15  # ...and many are rare
    assert 0 < total[0] / total.sum() < 0.05  # a few void pixels


def test_siftflow_classes_are_learnable_from_colour(siftflow_root) -> None:
    ds = SIFTFlow(geometric=False)
    train, test = _records(ds, siftflow_root, "trainval"), _records(ds, siftflow_root, "test")
    ours, base = _nearest_mean_vs_majority(train, test, 33)
    print(f"SIFT Flow test mean IU: nearest class mean {ours:.3f}, majority class {base:.3f}")
    assert ours > base + 0.15 and ours > 4 * base


# -- PASCAL-Context ------------------------------------------------------------------------------
def test_context_layout_and_byte_identical_reruns(context_root, tmp_path) -> None:
    assert context_root.name == "PASCAL-Context"
    voc = context_root.parent / "VOCdevkit" / "VOC2010"
    assert len(list((voc / "JPEGImages").glob("*.jpg"))) == 88
    assert len(list((context_root / "trainval").glob("*.mat"))) == 88
    full = read_name_list(context_root / "labels.txt")
    assert [i for i, _ in full] == list(range(1, 460))
    assert [n for _, n in read_name_list(context_root / "33_labels.txt")] == list(CONTEXT_33)
    assert len(read_name_list(context_root / "59_labels.txt")) == 59
    ds = PascalContext()
    assert len(ds.list_ids(context_root, "train")) == 72
    assert len(ds.list_ids(context_root, "val")) == 16
    again = write_builtin_context(tmp_path, CX_SPEC, progress=False)
    assert _digest(again) == _digest(context_root)
    assert _digest(again.parent / "VOCdevkit") == _digest(voc.parent)


def test_context_full_list_is_the_real_one(shared_data: Path) -> None:
    real = [n for _, n in read_name_list(shared_data / "PASCAL-Context/classes-459.txt")]
    assert list(CONTEXT_459) == real
    assert not set(FULL_ONLY) & {*CONTEXT_59, *CONTEXT_33, "table", "cloth", "bedclothes"}


def test_context_statistics_and_both_mappings_change_pixels(context_root) -> None:
    ds59, ds33 = PascalContext(classes=59), PascalContext(classes=33)
    full_counts = np.zeros(460, np.int64)
    to_background = to_void = labelled = 0
    for example_id in ds59.list_ids(context_root, "trainval"):
        label_map = scipy.io.loadmat(context_root / "trainval" / f"{example_id}.mat")["LabelMap"]
        full_counts += np.bincount(label_map.ravel(), minlength=460)
        l59 = decode_label(ds59.load_example(context_root, example_id)["label"], example_id)
        l33 = decode_label(ds33.load_example(context_root, example_id)["label"], example_id)
        named = label_map > 0
        labelled += int(named.sum())
        to_background += int((named & (l59 == 0)).sum())
        to_void += int((named & (l33 == VOID)).sum())
    train = np.zeros(460, np.int64)
    for example_id in ds59.list_ids(context_root, "train"):
        path = context_root / "trainval" / f"{example_id}.mat"
        train += np.bincount(scipy.io.loadmat(path)["LabelMap"].ravel(), minlength=460)
    names = {n: i + 1 for i, n in enumerate(CONTEXT_459)}
    assert all(train[names[n]] > 0 for n in FEATURED)  # every 59 class and the extra ones
    print(
        f"PASCAL-Context: {labelled / full_counts.sum():.3f} labelled, "
        f"{(full_counts > 0).sum() - 1} full classes, 59: {to_background / labelled:.3f} -> "
        f"background, 33: {to_void / labelled:.3f} -> void"
    )
    assert labelled / full_counts.sum() > 0.95  # whole-scene labels
    assert (full_counts[1:] > 0).sum() >= 69
    assert to_background / labelled > 0.01  # classes in neither list become background...
    assert to_void / labelled > to_background / labelled + 0.02  # ...and void for 33


def test_context_classes_are_learnable_from_colour(context_root) -> None:
    for classes in (59, 33):
        ds = PascalContext(classes=classes)
        train, val = _records(ds, context_root, "train"), _records(ds, context_root, "val")
        ours, base = _nearest_mean_vs_majority(train, val, ds.num_classes)
        print(f"PASCAL-Context {classes} val mean IU: nearest mean {ours:.3f}, majority {base:.3f}")
        assert ours > base + 0.1 and ours > 4 * base


# -- the download stage ------------------------------------------------------------------------
def _params(**sections) -> Params:
    return Params({"profile": "tiny", "data": sections}, "test-params.yaml")


def test_download_stage_builds_both_context_tasks_and_siftflow(tmp_path) -> None:
    tiny_sf = {"num_trainval": 3, "num_test": 2, "height": 32, "width": 32}
    tiny_cx = {"num_train": 3, "num_val": 2, "height": 32, "width": 40}
    context = {"source": "builtin", "splits": {"train": "train", "val": "val"}, "builtin": tiny_cx}
    params = _params(
        siftflow={
            "source": {"tiny": "builtin", "paper": "url"},
            "splits": {"train": "trainval", "val": "test"},
            "options": {"task": "semantic"},
            "builtin": tiny_sf,
        },
        context59={**context, "options": {"classes": 59}},
        context33={**context, "options": {"classes": 33}},
    )
    for name, classes in (("siftflow", 33), ("context59", 60), ("context33", 33)):
        config = data_config(params, name, root=tmp_path)
        assert config.dataset().num_classes == classes
        root = acquire(config, tmp_path / name, progress=False)
        assert check_splits(config, root) == ({"train": 3, "val": 2})
    bad = _params(context59={**context, "options": {"classes": 33}})
    with pytest.raises(ParamsError, match=r"data\.context59\.options.*classes=59"):
        data_config(bad, "context59")
    with pytest.raises(ParamsError, match=r"data\.context33\.builtin"):
        data_config(_params(context33={**context, "builtin": {"height": 8}}), "context33")


# -- bad label files -----------------------------------------------------------------------------
def test_siftflow_bad_label_values_name_file_and_id(tmp_path) -> None:
    root = write_builtin_siftflow(tmp_path, SIFTFlowBuiltinSpec(num_trainval=1, num_test=1), False)
    example_id = SIFTFlow().list_ids(root, "test")[0]
    geo = root / "GeoLabels" / SUBDIR / f"{example_id}.mat"
    sem = root / "SemanticLabels" / SUBDIR / f"{example_id}.mat"
    shutil.copy(geo, tmp_path / "geo.mat")
    for value in (0, 4, -2):
        raw = scipy.io.loadmat(tmp_path / "geo.mat")["S"]
        raw[3, 5] = value
        scipy.io.savemat(geo, {"S": raw})
        with pytest.raises(DataError, match=rf"geometric label .*{example_id}\.mat.*\[{value}\]"):
            SIFTFlow().load_example(root, example_id)
    shutil.copy(tmp_path / "geo.mat", geo)
    raw = scipy.io.loadmat(sem)["S"].astype(np.float64)
    raw[0, 0] = 34
    scipy.io.savemat(sem, {"S": raw})
    with pytest.raises(DataError, match=rf"{example_id}\.mat \(id '{example_id}'\).*\[34\]"):
        SIFTFlow().load_example(root, example_id)
    raw[0, 0] = np.nan
    scipy.io.savemat(sem, {"S": raw})
    with pytest.raises(DataError, match=rf"{example_id}\.mat has non-integer"):
        SIFTFlow().load_example(root, example_id)


def test_context_bad_labelmap_values_name_the_file(tmp_path) -> None:
    root = write_builtin_context(tmp_path, ContextBuiltinSpec(num_train=1, num_val=1), False)
    example_id = PascalContext().list_ids(root, "val")[0]
    path = root / "trainval" / f"{example_id}.mat"
    good = scipy.io.loadmat(path)["LabelMap"]
    for bad, message in ((460, r", 460\]"), (-1, r"\[-1,"), (2.5, "non-integer")):
        label_map = good.astype(np.float64 if isinstance(bad, float) else np.int32)
        label_map[1, 2] = bad
        scipy.io.savemat(path, {"LabelMap": label_map})
        for classes in (59, 33):
            with pytest.raises(DataError, match=rf"{example_id}\.mat.*{message}"):
                PascalContext(classes=classes).load_example(root, example_id)
    label_map = good.astype(np.float64)
    label_map[0, 0] = np.nan
    scipy.io.savemat(path, {"LabelMap": label_map})
    with pytest.raises(DataError, match=rf"{example_id}\.mat has non-integer"):
        PascalContext().load_example(root, example_id)
