"""Evaluate a surface-normal model on a prepared split (PixelNet Table 5 on NYUDv2).

Dense prediction, batch 1, every image at its own size, as :mod:`pipeline.evaluation.segmentation`
does for
segmentation. The model's 3 outputs per pixel are compared with the prepared ``normals`` column
(least-squares normals of the depth, :mod:`pipeline.data.datasets.nyud`) over the pixels that have
one:
the angular error is pooled over every valid pixel of the split, and the mean, median and RMSE
angle and the share within 11.25 / 22.5 / 30 degrees are reported
(:class:`pipeline.metrics.normals.NormalErrorAccumulator`). Metric keys follow the report's
columns (``within_11_25`` for the 11.25-degree share), so DVC and MLflow show plain names.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from pipeline.data.datasets.base import decode_image
from pipeline.data.loader import InputSpec, batch_to_tensors
from pipeline.evaluation.inference import eval_rows, multiscale_probs
from pipeline.metrics.normals import THRESHOLDS_DEG, NormalErrorAccumulator
from pipeline.params import positive_list
from pipeline.report import plots
from pipeline.runtime.progress import progress_bar

__all__ = [
    "NormalsPrediction",
    "evaluate_normals",
    "metric_key",
    "normals_to_rgb",
    "predict_normals",
    "write_outputs",
]


@dataclass
class NormalsPrediction:
    id: str
    image: np.ndarray  # HxWx3 uint8
    truth: np.ndarray  # HxWx3 float32 unit normals, NaN: none
    pred: np.ndarray  # HxWx3 float32 unit normals


def metric_key(name: str) -> str:
    """``within_11.25`` -> ``within_11_25``: the key the report's columns read."""
    return name.replace(".", "_")


def _predict_fn(model: torch.nn.Module):
    return getattr(model, "predict_dense", model)


def predict_normals(
    model: torch.nn.Module,
    table,
    spec: InputSpec,
    *,
    precision: str = "fp32",
    scales: Sequence[float] = (1.0,),
    limit: int | None = None,
) -> Iterator[NormalsPrediction]:
    """Unit normals predicted for each row of ``table`` (eval mode, no grad).

    ``scales`` other than ``(1.0,)``: the unit predictions of the rescaled inputs, resized back,
    are averaged (then renormalised), through
    :func:`pipeline.evaluation.inference.multiscale_probs`.
    """
    scales = positive_list("test scales", scales)
    dtype = torch.bfloat16 if precision == "bf16" else None
    device = next(model.parameters()).device
    predict = _predict_fn(model)

    def run(x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            scores = predict(x.to(device))
        if scores.shape[1] != 3:
            raise ValueError(f"normals need a 3-output model, got {scores.shape[1]} outputs")
        return scores.float()

    def unit(scores: torch.Tensor) -> torch.Tensor:
        return F.normalize(scores, dim=1, eps=1e-8)

    for row in eval_rows(model, table, limit):
        x, y = batch_to_tensors(row, spec, task="normals")
        if scales == (1.0,):
            pred = unit(run(x))
        else:
            pred = unit(multiscale_probs(run, x, scales, unit))
        image_id = str(row["id"][0])
        yield NormalsPrediction(
            id=image_id,
            image=decode_image(row["image"][0], image_id),
            truth=y[0].permute(1, 2, 0).numpy(),
            pred=pred[0].permute(1, 2, 0).cpu().numpy(),
        )


def evaluate_normals(
    model: torch.nn.Module,
    table,
    spec: InputSpec,
    *,
    precision: str = "fp32",
    scales: Sequence[float] = (1.0,),
    keep_examples: int = 8,
    progress: bool = True,
) -> tuple[dict, list[NormalsPrediction]]:
    """Angular-error scores pooled over every valid pixel of ``table``, and the first few
    predictions (for the figure)."""
    acc = NormalErrorAccumulator()
    kept: list[NormalsPrediction] = []
    preds = predict_normals(model, table, spec, precision=precision, scales=scales)
    for p in progress_bar(
        preds, total=table.num_rows, desc="evaluate normals", disable=not progress
    ):
        acc.add(p.pred, p.truth)
        if len(kept) < keep_examples:
            kept.append(p)
    return {metric_key(k): v for k, v in acc.scores().items()}, kept


def normals_to_rgb(normals: np.ndarray) -> np.ndarray:
    """HxWx3 normals -> uint8 RGB, the usual coding of normals facing the camera:
    ``(1 - n) / 2`` per component (our normals point away from it), black where NaN."""
    n = np.asarray(normals, np.float32)
    rgb = np.clip((1.0 - n) / 2.0, 0.0, 1.0) * 255.0
    rgb[~np.isfinite(n).all(-1)] = 0.0
    return np.round(np.nan_to_num(rgb)).astype(np.uint8)


def error_to_rgb(errors: np.ndarray, vmax: float = 45.0) -> np.ndarray:
    """HxW angular errors (degrees, NaN: no truth) -> uint8 RGB heat map (black where NaN)."""
    from matplotlib import colormaps

    e = np.asarray(errors, np.float64)
    rgb = colormaps["magma"](np.clip(np.nan_to_num(e) / vmax, 0.0, 1.0))[..., :3] * 255.0
    rgb[~np.isfinite(e)] = 0.0
    return np.round(rgb).astype(np.uint8)


def _error_map(pred: np.ndarray, truth: np.ndarray) -> np.ndarray:
    cos = np.clip(np.sum(pred * truth, axis=-1), -1.0, 1.0)
    return np.degrees(np.arccos(cos))  # NaN where the truth is NaN


def write_outputs(scores: dict, kept: list[NormalsPrediction], out_dir: Path) -> dict:
    """The metrics dict for metrics/<name>.json and ``predictions.png`` in ``out_dir``: input,
    true and predicted normals (RGB-coded), angular error (0..45 degrees, black: no truth)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if kept:
        plots.prediction_grid(
            [
                (
                    p.image,
                    normals_to_rgb(p.truth),
                    normals_to_rgb(p.pred),
                    error_to_rgb(_error_map(p.pred, p.truth)),
                )
                for p in kept
            ],
            out_dir / "predictions.png",
            ("input", "true normals", "predicted normals", "angle error (0-45 deg)"),
        )
    keys = ("mean", "median", "rmse", *(metric_key(f"within_{t:g}") for t in THRESHOLDS_DEG))
    return {**{k: scores[k] for k in keys}, "n_pixels": int(scores["n_pixels"])}
