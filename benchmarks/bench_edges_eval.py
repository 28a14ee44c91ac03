"""BSDS benchmark throughput (images/s): pyEdgeEval's own evaluation and ours, same maps, one run.

For each CPU count: pyEdgeEval's ``calculate_metrics`` (its multiprocessing pool, ``nproc``
processes; the reference every per-core figure is divided by) and our ``evaluate_bsds`` (Ray,
``num_cpus`` tasks at a time) with each ``--matchers`` entry (``exact``: the default SciPy
assignment; ``csa``: the BSDS C++ matcher, what the benchmark used before). Prints images/s, the
speed-up over pyEdgeEval at the same CPU count, the largest score difference against pyEdgeEval
(and against the MATLAB golden outputs when they apply: golden maps at 5 thresholds) and
whether our counts are bit-identical across CPU counts (Ray task splits).

    .venv/bin/python benchmarks/bench_edges_eval.py --thresholds 99 --cpus 1,2
    .venv/bin/python benchmarks/bench_edges_eval.py --maps canny --n-images 4 --matchers exact,csa

Maps: ``golden`` (default): the 5 predicted maps of the BSDS ``bench`` example; ``canny``: the
Canny baseline of the first N BSDS500 val images, as 8-bit PNGs (pyEdgeEval reads only those).
Data: ``$DENSEPIPE_FIXTURES`` or ``../shared/data`` beside the repository. Connects to
``$RAY_ADDRESS`` when set, else starts a local Ray with max(--cpus) CPUs. On a busy machine the
absolute figures are noisy: compare the rows of one run.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import sys
import tempfile
import time
import types
from pathlib import Path

import numpy as np
import ray
from PIL import Image

# pyEdgeEval's utils import OpenCV at load time for ``mask2bdry`` alone (SBD/Cityscapes edges,
# not used by its BSDS evaluation); without opencv an empty stand-in lets the package load.
if importlib.util.find_spec("cv2") is None:
    sys.modules["cv2"] = types.ModuleType("cv2")

from pyEdgeEval.common.binary_label import calculate_metrics  # noqa: E402
from pyEdgeEval.datasets import bsds_eval_single  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pipeline.metrics.edges import EdgeResult, evaluate_bsds  # noqa: E402
from pipeline.metrics.nms import canny_edges  # noqa: E402

#: summary fields, in the order of MATLAB's eval_bdry.txt (AP is pyEdgeEval's "AUC")
FIELDS = ("ods_t", "ods_r", "ods_p", "ods_f", "ois_r", "ois_p", "ois_f", "ap")
PYEDGEEVAL_KEYS = (
    "ODS_threshold",
    "ODS_recall",
    "ODS_precision",
    "ODS_f1",
    "OIS_recall",
    "OIS_precision",
    "OIS_f1",
    "AUC",
)


def _fixtures() -> Path:
    root = Path(os.environ.get("DENSEPIPE_FIXTURES", REPO.parent / "shared" / "data"))
    if not root.is_dir():
        raise SystemExit(f"fixtures not found: {root} (set DENSEPIPE_FIXTURES)")
    return root


def _maps(kind: str, n_images: int | None, tmp: Path) -> tuple[Path, Path, list[str]]:
    """(prediction folder of 8-bit PNGs, ground-truth folder, ids)."""
    root = _fixtures()
    if kind == "golden":
        golden = root / "bsds-bench-golden"
        ids = sorted(p.stem for p in (golden / "groundTruth").glob("*.mat"))[:n_images]
        return golden / "png", golden / "groundTruth", ids
    data = root / "BSDS500" / "data"
    gt_dir = data / "groundTruth" / "val"
    ids = sorted(p.stem for p in gt_dir.glob("*.mat"))[: n_images or 2]
    for image_id in ids:
        image = np.asarray(Image.open(data / "images" / "val" / f"{image_id}.jpg"))
        edges = np.rint(canny_edges(image, sigma=2.0) * 255).astype(np.uint8)
        Image.fromarray(edges).save(tmp / f"{image_id}.png")
    return tmp, gt_dir, ids


def _ours(result: EdgeResult) -> np.ndarray:
    o, s = result.ods, result.ois
    ods = [o.threshold, o.recall, o.precision, o.f]
    return np.array(ods + [s.recall, s.precision, s.f, result.ap])


@contextlib.contextmanager
def _silenced_stdout():
    """Mute file descriptor 1 (pyEdgeEval's progress bar holds its own ``sys.stdout``)."""
    sys.stdout.flush()
    saved, devnull = os.dup(1), os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    try:
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)
        os.close(devnull)


def _pyedgeeval(pred_dir: Path, gt_dir: Path, ids: list[str], n_thr: int, nproc: int):
    """pyEdgeEval's BSDS evaluation of the same files (its progress bar silenced)."""
    samples = [
        dict(
            name=i,
            thresholds=n_thr,
            gt_path=str(gt_dir / f"{i}.mat"),
            pred_path=str(pred_dir / f"{i}.png"),
            scale=1.0,
            apply_thinning=True,
            apply_nms=False,
            max_dist=0.0075,
        )
        for i in ids
    ]
    with _silenced_stdout():
        _, _, overall = calculate_metrics(bsds_eval_single, n_thr, samples, nproc=nproc)
    return np.array([float(overall[k]) for k in PYEDGEEVAL_KEYS])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--maps", choices=("golden", "canny"), default="golden")
    ap.add_argument("--n-images", type=int, help="first N images (default: all 5 golden; 2 val)")
    ap.add_argument("--thresholds", type=int, default=99)
    ap.add_argument("--cpus", default="1,2", help="comma-separated CPU counts to compare")
    ap.add_argument("--matchers", default="exact", help="comma-separated: exact, csa")
    ap.add_argument("--json", type=Path, help="also write the figures here")
    args = ap.parse_args(argv)
    cpus = [int(c) for c in args.cpus.split(",")]
    matchers = args.matchers.split(",")
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_edges_") as tmp:
        pred_dir, gt_dir, ids = _maps(args.maps, args.n_images, Path(tmp))
        n = len(ids)
        print(f"{args.maps} maps: {n} images x {args.thresholds} thresholds", flush=True)
        if os.environ.get("RAY_ADDRESS"):
            ray.init(configure_logging=False)
        else:
            ray.init(
                address="local",  # our own runtime, never another process's cluster
                num_cpus=max(cpus),
                include_dashboard=False,
                configure_logging=False,
                log_to_driver=False,
            )
        # Warm-up: start the workers and import the module in them (not timed).
        evaluate_bsds(pred_dir, gt_dir, n_thresholds=1, ids=ids, num_cpus=max(cpus), progress=False)
        print(f"load average before: {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores")
        counts: dict[str, list[np.ndarray]] = {m: [] for m in matchers}
        for c in cpus:
            runs = [("pyEdgeEval", None)] + [(f"ours/{m}", m) for m in matchers]
            for name, matcher in runs:
                start = time.perf_counter()
                if matcher is None:
                    scores = _pyedgeeval(pred_dir, gt_dir, ids, args.thresholds, c)
                else:
                    res = evaluate_bsds(
                        pred_dir,
                        gt_dir,
                        n_thresholds=args.thresholds,
                        ids=ids,
                        num_cpus=c,
                        progress=False,
                        matcher=matcher,
                    )
                    scores = _ours(res)
                    counts[matcher].append(res.counts)
                seconds = time.perf_counter() - start
                rows.append(dict(tool=name, cpus=c, seconds=seconds, images_per_s=n / seconds))
                rows[-1].update(zip(FIELDS, scores.tolist()))
                print(
                    f"{name:>12} cpus={c}: {seconds:7.1f} s = {n / seconds:.4f} images/s "
                    f"(ODS {scores[3]:.4f}, OIS {scores[6]:.4f}, AP {scores[7]:.4f}; "
                    f"load {os.getloadavg()[0]:.2f})",
                    flush=True,
                )
    ray.shutdown()
    golden = _fixtures() / "bsds-bench-golden" / "test_2" / "eval_bdry.txt"
    whole_golden = args.maps == "golden" and args.thresholds == 5 and len(ids) == 5
    matlab = np.loadtxt(golden) if whole_golden else None
    for row in rows:
        if row["tool"] == "pyEdgeEval":
            base = row
            continue
        got = np.array([row[f] for f in FIELDS])
        ref = np.array([base[f] for f in FIELDS])
        line = (
            f"{row['tool']} cpus={row['cpus']}: {row['images_per_s'] / base['images_per_s']:.2f}x "
            f"pyEdgeEval's images/s; max |score difference| vs pyEdgeEval "
            f"{np.abs(got - ref).max():.2e}"
        )
        if matlab is not None:
            line += f", vs MATLAB golden {np.abs(got - matlab).max():.2e}"
        print(line)
    for m, per_cpus in counts.items():
        same = all(np.array_equal(per_cpus[0], c) for c in per_cpus[1:])
        print(f"ours/{m}: counts bit-identical across cpus={args.cpus}: {same}")
    if len(matchers) > 1:
        first = [r for r in rows if r["tool"] == f"ours/{matchers[0]}"][0]
        for m in matchers[1:]:
            other = [r for r in rows if r["tool"] == f"ours/{m}"][0]
            diff = max(abs(first[f] - other[f]) for f in FIELDS)
            print(f"max |score difference| ours/{matchers[0]} vs ours/{m}: {diff:.2e}")
    if args.json:
        args.json.write_text(json.dumps({"ids": ids, "thresholds": args.thresholds, "runs": rows}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
