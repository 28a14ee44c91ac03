"""The paper profile's guard rails: trial limits, batches that can never form, a backbone that
reads no data it does not pretrain on, and expected errors as one line (issue: paper profile)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import yaml
from tests_helpers import REPO

from pipeline.data.sources.acquire import build_list, check_splits, data_config
from pipeline.errors import DataError, ParamsError
from pipeline.experiment import check_batch_fits, check_scales_fit, prepared_split, train_config
from pipeline.models.weights import read_state_dict
from pipeline.params import Params, trial_limits
from pipeline.runtime.console import expected_error, limits_banner


def repo_params(profile: str = "tiny", **sections) -> Params:
    data = yaml.safe_load((REPO / "params.yaml").read_text())
    data["profile"] = profile
    for key, value in sections.items():
        data[key] = value
    return Params(data)


def write_split(root: Path, dataset: str, split: str, rows: int) -> None:
    folder = root / "data" / "prepared" / dataset / split
    folder.mkdir(parents=True)
    ids = [f"{i:04d}" for i in range(rows)]
    pq.write_table(pa.table({"id": ids}), folder / "part-00000-0.parquet")


def test_limits_are_validated_and_named():
    assert trial_limits(repo_params()) == dict.fromkeys(
        ("iterations", "batch_size", "train_images", "eval_images")
    )
    for bad, key in (({"iterations": 0}, "limits.iterations"), ({"eval_images": 2.5}, "eval")):
        with pytest.raises(ParamsError, match=key):
            trial_limits(repo_params(limits=bad))
    with pytest.raises(ParamsError, match="unknown key"):
        trial_limits(repo_params(limits={"epochs": 1}))


def test_limits_cap_steps_batch_and_validation_only_when_set():
    plain = train_config(repo_params("paper"), "deeplab-largefov")
    assert (plain.iterations, plain.batch_size, plain.max_val_images) == (6000, 20, 0)
    limits = {"iterations": 2, "batch_size": 4, "eval_images": 3}
    capped = train_config(repo_params("paper", limits=limits), "deeplab-largefov")
    assert (capped.iterations, capped.batch_size, capped.max_val_images) == (2, 4, 3)
    assert "NOT a result" in limits_banner(limits) and limits_banner({}) is None


def test_a_batch_that_cannot_form_is_an_error_naming_the_key(tmp_path):
    params = repo_params("paper")
    write_split(tmp_path, "voc_aug", "train", 4)
    config = train_config(params, "deeplab-largefov", root=tmp_path)
    start = time.perf_counter()
    with pytest.raises(ParamsError) as err:
        check_batch_fits(params, "deeplab-largefov", config, num_workers=0, root=tmp_path)
    assert time.perf_counter() - start < 1.0
    message = str(err.value)
    assert "experiments.deeplab-largefov.train.batch_size = 20" in message
    assert "4 image(s)" in message and "voc_aug" in message
    # the same split feeds a batch of 4, and trial limits can shrink the batch to fit
    trial = repo_params("paper", limits={"batch_size": 4})
    config = train_config(trial, "deeplab-largefov", root=tmp_path)
    assert check_batch_fits(trial, "deeplab-largefov", config, 0, root=tmp_path) == 4
    # data parallel: each of 2 workers needs half the batch from its half of the split
    write_split(tmp_path, "voc_fcn", "train", 9)
    fcn = train_config(repo_params("tiny"), "fcn32s", root=tmp_path)  # tiny batch 10
    with pytest.raises(ParamsError, match=r"batch_size = 10 .* 9 image\(s\) for 2 workers"):
        check_batch_fits(repo_params("tiny"), "fcn32s", fcn, num_workers=2, root=tmp_path)
    with pytest.raises(ParamsError, match="batch_size = 10 is not divisible by ray.num_workers"):
        check_batch_fits(repo_params("tiny"), "fcn32s", fcn, num_workers=3, root=tmp_path)


def test_eval_images_caps_every_scored_split(tmp_path):
    write_split(tmp_path, "voc_fcn", "val", 7)
    write_split(tmp_path, "voc_fcn", "train", 7)
    params = repo_params(limits={"eval_images": 3})
    assert prepared_split(params, "fcn32s", "val", root=tmp_path).num_rows == 3
    assert prepared_split(params, "fcn32s", "train", root=tmp_path).num_rows == 7
    assert prepared_split(repo_params(), "fcn32s", "val", root=tmp_path).num_rows == 7


def test_backbone_needs_its_dataset_only_when_it_pretrains():
    bsds_only = {"train": {}, "crf": [], "datasets": ["bsds"], "sweeps": {}}
    paper = repo_params("paper", run=bsds_only)  # backbone.source: imagenet under paper
    assert build_list(paper) == ["bsds"]
    tiny = repo_params("tiny", run=bsds_only)  # pretrain on voc_aug: the set must hold it
    with pytest.raises(ParamsError, match=r"voc_aug \(for backbone.dataset\)"):
        build_list(tiny)
    dvc = yaml.safe_load((REPO / "dvc.yaml").read_text())
    assert "data/prepared" in dvc["stages"]["backbone"]["deps"]
    assert not any("${backbone.dataset}" in d for d in dvc["stages"]["backbone"]["deps"])


def test_bad_backbone_weights_name_backbone_weights(tmp_path):
    with pytest.raises(ParamsError, match=r"^backbone.weights must be the path"):
        read_state_dict(None, "backbone.weights")
    with pytest.raises(ParamsError, match=r"^backbone.weights: no such weights file"):
        read_state_dict(tmp_path / "missing.pt", "backbone.weights")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ParamsError, match=r"^backbone.weights: cannot read .*junk.pt"):
        read_state_dict(tmp_path / "junk.pt", "backbone.weights")
    torch.save({"w": torch.zeros(2)}, tmp_path / "ok.pt")
    assert set(read_state_dict(tmp_path / "ok.pt", "backbone.weights")) == {"w"}


def test_errors_from_ray_tasks_are_found_behind_their_wrapper(ray_local):
    def fail():
        raise DataError("data/raw/x/broken.png: cannot decode")

    with pytest.raises(Exception) as err:
        ray_local.get(ray_local.remote(fail).remote())
    found = expected_error(err.value)
    assert type(found) is DataError and str(found) == "data/raw/x/broken.png: cannot decode"
    assert expected_error(ValueError("a bug")) is None
    try:
        try:
            raise ParamsError("model.width must be > 0")
        except ParamsError as inner:
            raise RuntimeError("worker group failed") from inner
    except RuntimeError as outer:
        assert str(expected_error(outer)) == "model.width must be > 0"


STAGE = """
from pipeline.errors import ParamsError
from pipeline.runtime.console import run_stage

def main():
    raise ParamsError("backbone.weights: no such weights file /nowhere.pt")

run_stage(main)
"""


@pytest.mark.parametrize("debug", [False, True])
def test_an_expected_error_is_one_line_and_a_nonzero_exit(tmp_path, debug):
    env = {"PATH": "/usr/bin:/bin", "DVC_STAGE": "backbone"}
    if debug:
        env["DENSEPIPE_DEBUG"] = "1"
    result = subprocess.run(
        [sys.executable, "-c", STAGE], capture_output=True, text=True, env=env, cwd=REPO
    )
    assert result.returncode != 0
    if debug:
        assert "Traceback" in result.stderr
        return
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert lines[0] == "error (backbone): backbone.weights: no such weights file /nowhere.pt"
    assert len(lines) == 2 and "DENSEPIPE_DEBUG=1" in lines[1]


def test_download_checks_every_listed_file_up_front(tmp_path):
    """A local copy with 2 of 5 JPEGs: the download stage's split check names the count and the
    first missing files (before, `prepare` failed inside Ray on the first one)."""
    voc = tmp_path / "VOC2012"
    ids = [f"2011_00000{i}" for i in range(5)]
    for folder in ("JPEGImages", "SegmentationClassAug", "ImageSets/Segmentation"):
        (voc / folder).mkdir(parents=True)
    (voc / "ImageSets/Segmentation/train_aug.txt").write_text("\n".join(ids) + "\n")
    held = "2011_000009"  # a val image outside train_aug (the leakage guard checks that)
    (voc / "ImageSets/Segmentation/val.txt").write_text(held + "\n")
    for i in [*ids, held]:
        (voc / "SegmentationClassAug" / f"{i}.png").write_bytes(b"")
    (voc / "JPEGImages" / f"{held}.jpg").write_bytes(b"")
    for i in ids[:2]:
        (voc / "JPEGImages" / f"{i}.jpg").write_bytes(b"")
    data = yaml.safe_load((REPO / "params.yaml").read_text())
    data["data"]["voc_aug"].update(source="local", local_path=str(voc))
    config = data_config(Params(data), "voc_aug")
    with pytest.raises(DataError) as err:
        check_splits(config, voc)
    message = str(err.value)
    assert "voc_aug split 'train_aug': 3 of 5 listed example(s) have missing files" in message
    assert str(voc / "JPEGImages" / f"{ids[2]}.jpg") in message
    for i in ids[2:]:
        (voc / "JPEGImages" / f"{i}.jpg").write_bytes(b"")
    assert check_splits(config, voc) == {"train": 5, "val": 1}


def test_fcn_alexnet_never_trains_from_scratch_on_a_vgg16_file():
    backbone = yaml.safe_load((REPO / "params.yaml").read_text())["backbone"]
    params = repo_params("paper", backbone={**backbone, "source": "file", "weights": "v.pt"})
    with pytest.raises(ParamsError, match="needs ImageNet alexnet weights"):
        train_config(params, "fcn32s-alexnet")
    assert train_config(params, "fcn32s").init.endswith("models/backbone/classifier.pt")
    assert train_config(repo_params("paper"), "fcn32s-alexnet").init == "imagenet"


def test_multistep_milestones_are_validated():
    data = yaml.safe_load((REPO / "params.yaml").read_text())
    data["profile"] = "paper"
    entry = data["experiments"]["default"]["train"]["pixelnet-seg"]
    assert train_config(Params(data), "pixelnet-seg").lr_milestones == [80000, 88000]
    entry["train"] = {**entry["train"], "lr_milestones": [88000, 80000]}
    with pytest.raises(ParamsError, match=r"pixelnet-seg.train.lr_milestones must be increasing"):
        train_config(Params(data), "pixelnet-seg")


def test_a_training_scale_below_the_trunks_minimum_is_an_error_naming_the_key(tmp_path):
    """PixelNet with fc7 needs 32 px (five floor-mode pools): the built-in 96x128 Context images
    at 0.25x are 24x32, which stopped a `run: *all` inside a Ray worker; now a ParamsError
    before Ray starts, naming the key, the dataset and the sizes. Models that pad (FCN) pass."""
    folder = tmp_path / "data" / "prepared" / "context59" / "train"
    folder.mkdir(parents=True)
    sizes = {"id": ["a", "b"], "height": [96, 120], "width": [128, 160]}
    pq.write_table(pa.table(sizes), folder / "part-00000-0.parquet")
    name = "pixelnet-seg-conv7-0_25-0_5"
    params = repo_params("paper")  # 0.25x and 0.5x
    config = train_config(params, name, root=tmp_path)
    with pytest.raises(ParamsError) as err:
        check_scales_fit(params, name, config, root=tmp_path)
    message = str(err.value)
    assert f"experiments.{name}.train.augment.scales = [0.25, 0.5]" in message
    assert "'context59'" in message and "(96 px) becomes 24 px, below the 32-pixel" in message
    tiny = repo_params("tiny")  # 0.34x: 33 px
    check_scales_fit(tiny, name, train_config(tiny, name, root=tmp_path), root=tmp_path)
    base = "pixelnet-seg"  # conv-5 hypercolumn (16 px), no rescaling
    check_scales_fit(params, base, train_config(params, base, root=tmp_path), root=tmp_path)
