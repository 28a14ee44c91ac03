"""Evaluate a trained model on a prepared split: FCN metrics, confusion matrix, prediction grid.

Runs on one process (batch 1, every image at its own size, as the FCN reference ``score.py``).
Returns the metrics; the stage writes them as DVC metrics and logs them to MLflow.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from pipeline.data.base import decode_image
from pipeline.data.loader import InputSpec, batch_to_tensors
from pipeline.losses import predict_labels
from pipeline.metrics.segmentation import confusion_matrix, segmentation_scores
from pipeline.params import positive_list


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


def eval_rows(model: torch.nn.Module, table, limit: int | None = None) -> Iterator[dict]:
    """The rows of ``table`` one at a time (see :func:`iter_rows`), with ``model`` in eval mode
    and autograd off while they are consumed; the model's mode is restored afterwards."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for i, row in enumerate(iter_rows(table)):
                if limit is not None and i >= limit:
                    return
                yield row
    finally:
        model.train(was_training)


def multiscale_probs(
    predict: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    scales: Sequence[float],
    activation: Callable[[torch.Tensor], torch.Tensor],
) -> torch.Tensor:
    """Test-time averaging over scales (PixelNet Section 4.1, DeepLab/FCN practice).

    ``x`` (1 x 3 x H x W, normalised) is resized by each scale (bilinear, antialiased like PIL),
    the model's scores go through ``activation`` (softmax or sigmoid) and are resized back to
    H x W before the average, so every scale votes on the full-resolution grid.
    """
    h, w = x.shape[-2:]
    total = None
    for s in positive_list("test scales", scales):
        size = (max(1, round(h * s)), max(1, round(w * s)))
        xs = (
            x
            if size == (h, w)
            else F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)
        )
        probs = activation(predict(xs).float())
        if probs.shape[-2:] != (h, w):
            probs = F.interpolate(probs, size=(h, w), mode="bilinear", align_corners=False)
        total = probs if total is None else total + probs
    return total / len(scales)


def _logits_of_probs(probs: torch.Tensor, loss_kind: str) -> torch.Tensor:
    """Scores whose activation gives ``probs`` back (so ``predict_labels`` applies unchanged)."""
    probs = probs.clamp(1e-12, 1.0)
    if loss_kind == "softmax":
        return probs.log()
    return torch.logit(probs.clamp(max=1 - 1e-7))


def predict(
    model: torch.nn.Module,
    table,
    spec: InputSpec,
    *,
    precision: str = "fp32",
    loss_kind: str = "softmax",
    limit: int | None = None,
    scales: Sequence[float] = (1.0,),
) -> Iterator[Prediction]:
    """Run the model over a prepared table, one image at a time.

    ``scales`` other than ``(1.0,)``: the class probabilities are averaged over the rescaled
    inputs (:func:`multiscale_probs`) and ``scores`` hold their log (softmax) or logit.
    """
    scales = positive_list("test scales", scales)
    dtype = torch.bfloat16 if precision == "bf16" else None
    activation = (lambda z: z.softmax(1)) if loss_kind == "softmax" else torch.sigmoid

    def run(x: torch.Tensor) -> torch.Tensor:
        with torch.autocast("cpu", dtype=dtype, enabled=dtype is not None):
            return model(x)

    for row in eval_rows(model, table, limit):
        x, y = batch_to_tensors(row, spec)
        if scales == (1.0,):
            logits = run(x).float()
        else:
            logits = _logits_of_probs(multiscale_probs(run, x, scales, activation), loss_kind)
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
    scales: Sequence[float] = (1.0,),
) -> tuple[dict, np.ndarray, list[Prediction]]:
    """Scores over the whole table, the confusion matrix, and the first few predictions."""
    from tqdm import tqdm

    hist = np.zeros((num_classes, num_classes), np.int64)
    kept = []
    preds = predict(model, table, spec, precision=precision, loss_kind=loss_kind, scales=scales)
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
