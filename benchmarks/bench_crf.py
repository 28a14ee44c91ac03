"""Dense CRF speed: pydensecrf vs the torch backend per image, and Ray throughput at 1 and 2 CPUs.

Inputs are realistic 500x375, 21-class score maps (``pipeline.crf.synthetic.synthetic_example``:
smooth stride-8-like scores over a piecewise-constant segmentation with a matching image), encoded
as the predict stage writes them (image PNG, ``encode_probs`` PNG).

Default: both backends on the same images, interleaved, with torch at 1 and 2 threads: wall and
CPU seconds per image (``time.process_time``, robust to other load on the machine) and the
torch / pydensecrf ratio, label agreement (also on the real VOC images in the fixtures when
found), and batched images/s on a GPU when one is available. Goal: torch <= pydensecrf per core.

``--ray``: throughput of ``refine_dataset`` instead; each CPU setting gets a fresh local Ray
runtime and a warm-up pass (worker start and imports are not CRF cost); the timed pass runs the
whole Ray Data pipeline (decode, CRF, encode) and materialises the result.
Goal: 2 CPUs >= 1.8x the images/s of 1 CPU (the CRF is single-threaded C++, one row per task).

    .venv/bin/python benchmarks/bench_crf.py                # per image, pydensecrf vs torch
    .venv/bin/python benchmarks/bench_crf.py --ray --images 16 --cpus 1 2 4 --backend torch
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from pipeline.crf.dense import refine, refine_dataset
from pipeline.crf.lattice import refine_torch_batch
from pipeline.crf.params import CRFParams
from pipeline.crf.synthetic import synthetic_example, synthetic_scores
from pipeline.crf.transport import encode_probs
from pipeline.data.datasets.base import encode_png


def make_rows(n: int, height: int, width: int, classes: int) -> list[dict]:
    rows = []
    for i in range(n):
        image, probs, label = synthetic_example(height, width, classes, seed=1000 + i)
        rows.append(
            {
                "id": f"synth_{i:04d}",
                "image": encode_png(image),
                "probs": encode_probs(probs),
                "height": height,
                "width": width,
                "label": encode_png(label),
            }
        )
    return rows


def in_process_latency(rows: list[dict], classes: int, backend: str, repeats: int) -> list[float]:
    """Seconds per image for the CRF call alone (decoded inputs), on the driver, one core."""
    from pipeline.crf.transport import decode_probs
    from pipeline.data.datasets.base import decode_image

    if backend == "torch":
        torch.set_num_threads(1)  # one core, like a 1-CPU Ray task (Ray sets OMP_NUM_THREADS)
    out = []
    for row in rows[:repeats]:
        h, w = row["height"], row["width"]
        image = decode_image(row["image"], row["id"])
        probs = decode_probs(row["probs"], (classes, h, w))
        if not out:  # warm-up: imports and first-call allocations are not CRF cost
            refine(image, probs, CRFParams(), backend)
        t0 = time.perf_counter()
        refine(image, probs, CRFParams(), backend)
        out.append(time.perf_counter() - t0)
    return out


def voc_examples() -> list[tuple[str, np.ndarray, np.ndarray]]:
    """The real VOC images of the fixtures with DCNN-like scores from their labels (or none)."""
    from PIL import Image

    env = os.environ.get("DENSEPIPE_FIXTURES")
    root = Path(env) if env else Path(__file__).resolve().parents[1].parent / "shared" / "data"
    voc = root / "VOC2012"
    out = []
    for jpg in sorted((voc / "JPEGImages").glob("*.jpg")):
        png = voc / "SegmentationClassAug" / f"{jpg.stem}.png"
        if png.exists():
            image = np.asarray(Image.open(jpg).convert("RGB"))
            label = np.asarray(Image.open(png))
            out.append((jpg.stem, image, synthetic_scores(label, 21, seed=1, noise=1.0)))
    return out


def timed(fn, *args) -> tuple[object, float, float]:
    t0, c0 = time.perf_counter(), time.process_time()
    out = fn(*args)
    return out, time.perf_counter() - t0, time.process_time() - c0


def compare_backends(examples: list, threads: list[int], repeats: int) -> list[dict]:
    """Per-image wall and CPU seconds of both backends on the same images, interleaved."""
    params = CRFParams()
    rows = []
    for n in threads:
        torch.set_num_threads(n)
        image, probs = examples[0][1], examples[0][2]
        refine(image, probs, params), refine(image, probs, params, "torch")  # warm-up
        t = {k: [] for k in ("pyd_wall", "pyd_cpu", "torch_wall", "torch_cpu")}
        agree = []
        for _ in range(repeats):
            for _, image, probs in examples:
                ref, wall, cpu = timed(refine, image, probs, params)
                t["pyd_wall"].append(wall)
                t["pyd_cpu"].append(cpu)
                out, wall, cpu = timed(refine, image, probs, params, "torch")
                t["torch_wall"].append(wall)
                t["torch_cpu"].append(cpu)
                agree.append(float((out == ref).mean()))
        row = {"threads": n, **{k: statistics.median(v) for k, v in t.items()}}
        row["agreement_min"] = min(agree)
        rows.append(row)
    return rows


def gpu_images_per_s(examples: list, batches: list[int]) -> dict[int, float]:
    """Batched images/s of the torch backend on CUDA (one lattice per batch)."""
    out = {}
    for b in batches:
        images = [examples[i % len(examples)][1] for i in range(b)]
        probs = [examples[i % len(examples)][2] for i in range(b)]
        refine_torch_batch(images, probs, device="cuda")  # warm-up
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(3):
            refine_torch_batch(images, probs, device="cuda")
        torch.cuda.synchronize()
        out[b] = 3 * b / (time.perf_counter() - t0)
    return out


def print_comparison(args: argparse.Namespace) -> dict:
    examples = []
    for i in range(args.images):
        image, probs, _ = synthetic_example(args.height, args.width, args.classes, seed=1000 + i)
        examples.append((f"synth_{i}", image, probs))
    rows = compare_backends(examples, args.cpus, args.repeats)
    print(
        f"per image, {args.width}x{args.height}x{args.classes}, {CRFParams().iterations} "
        f"iterations, {args.images} images x {args.repeats} (medians; CPU = process time)"
    )
    print("\n| threads | pydensecrf wall | torch wall | torch/pyd wall | pydensecrf CPU "
          "| torch CPU | torch/pyd CPU | agreement (min) |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['threads']} | {r['pyd_wall']:.3f} s | {r['torch_wall']:.3f} s "
            f"| {r['torch_wall'] / r['pyd_wall']:.2f} | {r['pyd_cpu']:.3f} s "
            f"| {r['torch_cpu']:.3f} s | {r['torch_cpu'] / r['pyd_cpu']:.2f} "
            f"| {100 * r['agreement_min']:.3f}% |"
        )
    one = next((r for r in rows if r["threads"] == 1), None)
    if one:
        ratio = one["torch_cpu"] / one["pyd_cpu"]
        verdict = "meets" if ratio <= 1.0 else "misses"
        print(f"\ntorch / pydensecrf CPU time per core = {ratio:.2f} ({verdict} the <= 1 goal)")
    payload = {"per_image": rows}
    voc = voc_examples()
    if voc:
        torch.set_num_threads(1)
        print(
            f"\nreal VOC images (fixtures), 1 thread: agreement, pydensecrf and torch CPU "
            f"seconds (medians of {args.repeats}, interleaved), torch/pyd"
        )
        payload["voc"] = {}
        for name, image, probs in voc:
            cpu_ref, cpu = [], []
            for _ in range(args.repeats):
                ref, _, c = timed(refine, image, probs, CRFParams())
                cpu_ref.append(c)
                out, _, c = timed(refine, image, probs, CRFParams(), "torch")
                cpu.append(c)
            agree = float((out == ref).mean())
            pyd_s, torch_s = statistics.median(cpu_ref), statistics.median(cpu)
            payload["voc"][name] = {"agreement": agree, "cpu_ratio": torch_s / pyd_s}
            size = f"{image.shape[1]}x{image.shape[0]}"
            print(
                f"  {name} {size}: {100 * agree:.3f}%, {pyd_s:.3f} s, {torch_s:.3f} s, "
                f"{torch_s / pyd_s:.2f}"
            )
    if torch.cuda.is_available():
        ips = gpu_images_per_s(examples, [1, 8, 32])
        payload["gpu_images_per_s"] = ips
        name = torch.cuda.get_device_name()
        print(f"\n{name}: " + ", ".join(f"batch {b}: {v:.1f} images/s" for b, v in ips.items()))
    return payload


def throughput(rows: list[dict], cpus: int, backend: str) -> dict[str, float]:
    """Images/s of refine_dataset on a fresh ``cpus``-CPU local Ray runtime, plus diagnostics.

    ``parallelism`` = summed per-row wall time inside the tasks / elapsed wall time (how many
    rows Ray really ran at once); ``cpu_share`` = per-row CPU time / per-row wall time (below 1
    when other processes compete for the cores: then the speed-up is capped by the machine).
    """
    import ray

    ray.init(
        num_cpus=cpus,
        object_store_memory=300 * 1024 * 1024,
        include_dashboard=False,
        log_to_driver=False,
        configure_logging=False,
    )
    try:
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False
        ctx.print_on_execution_start = False
        # steady state: start (and import pydensecrf in) every worker before timing; with
        # only one row per CPU a second worker may never start, its ~1 s start then lands in
        # the timed pass
        warm = ray.data.from_items([rows[i % len(rows)] for i in range(2 * cpus)])
        refine_dataset(warm, backend=backend, rows_per_task=1).materialize()
        ds = ray.data.from_items(rows).materialize()
        t0 = time.perf_counter()
        out = refine_dataset(
            ds, backend=backend, rows_per_task=1, drop_probs=True, timing=True
        ).materialize()
        elapsed = time.perf_counter() - t0
        stats = out.select_columns(["crf_seconds", "crf_cpu_seconds"]).to_pandas()
    finally:
        ray.shutdown()
    assert len(stats) == len(rows), (len(stats), len(rows))
    wall, cpu = stats["crf_seconds"].sum(), stats["crf_cpu_seconds"].sum()
    return {
        "images_per_s": len(rows) / elapsed,
        "task_s_per_image": float(stats["crf_seconds"].median()),
        "parallelism": float(wall / elapsed),
        "cpu_share": float(cpu / wall),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ray", action="store_true", help="Ray throughput instead of per image")
    ap.add_argument("--images", type=int, help="default: 4 per image, 16 with --ray")
    ap.add_argument("--repeats", type=int, default=2, help="passes over the images (per image)")
    ap.add_argument("--cpus", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--height", type=int, default=375)
    ap.add_argument("--width", type=int, default=500)
    ap.add_argument("--classes", type=int, default=21)
    ap.add_argument("--backend", default="pydensecrf", choices=["pydensecrf", "torch"])
    ap.add_argument("--latency-images", type=int, default=3)
    ap.add_argument("--json", help="also write the figures to this JSON file")
    args = ap.parse_args()
    if args.images is None:
        args.images = 16 if args.ray else 4
    if not args.ray:
        payload = print_comparison(args)
        if args.json:
            with open(args.json, "w") as f:
                json.dump(payload, f, indent=2)
        return

    t0 = time.perf_counter()
    rows = make_rows(args.images, args.height, args.width, args.classes)
    mb = np.mean([len(r["probs"]) for r in rows]) / 1e6
    print(
        f"{args.images} synthetic {args.width}x{args.height}x{args.classes} score maps "
        f"in {time.perf_counter() - t0:.1f} s; encoded probs {mb:.3f} MB/image "
        f"(float32 {args.classes * args.height * args.width * 4 / 1e6:.1f} MB)"
    )
    lat = in_process_latency(rows, args.classes, args.backend, args.latency_images)
    print(
        f"in-process CRF latency ({args.backend}, 1 core, {len(lat)} images): "
        f"median {statistics.median(lat):.2f} s, min {min(lat):.2f} s, max {max(lat):.2f} s"
    )
    results = {}
    detail = {}
    for cpus in args.cpus:
        detail[cpus] = throughput(rows, cpus, args.backend)
        results[cpus] = detail[cpus]["images_per_s"]
        print(f"Ray CPUs {cpus}: {results[cpus]:.3f} images/s", flush=True)
    base = results[min(results)]
    print(
        "\n| Ray CPUs | images/s | speed-up | per-image latency in task (median) "
        "| rows in flight | CPU share |"
    )
    print("|---|---|---|---|---|---|")
    for cpus, d in detail.items():
        print(
            f"| {cpus} | {d['images_per_s']:.3f} | {d['images_per_s'] / base:.2f}x "
            f"| {d['task_s_per_image']:.2f} s | {d['parallelism']:.2f} | {d['cpu_share']:.2f} |"
        )
    if 1 in results and 2 in results:
        ratio = results[2] / results[1]
        verdict = "meets" if ratio >= 1.8 else "misses"
        print(f"\n2-CPU / 1-CPU = {ratio:.2f}x ({verdict} the 1.8x goal)")
    if args.json:
        payload = {
            "images": args.images,
            "size": [args.height, args.width, args.classes],
            "backend": args.backend,
            "latency_s": lat,
            "ray": {str(k): v for k, v in detail.items()},
        }
        with open(args.json, "w") as f:
            json.dump(payload, f, indent=2)


if __name__ == "__main__":
    main()
