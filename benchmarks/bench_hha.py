"""Time HHA encoding of one 640x480 NYU frame (median of a few runs).

Usage: python benchmarks/bench_hha.py [--runs N] [--depth 0.png --raw 0_raw.png] [--mask-missing]
Without files it uses the golden frame from the shared fixtures, else a synthetic room.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.data.encodings.hha import depth_to_hha, read_depth_png  # noqa: E402
from tests.conftest import fixtures_root  # noqa: E402


def _frame(args: argparse.Namespace) -> tuple[np.ndarray, np.ndarray, str]:
    """The frame to encode: given files, the golden fixture, or a synthetic room."""
    if args.depth:
        raw = read_depth_png(args.raw) if args.raw else None
        return read_depth_png(args.depth), raw, str(args.depth)
    root = fixtures_root()
    golden = root / "NYUDv2" / "hha-golden" if root else None
    if golden and golden.is_dir():
        d, r = read_depth_png(golden / "0.png"), read_depth_png(golden / "0_raw.png")
        return d, r, str(golden / "0.png")
    rng = np.random.default_rng(0)
    v = (np.arange(1, 481) - 253.7362) / 519.4696
    depth = np.where(v[:, None] > 0.3, 1.2 / np.maximum(v[:, None], 1e-6), 4.0)
    depth = np.broadcast_to(depth, (480, 640)) + rng.normal(0, 0.005, (480, 640))
    raw = np.where(rng.random((480, 640)) < 0.2, 0.0, depth)
    return depth, raw, "synthetic room"


def main() -> None:
    """Print the median seconds per frame."""
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--depth", type=Path)
    p.add_argument("--raw", type=Path)
    p.add_argument(
        "--mask-missing", action="store_true", help="fit normals on raw-depth pixels only"
    )
    args = p.parse_args()
    depth, raw, name = _frame(args)
    kwargs = {"mask_missing": args.mask_missing}
    depth_to_hha(depth, raw, **kwargs)  # warm-up
    times, cpu = [], []
    for _ in range(args.runs):
        t0, c0 = time.perf_counter(), time.process_time()
        depth_to_hha(depth, raw, **kwargs)
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    h, w = depth.shape
    print(
        f"HHA {w}x{h} ({name}, mask_missing={args.mask_missing}): "
        f"median {statistics.median(times):.3f} s/frame wall "
        f"(min {min(times):.3f}; CPU {statistics.median(cpu):.3f} s; {args.runs} runs)"
    )


if __name__ == "__main__":
    main()
