"""A killed `dvc repro` resumes (issue 15.3): SIGKILL the driver of `train@fcn32s` in a scratch
project (the default `ray.num_workers: 0`: the loop runs in the driver) once a checkpoint is on
disk; the rerun resumes from it, never leaves `models/` half written, and a changed config
never resumes the stale run."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
import yaml
from tests_helpers import scratch_project

from pipeline.data.builtin.voc import BuiltinSpec, write_builtin_voc
from pipeline.data.datasets.voc import VOC
from pipeline.data.prepare import prepare_split
from pipeline.models.vgg import VGG16Classifier
from pipeline.training.loop import LOCAL_CHECKPOINT, STATE_FILE

pytestmark = pytest.mark.slow
ITERATIONS = 24  # 8 images, batch 2: 4-step epochs, a checkpoint every 4 steps


def tiny(params: dict) -> dict:
    entry = params["experiments"]["all"]["train"]["fcn32s"]
    entry["train"] = {"iterations": {"tiny": ITERATIONS, "paper": 100000}, "val_every": 0}
    params["run"] = {"train": {"fcn32s": entry}, "crf": [], "datasets": ["voc_fcn"], "sweeps": {}}
    params["model"]["width"] = {"tiny": 0.0625, "paper": 1.0}
    params["train"]["common"]["batch_size"] = {"tiny": 2, "paper": 1}
    params["ray"]["object_store_mb"] = 150
    params["ray"]["checkpoint_every"] = 4
    params["ray"]["num_workers"] = 0  # the default: Ray Train's local mode, in the driver
    return params


def repro(root: Path, env: dict, **kw) -> subprocess.Popen:
    cmd = ["dvc", "repro", "--single-item", "train@fcn32s"]
    return subprocess.Popen(
        cmd, cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kw
    )


def test_a_killed_repro_resumes_and_a_changed_config_does_not(ray_local, tmp_path):
    root, env = scratch_project(tmp_path / "project", tiny, "killed-driver")
    raw = write_builtin_voc(tmp_path / "raw", BuiltinSpec(num_train=8, num_val=2, size=40), False)
    for split in ("train", "val"):
        prepare_split(VOC(), raw, split, root / "data" / "prepared" / "voc_fcn" / split)
    (root / "models" / "backbone").mkdir(parents=True)
    torch.save(
        VGG16Classifier(21, width=0.0625).state_dict(), root / "models/backbone/classifier.pt"
    )

    driver = repro(root, env, start_new_session=True)
    deadline = time.monotonic() + 240
    while not any((root / "ray_results").glob(f"*/{LOCAL_CHECKPOINT}/{STATE_FILE}")):
        assert driver.poll() is None, f"finished before a checkpoint:\n{driver.stdout.read()}"
        assert time.monotonic() < deadline, "no checkpoint registered in 240 s"
        time.sleep(0.05)
    os.killpg(driver.pid, signal.SIGKILL)  # dvc, the stage and the Ray it started
    driver.wait()
    assert not (root / "models" / "fcn32s" / "model.pt").exists(), "a killed run left an output"

    resumed = repro(root, env)
    out, _ = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, out[-3000:]
    marks = [line for line in out.splitlines() if "resumed at step" in line]
    assert marks, out[-3000:]
    step = int(marks[0].split("resumed at step")[1].split(",")[0])
    assert 0 < step < ITERATIONS
    assert (root / "models" / "fcn32s" / "model.pt").is_file()

    # another lr is another run: it must start from step 0, never from the stale checkpoint
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["run"]["train"]["fcn32s"]["train"]["lr"] = 2.0e-3
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    fresh = repro(root, env)
    out, _ = fresh.communicate(timeout=300)
    assert fresh.returncode == 0, out[-3000:]
    assert "resumed at step" not in out
