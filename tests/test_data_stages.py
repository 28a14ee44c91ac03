"""Per-dataset data stages: ``data.<name>`` params, raw data from every source, prepare, scripts."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml
from PIL import Image

from pipeline.data.datasets.registry import dataset_names as registry_names
from pipeline.data.sources.acquire import (
    LAYOUTS,
    acquire,
    build_list,
    check_splits,
    data_config,
    dataset_names,
    prepare_dataset,
    prepared_dir,
    raw_dir,
)
from pipeline.errors import DataError, ParamsError
from pipeline.params import Params

REPO = Path(__file__).resolve().parents[1]

# the data: section proposed for params.yaml (tiny builds voc + bsds from built-in data); the
# active set's `datasets` list is what dvc.yaml's download/prepare stages build
DATA_SECTION = """
run:
  train: {}
  datasets: [voc, bsds]
data:
  voc:
    source: {tiny: builtin, paper: url}
    local_path: null
    splits: {train: {tiny: train, paper: train}, val: {tiny: val, paper: seg11valid}}
    options: {}
    builtin: {num_train: 300, num_val: 100, size: 128, num_object_classes: 5, seed: 0}
  bsds:
    source: {tiny: builtin, paper: url}
    local_path: null
    splits: {train: train, val: val}
    options: {min_annotators: 3, ignore_ambiguous: false}
    builtin: {num_train: 60, num_val: 20, num_test: 0, height: 96, width: 128, seed: 0}
  voc_aug:
    source: url
    local_path: null
    splits: {train: train_aug, val: val}
    options: {}
    builtin: null
  voc_fcn:
    source: url
    local_path: null
    splits: {train: train, val: seg11valid}
    options: {}
    builtin: null
  sbd:
    source: url
    local_path: null
    splits: {train: train, val: val}
    options: {}
    builtin: null
  nyud:
    source: url
    local_path: null
    splits: {train: trainval, val: test}
    options: {crop: true, hha: true, hha_mask_missing: false}
    builtin: null
  siftflow:
    source: {tiny: builtin, paper: url}
    local_path: null
    splits: {train: trainval, val: test}
    options: {task: semantic}
    builtin: {num_trainval: 64, num_test: 24, height: 96, width: 96, seed: 0}
  context:
    source: url
    local_path: null
    splits: {train: train, val: val}
    options: {classes: 59}
    builtin: null
  context59:
    source: {tiny: builtin, paper: url}
    local_path: null
    splits: {train: train, val: val}
    options: {classes: 59}
    builtin: &context_builtin {num_train: 80, num_val: 24, height: 96, width: 128, seed: 0}
  context33:
    source: {tiny: builtin, paper: url}
    local_path: null
    splits: {train: train, val: val}
    options: {classes: 33}
    builtin: *context_builtin
"""


def _params(profile: str = "tiny", **overrides) -> Params:
    """The proposed data section; ``overrides`` replace ``data.<name>`` keys (``bsds={...}``)."""
    data = yaml.safe_load(DATA_SECTION)
    data["profile"] = profile
    for name, section in overrides.items():
        data["data"].setdefault(name, {}).update(section)
    return Params(data, "test-params.yaml")


# ------------------------------------------------------------------ params


def test_every_dataset_section_validates_in_both_profiles(tmp_path):
    assert set(dataset_names()) <= set(registry_names())
    for profile in ("tiny", "paper"):
        params = _params(profile)
        for name in dataset_names():
            config = data_config(params, name, root=tmp_path)
            assert config.splits and config.source in ("builtin", "url")
            if config.source == "builtin":
                config.builtin_spec()
        assert build_list(params) == ["voc", "bsds"]
    tiny, paper = _params("tiny"), _params("paper")
    assert data_config(tiny, "voc").source == "builtin"
    assert data_config(paper, "voc").splits == {"train": "train", "val": "seg11valid"}
    assert data_config(tiny, "nyud").dataset().hha_mask_missing is False


@pytest.mark.parametrize(
    ("name", "section", "key"),
    [
        ("bsds", {"source": "ftp"}, "data.bsds.source"),
        ("sbd", {"source": "builtin"}, "data.sbd.source"),
        ("siftflow", {"builtin": {"num_test": 0}}, "data.siftflow.builtin"),
        ("context33", {"options": {"classes": 59}}, "data.context33.options"),
        ("nyud", {"source": "builtin", "builtin": {"height": 16}}, "data.nyud.builtin"),
        ("nyud", {"source": "builtin", "builtin": {}}, "data.nyud.options.crop"),
        ("bsds", {"source": "local", "local_path": None}, "data.bsds.local_path"),
        ("bsds", {"source": "local", "local_path": "no/such/dir"}, "data.bsds.local_path"),
        ("bsds", {"splits": {"train": "training"}}, "data.bsds.splits.train"),
        ("bsds", {"splits": {}}, "data.bsds.splits"),
        ("bsds", {"splits": {"../x": "train"}}, "data.bsds.splits"),
        ("bsds", {"splits": "train"}, "data.bsds.splits"),
        ("bsds", {"options": {"min_annotators": 0}}, "data.bsds.options"),
        ("bsds", {"options": {"colour": True}}, "data.bsds.options"),
        ("bsds", {"builtin": {"num_train": 5, "pixels": 3}}, "data.bsds.builtin"),
        ("bsds", {"builtin": {"min_annotators": 7, "max_annotators": 6}}, "data.bsds.builtin"),
        ("voc", {"builtin": {"size": 64, "colours": 3}}, "data.voc.builtin"),
        ("siftflow", {"splits": {"train": "train"}}, "data.siftflow.splits.train"),
    ],
)
def test_bad_values_name_their_key(tmp_path, name, section, key):
    with pytest.raises(ParamsError, match=key.replace(".", r"\.")):
        data_config(_params(**{name: section}), name, root=tmp_path)


def test_unknown_or_missing_dataset_names_the_key():
    with pytest.raises(ParamsError, match=r"unknown dataset 'kitti'.*data\.kitti"):
        data_config(_params(), "kitti")
    data = yaml.safe_load(DATA_SECTION)
    del data["data"]["sbd"]
    with pytest.raises(ParamsError, match=r"data\.sbd"):
        data_config(Params(data), "sbd")
    data["run"]["datasets"] = ["voc", "kitti"]
    with pytest.raises(ParamsError, match=r"run\.datasets.*kitti"):
        build_list(Params(data))
    data["run"]["datasets"] = ["voc"]
    data["run"]["train"] = {"normals": {"dataset": "nyud"}, "edges": {"dataset": "bsds"}}
    with pytest.raises(ParamsError, match=r"run\.datasets.*bsds.*'edges'.*nyud.*'normals'"):
        build_list(Params(data))
    del data["run"]["datasets"]
    with pytest.raises(ParamsError, match=r"run\.datasets.*list"):
        build_list(Params(data))


def test_prepared_dir(tmp_path):
    params = _params()
    assert prepared_dir(params, "bsds", "val", tmp_path) == tmp_path / "data/prepared/bsds/val"
    assert prepared_dir(params, "voc", "train").parts[-3:] == ("prepared", "voc", "train")
    with pytest.raises(ParamsError, match=r"data\.bsds\.splits.*'test'"):
        prepared_dir(params, "bsds", "test")
    with pytest.raises(ParamsError, match="kitti"):
        prepared_dir(params, "kitti", "train")


# ------------------------------------------------------------------ sources


def test_builtin_bsds_acquire_and_prepare_with_ray(ray_local, tmp_path):
    small = {"num_train": 5, "num_val": 3, "height": 32, "width": 48}
    config = data_config(_params(bsds={"builtin": small}), "bsds")
    raw = raw_dir("bsds", tmp_path)
    root = acquire(config, raw, progress=False)
    assert root == raw / "BSR/BSDS500/data" and (root / "groundTruth/train").is_dir()
    assert check_splits(config, root) == {"train": 5, "val": 3}
    out = tmp_path / "data/prepared/bsds"
    assert prepare_dataset(config, raw, out, log=lambda _: None) == {"train": 5, "val": 3}
    table = pq.read_table(sorted((out / "val").glob("part-*.parquet")))
    assert table.num_rows == 3
    assert {"boundaries", "segmentations", "num_annotators"} <= set(table.column_names)
    label = np.asarray(Image.open(io.BytesIO(table.column("label")[0].as_py())))
    assert set(np.unique(label)) <= {0, 1} and label.any()
    # rerun: identical shards (DVC caches them)
    before = {p.name: p.read_bytes() for p in (out / "train").glob("*.parquet")}
    prepare_dataset(config, raw, out, log=lambda _: None)
    assert {p.name: p.read_bytes() for p in (out / "train").glob("*.parquet")} == before


def test_prepare_before_download_names_the_folder(tmp_path):
    config = data_config(_params(), "bsds")
    with pytest.raises(DataError, match=r"BSR/BSDS500/data.*download"):
        prepare_dataset(config, raw_dir("bsds", tmp_path), tmp_path / "out")


def test_local_bsds_is_linked_in_the_archive_layout(shared_data, tmp_path):
    local = {"source": "local", "local_path": str(shared_data / "BSDS500")}
    config = data_config(_params(bsds=local), "bsds")
    raw = tmp_path / "raw" / "bsds"
    root = acquire(config, raw, progress=False)
    assert (raw / LAYOUTS["bsds"].root).is_symlink()
    assert check_splits(config, root) == {"train": 200, "val": 100}
    acquire(config, raw, progress=False)  # a rerun replaces the link


def test_local_relative_path_and_other_layouts(shared_data, tmp_path):
    rel = os.path.relpath(shared_data / "VOC2012", tmp_path)
    config = data_config(
        _params(voc_aug={"source": "local", "local_path": rel}), "voc_aug", root=tmp_path
    )
    root = acquire(config, tmp_path / "raw" / "voc_aug", progress=False)
    assert (root / "SegmentationClassAug").is_dir()
    # the slice lists all 10,582 + 1,449 ids but holds 4 JPEGs: the count and the first few
    # missing files, up front (not "ready: train 10582" and a failure deep inside prepare)
    with pytest.raises(DataError, match=r"train_aug': 10579 of 10582 listed example\(s\)"):
        check_splits(config, root)
    sbd = {"source": "local", "local_path": str(shared_data / "SBD")}  # two levels above
    config = data_config(_params(sbd=sbd), "sbd")
    root = acquire(config, tmp_path / "raw" / "sbd", progress=False)
    assert root.resolve() == (shared_data / "SBD/benchmark_RELEASE/dataset").resolve()


def test_local_without_the_layout_is_a_data_error(tmp_path):
    (tmp_path / "empty").mkdir()
    config = data_config(
        _params(nyud={"source": "local", "local_path": str(tmp_path / "empty")}), "nyud"
    )
    with pytest.raises(DataError, match=r"data\.nyud\.local_path.*nyu_depth_v2_labeled\.mat"):
        acquire(config, tmp_path / "raw" / "nyud", progress=False)


def test_url_source_fetches_and_links_every_manifest_entry(tmp_path, monkeypatch):
    """url: each sources.yaml entry is fetched into data/raw/downloads and linked in place."""
    from pipeline.data.sources import download

    fetched = []

    def fake_fetch(name, root, progress=True):
        fetched.append(name)
        base = Path(root) / name / "extracted"
        (base / "JPEGImages").mkdir(parents=True, exist_ok=True)
        return Path(root) / name

    monkeypatch.setattr(download, "fetch", fake_fetch)
    monkeypatch.setattr(download, "dataset_dir", lambda name, root: Path(root) / name / "extracted")
    config = data_config(_params("paper"), "voc")
    raw = tmp_path / "data" / "raw" / "voc"
    root = acquire(config, raw, progress=False)
    assert fetched == ["voc2012"] and root == raw / "VOCdevkit/VOC2012"
    assert root.resolve() == (tmp_path / "data/raw/downloads/voc2012/extracted").resolve()


# ------------------------------------------------------------------ NYUD: HHA in the Ray map


def test_nyud_prepare_computes_hha_in_the_ray_map(ray_local, tmp_path):
    from test_parsers_nyud import _frames, write_labeled_mat

    from pipeline.data.datasets.nyud import GUPTA_CROP, NYUD, metres_to_mm
    from pipeline.data.encodings.hha import NYU_CAMERA, depth_to_hha
    from pipeline.data.prepare import prepare_split

    frames = _frames()
    write_labeled_mat(tmp_path / "nyu_depth_v2_labeled.mat", frames)
    import scipy.io

    map_class = ((np.arange(894) * 13) % 40 + 1).astype(np.uint8)[None, :]
    scipy.io.savemat(tmp_path / "classMapping40.mat", {"mapClass": map_class})
    (tmp_path / "train.txt").write_text("5001\n5002\n")
    assert prepare_split(NYUD(), tmp_path, "train", tmp_path / "out") == 2
    table = pq.read_table(sorted((tmp_path / "out").glob("*.parquet")))
    camera = NYU_CAMERA.crop(GUPTA_CROP[0].start, GUPTA_CROP[1].start)
    for row, frame in enumerate((0, 1)):
        depth_mm = metres_to_mm(frames["depth"][frame][GUPTA_CROP])
        raw_mm = metres_to_mm(frames["raw"][frame][GUPTA_CROP])
        expected = depth_to_hha(depth_mm / 1000.0, raw_mm / 1000.0, camera)
        hha = np.asarray(Image.open(io.BytesIO(table.column("hha")[row].as_py())))
        assert hha.shape == (425, 560, 3) and np.array_equal(hha, expected)


# ------------------------------------------------------------------ the stage scripts


def test_stage_scripts_download_and_prepare_bsds(tmp_path):
    """`python stages/download.py bsds` then `prepare.py bsds` in a scratch project."""
    params = yaml.safe_load(DATA_SECTION)
    params["profile"] = "tiny"
    params["data"]["bsds"]["builtin"] = {"num_train": 4, "num_val": 2, "height": 32, "width": 40}
    params["ray"] = {"num_cpus": 1, "object_store_mb": 100}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("DVC_ROOT", None)
    env.pop("RAY_ADDRESS", None)

    def run(*args):
        return subprocess.run(
            [sys.executable, *args], cwd=tmp_path, env=env, capture_output=True, text=True
        )

    done = run(str(REPO / "stages/download.py"), "bsds")
    assert done.returncode == 0, done.stderr[-2000:]
    assert (tmp_path / "data/raw/bsds/BSR/BSDS500/data/images/train").is_dir()
    done = run(str(REPO / "stages/prepare.py"), "bsds")
    assert done.returncode == 0, done.stderr[-2000:]
    for split, n in (("train", 4), ("val", 2)):
        files = sorted((tmp_path / "data/prepared/bsds" / split).glob("part-*.parquet"))
        assert pq.read_table(files).num_rows == n
    bad = run(str(REPO / "stages/download.py"), "kitti")
    assert bad.returncode != 0 and "data.kitti" in bad.stderr
    assert not (tmp_path / "data/raw/kitti").exists()


def test_voc_aug_url_builds_segmentation_class_aug(tmp_path, monkeypatch):
    """url for voc_aug: VOC2012 and SBD downloads, then train_aug + SegmentationClassAug."""
    import scipy.io

    from pipeline.data.builtin.voc import BuiltinSpec, write_builtin_voc
    from pipeline.data.sources import download

    downloads = tmp_path / "data" / "raw" / "downloads"
    voc = write_builtin_voc(downloads / "voc2012", BuiltinSpec(num_train=3, num_val=2, size=24))
    sbd = downloads / "sbd" / "benchmark_RELEASE" / "dataset"
    (sbd / "cls").mkdir(parents=True)
    (sbd / "img").mkdir()
    extra = "2001_000001"  # in SBD only: its label comes from cls/*.mat
    label = np.zeros((24, 24), np.uint8)
    label[5:10, 5:10] = 3
    scipy.io.savemat(sbd / "cls" / f"{extra}.mat", {"GTcls": {"Segmentation": label}})
    Image.fromarray(np.zeros((24, 24, 3), np.uint8)).save(voc / "JPEGImages" / f"{extra}.jpg")
    voc_train = (voc / "ImageSets/Segmentation/train.txt").read_text().split()
    voc_val = (voc / "ImageSets/Segmentation/val.txt").read_text().split()
    (sbd / "train.txt").write_text(f"{extra}\n{voc_val[0]}\n")  # VOC val never enters train_aug
    (sbd / "val.txt").write_text("")
    roots = {"voc2012": voc, "sbd": sbd}
    monkeypatch.setattr(download, "fetch", lambda name, root, progress=True: root / name)
    monkeypatch.setattr(download, "dataset_dir", lambda name, root: roots[name])

    config = data_config(_params(), "voc_aug")
    root = acquire(config, tmp_path / "data" / "raw" / "voc_aug", progress=False)
    assert root.name == "VOC2012" and not root.is_symlink()
    dataset = config.dataset()
    assert dataset.list_ids(root, "train_aug") == sorted([extra, *voc_train])
    assert check_splits(config, root) == {"train": 4, "val": 2}
    record = dataset.load_example(root, extra)
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(record["label"]))), label)
    voc_label = np.asarray(Image.open(voc / "SegmentationClass" / f"{voc_val[0]}.png"))
    aug = np.asarray(Image.open(root / "SegmentationClassAug" / f"{voc_val[0]}.png"))
    assert np.array_equal(aug, voc_label)  # VOC's own label (void borders) where VOC has one


# ------------------------------------------------------------------ voc_fcn (FCN's protocol)


def test_builtin_voc_fcn_writes_sbd_train_and_seg11valid(ray_local, tmp_path):
    """builtin voc_fcn: the built-in train split as an SBD release, its val split as seg11valid;
    both prepare, and the upper_bound stage's default labels are that seg11valid."""
    import json

    from pipeline.analysis.upper_bound import DEFAULT_METHOD
    from pipeline.data.datasets.sbd import load_sbd_label

    small = {"source": "builtin", "builtin": {"num_train": 4, "num_val": 3, "size": 32}}
    config = data_config(_params(voc_fcn=small), "voc_fcn")
    raw = raw_dir("voc_fcn", tmp_path)
    root = acquire(config, raw, progress=False)
    assert root == raw / "VOCdevkit/VOC2012"
    seg = root / "ImageSets/Segmentation"
    train, val = (seg / "train.txt").read_text().split(), (seg / "val.txt").read_text().split()
    dataset = config.dataset()
    assert dataset.sbd_dir(root) == raw / "benchmark_RELEASE/dataset"
    assert dataset.list_ids(root, "train") == train and len(train) == 4
    assert dataset.list_ids(root, "seg11valid") == val and len(val) == 3
    assert check_splits(config, root) == {"train": 4, "val": 3}
    for example_id in (train[0], val[0]):
        png = np.asarray(Image.open(root / "SegmentationClass" / f"{example_id}.png"))
        record = dataset.load_example(root, example_id)
        assert np.array_equal(np.asarray(Image.open(io.BytesIO(record["label"]))), png)
    mat = raw / "benchmark_RELEASE/dataset/cls" / f"{train[0]}.mat"
    png = np.asarray(Image.open(root / "SegmentationClass" / f"{train[0]}.png"))
    assert np.array_equal(load_sbd_label(mat), png)  # the train label comes from the .mat
    # the same images as voc_aug's built-in set
    aug = acquire(data_config(_params(voc_aug=small), "voc_aug"), tmp_path / "aug", progress=False)
    for example_id in (train[0], val[0]):
        name = f"JPEGImages/{example_id}.jpg"
        assert (aug / name).read_bytes() == (root / name).read_bytes()
    out = tmp_path / "data/prepared/voc_fcn"
    assert prepare_dataset(config, raw, out, log=lambda _: None) == {"train": 4, "val": 3}
    table = pq.read_table(sorted((out / "train").glob("part-*.parquet")))
    assert sorted(table.column("id").to_pylist()) == sorted(train)
    # stages/upper_bound.py with labels/split null: voc_fcn's seg11valid labels
    params = {
        "profile": "tiny",
        "data": {"voc_fcn": {"source": {"tiny": "builtin", "paper": "url"}}},
        "upper_bound": {"labels": None, "split": None, "factors": [8]},
    }
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("DVC_ROOT", None)
    done = subprocess.run(
        [sys.executable, str(REPO / "stages/upper_bound.py")],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    upper = json.loads((tmp_path / "metrics/upper_bound.json").read_text())
    assert upper["source"] == "voc_fcn seg11valid labels (builtin)"
    assert upper["methods"][DEFAULT_METHOD]["num_images"] == 3


def test_voc_fcn_url_downloads_voc_sbd_and_the_seg11valid_list(tmp_path, monkeypatch):
    """url for voc_fcn against a loopback server: the real manifest entries (their layouts and
    archive kinds) with loopback URLs; FCN's list lands in the VOC folder's ImageSets."""
    from loopback import LoopbackServer
    from test_download import Built, build_sbd, build_voc2012, loopback_source, publish

    from pipeline.data.datasets.sbd import load_sbd_label
    from pipeline.data.sources import download

    www = tmp_path / "www"
    voc_ids, sbd_train = ["2012_000003", "2012_000007"], "2008_000002"  # the builders' ids
    seg11 = "\n".join(voc_ids).encode() + b"\n"
    built = {
        "voc2012": build_voc2012(),
        "sbd": build_sbd(),
        "fcn_seg11valid": Built({"seg11valid.txt": seg11}, ["seg11valid.txt"]),
    }
    with LoopbackServer(www) as server:
        for name, files in built.items():
            publish(www, name, files)
        manifest = download.Manifest(
            {name: loopback_source(name, server, files) for name, files in built.items()}
        )
        monkeypatch.setattr(download, "load_manifest", lambda path=None: manifest)
        config = data_config(_params(), "voc_fcn")
        raw = tmp_path / "data" / "raw" / "voc_fcn"
        root = acquire(config, raw, progress=False)
        assert acquire(config, raw, progress=False) == root  # a rerun relinks in place
        for name, files in built.items():
            (filename,) = files.files
            assert len(server.requests_for(f"{name}/{filename}")) == 1, name
    assert root == raw / "VOCdevkit/VOC2012" and not root.is_symlink()
    assert (root / "ImageSets/Segmentation/seg11valid.txt").read_bytes() == seg11
    assert (root / "ImageSets/Segmentation/val.txt").is_file()  # VOC's own lists copied too
    dataset = config.dataset()
    assert dataset.sbd_dir(root) == raw / "benchmark_RELEASE/dataset"
    assert dataset.list_ids(root, "train") == [sbd_train]
    assert dataset.list_ids(root, "seg11valid") == voc_ids
    assert check_splits(config, root) == {"train": 1, "val": 2}
    record = dataset.load_example(root, sbd_train)
    label = load_sbd_label(raw / "benchmark_RELEASE/dataset/cls" / f"{sbd_train}.mat")
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(record["label"]))), label)
    record = dataset.load_example(root, voc_ids[1])
    assert record["label"] == (root / "SegmentationClass" / f"{voc_ids[1]}.png").read_bytes()
    assert np.asarray(Image.open(io.BytesIO(record["label"])))[0, 0] == 255  # VOC's void
