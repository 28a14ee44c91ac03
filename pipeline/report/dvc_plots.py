"""Training histories as DVC plots: ``reports/plots/<experiment>/{loss,val}.csv``.

``models/<experiment>/history.json`` mixes rows of different shapes (a training step's loss, a
validation's metrics, a resume mark), which DVC's plot renderer rejects: it wants every row of a
file to have the same fields. So the report splits each history into two tables of uniform rows:
``loss.csv`` (step, loss) and ``val.csv`` (step, every validation metric, the task's main one
last). dvc.yaml declares the folder as one plots entry with ``x: step`` and no ``y``, so DVC
draws each file against its last column: per experiment the training loss and the validation
metric (mean IU, ODS or mean angle) by step, in ``dvc plots show`` and ``dvc plots diff``.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from pipeline.errors import DataError
from pipeline.runtime.fsutil import atomic_path

#: each task's main validation metric (segmentation, edges, normals), drawn by default
MAIN_VAL_METRICS = ("val_mean_iu", "val_ods", "val_mean")


def read_history(path: Path) -> list[dict]:
    """A training history (the train stage's ``history.json``: a list of rows)."""
    try:
        history = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: unreadable training history ({exc})") from exc
    if not isinstance(history, list) or not all(isinstance(h, dict) for h in history):
        raise DataError(f"{path}: a training history is a JSON list of rows")
    return history


def loss_rows(history: list[dict]) -> list[dict]:
    """(step, loss) of every optimizer step."""
    return [{"step": h["step"], "loss": h["loss"]} for h in history if "loss" in h]


def val_rows(history: list[dict]) -> list[dict]:
    """(step, the validation metrics every validation recorded), the main metric last."""
    rows = [h for h in history if any(k.startswith("val_") for k in h)]
    if not rows:
        return []
    keys = [k for k in rows[0] if k.startswith("val_") and all(k in r for r in rows)]
    main = next((k for k in MAIN_VAL_METRICS if k in keys), keys[-1] if keys else None)
    order = ["step", *(k for k in keys if k != main), *([main] if main else [])]
    return [{k: r[k] for k in order} for r in rows]


def _csv(rows: list[dict]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()


def write_history_plots(models_dir: Path, experiments: list[str], out_dir: Path) -> list[str]:
    """``out_dir/<experiment>/{loss,val}.csv`` for each experiment with a history (the folder
    replaced atomically; a file only when it has rows). Returns the experiments written."""
    written = []
    with atomic_path(out_dir) as tmp:
        tmp.mkdir(parents=True)
        for name in experiments:
            path = Path(models_dir) / name / "history.json"
            if not path.is_file():
                continue
            history = read_history(path)
            tables = {"loss.csv": loss_rows(history), "val.csv": val_rows(history)}
            if not any(tables.values()):
                continue
            (tmp / name).mkdir()
            for filename, rows in tables.items():
                if rows:
                    (tmp / name / filename).write_text(_csv(rows))
            written.append(name)
    return written
