"""What one checkpoint costs a full-width FCN-8s run, beside the training step it interrupts.

A checkpoint is the full training state (weights, SGD momentum, scheduler, counters, history,
random states: ``pipeline.training.loop._state`` / ``_report``) written with ``torch.save`` to a
temporary folder, then copied onto the run's storage folder: by Ray Train (``num_workers`` >= 1)
or by the loop itself (``keep_checkpoint``, local mode). This benchmark times exactly that path,
the save and the copy, on a full-width FCN-8s (VGG16, 21 classes) whose optimizer has stepped
once (so its momentum buffers exist), and one SGD step on a 500x375 image with the same model,
side by side in one run, and prints the ratio and the ``ray.checkpoint_every`` that keeps the
checkpoints' share of wall time under 1%.

    .venv/bin/python benchmarks/bench_checkpoint.py [--storage DIR] [--saves 3] [--steps 2]

``--storage`` should be where checkpoints go in real runs (``ray_results/`` of the project, or a
cluster's shared storage): the copy is disk-bound and a network filesystem is slower.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from pipeline.models import build_model
from pipeline.training.loop import STATE_FILE, _report, _state, keep_checkpoint
from pipeline.training.losses import pixel_loss


class _Session:
    """The loop's view of a one-worker run that keeps its checkpoint itself (local mode)."""

    rank, world, node = 0, 1, "bench"

    def __init__(self, target: Path):
        self.target = target

    def report(self, metrics: dict, folder: str | None = None) -> None:
        if folder is not None:
            keep_checkpoint(folder, self.target)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--storage", default=None, help="checkpoint folder (default: a temp dir)")
    parser.add_argument("--saves", type=int, default=3, help="timed checkpoints")
    parser.add_argument("--steps", type=int, default=2, help="timed SGD steps (after a warm-up)")
    args = parser.parse_args()

    torch.manual_seed(0)
    net = build_model("fcn8s", 21)
    optimizer = torch.optim.SGD(net.parameters(), lr=1e-10, momentum=0.99)
    x = torch.randn(1, 3, 375, 500)
    y = torch.randint(0, 21, (1, 375, 500))

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        total, norm = pixel_loss(net(x), y, "softmax", "pixel", None)
        (total / norm).backward()
        optimizer.step()

    step()  # warm-up; creates the momentum buffers a checkpoint carries
    t0 = time.perf_counter()
    for _ in range(args.steps):
        step()
    step_s = (time.perf_counter() - t0) / args.steps

    scratch = None if args.storage else tempfile.TemporaryDirectory(prefix="densepipe-ckpt-")
    storage = Path(args.storage or scratch.name)
    session = _Session(storage / "local_checkpoint")
    generators = (np.random.default_rng(0), torch.Generator().manual_seed(0))
    history = [{"step": i, "loss": 1.0} for i in range(1000)]
    times = []
    for i in range(args.saves):
        t0 = time.perf_counter()
        state = _state(net, optimizer, None, i, 0, 0, 0, history, time.time())
        _report(session, state, generators)
        times.append(time.perf_counter() - t0)
    save_s = float(np.median(times))
    size_mb = (session.target / STATE_FILE).stat().st_size / 2**20
    params = sum(p.numel() for p in net.parameters())
    every = int(np.ceil(save_s / (0.01 * step_s)))
    print(f"full-width FCN-8s: {params / 1e6:.1f} M parameters, checkpoint {size_mb:.0f} MB")
    print(f"SGD step 500x375 fp32 (this CPU, {torch.get_num_threads()} threads): {step_s:.2f} s")
    print(f"checkpoint (save + copy to {storage}): {save_s:.2f} s (median of {args.saves})")
    print(f"ratio checkpoint / step: {save_s / step_s:.2f}")
    print(f"ray.checkpoint_every for < 1% overhead at this step time: >= {every} steps")
    print(
        "at another step time t (s): checkpoint_every >= "
        f"{save_s / 0.01:.0f} / t  (e.g. t = 0.2 s on a GPU: {int(np.ceil(save_s / 0.002))})"
    )
    if scratch is not None:
        scratch.cleanup()


if __name__ == "__main__":
    main()
