"""Evaluate a trained model on a prepared split: FCN metrics, confusion matrix, prediction grid.

Runs on one process (batch 1, every image at its own size, as the FCN reference ``score.py``).
Returns the metrics; the stage writes them as DVC metrics and logs them to MLflow.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from pipeline.data.base import decode_image
from pipeline.data.loader import InputSpec, batch_to_tensors
from pipeline.losses import predict_labels
from pipeline.metrics.segmentation import confusion_matrix, segmentation_scores


@dataclass
class Prediction:
    id: str
    image: np.ndarray  # HxWx3 uint8
    label: np.ndarray  # HxW uint8 truth
    scores: torch.Tensor  # CxHxW logits (float32)
    pred: np.ndarray  # HxW predicted classes


def iter_rows(table) -> Iterator[dict]:
    """Prepared rows one at a time as 1-row numpy batches (the loader's input format)."""
    columns = table.column_names
    for batch in table.to_batches(max_chunksize=1):
        data = batch.to_pydict()
        yield {c: np.asarray(data[c], dtype=object) for c in columns}


def predict(
    model: torch.nn.Module,
    table,
    spec: InputSpec,
    *,
    precision: str = "fp32",
    loss_kind: str = "softmax",
    limit: int | None = None,
) -> Iterator[Prediction]:
    """Run the model over a prepared table, one image at a time."""
    model.eval()
    dtype = torch.bfloat16 if precision == "bf16" else None
    with torch.no_grad():
        for i, row in enumerate(iter_rows(table)):
            if limit is not None and i >= limit:
                break
            x, y = batch_to_tensors(row, spec)
            with torch.autocast("cpu", dtype=dtype, enabled=dtype is not None):
                logits = model(x)
            logits = logits.float()
            yield Prediction(
                id=str(row["id"][0]),
                image=decode_image(row["image"][0], str(row["id"][0])),
                label=y[0].numpy().astype(np.uint8),
                scores=logits[0],
                pred=predict_labels(logits, loss_kind)[0].numpy().astype(np.uint8),
            )


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
) -> tuple[dict, np.ndarray, list[Prediction]]:
    """Scores over the whole table, the confusion matrix, and the first few predictions."""
    from tqdm import tqdm

    hist = np.zeros((num_classes, num_classes), np.int64)
    kept = []
    preds = predict(model, table, spec, precision=precision, loss_kind=loss_kind)
    for p in tqdm(preds, total=table.num_rows, desc="evaluate", disable=not progress):
        hist += confusion_matrix(p.label, p.pred, num_classes)
        if len(kept) < keep_examples:
            kept.append(p)
    return segmentation_scores(hist), hist, kept


def write_outputs(scores: dict, hist: np.ndarray, kept: list, classes, out_dir: Path) -> dict:
    """metrics JSON-ready dict + confusion plot + qualitative grid in ``out_dir``."""
    from pipeline import plots

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    plots.confusion(hist, tuple(classes), out_dir / "confusion.png")
    plots.prediction_grid(
        [(p.image, p.label, p.pred) for p in kept],
        out_dir / "predictions.png",
        ("input", "ground truth", "prediction"),
    )
    return {
        "pixel_acc": scores["pixel_acc"],
        "mean_acc": scores["mean_acc"],
        "mean_iu": scores["mean_iu"],
        "fw_iu": scores["fw_iu"],
        "mean_iu_fg": scores["mean_iu_fg"],
        "per_class_iu": {
            name: iu for name, iu in zip(classes, scores["per_class_iu"]) if iu is not None
        },
    }
