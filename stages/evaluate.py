"""DVC stage `evaluate@<experiment>`: score a trained model on its dataset's val split.

Segmentation: FCN metrics (with the experiment's test-time input masking, FCN Table 8), a
prediction grid and a confusion matrix. Edges: the BSDS benchmark (ODS/OIS/AP) with a PR curve.
Normals (PixelNet Table 5): angular errors over the valid pixels (mean/median/RMSE, % within
11.25/22.5/30 degrees) and a grid of true vs predicted normals.
Writes metrics/<experiment>.json (DVC metrics) and reports/figures/<experiment>/.
"""

import json
import sys

import mlflow

from pipeline.evaluation import edges, normals, segmentation
from pipeline.experiment import (
    class_names,
    experiment,
    input_spec,
    load_trained,
    prepared_dir,
    prepared_split,
)
from pipeline.params import load_params, repo_root
from pipeline.runtime.console import announce_limits, run_stage
from pipeline.runtime.fsutil import write_text_atomic
from pipeline.runtime.raycluster import init_ray
from pipeline.runtime.tracking import log_dataset, stage_run, ui_url


def evaluate_segmentation(model, config, table, spec, params, figures, scales, classes) -> dict:
    scores, hist, kept = segmentation.evaluate(
        model,
        table,
        spec,
        config.num_classes,
        precision=config.precision,
        loss_kind=config.loss_kind,
        keep_examples=params.get("evaluate.num_qualitative"),
        scales=scales,
    )
    return segmentation.write_outputs(scores, hist, kept, classes, figures)


def evaluate_edges(model, table, spec, params, figures, scales) -> dict:
    settings = params.section("evaluate.edges")
    init_ray(params)
    result = edges.evaluate_edge_model(
        model,
        table,
        spec,
        n_thresholds=settings["n_thresholds"],
        max_dist=settings["max_dist"],
        nms=settings["nms"],
        scales=scales,
        out_dir=figures,
        name="edges",
        progress=True,
    )
    return edges.summary(result)


def evaluate_normals(model, config, table, spec, params, figures, scales) -> dict:
    scores, kept = normals.evaluate_normals(
        model,
        table,
        spec,
        precision=config.precision,
        scales=scales,
        keep_examples=params.get("evaluate.num_qualitative"),
    )
    return normals.write_outputs(scores, kept, figures)


def main() -> None:
    key = sys.argv[1]
    params = load_params()
    root = repo_root()
    entry = experiment(params, key)
    limits = announce_limits(params)
    model, config = load_trained(params, key)
    table = prepared_split(params, key, "val")
    spec = input_spec(params, key, mask=entry["mask"]["test"])
    figures = root / "reports" / "figures" / key
    if entry["task"] == "edges":
        metrics = evaluate_edges(model, table, spec, params, figures, entry["test_scales"])
    elif entry["task"] == "normals":
        scales = entry["test_scales"]
        metrics = evaluate_normals(model, config, table, spec, params, figures, scales)
    else:
        scales = entry["test_scales"]
        classes = class_names(params, entry["dataset"])
        metrics = evaluate_segmentation(
            model, config, table, spec, params, figures, scales, classes
        )
    metrics.update(
        num_images=table.num_rows,
        dataset=entry["dataset"],
        mask=entry["mask"],
        test_scales=entry["test_scales"],
    )
    if limits:  # a trial run's metrics say so (the report prints them as such)
        metrics["limits"] = limits
    write_text_atomic(root / "metrics" / f"{key}.json", json.dumps(metrics, indent=1) + "\n")
    tags = {"densepipe.kind": "evaluate", "model": key}
    with stage_run(params, f"evaluate {key}", tags=tags) as run:
        dataset = entry["dataset"]
        mlflow.log_params({"model": config.model, "dataset": dataset, "val_images": table.num_rows})
        log_dataset(dataset, prepared_dir(dataset, "val"), "evaluation")
        mlflow.log_metrics({k: v for k, v in metrics.items() if isinstance(v, float)})
        mlflow.log_artifacts(str(figures), artifact_path="figures")
        mlflow.log_dict(metrics, "metrics.json")
    main = {
        "edges": ("ods", "ois", "ap"),
        "normals": ("mean", "median", "within_11_25", "within_30"),
    }.get(entry["task"], ("mean_iu", "pixel_acc"))
    print(f"{key}: " + ", ".join(f"{m} {metrics[m]:.4f}" for m in main))
    print(f"MLflow: {ui_url(params, run.info.experiment_id)}")


if __name__ == "__main__":
    run_stage(main)
