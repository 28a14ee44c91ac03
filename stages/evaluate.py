"""DVC stage `evaluate@<experiment>`: score a trained model on its dataset's val split.

Writes metrics/<experiment>.json (DVC metrics) and reports/figures/<experiment>/ (prediction
grid, confusion matrix), with the experiment's test-time input masking (FCN Table 8).
"""

import json
import sys

import mlflow

from pipeline.data.builtin import VOC_CLASSES
from pipeline.evaluate import evaluate, write_outputs
from pipeline.experiment import experiment, input_spec, load_trained, prepared_split
from pipeline.fsutil import write_text_atomic
from pipeline.params import load_params, repo_root
from pipeline.tracking import stage_run

if __name__ == "__main__":
    key = sys.argv[1]
    params = load_params()
    root = repo_root()
    entry = experiment(params, key)
    model, config = load_trained(params, key)
    table = prepared_split(params, key, "val")
    figures = root / "reports" / "figures" / key
    scores, hist, kept = evaluate(
        model,
        table,
        input_spec(params, mask=entry["mask"]["test"]),
        config.num_classes,
        precision=config.precision,
        loss_kind=config.loss_kind,
        keep_examples=params.get("evaluate.num_qualitative"),
    )
    metrics = write_outputs(scores, hist, kept, VOC_CLASSES, figures)
    metrics.update(num_images=table.num_rows, dataset=entry["dataset"], mask=entry["mask"])
    write_text_atomic(root / "metrics" / f"{key}.json", json.dumps(metrics, indent=1) + "\n")
    with stage_run(params, f"evaluate {key}", tags={"densepipe.kind": "evaluate", "model": key}):
        mlflow.log_params({"model": config.model, "val_images": table.num_rows})
        mlflow.log_metrics({k: v for k, v in metrics.items() if isinstance(v, float)})
        mlflow.log_artifacts(str(figures), artifact_path="figures")
        mlflow.log_dict(metrics, "metrics.json")
    print(f"{key}: mean IU {metrics['mean_iu']:.4f}, pixel acc {metrics['pixel_acc']:.4f}")
