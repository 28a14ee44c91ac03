"""FCN's mean-IU upper bound by output stride: hand-computed cases, invariants, real VOC labels."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.analysis.upper_bound import (
    DEFAULT_METHOD,
    METHODS,
    PAPER_FACTORS,
    compare_methods,
    downsample,
    simulate,
    upper_bound,
)
from pipeline.errors import DataError
from pipeline.metrics.segmentation import confusion_matrix

# FCN PAMI §6.3 / CVPR-ext Appendix A, mean IU (%) on the 736-image seg11valid subset
PAPER_MEAN_IU = {128: 50.9, 64: 73.3, 32: 86.1, 16: 92.8, 8: 96.4, 4: 98.5}


def _write_labels(folder: Path, labels: dict[str, np.ndarray]) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    for name, label in labels.items():
        Image.fromarray(label.astype(np.uint8)).save(folder / f"{name}.png")
    return list(labels)


def _square_object() -> np.ndarray:
    """8x8 background with a 2x2 object of class 1 at rows/cols 3-4: it straddles every grid."""
    label = np.zeros((8, 8), np.uint8)
    label[3:5, 3:5] = 1
    return label


def _miu(iu_object: Fraction, iu_background: Fraction) -> float:
    return float((iu_object + iu_background) / 2)


# Hand computation on _square_object (64 px: 60 background, 4 object; no void):
# - one cell labelled 1 of area a holding 1 object pixel: IU1 = 1/(4 + a - 1),
#   IU0 = (60 - (a - 1)) / (60 + (64 - a) - (60 - (a - 1)))
# - every cell labelled 0: IU1 = 0, IU0 = 60/64
# f=2: centre samples rows/cols 1,3,5,7 -> (3,3) hits; top-left samples 0,2,4,6 -> (4,4) hits;
#      each 2x2 cell holds one object pixel, so majorities are background.
# f=4: centre samples 2,6 -> all background; top-left samples 0,4 -> (4,4) hits a 16-px cell.
# PIL NEAREST samples at scaled pixel centres: here it picks the same pixels as nearest-center.
ALL_BACKGROUND = _miu(Fraction(0), Fraction(60, 64))
ONE_CELL_A4 = _miu(Fraction(1, 7), Fraction(57, 63))
ONE_CELL_A16 = _miu(Fraction(1, 19), Fraction(45, 63))
HAND = {
    "nearest-center": {2: ONE_CELL_A4, 4: ALL_BACKGROUND},
    "nearest-topleft": {2: ONE_CELL_A4, 4: ONE_CELL_A16},
    "majority": {2: ALL_BACKGROUND, 4: ALL_BACKGROUND},
    "majority-void": {2: ALL_BACKGROUND, 4: ALL_BACKGROUND},
    "pil-nearest": {2: ONE_CELL_A4, 4: ALL_BACKGROUND},
}


def test_hand_made_square_covers_every_method():
    assert set(HAND) == set(METHODS)


@pytest.mark.parametrize("method", METHODS)
def test_square_object_exact_mean_iu(tmp_path, method):
    ids = _write_labels(tmp_path, {"square": _square_object()})
    result = upper_bound(tmp_path, ids, [1, 2, 4], method, num_classes=2)
    assert result["method"] == method and result["num_images"] == 1
    scores = result["factors"]
    assert scores[1]["mean_iu"] == pytest.approx(1.0)  # factor 1 is the identity
    for f in (2, 4):
        assert scores[f]["mean_iu"] == pytest.approx(HAND[method][f]), f


def _void_label() -> np.ndarray:
    return np.array(
        [
            [0, 0, 1, 1],
            [0, 255, 1, 1],
            [255, 255, 2, 2],
            [255, 1, 2, 2],
        ],
        np.uint8,
    )


# factor 2 on _void_label: cells {0,0,0,void}, {1 x4}, {void x3, 1}, {2 x4}; 12 valid pixels
# majority: all right. majority-void: the mostly-void cell is void -> one class-1 pixel missed.
# nearest-center samples (1,1)=void -> three class-0 pixels missed (IU0 = 0, no false positive).
# nearest-topleft samples (2,0)=void -> the lone class-1 pixel missed.
VOID_CASES = {
    "majority": (1.0, 1.0, 0),
    "majority-void": (float(Fraction(14, 15)), 11 / 12, 1),
    "nearest-center": (float(Fraction(2, 3)), 9 / 12, 3),
    "nearest-topleft": (float(Fraction(14, 15)), 11 / 12, 1),
}


@pytest.mark.parametrize("method", list(VOID_CASES))
def test_void_cells_and_void_samples(tmp_path, method):
    ids = _write_labels(tmp_path, {"v": _void_label()})
    s = upper_bound(tmp_path, ids, [2], method, num_classes=3)["factors"][2]
    mean_iu, pixel_acc, void_pred = VOID_CASES[method]
    assert s["mean_iu"] == pytest.approx(mean_iu)
    assert s["pixel_acc"] == pytest.approx(pixel_acc)
    assert s["void_predicted_pixels"] == void_pred
    assert s["pixels"] == 12  # void truth is never scored


def test_downsample_grid_values():
    label = _void_label()
    np.testing.assert_array_equal(downsample(label, 2, "majority", 3), [[0, 1], [1, 2]])
    np.testing.assert_array_equal(downsample(label, 2, "majority-void", 3), [[0, 1], [255, 2]])
    np.testing.assert_array_equal(downsample(label, 2, "nearest-center", 3), [[255, 1], [1, 2]])
    np.testing.assert_array_equal(downsample(label, 2, "nearest", 3), [[255, 1], [1, 2]])
    np.testing.assert_array_equal(downsample(label, 2, "nearest-topleft", 3), [[0, 1], [255, 2]])
    label[2:, :2] = 255  # an all-void cell stays void under majority
    np.testing.assert_array_equal(downsample(label, 2, "majority", 3), [[0, 1], [255, 2]])
    # 5x3 with factor 2: ceil grid 3x2; partial cells vote with their in-image pixels only,
    # and a class-void tie goes to the class (ties break towards the lower index)
    odd = np.array([[1, 1, 2], [1, 0, 2], [0, 255, 2], [255, 255, 255], [2, 2, 255]], np.uint8)
    np.testing.assert_array_equal(downsample(odd, 2, "majority", 3), [[1, 2], [0, 2], [2, 255]])
    np.testing.assert_array_equal(
        downsample(odd, 2, "majority-void", 3), [[1, 2], [255, 2], [2, 255]]
    )
    # centre rows 1, 3, 4 (the last cell is one row high) and columns 1, 2
    np.testing.assert_array_equal(
        downsample(odd, 2, "nearest-center", 3), [[0, 2], [255, 255], [2, 255]]
    )


def _random_blobs(h: int, w: int, seed: int, num_classes: int = 5) -> np.ndarray:
    """Coarse random regions with void ribbons: shapes not divisible by the factors."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, num_classes, size=(h // 7 + 1, w // 5 + 1))
    label = coarse[np.arange(h) // 7][:, np.arange(w) // 5].astype(np.uint8)
    label[rng.random((h, w)) < 0.05] = 255
    return label


@pytest.mark.parametrize("method", METHODS)
def test_cell_fast_path_equals_pixelwise_confusion(tmp_path, method):
    """The per-cell accumulation must equal confusion_matrix on the upsampled, cropped map."""
    labels = {"a": _random_blobs(37, 53, 0), "b": _random_blobs(64, 29, 1)}
    ids = _write_labels(tmp_path, labels)
    factors = [3, 4, 8, 16]
    result = upper_bound(tmp_path, ids, factors, method, num_classes=5)
    for f in factors:
        hist = np.zeros((6, 6), np.int64)
        for label in labels.values():
            pred = simulate(label, f, method, 5)
            assert pred.shape == label.shape  # ceil grid, cropped back
            hist += confusion_matrix(label, np.where(pred == 255, 5, pred), 6)
        assert result["factors"][f]["pixels"] == hist.sum()
        assert result["factors"][f]["void_predicted_pixels"] == hist[:5, 5].sum()
        diag = np.diag(hist)[:5]
        iu = diag / (hist[:5].sum(1) + hist[:, :5].sum(0) - diag)
        assert result["factors"][f]["mean_iu"] == pytest.approx(np.nanmean(iu))


def _discs(size: int = 240) -> np.ndarray:
    """Several discs of different classes and radii, with a void outline like VOC's."""
    yy, xx = np.mgrid[:size, :size]
    label = np.zeros((size, size), np.uint8)
    for cls, (cy, cx, r) in enumerate([(60, 60, 45), (150, 170, 60), (200, 50, 25), (40, 190, 12)]):
        d = np.hypot(yy - cy, xx - cx)
        label[d < r] = cls + 1
        label[np.abs(d - r) < 1.5] = 255
    return label


@pytest.mark.parametrize("method", METHODS)
def test_mean_iu_falls_as_factor_grows(tmp_path, method):
    ids = _write_labels(tmp_path, {"discs": _discs()})
    factors = [1, 2, 4, 8, 16, 32, 64]
    scores = upper_bound(tmp_path, ids, factors, method, num_classes=5)["factors"]
    mious = [scores[f]["mean_iu"] for f in factors]
    assert mious[0] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(mious, mious[1:])), mious
    assert mious[-1] < 0.8  # a 4x4 grid cannot trace these discs


def test_missing_label_file_names_it(tmp_path):
    ids = _write_labels(tmp_path, {"present": _square_object()})
    with pytest.raises(DataError, match="absent.png"):
        upper_bound(tmp_path, [*ids, "absent"], [2])


def test_out_of_range_label_names_the_file(tmp_path):
    label = _square_object()
    label[0, 0] = 40
    ids = _write_labels(tmp_path, {"bad": label})
    with pytest.raises(DataError, match="bad.png"):
        upper_bound(tmp_path, ids, [2], num_classes=21)


def test_bad_arguments(tmp_path):
    ids = _write_labels(tmp_path, {"x": _square_object()})
    with pytest.raises(ValueError, match="unknown upper-bound method"):
        upper_bound(tmp_path, ids, [2], "bicubic")
    with pytest.raises(ValueError, match="factors"):
        upper_bound(tmp_path, ids, [0])
    with pytest.raises(DataError):
        upper_bound(tmp_path, [], [2])


def test_compare_methods_matches_single_runs(tmp_path):
    ids = _write_labels(tmp_path, {"discs": _discs(100)})
    both = compare_methods(tmp_path, ids, [4, 8], ["majority", "nearest"], num_classes=5)
    assert set(both) == {"majority", "nearest-center"}
    single = upper_bound(tmp_path, ids, [4, 8], "majority", num_classes=5)
    assert both["majority"]["factors"][8]["mean_iu"] == single["factors"][8]["mean_iu"]


def test_default_method_matches_paper_on_seg11valid(shared_data):
    """All 736 seg11valid labels (about 5 s of CPU): falls with the factor, within 6 points."""
    voc = shared_data / "VOC2012"
    split = voc / "ImageSets" / "Segmentation" / "seg11valid.txt"
    labels = voc / "SegmentationClassAug"
    if not split.is_file() or not labels.is_dir():
        pytest.skip(f"seg11valid split or labels not in {voc}")
    ids = split.read_text().split()
    assert len(ids) == 736
    result = upper_bound(labels, ids, list(PAPER_FACTORS), DEFAULT_METHOD)
    ours = [100 * result["factors"][f]["mean_iu"] for f in PAPER_FACTORS]
    assert all(a < b for a, b in zip(ours, ours[1:])), ours  # factors run 128 -> 4
    for f, value in zip(PAPER_FACTORS, ours):
        assert abs(value - PAPER_MEAN_IU[f]) <= 6.0, (f, value, PAPER_MEAN_IU[f])
