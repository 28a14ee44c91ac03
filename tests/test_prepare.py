"""Ray Data preparation: Parquet shards, deterministic bytes, clear errors naming bad files."""

import io
import shutil

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from pipeline.data.builtin.voc import BuiltinSpec, voc_palette, write_builtin_voc
from pipeline.data.datasets.voc import VOC
from pipeline.data.prepare import prepare_split
from pipeline.errors import DataError

SPEC = BuiltinSpec(num_train=8, num_val=4, size=40, seed=1)


@pytest.fixture()
def voc(tmp_path):
    return write_builtin_voc(tmp_path / "raw", SPEC, progress=False)


def _shards(folder):
    return sorted(folder.glob("*.parquet"))


def test_prepare_writes_schema_and_identical_bytes_on_rerun(ray_local, voc, tmp_path):
    out = tmp_path / "prepared" / "train"
    assert prepare_split(VOC(), voc, "train", out) == 8
    first = {p.name: p.read_bytes() for p in _shards(out)}
    table = pq.read_table(_shards(out))
    assert set(table.column_names) >= {"id", "image", "label", "height", "width"}
    assert table.column("id").to_pylist() == VOC().list_ids(voc, "train")
    label = np.array(Image.open(io.BytesIO(table.column("label")[0].as_py())))
    assert label.shape == (40, 40)
    prepare_split(VOC(), voc, "train", out)
    assert {p.name: p.read_bytes() for p in _shards(out)} == first  # DVC can cache it
    assert not list(out.parent.glob(".*tmp"))  # no temporary left behind


def _write_label(path, array):
    im = Image.fromarray(array.astype(np.uint8), mode="P")
    im.putpalette(voc_palette())
    im.save(path)


@pytest.mark.parametrize("corruption", ["truncated_jpeg", "wrong_size", "value_37", "missing_id"])
def test_bad_input_names_the_file_and_writes_nothing(ray_local, voc, tmp_path, corruption):
    ids = VOC().list_ids(voc, "train")
    victim = ids[3]
    jpg = voc / "JPEGImages" / f"{victim}.jpg"
    png = voc / "SegmentationClass" / f"{victim}.png"
    if corruption == "truncated_jpeg":
        jpg.write_bytes(jpg.read_bytes()[:200])
        expected = jpg.name
    elif corruption == "wrong_size":
        _write_label(png, np.zeros((10, 12)))
        expected = png.name
    elif corruption == "value_37":
        label = np.array(Image.open(png))
        label[5, 5] = 37
        _write_label(png, label)
        expected = png.name
    else:
        split = voc / "ImageSets/Segmentation/train.txt"
        split.write_text(split.read_text() + "2000_999999\n")
        expected = "2000_999999"
    out = tmp_path / "prepared" / "train"
    with pytest.raises(DataError, match=expected):
        prepare_split(VOC(), voc, "train", out)
    assert not out.exists()
    assert not [p for p in out.parent.glob("*") if p.name.startswith(".")]


def test_value_37_message_mentions_the_class_range(ray_local, voc, tmp_path):
    ids = VOC().list_ids(voc, "val")
    png = voc / "SegmentationClass" / f"{ids[0]}.png"
    label = np.array(Image.open(png))
    label[0, 0] = 37
    _write_label(png, label)
    with pytest.raises(DataError, match=r"\[37\].*\[0, 21\)"):
        prepare_split(VOC(), voc, "val", tmp_path / "out")


def test_missing_split_file(tmp_path, voc):
    shutil.rmtree(voc / "ImageSets")
    with pytest.raises(DataError, match="train.txt"):
        VOC().list_ids(voc, "train")
