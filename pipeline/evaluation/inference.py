"""A trained model over a prepared split, one image at a time: the step every evaluation shares.

Batch 1, every image at its own size, as the FCN reference ``score.py``; optional test-time
averaging over scales. Segmentation, edges, normals and the CRF's scores all start here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from pipeline.data.datasets.base import decode_image
from pipeline.data.loader import InputSpec, batch_to_tensors, iter_rows
from pipeline.params import positive_list
from pipeline.training.losses import predict_labels


@dataclass
class Prediction:
    id: str
    image: np.ndarray  # HxWx3 uint8
    label: np.ndarray  # HxW uint8 truth
    scores: torch.Tensor  # CxHxW logits (float32)
    pred: np.ndarray  # HxW predicted classes
    # a two-headed model's other heads: label column -> (HxW truth, HxW predicted classes)
    extra: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)


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


def logits_of_probs(probs: torch.Tensor, loss_kind: str) -> torch.Tensor:
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

    columns = spec.extra_labels
    if columns and scales != (1.0,):
        raise ValueError("test-time scales are not supported for a model with extra heads")
    for row in eval_rows(model, table, limit):
        x, y = batch_to_tensors(row, spec)
        extra = {}
        if columns:  # every head in one forward pass; y holds the main label, then the extras
            with torch.autocast("cpu", dtype=dtype, enabled=dtype is not None):
                heads = model.forward_heads(x)
            logits = heads["label"].float()
            for k, column in enumerate(columns, start=1):
                pred = predict_labels(heads[column].float(), loss_kind)[0].numpy()
                extra[column] = (y[0, k].numpy().astype(np.uint8), pred.astype(np.uint8))
            y = y[:, 0]
        elif scales == (1.0,):
            logits = run(x).float()
        else:
            logits = logits_of_probs(multiscale_probs(run, x, scales, activation), loss_kind)
        yield Prediction(
            id=str(row["id"][0]),
            image=decode_image(row["image"][0], str(row["id"][0])),
            label=y[0].numpy().astype(np.uint8),
            scores=logits[0],
            pred=predict_labels(logits, loss_kind)[0].numpy().astype(np.uint8),
            extra=extra,
        )
