"""BSDS500 parser (all annotators, consensus edges) and HED's augmentation."""

from __future__ import annotations

import io
import pickle
from pathlib import Path

import numpy as np
import pytest
import scipy.io
from PIL import Image
from scipy import ndimage

from pipeline.data.datasets.base import VOID, decode_image, decode_label, encode_png
from pipeline.data.datasets.bsds import (
    BSDS,
    HEDAugment,
    consensus_edges,
    largest_rotated_rect,
    load_ground_truth,
    unstack,
)
from pipeline.errors import DataError


def _root(shared_data: Path) -> Path:
    return shared_data / "BSDS500"


def test_real_split_sizes(shared_data: Path) -> None:
    ds = BSDS()
    sizes = [len(ds.list_ids(_root(shared_data), s)) for s in ("train", "val", "test")]
    assert sizes == [200, 100, 200]
    assert len(set(ds.list_ids(_root(shared_data), "trainval"))) == 300


@pytest.mark.parametrize("split", ["train", "val"])
def test_real_ground_truth_parse(shared_data: Path, split: str) -> None:
    ds = BSDS()
    root = _root(shared_data)
    for example_id in ds.list_ids(root, split)[:3]:
        gt = root / "data/groundTruth" / split / f"{example_id}.mat"
        boundaries, segs = load_ground_truth(gt)
        n = boundaries.shape[0]
        assert 4 <= n <= 9 and segs.shape == boundaries.shape
        assert set(np.unique(boundaries)) <= {0, 1} and segs.min() >= 1
        record = ds.load_example(root, example_id)
        h, w = record["height"], record["width"]
        assert (h, w) in ((321, 481), (481, 321)) and boundaries.shape[1:] == (h, w)
        assert decode_image(record["image"], "x").shape == (h, w, 3)
        assert record["num_annotators"] == n
        np.testing.assert_array_equal(unstack(record["boundaries"], h), boundaries)
        np.testing.assert_array_equal(unstack(record["segmentations"], h), segs)
        label = decode_label(record["label"], "x")
        np.testing.assert_array_equal(label, boundaries.sum(0) >= 3)
        # the reference indexing of the README: annotator k's boundaries
        first = scipy.io.loadmat(gt)["groundTruth"][0, 0]["Boundaries"][0, 0]
        np.testing.assert_array_equal(first, boundaries[0])


def test_consensus_threshold_is_configurable(shared_data: Path) -> None:
    root = _root(shared_data)
    example_id = BSDS().list_ids(root, "val")[0]
    sums = []
    for k in (1, 2, 3, 4):
        label = decode_label(BSDS(min_annotators=k).load_example(root, example_id)["label"], "x")
        sums.append(int(label.sum()))
    assert sums == sorted(sums, reverse=True) and sums[0] > sums[-1] > 0
    b = np.zeros((4, 2, 3), np.uint8)
    b[:, 0, 0] = 1
    b[:2, 0, 1] = 1
    b[0, 1, 2] = 1
    assert consensus_edges(b, 3).tolist() == [[1, 0, 0], [0, 0, 0]]
    assert consensus_edges(b, 3, ignore_ambiguous=True).tolist() == [[1, VOID, 0], [0, 0, VOID]]
    assert consensus_edges(b, 9).tolist() == [[1, 0, 0], [0, 0, 0]]  # capped at 4 annotators


def test_missing_and_corrupt_ground_truth(shared_data: Path, tmp_path) -> None:
    root = _root(shared_data)
    test_id = BSDS().list_ids(root, "test")[0]
    with pytest.raises(DataError, match=rf"groundTruth/test/{test_id}\.mat"):
        BSDS().load_example(root, test_id)  # test ground truth is not in the fixtures
    with pytest.raises(DataError, match=r"images/\*/nope\.jpg"):
        BSDS().load_example(root, "nope")
    data = tmp_path / "BSR/BSDS500/data"
    (data / "images/val").mkdir(parents=True)
    (data / "groundTruth/val").mkdir(parents=True)
    Image.new("RGB", (6, 4)).save(data / "images/val/1.jpg")
    gt = np.empty((1, 1), dtype=object)
    gt[0, 0] = {"Boundaries": np.full((4, 6), 2, np.uint8), "Segmentation": np.ones((4, 6))}
    scipy.io.savemat(data / "groundTruth/val/1.mat", {"groundTruth": gt})
    with pytest.raises(DataError, match=r"groundTruth/val/1\.mat.*not binary"):
        BSDS().load_example(tmp_path, "1")
    gt[0, 0] = {"Boundaries": np.zeros((5, 6), np.uint8), "Segmentation": np.ones((5, 6))}
    scipy.io.savemat(data / "groundTruth/val/1.mat", {"groundTruth": gt})
    with pytest.raises(DataError, match=r"groundTruth/val/1\.mat.*size"):
        BSDS().load_example(tmp_path, "1")


# -- HED augmentation --------------------------------------------------------------------------
def _row(h: int = 41, w: int = 61) -> dict:
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
    label = np.zeros((h, w), np.uint8)
    label[20, 5:56] = 1  # one straight edge
    label[5:15, 40] = VOID
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return {"id": "x", "image": buf.getvalue(), "label": encode_png(label), "height": h, "width": w}


def test_largest_rotated_rect() -> None:
    assert largest_rotated_rect(481, 321, 0) == (481, 321)
    assert largest_rotated_rect(481, 321, 90) == (321, 481)
    w, h = largest_rotated_rect(100, 100, 45)
    assert w == h == 70  # square: side / sqrt(2)


def test_hed_augment_96_variants_with_sane_labels() -> None:
    row = _row()
    out = HEDAugment()(row)
    assert len(out) == 16 * 2 * 3 == len({o["id"] for o in out})
    original = decode_label(row["label"], "x")
    for o in out:
        label = decode_label(o["label"], o["id"])
        image = decode_image(o["image"], o["id"])
        assert image.shape[:2] == label.shape == (o["height"], o["width"])
        assert set(np.unique(label)) <= {0, 1, VOID}
        edge = label == 1
        assert edge.any(), o["id"]
        # thin (no 2x2 block of edge pixels) and one connected line
        blocks = edge[:-1, :-1] & edge[1:, :-1] & edge[:-1, 1:] & edge[1:, 1:]
        assert not blocks.any(), o["id"]
        assert ndimage.label(edge, np.ones((3, 3)))[1] == 1, o["id"]
    by_id = {o["id"]: decode_label(o["label"], "") for o in out}
    np.testing.assert_array_equal(by_id["x_r0_n_s1"], original)
    np.testing.assert_array_equal(by_id["x_r0_f_s1"], original[:, ::-1])
    np.testing.assert_array_equal(by_id["x_r90_n_s1"], np.rot90(original))
    assert by_id["x_r0_n_s0.5"].shape == (20, 30) and by_id["x_r0_n_s1.5"].shape == (62, 92)
    # 45 degrees: square-ish crop inside the rotated image
    assert by_id["x_r45_n_s1"].shape[0] < 41


def test_hed_augment_is_a_picklable_flat_map_function() -> None:
    aug = pickle.loads(pickle.dumps(HEDAugment(angles=4, flips=False, scales=(1.0,))))
    out = aug(_row())
    assert [o["angle"] for o in out] == [0.0, 90.0, 180.0, 270.0]
    keys = {frozenset(o) for o in out}
    assert keys == {frozenset({"id", "image", "label", "height", "width", "source_id", "angle",
                               "flip", "scale"})}  # fmt: skip
