"""Throughput of the BSDS boundary benchmark (images/s) with 1 and 2 Ray CPUs, side by side.

The per-image work (thinning + CSA matching against every annotator at every threshold) is
one Ray task, so throughput should scale with the CPUs given to ``evaluate_bsds``. Predictions
are the Canny baseline maps of the first N BSDS500 val images (written as .npy to a temporary
folder), so the figures reflect a realistic edge density.

    .venv/bin/python benchmarks/bench_edges_eval.py --n-images 2 --thresholds 99 --cpus 1,2

Data: ``$DENSEPIPE_FIXTURES`` or ``../shared/data`` beside the repository (BSDS500 slice).
Connects to ``$RAY_ADDRESS`` when set, else starts a local Ray with max(--cpus) CPUs.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pipeline.metrics.edges import evaluate_bsds  # noqa: E402
from pipeline.metrics.nms import canny_edges  # noqa: E402


def _fixtures() -> Path:
    root = Path(os.environ.get("DENSEPIPE_FIXTURES", REPO.parent / "shared" / "data"))
    if not (root / "BSDS500" / "data" / "groundTruth" / "val").is_dir():
        raise SystemExit(f"BSDS500 val ground truth not found under {root}")
    return root / "BSDS500" / "data"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-images", type=int, default=2)
    ap.add_argument("--thresholds", type=int, default=99)
    ap.add_argument("--cpus", default="1,2", help="comma-separated num_cpus values to compare")
    ap.add_argument("--sigma", type=float, default=2.0, help="Canny sigma of the predictions")
    ap.add_argument("--json", type=Path, help="also write the figures here")
    args = ap.parse_args(argv)
    cpus = [int(c) for c in args.cpus.split(",")]

    import ray

    data = _fixtures()
    ids = sorted(p.stem for p in (data / "groundTruth" / "val").glob("*.mat"))[: args.n_images]
    with tempfile.TemporaryDirectory(prefix="bench_edges_") as tmp:
        for image_id in ids:
            image = np.asarray(Image.open(data / "images" / "val" / f"{image_id}.jpg"))
            np.save(Path(tmp) / f"{image_id}.npy", canny_edges(image, sigma=args.sigma))
        if os.environ.get("RAY_ADDRESS"):
            ray.init(configure_logging=False)
        else:
            ray.init(
                num_cpus=max(cpus),
                include_dashboard=False,
                configure_logging=False,
                log_to_driver=False,
            )
        gt_dir = data / "groundTruth" / "val"
        # Warm-up: start the workers and import the module in them (not timed).
        evaluate_bsds(tmp, gt_dir, n_thresholds=1, ids=ids, num_cpus=max(cpus), progress=False)
        rows = []
        # Ray runs workers at niceness 15: on a machine busy with other (nice 0) work the
        # extra CPU is not really there, so print the load alongside the figures.
        print(f"load average before: {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores")
        for n in cpus:
            start = time.perf_counter()
            res = evaluate_bsds(
                tmp, gt_dir, n_thresholds=args.thresholds, ids=ids, num_cpus=n, progress=False
            )
            elapsed = time.perf_counter() - start
            load = os.getloadavg()[0]
            rows.append(
                {
                    "num_cpus": n,
                    "seconds": elapsed,
                    "images_per_s": len(ids) / elapsed,
                    "load_average_after": load,
                }
            )
            print(
                f"num_cpus={n}: {len(ids)} images x {args.thresholds} thresholds in "
                f"{elapsed:.1f} s = {len(ids) / elapsed:.4f} images/s "
                f"(ODS F {res.ods.f:.3f}, AP {res.ap:.3f}; load average {load:.2f})",
                flush=True,
            )
    base = rows[0]["images_per_s"]
    for row in rows[1:]:
        print(
            f"speed-up num_cpus={row['num_cpus']} vs {rows[0]['num_cpus']}: "
            f"{row['images_per_s'] / base:.2f}x"
        )
    if args.json:
        args.json.write_text(json.dumps({"ids": ids, "thresholds": args.thresholds, "runs": rows}))
    ray.shutdown()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
