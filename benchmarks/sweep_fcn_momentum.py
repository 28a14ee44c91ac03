"""FCN Section 6.2 / PAMI Table 2 on this machine: accumulation vs online vs "heavy", lr-tuned.

The paper compares the three regimes "properly tuned" on the same image sequence and reports the
best score reached during training. This script does the tuning the declared experiments
(``fcn32s-accum``, ``fcn32s-online``, ``fcn32s-heavy`` in params.yaml) need under the active
profile: each regime is trained at its declared lr times each ``--factors`` value (the same
images, the same seed), validated once per epoch, and the table prints the best and final mean
IU of every run. Put the winning lrs back into params.yaml.

    .venv/bin/python benchmarks/sweep_fcn_momentum.py --factors 0.1 0.3 1 3

Needs the prepared data and the backbone of the active profile (``dvc repro backbone``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pipeline.data.prepare import read_prepared  # noqa: E402
from pipeline.experiment import experiment, prepared_dir, train_config  # noqa: E402
from pipeline.params import load_params  # noqa: E402
from pipeline.training.loop import train  # noqa: E402

REGIMES = ("fcn32s-accum", "fcn32s-online", "fcn32s-heavy")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--regimes", nargs="+", default=list(REGIMES))
    ap.add_argument("--factors", nargs="+", type=float, default=[0.1, 0.3, 1.0, 3.0])
    ap.add_argument("--json", type=Path, help="also write the rows here")
    args = ap.parse_args()

    import ray

    ray.init(include_dashboard=False, configure_logging=False, log_to_driver=False)
    params = load_params()
    rows = []
    for name in args.regimes:
        base = train_config(params, name, root=REPO)
        dataset = experiment(params, name)["dataset"]
        data = {s: read_prepared(prepared_dir(dataset, s, REPO)) for s in ("train", "val")}
        for factor in args.factors:
            with tempfile.TemporaryDirectory(prefix="sweep_") as tmp:
                config = dataclasses.replace(base, lr=base.lr * factor, out_dir=tmp)
                start = time.perf_counter()
                history = train(config, data, storage_path=tmp, name=f"sweep-{name}")
                seconds = time.perf_counter() - start
            vals = [h for h in history if "val_mean_iu" in h]
            losses = [h["loss"] for h in history if "loss" in h]
            row = {
                "experiment": name,
                "lr": config.lr,
                "momentum": config.momentum,
                "batch": config.batch_size * config.accumulate,
                "steps": config.iterations,
                "best_mean_iu": max((h["val_mean_iu"] for h in vals), default=float("nan")),
                "final_mean_iu": vals[-1]["val_mean_iu"] if vals else float("nan"),
                "final_loss": losses[-1] if losses else float("nan"),
                "seconds": seconds,
            }
            rows.append(row)
            print(
                f"{name:14} lr {row['lr']:.2e} (x{factor:g}) momentum {row['momentum']} "
                f"batch {row['batch']:>2} x {row['steps']} steps: best mean IU "
                f"{100 * row['best_mean_iu']:.2f}, final {100 * row['final_mean_iu']:.2f}, "
                f"loss {row['final_loss']:.3f} ({seconds:.0f} s)",
                flush=True,
            )
    print("\nbest lr per regime:")
    for name in args.regimes:
        best = max((r for r in rows if r["experiment"] == name), key=lambda r: r["best_mean_iu"])
        print(f"  {name:14} lr {best['lr']:.2e}: best mean IU {100 * best['best_mean_iu']:.2f}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    ray.shutdown()


if __name__ == "__main__":
    main()
