"""The paper profile end to end, as a user tries it on a laptop (`make smoke-paper`).

Full-width models, ``profile: paper``, the trial limits, real data from ``../shared/data``:
BSDS500 for PixelNet edges (+ Canny), the VOC2012 JPEGs + labels and SBD for FCN-32s
(``voc_fcn``) and DeepLab-LargeFOV + CRF (``voc_aug``), the backbone from a local state-dict
file. The small split lists the run needs are written in a scratch copy, never in the repo.
Asserts every stage ran and every metric file exists; ``make test`` leaves it out (marker
``paper_smoke``: minutes of full-width CPU work), `.ci/run` runs it after the suite.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import torch
import torchvision
from tests_helpers import scratch_project

pytestmark = pytest.mark.paper_smoke

RUN = ("fcn32s", "deeplab-largefov", "pixelnet-edges")
VOC_TRAIN = ["2011_000003", "2011_000006", "2011_000025"]  # in train_aug, JPEGs in the slice
VOC_VAL = ["2007_000129"]  # VOC2012 val and FCN's seg11valid, with a SegmentationClass PNG


def link(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.symlink_to(src)


def scratch_voc(shared: Path, out: Path) -> Path:
    """A VOC2012 folder of the slice's four images, with DeepLab's and FCN's split lists."""
    voc, src = out / "VOC2012", shared / "VOC2012"
    for i in VOC_TRAIN + VOC_VAL:
        link(src / "JPEGImages" / f"{i}.jpg", voc / "JPEGImages" / f"{i}.jpg")
        link(src / "SegmentationClassAug" / f"{i}.png", voc / "SegmentationClassAug" / f"{i}.png")
    for i in VOC_VAL:
        link(src / "SegmentationClass" / f"{i}.png", voc / "SegmentationClass" / f"{i}.png")
    lists = voc / "ImageSets" / "Segmentation"
    lists.mkdir(parents=True)
    (lists / "train_aug.txt").write_text("\n".join(VOC_TRAIN) + "\n")
    for name in ("val.txt", "seg11valid.txt"):
        (lists / name).write_text("\n".join(VOC_VAL) + "\n")
    # SBD beside VOC: its 2 images as voc_fcn's train split (the slice lists them as val)
    sbd, sbd_src = out / "SBD" / "benchmark_RELEASE" / "dataset", shared / "SBD"
    ids = sorted(p.stem for p in (sbd_src / "benchmark_RELEASE/dataset/img").glob("*.jpg"))
    for i in ids:
        for folder, ext in (("img", "jpg"), ("cls", "mat")):
            src = sbd_src / "benchmark_RELEASE" / "dataset" / folder / f"{i}.{ext}"
            link(src, sbd / folder / f"{i}.{ext}")
    (sbd / "train.txt").write_text("\n".join(ids) + "\n")
    (sbd / "val.txt").write_text("")
    return voc


def scratch_bsds(shared: Path, out: Path) -> Path:
    """BSDS500 with 2 train and 1 val image (the archive's layout)."""
    root, src = out / "BSDS500" / "data", shared / "BSDS500" / "data"
    for split, count in (("train", 2), ("val", 1)):
        for image in sorted((src / "images" / split).glob("*.jpg"))[:count]:
            link(image, root / "images" / split / image.name)
            gt = src / "groundTruth" / split / f"{image.stem}.mat"
            link(gt, root / "groundTruth" / split / gt.name)
    (root / "images" / "test").mkdir()
    return out / "BSDS500"


def paper_trial(params: dict, voc: Path, bsds: Path, weights: Path) -> dict:
    """The edits README's "Trying the paper profile on a laptop" lists."""
    params["profile"] = "paper"
    params["limits"] = {"iterations": 1, "batch_size": 2, "train_images": 2, "eval_images": 1}
    for name in ("voc_aug", "voc_fcn"):
        params["data"][name].update(source="local", local_path=str(voc))
    params["data"]["bsds"].update(source="local", local_path=str(bsds))
    params["backbone"].update(source="file", weights=str(weights))
    declared = params["experiments"]["all"]["train"]
    params["run"] = {
        "train": {k: declared[k] for k in RUN},
        "crf": ["deeplab-largefov"],
        "datasets": ["voc_aug", "voc_fcn", "bsds"],
        "sweeps": {},
    }
    # the paper's 405-point CRF grid is hours of CPU: one point per round on a laptop
    params["crf"]["search"]["coarse"] = {"w1": [5], "sigma_alpha": [50], "sigma_beta": [3]}
    params["crf"]["search"]["radius"] = 0
    params["evaluate"]["edges"]["n_thresholds"] = 9
    params["ray"]["object_store_mb"] = 300
    return params


@pytest.fixture(scope="module")
def smoke(shared_data, tmp_path_factory):
    scratch = tmp_path_factory.mktemp("paper-smoke")
    torch.manual_seed(0)  # a stand-in for ImageNet VGG16 (no download here): same shapes
    weights = scratch / "vgg16.pt"
    torch.save(torchvision.models.vgg16().state_dict(), weights)
    voc, bsds = scratch_voc(shared_data, scratch / "data"), scratch_bsds(shared_data, scratch)
    root, env = scratch_project(
        scratch / "repo", lambda p: paper_trial(p, voc, bsds, weights), "paper-smoke"
    )
    result = subprocess.run(["dvc", "repro"], cwd=root, env=env, capture_output=True, text=True)
    log = result.stdout + result.stderr
    (scratch / "repro.log").write_text(log)
    assert result.returncode == 0, f"dvc repro failed (log {scratch / 'repro.log'}):\n{log[-6000:]}"
    return root, log


def test_every_stage_ran(smoke):
    root, log = smoke
    ran = {line.split("'")[1] for line in log.splitlines() if line.startswith("Running stage")}
    expected = {f"{s}@{d}" for s in ("download", "prepare") for d in ("voc_aug", "voc_fcn", "bsds")}
    expected |= {f"{s}@{e}" for s in ("train", "evaluate") for e in RUN}
    expected |= {f"{s}@deeplab-largefov" for s in ("predict", "crf_search", "crf")}
    expected |= {"backbone", "edges_baseline", "upper_bound", "report"}
    assert ran == expected


def test_every_metric_file_exists_and_says_it_is_a_trial(smoke):
    root, log = smoke
    for name in (*RUN, "deeplab-largefov-crf", "canny", "upper_bound"):
        assert (root / "metrics" / f"{name}.json").is_file(), name
    for name in RUN:
        metrics = json.loads((root / "metrics" / f"{name}.json").read_text())
        assert metrics["num_images"] == 1 and metrics["limits"]["eval_images"] == 1
    fcn = json.loads((root / "models" / "fcn32s" / "config.json").read_text())
    assert fcn["model_options"]["width"] == 1.0 and fcn["iterations"] == 1
    assert "TRIAL RUN" in log
    report = (root / "reports" / "results.md").read_text()
    assert "TRIAL RUN (limits:" in report and "profile `paper`" in report
    assert "data: bsds (`local`)" in report
