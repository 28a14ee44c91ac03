"""Training that survives: a worker killed with SIGKILL mid-run is restarted by Ray Train
(``max_failures``) and resumes from the last checkpoint, ending with exactly the weights of an
uninterrupted run (issue: training that survives failures).

Dropout and mirror/jitter augmentation are on, so the restored random states (torch, numpy, the
sampling generator) and the skipped batches of the interrupted epoch all have to be right.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest
import torch

from pipeline.data.prepare import read_prepared
from pipeline.training.loop import TrainConfig, train, train_loop

pytestmark = pytest.mark.slow


def killed_once(storage: Path, marker: Path):
    """``train_loop``, but the first worker to run it kills its own process (SIGKILL) once Ray
    Train has deleted a checkpoint folder: it does so (``num_to_keep=1``) only after registering
    a newer one, so a registered checkpoint exists. A real, unannounced worker death."""

    def loop(cfg: dict) -> None:
        if not marker.exists():
            marker.write_text(str(os.getpid()))

            def kill_once_a_checkpoint_is_registered() -> None:
                seen: set[str] = set()
                while True:
                    now = {p.parent.name for p in storage.rglob("state.pt")}
                    if seen - now:
                        break
                    seen |= now
                    time.sleep(0.02)
                os.kill(os.getpid(), signal.SIGKILL)

            threading.Thread(target=kill_once_a_checkpoint_is_registered, daemon=True).start()
        train_loop(cfg)

    return loop


def config(out: Path) -> TrainConfig:
    return TrainConfig(
        model="fcn32s",
        num_classes=21,
        out_dir=str(out),
        model_options={"width": 0.0625, "dropout": 0.5},
        optimizer="sgd",
        lr=1e-3,
        momentum=0.9,
        batch_size=2,
        iterations=12,  # 3 epochs of 4 steps: checkpoints at steps 4, 6 (mid-epoch), 8, 12
        loss_reduction="pixel",
        augment={"mirror": True, "jitter": 4},
        seed=3,
    )


def test_a_killed_worker_resumes_and_ends_with_the_uninterrupted_weights(prepared_voc8, tmp_path):
    data = {"train": read_prepared(prepared_voc8 / "train")}
    common = {"num_workers": 1, "cpus_per_worker": 0.5, "checkpoint_every": 6}
    train(config(tmp_path / "whole"), data, storage_path=str(tmp_path / "r1"), name="w", **common)
    storage, marker = tmp_path / "r2", tmp_path / "killed"
    train(
        config(tmp_path / "resumed"),
        data,
        storage_path=str(storage),
        name="k",
        max_failures=1,
        loop=killed_once(storage, marker),
        **common,
    )
    assert marker.exists()  # the first worker did run, and died
    history = json.loads((tmp_path / "resumed" / "history.json").read_text())
    resumed = [h["step"] for h in history if h.get("resumed")]
    assert len(resumed) == 1 and 4 <= resumed[0] < 12  # from a checkpoint, not from step 0
    whole = json.loads((tmp_path / "whole" / "history.json").read_text())
    assert [h["loss"] for h in history if "loss" in h] == [h["loss"] for h in whole if "loss" in h]
    a = torch.load(tmp_path / "whole" / "model.pt", weights_only=True)
    b = torch.load(tmp_path / "resumed" / "model.pt", weights_only=True)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert not (storage / "k").exists()  # a finished run leaves nothing to resume
