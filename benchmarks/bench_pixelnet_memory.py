"""PixelNet Table 4 on this machine: peak training memory and updates/s, sampled vs dense.

Three ways to train the same PixelNet (same trunk, hypercolumn and MLP, same loss at the same
sampled pixels), side by side in one run:

* ``sampled``: hypercolumns gathered at the sampled pixels only, MLP as matrix products (ours);
* ``dense``: the dense hypercolumn grid at image resolution, the MLP as 1x1 convolutions over
  every pixel, the loss masked to the sampled pixels (the naive FCN-style way);
* ``masked``: the dense hypercolumn grid, masked to the sampled pixels *before* the MLP.

Each (variant, MLP depth) runs in a fresh subprocess so peaks do not mix: peak memory is the
process's peak resident set (``VmHWM``) minus its resident set just before the model was built
(so weights, gradients, momentum, activations and workspace all count, as on the paper's GPU).
glibc is told to ``mmap`` every block of 128 KiB or more (``MALLOC_MMAP_THRESHOLD_``) so freed
tensors leave the resident set and the peak is the real one. Updates/s: forward + backward +
SGD step (with fresh samples each step) after a warm-up step.

All three run the model's own MLP layers (``pipeline.models.fastlinear.OneDNNLinear``), so they
share one set of matrix-product kernels; ``--linear`` picks them: ``onednn`` (the model's
default on CPU), ``torch`` (torch's fp32 matmul, MKL on x86, which takes its AVX2 path on AMD
CPUs) or ``both`` side by side. Mixing them (the dense grid on oneDNN's 1x1 convolutions, the
sampled MLP on MKL) made the fc-3 ratio 13.7x on an AVX-512 AMD CPU instead of ~19x.

    .venv/bin/python benchmarks/bench_pixelnet_memory.py                   # Table 4 protocol
    .venv/bin/python benchmarks/bench_pixelnet_memory.py --images 5 --width 0.25 --fc 3

Defaults follow the paper's Table 4: a 224x224 input, 2,000 sampled pixels, full-width VGG16,
hypercolumn conv-{1_2, 3_3, 5_3}, MLP fc-1/fc-2/fc-3 (0/1/2 hidden layers of 4096). Goal for
fc-3: sampled >= 10x less peak memory and >= 15x the updates/s of dense (paper: 8.4x, 17x).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

VARIANTS = ("sampled", "masked", "dense")
PAPER_FC3 = {"memory_ratio": 8.4, "speed_ratio": 17.0}  # 3,914 MB / 465 MB; 24.5 / 1.4 BPS


def _status_kib(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{key} not in /proc/self/status")


def child(cfg: dict) -> dict:
    """One variant in this (fresh) process; returns its measurements."""
    import torch
    import torch.nn.functional as F

    from pipeline.models import build_model
    from pipeline.models.fastlinear import OneDNNLinear

    torch.manual_seed(0)
    if cfg["threads"]:
        torch.set_num_threads(cfg["threads"])
    b, size, classes = cfg["images"], cfg["size"], cfg["classes"]
    x = torch.randn(b, 3, size, size).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, classes, (b, size, size))
    gen = torch.Generator().manual_seed(0)
    baseline = _status_kib("VmRSS")

    model = build_model(
        "pixelnet",
        classes,
        width=cfg["width"],
        layers=cfg["layers"],
        mlp=[4096] * (cfg["fc"] - 1),
        sampling={"per_image": cfg["samples"]},
    ).to(memory_format=torch.channels_last)
    for m in model.modules():  # the MLP's products: oneDNN, or torch's fp32 matmul (MKL on x86)
        if isinstance(m, OneDNNLinear):
            m.kernel = cfg["linear"]
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9, weight_decay=5e-4)
    variant = cfg["variant"]

    def step() -> float:
        # Gradients are released before the forward pass (the usual zero_grad -> forward ->
        # backward -> step order): holding the last step's gradients through the forward would
        # add one model size to every variant's peak.
        opt.zero_grad(set_to_none=True)
        pts = model.sample(y, "segmentation", gen)
        target = y[pts[:, 0], pts[:, 1], pts[:, 2]]
        if variant == "sampled":
            scores = model(x, pts)
        elif variant == "masked":
            scores = model.forward_masked(x, pts)
        else:  # the MLP over the whole grid, one untiled band, then the loss at the samples
            dense = model.predict_dense(x, tile_pixels=b * size * size)
            scores = dense.permute(0, 2, 3, 1)[pts[:, 0], pts[:, 1], pts[:, 2]]
        loss = F.cross_entropy(scores, target)
        loss.backward()
        opt.step()
        return float(loss)

    times = []
    for i in range(cfg["warmup"] + cfg["steps"]):
        t0 = time.perf_counter()
        step()
        if i >= cfg["warmup"]:
            times.append(time.perf_counter() - t0)
    params = sum(p.numel() * p.element_size() for p in model.parameters())
    return {
        **cfg,
        "features": model.hypercolumn_channels,
        "batch_samples": b * cfg["samples"],
        "mlp_pixels": b * size * size if variant == "dense" else b * cfg["samples"],
        "peak_mb": (_status_kib("VmHWM") - baseline) / 1024,
        "size_mb": params / 2**20,
        "step_s": times,
        "updates_per_s": len(times) / sum(times),
        "threads": torch.get_num_threads(),
    }


def run_variant(cfg: dict, timeout: float) -> dict:
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="131072", MALLOC_TRIM_THRESHOLD_="131072")
    repo = str(Path(__file__).resolve().parents[1])
    env["PYTHONPATH"] = repo + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run(
        [sys.executable, __file__, "--child", json.dumps(cfg)],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
    )
    if proc.returncode != 0:
        return {**cfg, "error": (proc.stderr or proc.stdout).strip().splitlines()[-1:]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def report(rows: list[dict]) -> list[dict]:
    """Print the table and the sampled-vs-dense ratios per MLP depth; return the ratios."""
    print(
        f"\n{'linear':7} {'variant':8} {'fc':>3} {'feat':>5} {'MLP px':>7} {'peak MB':>9} "
        f"{'size MB':>8} {'upd/s':>8} {'s/upd':>8}"
    )
    for r in rows:
        if "error" in r:
            print(f"{r['linear']:7} {r['variant']:8} {r['fc']:>3}  failed: {r['error']}")
            continue
        print(
            f"{r['linear']:7} {r['variant']:8} {r['fc']:>3} {r['features']:>5} "
            f"{r['mlp_pixels']:>7} {r['peak_mb']:>9.0f} {r['size_mb']:>8.0f} "
            f"{r['updates_per_s']:>8.3f} {1 / r['updates_per_s']:>8.2f}"
        )
    ratios = []
    by = {(r["linear"], r["variant"], r["fc"]): r for r in rows if "error" not in r}
    print()
    for linear, fc in sorted({(r["linear"], r["fc"]) for r in rows}):
        s = by.get((linear, "sampled", fc))
        for other in ("dense", "masked"):
            o = by.get((linear, other, fc))
            if s is None or o is None:
                continue
            mem = o["peak_mb"] / s["peak_mb"]
            speed = s["updates_per_s"] / o["updates_per_s"]
            ratios.append(
                {"linear": linear, "fc": fc, "vs": other, "memory_ratio": mem, "speed_ratio": speed}
            )
            print(
                f"{linear} products, fc-{fc}: sampled uses {mem:5.1f}x less peak memory and makes "
                f"{speed:5.1f}x the updates/s of {other}"
            )
    print(
        f"paper (Titan X, fc-3, vs dense): {PAPER_FC3['memory_ratio']}x memory, "
        f"{PAPER_FC3['speed_ratio']}x speed"
    )
    return ratios


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--images", type=int, default=1, help="images per batch (paper Table 4: 1)")
    ap.add_argument("--samples", type=int, default=2000, help="sampled pixels per image")
    ap.add_argument("--width", type=float, default=1.0, help="VGG16/MLP width (1 = full)")
    ap.add_argument("--layers", default="conv1_2,conv3_3,conv5_3")
    ap.add_argument("--fc", type=int, nargs="+", default=[1, 2, 3], help="MLP fc layers")
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    ap.add_argument("--classes", type=int, default=60, help="outputs (PASCAL-Context 59 + bg)")
    ap.add_argument("--steps", type=int, default=2, help="timed updates per variant")
    ap.add_argument("--dense-steps", type=int, default=1, help="timed updates for dense/masked")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch default)")
    ap.add_argument(
        "--linear",
        choices=("onednn", "torch", "both"),
        default="both",
        help="the MLP's fp32 matrix products: oneDNN (the model's default), torch's matmul "
        "(MKL on x86: AVX2 speed on AMD CPUs), or both side by side",
    )
    ap.add_argument("--timeout", type=float, default=1800, help="seconds per variant")
    ap.add_argument("--json", help="write rows and ratios here")
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return

    print(
        f"PixelNet Table 4: {args.size}x{args.size}, {args.images} image(s) x {args.samples} "
        f"samples, width {args.width:g}, hypercolumn {args.layers}; "
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
        f"load {os.getloadavg()[0]:.1f}"
    )
    rows = []
    linears = ("onednn", "torch") if args.linear == "both" else (args.linear,)
    for fc, linear, variant in itertools.product(args.fc, linears, args.variants):
        cfg = {
            "linear": linear,
            "variant": variant,
            "fc": fc,
            "size": args.size,
            "images": args.images,
            "samples": args.samples,
            "width": args.width,
            "layers": args.layers.split(","),
            "classes": args.classes,
            "warmup": args.warmup,
            "steps": args.steps if variant == "sampled" else args.dense_steps,
            "threads": args.threads,
        }
        t0 = time.time()
        row = run_variant(cfg, args.timeout)
        rows.append(row)
        got = "error" if "error" in row else f"{row['peak_mb']:.0f} MB"
        print(f"  {linear:7} {variant:8} fc-{fc}: {got} ({time.time() - t0:.0f} s)", flush=True)
    ratios = report(rows)
    print(f"load average at the end: {os.getloadavg()[0]:.1f}")
    if args.json:
        from pipeline.runtime.fsutil import write_text_atomic

        write_text_atomic(args.json, json.dumps({"rows": rows, "ratios": ratios}, indent=1))


if __name__ == "__main__":
    main()
