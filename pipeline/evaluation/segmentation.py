"""Evaluate a segmentation model on a prepared split: FCN metrics, confusion matrix, prediction
grid.

Returns the metrics; the stage writes them as DVC metrics and logs them to MLflow.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from pipeline.data.loader import InputSpec
from pipeline.evaluation.inference import Prediction, predict
from pipeline.metrics.segmentation import confusion_matrix, segmentation_scores
from pipeline.report import plots
from pipeline.report.qualitative import QUALITATIVE_FILE, Example, save_examples
from pipeline.runtime.progress import progress_bar


def evaluate(
    model: torch.nn.Module,
    table,
    spec: InputSpec,
    num_classes: int,
    *,
    precision: str = "fp32",
    loss_kind: str = "softmax",
    keep_examples: int = 8,
    progress: bool = True,
    scales: Sequence[float] = (1.0,),
) -> tuple[dict, np.ndarray, list[Prediction]]:
    """Scores over the whole table, the confusion matrix, and the first few predictions.

    A model with extra heads (SIFT Flow's geometry) is scored on each in the same pass: its
    scores gain ``<column>_pixel_acc`` ... (e.g. ``geo_label_pixel_acc``, FCN Table 6's geom.
    acc.).
    """
    hist = np.zeros((num_classes, num_classes), np.int64)
    extra_classes = dict(getattr(model, "extra_heads", {}) or {})
    extra_hists = {c: np.zeros((n, n), np.int64) for c, n in extra_classes.items()}
    kept = []
    preds = predict(model, table, spec, precision=precision, loss_kind=loss_kind, scales=scales)
    for p in progress_bar(
        preds, total=table.num_rows, desc="evaluate", unit="img", disable=not progress
    ):
        hist += confusion_matrix(p.label, p.pred, num_classes)
        for column, (truth, pred) in p.extra.items():
            extra_hists[column] += confusion_matrix(truth, pred, extra_classes[column])
        if len(kept) < keep_examples:
            kept.append(p)
    scores = segmentation_scores(hist)
    for column, h in extra_hists.items():
        head = segmentation_scores(h)
        scores.update({f"{column}_{k}": head[k] for k in HEAD_METRICS})
    return scores, hist, kept


SCORE_KEYS = ("pixel_acc", "mean_acc", "mean_iu", "fw_iu", "mean_iu_fg", "per_class_iu")
#: what an extra head reports (FCN's SIFT Flow table gives the geometric pixel accuracy)
HEAD_METRICS = ("pixel_acc", "mean_acc", "mean_iu")


def write_outputs(scores: dict, hist: np.ndarray, kept: list, classes, out_dir: Path) -> dict:
    """metrics JSON-ready dict + confusion plot + qualitative grid in ``out_dir``, and the
    grid's arrays (``qualitative.npz``: the report sets staged models side by side from them)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    plots.confusion(hist, tuple(classes), out_dir / "confusion.png")
    plots.prediction_grid(
        [(p.image, p.label, p.pred) for p in kept],
        out_dir / "predictions.png",
        ("input", "ground truth", "prediction"),
    )
    examples = [Example(p.id, p.image, p.label, p.pred) for p in kept]
    save_examples(examples, out_dir / QUALITATIVE_FILE)
    return {
        **{k: v for k, v in scores.items() if k not in SCORE_KEYS},  # extra heads' scores
        "pixel_acc": scores["pixel_acc"],
        "mean_acc": scores["mean_acc"],
        "mean_iu": scores["mean_iu"],
        "fw_iu": scores["fw_iu"],
        "mean_iu_fg": scores["mean_iu_fg"],
        "per_class_iu": {
            name: iu for name, iu in zip(classes, scores["per_class_iu"]) if iu is not None
        },
    }
