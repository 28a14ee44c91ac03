"""NYUDv2 parser: a synthetic v7.3 labelled .mat in the real layout, and the real metadata."""

from __future__ import annotations

import io
import types
from pathlib import Path

import h5py
import numpy as np
import pytest
import scipy.io
from PIL import Image

from pipeline.data.datasets import nyud as nyud_module
from pipeline.data.datasets.base import VOID, decode_image, decode_label
from pipeline.data.datasets.nyud import GUPTA_CROP, NYUD, NYUD_CLASSES, class_lut, metres_to_mm
from pipeline.errors import DataError

N_FRAMES = 3
H, W = 480, 640


def _frames() -> dict[str, np.ndarray]:
    """N x H x W(x3) frames whose content encodes row, column and frame number."""
    yy, xx = np.mgrid[0:H, 0:W]
    rgb = np.stack(
        [np.stack([yy % 256, xx % 256, np.full_like(yy, 40 * n)], -1) for n in range(N_FRAMES)]
    ).astype(np.uint8)
    depth = np.stack([0.5 + yy / 100.0 + xx / 1000.0 + n for n in range(N_FRAMES)]).astype(
        np.float32
    )
    raw = depth.copy()
    raw[:, :10, :] = 0  # unmeasured rows
    labels = np.stack([(yy * 7 + xx + n) % 895 for n in range(N_FRAMES)]).astype(np.uint16)
    return {"rgb": rgb, "depth": depth, "raw": raw, "labels": labels}


def write_labeled_mat(path: Path, frames: dict[str, np.ndarray]) -> None:
    """MATLAB v7.3 layout: HDF5 with a 512-byte user block; h5py sees axes reversed."""
    with h5py.File(path, "w", userblock_size=512) as f:
        f["images"] = frames["rgb"].transpose(0, 3, 2, 1)  # N x 3 x W x H
        f["depths"] = frames["depth"].transpose(0, 2, 1)  # N x W x H
        f["rawDepths"] = frames["raw"].transpose(0, 2, 1)
        f["labels"] = frames["labels"].transpose(0, 2, 1)
    header = b"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: synthetic HDF5 schema 1.00 ."
    with open(path, "r+b") as f:
        f.write(header.ljust(116, b" ") + b"\x00" * 8 + b"\x00\x02IM")


@pytest.fixture(scope="module")
def nyud_root(tmp_path_factory) -> tuple[Path, dict[str, np.ndarray], np.ndarray]:
    root = tmp_path_factory.mktemp("nyud")
    frames = _frames()
    write_labeled_mat(root / "nyu_depth_v2_labeled.mat", frames)
    map_class = ((np.arange(894) * 13) % 40 + 1).astype(np.uint8)[None, :]
    scipy.io.savemat(root / "classMapping40.mat", {"mapClass": map_class})
    scipy.io.savemat(
        root / "splits.mat",
        {"trainNdxs": np.array([[1], [3]], np.uint16), "testNdxs": np.array([[2]], np.uint16)},
    )
    (root / "fcn-splits").mkdir()
    (root / "fcn-splits/train.txt").write_text("5003\n")
    (root / "fcn-splits/val.txt").write_text("5001\n")
    return root, frames, map_class.ravel()


def _png_array(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im)


def test_synthetic_v73_frame_full(nyud_root) -> None:
    root, frames, map_class = nyud_root
    record = NYUD(crop=False, hha=False).load_example(root, "5002")  # 1-based frame 2
    assert (record["height"], record["width"]) == (H, W)
    np.testing.assert_array_equal(decode_image(record["image"], "x"), frames["rgb"][1])
    label = decode_label(record["label"], "x")
    raw = frames["labels"][1].astype(int)
    expected = np.where(raw == 0, VOID, map_class[np.maximum(raw, 1) - 1] - 1)
    np.testing.assert_array_equal(label, expected)
    assert (label[raw == 0] == VOID).all() and label[raw > 0].max() <= 39
    depth = _png_array(record["depth"])
    assert depth.dtype == np.uint16
    np.testing.assert_array_equal(depth, np.round(frames["depth"][1] * 1000).astype(np.uint16))
    raw_depth = _png_array(record["raw_depth"])
    assert (raw_depth[:10] == 0).all() and (raw_depth[10:] == depth[10:]).all()
    assert "hha" not in record


def test_synthetic_v73_frame_gupta_crop(nyud_root) -> None:
    root, frames, _ = nyud_root
    record = NYUD(hha=False).load_example(root, "5003")
    assert (record["height"], record["width"]) == (425, 560)
    np.testing.assert_array_equal(decode_image(record["image"], "x"), frames["rgb"][2][GUPTA_CROP])
    assert decode_label(record["label"], "x").shape == (425, 560)
    assert _png_array(record["depth"]).shape == (425, 560)


def test_splits_fcn_lists_and_official_fallback(nyud_root) -> None:
    root, _, _ = nyud_root
    ds = NYUD()
    assert ds.list_ids(root, "train") == ["5003"]
    assert ds.list_ids(root, "trainval") == ["5003", "5001"]
    assert ds.list_ids(root, "test") == ["5002"]  # no FCN test.txt: splits.mat
    assert NYUD.official_ids(root, "train") == ["5001", "5003"]
    with pytest.raises(DataError, match="unknown NYUD split"):
        ds.list_ids(root, "all")


def test_bad_ids_and_corrupt_file(nyud_root, tmp_path) -> None:
    root, frames, _ = nyud_root
    ds = NYUD(crop=False, hha=False)
    with pytest.raises(DataError, match=r"nyu_depth_v2_labeled\.mat"):
        ds.load_example(root, "5004")  # beyond the 3 frames
    with pytest.raises(DataError, match=r"nyu_depth_v2_labeled\.mat"):
        ds.load_example(root, "kitchen")
    (tmp_path / "nyu_depth_v2_labeled.mat").write_bytes(b"\x00" * 1000)
    with pytest.raises(DataError, match=r"nyu_depth_v2_labeled\.mat"):
        ds.load_example(tmp_path, "5001")
    bad = {k: v[:1].copy() for k, v in frames.items()}
    bad["labels"][0, 0, 0] = 900
    write_labeled_mat(tmp_path / "nyu_depth_v2_labeled.mat", bad)
    (tmp_path / "classMapping40.mat").symlink_to(root / "classMapping40.mat")
    with pytest.raises(DataError, match=r"labeled\.mat frame 5001.*900"):
        ds.load_example(tmp_path, "5001")


def test_frame_without_depth_fails_before_hha(nyud_root, tmp_path, monkeypatch) -> None:
    root, frames, _ = nyud_root

    def no_hha(*args, **kwargs):
        raise AssertionError("HHA computed for a frame without depth")

    monkeypatch.setattr(nyud_module.hha, "depth_to_hha", no_hha)
    (tmp_path / "classMapping40.mat").symlink_to(root / "classMapping40.mat")
    for fill in (0.0, np.nan):
        bad = {k: v[:2, :24, :32].copy() for k, v in frames.items()}
        bad["depth"][1] = fill
        write_labeled_mat(tmp_path / "nyu_depth_v2_labeled.mat", bad)
        ds = NYUD(crop=False)
        assert "hha" not in NYUD(crop=False, hha=False, normals=False).load_example(
            tmp_path, "5001"
        )
        with pytest.raises(DataError, match=r"labeled\.mat frame 5002: depth is all zero or NaN"):
            ds.load_example(tmp_path, "5002")


def test_hha_column_uses_mm_depth_and_cropped_camera(nyud_root, monkeypatch) -> None:
    root, frames, _ = nyud_root
    calls = {}

    def depth_to_hha(depth_m, raw_depth_m, camera=None, mask_missing=False):
        calls.update(depth=depth_m, raw=raw_depth_m, camera=camera, mask_missing=mask_missing)
        return np.zeros(depth_m.shape + (3,), np.uint8)

    fake = types.SimpleNamespace(depth_to_hha=depth_to_hha, hha_to_png=nyud_module.encode_png)
    monkeypatch.setattr(nyud_module, "hha", fake)
    record = NYUD().load_example(root, "5001")  # hha on by default
    assert _png_array(record["hha"]).shape == (425, 560, 3)
    assert calls["camera"] == nyud_module.NYU_CAMERA.crop(45, 40)  # Gupta's crop, shifted
    assert calls["mask_missing"] is False
    expected = np.round(frames["depth"][0][GUPTA_CROP] * 1000) / 1000
    np.testing.assert_allclose(calls["depth"], expected)
    assert "hha" not in NYUD(hha=False).load_example(root, "5001")
    NYUD(hha_mask_missing=True).load_example(root, "5001")
    assert calls["mask_missing"] is True


def test_metres_to_mm() -> None:
    d = np.array([[0.0, -1.0, np.nan, 1.2345, 70.0]], np.float32)
    np.testing.assert_array_equal(metres_to_mm(d), [[0, 0, 0, 1234, 65535]])


# -- real metadata -------------------------------------------------------------------------------
def test_real_class_mapping_894_to_40(shared_data: Path) -> None:
    mat = scipy.io.loadmat(shared_data / "NYUDv2/metadata/classMapping40.mat")
    map_class = mat["mapClass"].ravel()
    assert map_class.shape == (894,) and map_class.min() == 1 and map_class.max() == 40
    names = tuple(str(n[0]) for n in mat["className"].ravel())
    assert names == NYUD_CLASSES
    fcn_names = (shared_data / "NYUDv2/fcn-splits/classes.txt").read_text().splitlines()[:40]
    assert tuple(fcn_names) == NYUD_CLASSES
    lut = NYUD().label_lut(shared_data / "NYUDv2")
    assert lut.shape == (895,) and lut[0] == VOID  # unlabelled stays void
    np.testing.assert_array_equal(lut[1:], map_class - 1)
    np.testing.assert_array_equal(class_lut(map_class), lut)


def test_real_fcn_ids_are_5000_plus_official_indices(shared_data: Path) -> None:
    root = shared_data / "NYUDv2"
    ds = NYUD()
    train, val, test = (ds.list_ids(root, s) for s in ("train", "val", "test"))
    assert (len(train), len(val), len(test)) == (381, 414, 654)
    splits = scipy.io.loadmat(root / "metadata/splits.mat")
    official_train = {str(5000 + int(i)) for i in splits["trainNdxs"].ravel()}
    official_test = {str(5000 + int(i)) for i in splits["testNdxs"].ravel()}
    assert set(train) | set(val) == official_train and not set(train) & set(val)
    assert set(test) == official_test
    assert set(ds.official_ids(root, "train")) == official_train
    assert len(official_train | official_test) == 1449


def test_real_hha_module_interface_matches_the_call() -> None:
    """The HHA module's signature is what NYUD._hha calls (cheap guard against drift)."""
    import inspect

    hha = pytest.importorskip("pipeline.data.encodings.hha")
    params = list(inspect.signature(hha.depth_to_hha).parameters)
    assert params[:2] == ["depth_m", "raw_depth_m"] and "camera" in params
    camera = hha.NYU_CAMERA.crop(GUPTA_CROP[0].start, GUPTA_CROP[1].start)
    assert camera != hha.NYU_CAMERA


def test_synthetic_file_is_matlab_v73(nyud_root) -> None:
    root, _, _ = nyud_root
    assert scipy.io.matlab.matfile_version(str(root / "nyu_depth_v2_labeled.mat")) == (2, 0)


def test_crop_size_matches_gupta_export(shared_data: Path) -> None:
    """Gupta's rcnn-depth frames (what FCN trained on) are 425 x 560: so is our crop."""
    with Image.open(shared_data / "NYUDv2/gupta-demo/images.png") as im:
        width, height = im.size
    rows, cols = GUPTA_CROP
    assert (rows.stop - rows.start, cols.stop - cols.start) == (height, width) == (425, 560)
