"""Sweeps on this machine, measured side by side in one run (not a timed test).

1. Trials per hour with 1 vs 2 concurrent trials, the same 4-trial FIFO grid (FCN-32s lr):
   (a) every trial on 1 CPU (Ray's accounting; torch then uses 1 thread per trial), and
   (b) the fair reading on 2 cores: one trial at a time on 2 CPUs vs two at a time on 1 each.
2. ASHA against FIFO on the same 8 trials (Adam lr drawn log-uniformly from 1e-4 to 3e-2 with
   the sweep's seed, so both see the same points; 180 steps, the tiny FCN-32s recipe's length;
   2 trials at a time): the best val mean IU each finds and the optimizer steps each spends
   (goal: ASHA within 0.5 points of FIFO's best with at most half the steps). ASHA's rungs are
   at 20, 60 and 180 steps (grace 20, reduction 3), comparing val mean IU (the sweep's metric)
   or val_loss (``scheduler.metric``); the best is val mean IU either way.

Needs the default profile's prepared data and backbone (`dvc repro backbone`).

    .venv/bin/python benchmarks/bench_sweep.py [--only concurrency|asha]
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import ray  # noqa: E402

from pipeline.params import Params, load_params  # noqa: E402
from pipeline.sweeps.spec import sweep_spec  # noqa: E402
from pipeline.sweeps.tuning import best_row, run_sweep  # noqa: E402

BASE = {
    "experiment": "fcn32s",
    "fixed": {"train.optimizer": "sgd", "train.max_val_images": 20},
    "num_samples": 1,
    "metric": "val_mean_iu",
    "seed": 0,
}


def with_sweep(params: Params, sweep: dict) -> Params:
    data = copy.deepcopy(params.data)
    data["experiments"]["default"]["sweeps"]["bench"] = {**copy.deepcopy(BASE), **sweep}
    return Params(data, "bench")


def timed(params: Params, sweep: dict) -> tuple[float, list]:
    spec = sweep_spec(with_sweep(params, sweep), "bench")
    start = time.perf_counter()
    rows = run_sweep(with_sweep(params, sweep), spec, REPO)
    return time.perf_counter() - start, rows


def concurrency(params: Params) -> None:
    """Part 1: trials per hour, 1 vs 2 at a time."""
    grid4 = {
        "space": {"train.lr": {"grid": [1.0e-2, 2.0e-2, 4.0e-2, 8.0e-2]}},
        "fixed": {**BASE["fixed"], "train.iterations": 30},
        "scheduler": {"kind": "fifo"},
        "report_every": 30,
    }
    rates = {}
    for label, concurrent, cpus in (
        ("1 at a time, 1 CPU each", 1, 1),
        ("2 at a time, 1 CPU each", 2, 1),
        ("1 at a time, 2 CPUs", 1, 2),
    ):
        sweep = {**grid4, "max_concurrent": concurrent, "resources": {"cpus": cpus}}
        wall, rows = timed(params, sweep)
        rates[label] = len(rows) / wall * 3600
        print(f"{label}: {len(rows)} trials in {wall:.1f} s = {rates[label]:.0f} trials/h")
    same = rates["2 at a time, 1 CPU each"] / rates["1 at a time, 1 CPU each"]
    fair = rates["2 at a time, 1 CPU each"] / rates["1 at a time, 2 CPUs"]
    print(f"trials/h, 2 vs 1 concurrent, 1 CPU per trial: {same:.2f}x (goal >= 1.7x)")
    print(f"trials/h, 2 x 1 CPU vs 1 x 2 CPUs (the whole machine either way): {fair:.2f}x")


def asha_vs_fifo(params: Params) -> None:
    """Part 2: the best metric and the trial-steps of ASHA and FIFO on the same trials."""
    # Adam (the tiny profile's optimizer) over two and a half decades of lr, at the recipe's
    # full length. At steps 20 and 60 every trial but the best is still on the all-background
    # mean IU plateau, and ASHA never stops a trial level with its cutoff: rungs on mean IU
    # stop nothing here. The validation loss parts them from step 20.
    common = {
        "space": {"train.lr": {"loguniform": [1.0e-4, 3.0e-2]}},
        "num_samples": 8,
        "fixed": {**BASE["fixed"], "train.optimizer": "adam", "train.iterations": 180},
        "report_every": 20,
        "max_concurrent": 2,
        "resources": {"cpus": 1},
    }
    asha = {"kind": "asha", "grace_period": 20, "reduction_factor": 3}
    results = {}
    for kind, scheduler in (
        ("fifo", {"kind": "fifo"}),
        ("asha", asha),
        ("asha on val_loss", {**asha, "metric": "val_loss"}),
    ):
        sweep = {**common, "scheduler": scheduler}
        wall, rows = timed(params, sweep)
        spec = sweep_spec(with_sweep(params, sweep), "bench")
        best = best_row(spec, rows)
        steps = sum(r.steps for r in rows)
        results[kind] = (100 * best.best, steps)
        for r in rows:
            lr = r.values["train.lr"]
            print(f"  {r.trial} lr {lr:.2e}: {r.status}, {r.steps} steps, best {100 * r.best:.2f}")
        print(
            f"{kind}: best val mean IU {100 * best.best:.2f} ({best.trial} {best.values}), "
            f"{steps} trial-steps, {wall:.0f} s"
        )
    for kind in ("asha", "asha on val_loss"):
        gap = results["fifo"][0] - results[kind][0]
        share = results[kind][1] / results["fifo"][1]
        print(
            f"{kind} vs FIFO: best {gap:+.2f} mean IU points behind (goal <= 0.5), "
            f"{share:.2f}x the steps (goal <= 0.5)"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", choices=("concurrency", "asha"), help="run one part")
    args = parser.parse_args()
    params = load_params(REPO / "params.yaml")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    if args.only in (None, "concurrency"):
        concurrency(params)
    if args.only in (None, "asha"):
        asha_vs_fifo(params)


if __name__ == "__main__":
    main()
