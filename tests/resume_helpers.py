"""The fault-tolerance tests' training config and worker killer (importable by Ray workers)."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

from pipeline.training.loop import TrainConfig, train_loop


def registered_checkpoint(storage: Path, seen: set[str]) -> bool:
    """True once Ray Train has deleted a checkpoint folder: it does so (``num_to_keep=1``) only
    after registering a newer one, so a registered checkpoint exists. ``seen`` accumulates."""
    now = {p.parent.name for p in storage.rglob("state.pt")}
    gone = bool(seen - now)
    seen |= now
    return gone


def killed_once(storage: Path, marker: Path):
    """``train_loop``, but the first worker to run it kills its own process (SIGKILL) once a
    checkpoint is registered: a real, unannounced worker death."""

    def loop(cfg: dict) -> None:
        if not marker.exists():
            marker.write_text(str(os.getpid()))

            def kill_once_a_checkpoint_is_registered() -> None:
                seen: set[str] = set()
                while not registered_checkpoint(storage, seen):
                    time.sleep(0.02)
                os.kill(os.getpid(), signal.SIGKILL)

            threading.Thread(target=kill_once_a_checkpoint_is_registered, daemon=True).start()
        train_loop(cfg)

    return loop


def config(out: Path, iterations: int = 12) -> TrainConfig:
    """Dropout and mirror/jitter augmentation on, so the restored random states (torch, numpy,
    the sampling generator) and the skipped batches of an interrupted epoch all matter."""
    return TrainConfig(
        model="fcn32s",
        num_classes=21,
        out_dir=str(out),
        model_options={"width": 0.0625, "dropout": 0.5},
        optimizer="sgd",
        lr=1e-3,
        momentum=0.9,
        batch_size=2,
        iterations=iterations,
        loss_reduction="pixel",
        augment={"mirror": True, "jitter": 4},
        seed=3,
    )
