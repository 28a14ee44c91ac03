"""Throughput of the prepare stage (Ray Data -> Parquet) on BSDS500 train, at 1 and 2 CPUs.

Prepares the split with a fresh local Ray limited to each CPU count in turn (one run, side by
side), after one untimed warm-up run per count (worker start-up is not the steady state), and
prints images/s, the speed-up and the load average (on a shared machine other processes take
CPU too: read the ratio against it).

Data: BSDS500 from the shared fixtures (``$DENSEPIPE_FIXTURES/BSDS500``, 200 train images of
481x321 with 4-9 annotators each), else the built-in generator's BSDS (``--builtin-train``
images of 96x128), or ``--root DIR``.

Usage: python benchmarks/bench_prepare.py [--cpus 1 2] [--repeats 2] [--root DIR] [--builtin]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.data.builtin.bsds import BSDSBuiltinSpec, write_builtin_bsds  # noqa: E402
from pipeline.data.datasets.bsds import BSDS  # noqa: E402
from pipeline.data.prepare import prepare_split  # noqa: E402
from tests.conftest import fixtures_root  # noqa: E402


def _data_root(args: argparse.Namespace, scratch: Path) -> tuple[Path, str]:
    if args.root:
        return args.root, str(args.root)
    shared = fixtures_root()
    if not args.builtin and shared and (shared / "BSDS500").is_dir():
        return shared / "BSDS500", f"shared fixtures {shared / 'BSDS500'}"
    spec = BSDSBuiltinSpec(num_train=args.builtin_train, num_val=0)
    write_builtin_bsds(scratch / "raw", spec, progress=False)
    return scratch / "raw", f"built-in BSDS ({spec.num_train} x {spec.height}x{spec.width})"


def _run(num_cpus: int, root: Path, split: str, out: Path, repeats: int) -> tuple[int, list]:
    import ray

    ray.init(
        num_cpus=num_cpus,
        object_store_memory=512 * 1024 * 1024,
        include_dashboard=False,
        log_to_driver=False,
        configure_logging=False,
    )
    try:
        ray.data.DataContext.get_current().enable_progress_bars = False
        n = prepare_split(BSDS(), root, split, out)  # warm-up: workers, imports
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            prepare_split(BSDS(), root, split, out)
            times.append(time.perf_counter() - t0)
    finally:
        ray.shutdown()
    return n, times


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--cpus", type=int, nargs="+", default=[1, 2], help="Ray CPU counts to compare")
    p.add_argument("--repeats", type=int, default=2, help="timed runs per CPU count (best kept)")
    p.add_argument("--split", default="train")
    p.add_argument("--root", type=Path, help="a BSDS500 folder (default: shared fixtures)")
    p.add_argument("--builtin", action="store_true", help="use the built-in BSDS generator")
    p.add_argument("--builtin-train", type=int, default=200, help="built-in train images")
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench_prepare.") as scratch:
        scratch = Path(scratch)
        root, name = _data_root(args, scratch)
        print(f"prepare BSDS {args.split} from {name}; load average before {os.getloadavg()}")
        rows = []
        for cpus in args.cpus:
            n, times = _run(cpus, root, args.split, scratch / f"out{cpus}", args.repeats)
            best, median = min(times), statistics.median(times)
            rows.append((cpus, best))
            print(
                f"  {cpus} CPU(s): {n} images in {best:.2f} s (median {median:.2f})"
                f" = {n / best:.1f} images/s; load average {os.getloadavg()}"
            )
        base = rows[0]
        for cpus, best in rows[1:]:
            print(f"speed-up {cpus} vs {base[0]} CPU(s): {base[1] / best:.2f}x")


if __name__ == "__main__":
    main()
