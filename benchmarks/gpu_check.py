"""The GPU path, checked in one short run: full-width training steps and the torch CRF on CUDA.

Runs the very training path of ``train@`` (``pipeline.training.loop``: ``LossModule``,
``make_optimizer``, autocast) for a few steps of FCN-8s (one 500x375 image, batch 1, the
paper's), DeepLab-LargeFOV (321x321 crops, ``--deeplab-batch`` images; the paper's 20) and
PixelNet (2,000 sampled pixels x 5 images of 224x224, the paper's sampling), then the torch CRF
backend (``pipeline.crf.lattice``) on a batch of 500x375 images. Prints per model: time per
step, images/s and peak GPU memory, with the same steps on this machine's CPU beside them
(``--cpu-steps``; 0 skips the CPU column). Under 8 minutes on one GPU with the defaults.

    .venv/bin/python benchmarks/gpu_check.py                    # CUDA + CPU columns
    .venv/bin/python benchmarks/gpu_check.py --cpu-steps 0      # GPU only

Without a CUDA device it says so and exits 0 (nothing to check); the CPU column alone is
``--cpu-only``.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from pipeline.crf.lattice import refine_torch_batch
from pipeline.crf.params import CRFParams
from pipeline.crf.synthetic import synthetic_example
from pipeline.training.loop import LossModule, TrainConfig, build_for_training, make_optimizer

MODELS = {
    # name: (TrainConfig overrides, input height, width, default batch)
    "fcn8s": (
        {"model": "fcn8s", "lr": 1e-14, "momentum": 0.99, "loss_reduction": "image"},
        375,
        500,
        1,
    ),
    "deeplab-largefov": ({"model": "deeplab-largefov", "lr": 1e-3, "momentum": 0.9}, 321, 321, 20),
    "pixelnet": (
        {
            "model": "pixelnet",
            "lr": 1e-3,
            "momentum": 0.9,
            "model_options": {"width": 1.0, "sampling": {"per_image": 2000}},
        },
        224,
        224,
        5,
    ),
}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_training(name: str, device: torch.device, steps: int, batch: int, precision: str) -> dict:
    """Median seconds per optimizer step of ``name`` on ``device`` (after one warm-up step)."""
    overrides, h, w, _ = MODELS[name]
    config = TrainConfig(
        num_classes=21,
        out_dir="/nonexistent",
        precision=precision,
        batch_size=batch,
        **{"model_options": {"width": 1.0}, **overrides},
    )
    torch.manual_seed(0)
    net = build_for_training(config).to(device)
    model = LossModule(net, config).to(device)
    optimizer = make_optimizer(net, config)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    x = torch.randn(batch, 3, h, w, device=device)
    y = torch.randint(0, 21, (batch, h, w), device=device)
    generator = torch.Generator().manual_seed(0)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for step in range(steps + 1):
        _sync(device)
        t0 = time.perf_counter()
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            total, norm = model(x, y, generator)
        scaler.scale(total / norm).backward()
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        _sync(device)
        if step:  # the first step pays for kernel selection and allocation
            times.append(time.perf_counter() - t0)
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    seconds = statistics.median(times)
    return {"s_per_step": seconds, "img_per_s": batch / seconds, "peak_gib": peak}


def time_crf(device: torch.device, images: int) -> dict:
    """The torch CRF on ``images`` 500x375, 21-class score maps in one batch."""
    examples = [synthetic_example(375, 500, 21, seed=i) for i in range(images)]
    imgs, probs = [e[0] for e in examples], [e[1] for e in examples]
    refine_torch_batch(imgs[:1], probs[:1], CRFParams(), device=str(device))  # warm-up
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    _sync(device)
    t0 = time.perf_counter()
    labels = refine_torch_batch(imgs, probs, CRFParams(), device=str(device))
    _sync(device)
    seconds = time.perf_counter() - t0
    agree = float(np.mean([(lab == e[2]).mean() for lab, e in zip(labels, examples)]))
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    return {"s_per_step": seconds, "img_per_s": images / seconds, "peak_gib": peak, "agree": agree}


def _row(name: str, where: str, r: dict) -> str:
    peak = "-" if r["peak_gib"] is None else f"{r['peak_gib']:.1f}"
    return f"| {name} | {where} | {r['s_per_step']:.3f} | {r['img_per_s']:.2f} | {peak} |"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=5, help="timed GPU steps per model")
    parser.add_argument("--cpu-steps", type=int, default=1, help="timed CPU steps (0: none)")
    parser.add_argument("--cpu-only", action="store_true", help="the CPU column alone")
    parser.add_argument("--deeplab-batch", type=int, default=20, help="DeepLab's batch (paper 20)")
    parser.add_argument("--precision", default="bf16", choices=("fp32", "bf16", "fp16"))
    parser.add_argument("--crf-images", type=int, default=8)
    args = parser.parse_args()
    devices = []
    if torch.cuda.is_available() and not args.cpu_only:
        devices.append((torch.device("cuda"), args.steps))
        print(f"GPU: {torch.cuda.get_device_name(0)}, torch {torch.__version__}")
    elif not args.cpu_only:
        print("no CUDA device: nothing to check on a GPU (use --cpu-only for the CPU column)")
        return
    if args.cpu_steps or args.cpu_only:
        devices.append((torch.device("cpu"), max(args.cpu_steps, 1)))
    print("| model | device | s / step | images / s | peak GiB |")
    print("|---|---|---|---|---|")
    for name, (_, _, _, batch) in MODELS.items():
        batch = args.deeplab_batch if name == "deeplab-largefov" else batch
        for device, steps in devices:
            precision = args.precision if device.type == "cuda" else "fp32"
            print(
                _row(
                    name,
                    f"{device.type} {precision}",
                    time_training(name, device, steps, batch, precision),
                ),
                flush=True,
            )
    for device, _ in devices:
        r = time_crf(device, args.crf_images if device.type == "cuda" else 2)
        print(_row(f"CRF (torch, {r['agree']:.3f} agree w/ truth)", device.type, r), flush=True)


if __name__ == "__main__":
    main()
