"""The leakage guard: a held-out split sharing an id or an identical image with the train split is
refused, naming both splits and the first shared ids; the papers' real split lists pass."""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from PIL import Image

from pipeline.data.datasets.sbd import read_id_list
from pipeline.data.leakage import (
    Overlap,
    check_no_leak,
    check_split_ids,
    find_overlap,
    pixel_digest,
    split_label,
)
from pipeline.data.sources.acquire import acquire, check_splits, data_config, prepare_dataset
from pipeline.errors import DataError
from pipeline.experiment import check_no_leakage
from pipeline.params import Params

REPO = Path(__file__).resolve().parents[1]
SBD_TRAIN_SIZE = 8498


def _png(array: np.ndarray, **options) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG", **options)
    return buf.getvalue()


def _with_jpeg_comment(jpeg: bytes, text: bytes = b"copied") -> bytes:
    """The same JPEG with a COM segment after SOI: other bytes, the same decoded pixels."""
    return jpeg[:2] + b"\xff\xfe" + (len(text) + 2).to_bytes(2, "big") + text + jpeg[2:]


def test_overlap_by_id_and_by_identical_pixels_under_another_id():
    rng = np.random.default_rng(0)
    a, b = (rng.integers(0, 255, (6, 4, 3), dtype=np.uint8) for _ in range(2))
    # the same pixels, stored differently: identical content; a transpose is not
    digests = {
        "a": pixel_digest(_png(a, compress_level=1), "a"),
        "b": pixel_digest(_png(b), "b"),
        "a-copy": pixel_digest(_png(a, compress_level=9, optimize=True), "a-copy"),
        "a-transposed": pixel_digest(_png(np.ascontiguousarray(a.transpose(1, 0, 2))), "t"),
    }
    assert digests["a-copy"] == digests["a"] != digests["b"] != digests["a-transposed"]
    train = {i: digests[i] for i in ("a", "b")}
    held = ["z", "a-copy", "b", "a-transposed"]
    overlap = find_overlap(train, held, train, {i: digests.get(i, "none") for i in held})
    assert overlap.shared_ids == ("b",)  # an id in both is reported once, as an id
    assert overlap.same_content == (("a-copy", "a"),)
    assert not find_overlap(train, ["z", "a-transposed"], train, digests)
    # ids alone do not compare content
    assert find_overlap(["a"], ["a-copy"]).same_content == ()


def test_errors_name_both_splits_the_count_and_the_first_shared_ids():
    ids = {"train": [f"t{i}" for i in range(20)], "val": ["v0", "t3", "v1", "t7", "t1"]}
    with pytest.raises(DataError) as err:
        check_split_ids("voc_fcn", {"train": "train", "val": "seg11valid"}, ids)
    msg = str(err.value)
    assert "voc_fcn split 'val' (seg11valid) overlaps" in msg
    assert "3 of its 5 id(s) are in voc_fcn split 'train' (first: t3, t7, t1)" in msg
    check_split_ids("voc_fcn", {"train": "train", "val": "seg11valid"}, {**ids, "val": ["v0"]})
    # identical content under other ids: only the first five pairs are named
    pairs = tuple((f"v{i}", f"t{i}") for i in range(7))
    train, held = split_label("voc", "train"), split_label("voc", "val")
    with pytest.raises(DataError) as err:
        check_no_leak(train, held, 9, Overlap(same_content=pairs))
    msg = str(err.value)
    assert "voc split 'val' overlaps" in msg and "7 of its 9 image(s) are identical" in msg
    assert "images of voc split 'train' under other ids" in msg
    assert "v4 = train t4)" in msg and "v5" not in msg


# ------------------------------------------------------------------ the papers' real split lists


def _lists(shared: Path) -> Path:
    return shared / "VOC2012" / "ImageSets" / "Segmentation"


def _sbd_train(shared: Path) -> list[str]:
    """SBD's train.txt from the fixtures; skip unless it is the full 8,498-id list."""
    path = shared / "SBD" / "benchmark_RELEASE" / "dataset" / "train.txt"
    ids = read_id_list(path, allow_empty=True) if path.is_file() else []
    if len(ids) != SBD_TRAIN_SIZE:
        pytest.skip(
            f"{path} holds {len(ids)} ids, not SBD train's {SBD_TRAIN_SIZE} (the shared slice "
            f"ships an empty list): add the real list to run the SBD-train checks"
        )
    return ids


def test_real_deeplab_and_fcn_validation_lists_are_disjoint_from_train_aug(shared_data):
    lists = _lists(shared_data)
    train_aug = read_id_list(lists / "train_aug.txt")
    val, seg11valid = read_id_list(lists / "val.txt"), read_id_list(lists / "seg11valid.txt")
    assert (len(train_aug), len(val), len(seg11valid)) == (10582, 1449, 736)
    check_split_ids(
        "voc_aug", {"train": "train_aug", "val": "val"}, {"train": train_aug, "val": val}
    )
    ids = {"train": train_aug, "val": seg11valid}
    check_split_ids("voc_aug", {"train": "train_aug", "val": "seg11valid"}, ids)
    # the guard does see these lists: validating on train_aug itself is refused
    with pytest.raises(DataError, match=r"10582 of its 10582 id\(s\)"):
        check_split_ids("voc_aug", {}, {"train": train_aug, "val": train_aug})


def test_real_seg11valid_passes_and_voc_val_leaks_into_sbd_train(shared_data):
    sbd_train = _sbd_train(shared_data)
    lists = _lists(shared_data)
    seg11valid, val = read_id_list(lists / "seg11valid.txt"), read_id_list(lists / "val.txt")
    check_split_ids("voc_fcn", {"val": "seg11valid"}, {"train": sbd_train, "val": seg11valid})
    shared = [i for i in val if i in set(sbd_train)]
    # the leak FCN's seg11valid avoids: SBD train holds the 1,111 - 736 = 375 VOC2011 val images
    # FCN dropped, and VOC2011 val is part of VOC2012 val
    assert len(shared) >= 375 and not set(shared) & set(seg11valid)
    with pytest.raises(DataError) as err:
        check_split_ids("voc_fcn", {"val": "val"}, {"train": sbd_train, "val": val})
    msg = str(err.value)
    assert f"{len(shared)} of its {len(val)} id(s) are in voc_fcn split 'train'" in msg
    assert f"(first: {', '.join(shared[:5])})" in msg


# ------------------------------------------------------------------ the stages' wiring


def _params(**data: dict) -> Params:
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    for name, section in data.items():
        raw["data"][name].update(section)
    return Params(raw)


SMALL = {"source": "builtin", "builtin": {"num_train": 3, "num_val": 2, "size": 16}}


def test_listed_ids_are_refused_before_any_example_is_read(tmp_path):
    params = _params(voc=SMALL)
    config = data_config(params, "voc")
    root = acquire(config, tmp_path / "raw", progress=False)
    seg = root / "ImageSets" / "Segmentation"
    train = (seg / "train.txt").read_text().split()
    with (seg / "val.txt").open("a") as f:
        f.write(f"{train[1]}\n")
    with pytest.raises(DataError, match=rf"voc split 'val' overlaps.*first: {train[1]}\)"):
        check_splits(config, root)  # the download stage
    (root / "JPEGImages" / f"{train[0]}.jpg").unlink()  # reading it would fail differently
    out = tmp_path / "prepared"
    with pytest.raises(DataError, match=r"1 of its 3 id\(s\) are in voc split 'train'"):
        prepare_dataset(config, tmp_path / "raw", out, log=lambda _: None)
    assert not out.exists()


def test_identical_image_under_another_id_is_refused_by_prepare_and_train(ray_local, tmp_path):
    """voc_fcn (built-in): a seg11valid image that is a train image with a JPEG comment added
    fails prepare, which keeps what was prepared before; the clean set prepares, and the train
    stage's check refuses a val shard given a copy of a train row."""
    params = _params(voc_fcn=SMALL)
    config = data_config(params, "voc_fcn")
    raw = tmp_path / "data" / "raw" / "voc_fcn"
    root = acquire(config, raw, progress=False)
    seg = root / "ImageSets" / "Segmentation"
    train, val = (
        (seg / "train.txt").read_text().split(),
        (seg / "seg11valid.txt").read_text().split(),
    )
    victim = root / "JPEGImages" / f"{val[1]}.jpg"
    original = victim.read_bytes()
    victim.write_bytes(_with_jpeg_comment((root / "JPEGImages" / f"{train[2]}.jpg").read_bytes()))
    out = tmp_path / "data" / "prepared" / "voc_fcn"
    (out / "train").mkdir(parents=True)
    (out / "train" / "before.txt").write_text("an earlier prepare")
    with pytest.raises(DataError) as err:
        prepare_dataset(config, raw, out, log=lambda _: None)
    msg = str(err.value)
    assert "voc_fcn split 'val' (seg11valid) overlaps the training split" in msg
    assert "1 of its 2 image(s) are identical" in msg and "voc_fcn split 'train' under" in msg
    assert f"(first: {val[1]} = train {train[2]})" in msg
    assert sorted(p.name for p in out.iterdir()) == ["train"]  # no val, no temporary
    assert [p.name for p in (out / "train").iterdir()] == ["before.txt"]

    victim.write_bytes(original)
    assert prepare_dataset(config, raw, out, log=lambda _: None) == {"train": 3, "val": 2}
    check_no_leakage(params, "fcn32s", root=tmp_path)  # the train stage's check passes
    shard = sorted((out / "train").glob("*.parquet"))[0]
    row = pq.read_table(shard).slice(0, 1)
    row = row.set_column(row.schema.get_field_index("id"), "id", pa.array(["renamed"]))
    pq.write_table(row, out / "val" / "part-99999-0.parquet")
    first = pq.read_table(shard).column("id")[0].as_py()
    with pytest.raises(DataError, match=rf"\(first: renamed = train {first}\)"):
        check_no_leakage(params, "fcn32s", root=tmp_path)
    shutil.rmtree(out / "val")
    with pytest.raises(DataError, match="no prepared Parquet shards"):
        check_no_leakage(params, "fcn32s", root=tmp_path)
