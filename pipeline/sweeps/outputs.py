"""A sweep's declared outputs: ``sweeps/<name>/`` (trials.csv, best.yaml, two figures) and the
DVC metric ``metrics/sweep-<name>.json`` that the report prints.

Everything the report and the metric hold is deterministic (trial index, values, status, steps,
metrics); wall time and node go to trials.csv only.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import yaml

from pipeline.experiment import declared_experiments
from pipeline.params import Params
from pipeline.report import plots
from pipeline.runtime.fsutil import atomic_path, write_text_atomic
from pipeline.sweeps.spec import SweepSpec
from pipeline.sweeps.tuning import TrialRow, best_row


def _plain(value):
    """numpy scalars from Tune's samplers -> Python numbers (YAML, JSON, CSV)."""
    return value.item() if hasattr(value, "item") else value


def trials_csv(spec: SweepSpec, rows: list[TrialRow]) -> str:
    keys = list(spec.space)
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(
        ["trial", *keys, "status", "reason", "steps", "final", "best", "wall_s", "node"]
    )
    for r in rows:
        values = [_plain(r.values.get(k)) for k in keys]
        writer.writerow(
            [
                r.trial,
                *values,
                r.status,
                r.reason,
                r.steps,
                r.final,
                r.best,
                f"{r.wall_s:.1f}",
                r.node,
            ]
        )
    return out.getvalue()


def best_entry(params: Params, spec: SweepSpec, best: TrialRow) -> dict:
    """The winner as a ready-to-paste ``experiments`` entry (the base entry, the sweep's fixed
    and the winning values merged in)."""
    entry = json.loads(json.dumps(declared_experiments(params)[spec.experiment], default=str))
    for key, value in {**spec.fixed, **best.values}.items():
        section, _, rest = key.partition(".")
        target = entry.setdefault(section, {})
        *parents, leaf = rest.split(".")
        for part in parents:
            target = target.setdefault(part, {})
        target[leaf] = _plain(value)
    entry.pop("tables", None)  # a new row of no paper table
    return {f"{spec.name}-best": entry}


def summary(spec: SweepSpec, rows: list[TrialRow]) -> dict:
    best = best_row(spec, rows)
    return {
        "sweep": spec.name,
        "experiment": spec.experiment,
        "metric": spec.metric,
        "mode": spec.mode,
        "scheduler": spec.scheduler_label,
        "best": best.best,
        "best_trial": best.trial,
        "best_values": {k: _plain(v) for k, v in best.values.items()},
        "trials": len(rows),
        **{
            s.replace(" ", "_"): sum(r.status == s for r in rows)
            for s in ("finished", "stopped early", "failed")
        },
        "trial_steps": sum(r.steps for r in rows),
        "rows": [
            {
                "trial": r.trial,
                "values": {k: _plain(v) for k, v in r.values.items()},
                "status": r.status,
                "steps": r.steps,
                "final": r.final,
                "best": r.best,
            }
            for r in rows
        ],
    }


def write_outputs(
    params: Params, spec: SweepSpec, rows: list[TrialRow], out_dir: Path, metrics_path: Path
) -> dict:
    """Write the sweep's folder (atomically: all or nothing) and its metric file."""
    result = summary(spec, rows)
    best = best_row(spec, rows)
    with atomic_path(out_dir) as tmp:
        tmp.mkdir(parents=True)
        (tmp / "trials.csv").write_text(trials_csv(spec, rows))
        (tmp / "best.yaml").write_text(
            f"# sweep {spec.name}: best {spec.metric} {best.best:.4f} ({best.trial}); paste "
            "under experiments.<set>.train\n"
            + yaml.safe_dump(best_entry(params, spec, best), sort_keys=False)
        )
        stopped = {r.trial for r in rows if r.status == "stopped early"}
        plots.sweep_curves(
            {r.trial: r.history for r in rows}, spec.metric, tmp / "curves.png", stopped
        )
        plots.sweep_values(result["rows"], list(spec.space), spec.metric, tmp / "values.png")
        (tmp / "history.json").write_text(json.dumps({r.trial: r.history for r in rows}))
    write_text_atomic(metrics_path, json.dumps(result, indent=1, default=str) + "\n")
    return result
