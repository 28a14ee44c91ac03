"""DVC stage `crf@<run>`: refine the val split with the searched dense-CRF parameters.

Writes metrics/<run>-crf.json (mean IU etc. before and after the CRF, trimap curves) and
reports/figures/<run>-crf/ (trimap plot, image | truth | DCNN | DCNN+CRF grid).
"""

import json
import sys

import mlflow

from pipeline.crf.evaluate import evaluate_crf, refine_rows, trimap_table, write_figures
from pipeline.crf.params import backend_from_params, load_best
from pipeline.evaluation.scores import SCORES_FILE
from pipeline.experiment import crf_best_path
from pipeline.params import load_params, positive, repo_root
from pipeline.runtime.console import run_stage
from pipeline.runtime.fsutil import write_text_atomic
from pipeline.runtime.raycluster import init_ray
from pipeline.runtime.tracking import stage_run


def main() -> None:
    key = sys.argv[1]
    params = load_params()
    root = repo_root()
    crf = params.section("crf")
    backend = backend_from_params(crf)
    best = load_best(crf_best_path(key))
    max_width = int(positive("crf.trimap_max_width", crf.get("trimap_max_width"), kind=int))
    init_ray(params)
    rows = refine_rows(root / "data" / "scores" / key / SCORES_FILE, best, backend)
    metrics, curves, kept = evaluate_crf(
        rows,
        params.get("model.num_classes"),
        range(1, max_width + 1),
        keep_examples=int(crf.get("num_qualitative", 8)),
    )
    metrics["crf_params"] = best.to_dict()
    metrics["trimap_mean_iu"] = trimap_table(curves)
    figures = root / "reports" / "figures" / f"{key}-crf"
    write_figures(curves, kept, figures)
    write_text_atomic(root / "metrics" / f"{key}-crf.json", json.dumps(metrics, indent=1) + "\n")
    with stage_run(params, f"crf {key}", tags={"densepipe.kind": "crf", "model": key}):
        mlflow.log_params({f"crf.{k}": v for k, v in best.to_dict().items()})
        mlflow.log_metrics(
            {f"{k}_{m}": v for k in ("before", "after") for m, v in metrics[k].items()}
        )
        mlflow.log_artifacts(str(figures), artifact_path="figures")
        mlflow.log_dict(metrics, "metrics.json")
    print(
        f"{key}: mean IU {metrics['before']['mean_iu']:.4f} -> "
        f"{metrics['after']['mean_iu']:.4f} after CRF ({best})"
    )


if __name__ == "__main__":
    run_stage(main)
