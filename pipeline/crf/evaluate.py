"""Scores of the DCNN and the DCNN+CRF on the same split: mean IU before and after, trimaps.

The CRF runs through ``pipeline.crf.dense.refine_dataset`` (Ray Data, one task per couple of
rows); the DCNN's labels are the argmax of the same quantised probabilities the CRF reads, so
the two columns differ by the CRF alone.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from pipeline.crf.dense import refine_dataset
from pipeline.crf.params import CRFParams
from pipeline.crf.transport import decode_probs, num_classes_of
from pipeline.data.datasets.base import decode_image, decode_label
from pipeline.metrics.segmentation import confusion_matrix, segmentation_scores
from pipeline.metrics.trimap import plot_trimap, trimap_scores
from pipeline.report import plots
from pipeline.runtime.raylogs import data_progress

METRICS = ("pixel_acc", "mean_acc", "mean_iu", "fw_iu")


def refine_rows(scores_file: str | Path, params: CRFParams, backend: str) -> list[dict]:
    """Refine every row of a scores Parquet file; rows back in id order, ``crf_label`` added."""
    import ray

    ds = ray.data.read_parquet(str(scores_file))
    total = pq.read_metadata(scores_file).num_rows
    with data_progress("CRF", total, unit="img", op="_refine_batch"):
        rows = refine_dataset(ds, params, backend=backend).take_all()
    return sorted(rows, key=lambda r: str(r["id"]))


def evaluate_crf(
    rows: list[dict],
    num_classes: int,
    widths: range,
    keep_examples: int = 8,
) -> tuple[dict[str, Any], dict[str, dict], list[tuple]]:
    """(metrics before/after, trimap curves, qualitative rows image|truth|DCNN|DCNN+CRF)."""
    hists = {k: np.zeros((num_classes, num_classes), np.int64) for k in ("dcnn", "crf")}
    labels, dcnn, crf, kept = [], [], [], []
    for row in rows:
        source = str(row["id"])
        h, w = int(row["height"]), int(row["width"])
        data = bytes(row["probs"])
        probs = decode_probs(data, (num_classes_of(data, h), h, w), source)
        label = decode_label(bytes(row["label"]), source)
        before = probs.argmax(0).astype(np.uint8)
        after = decode_label(bytes(row["crf_label"]), source)
        hists["dcnn"] += confusion_matrix(label, before, num_classes)
        hists["crf"] += confusion_matrix(label, after, num_classes)
        labels.append(label)
        dcnn.append(before)
        crf.append(after)
        if len(kept) < keep_examples:
            kept.append((decode_image(bytes(row["image"]), source), label, before, after))
    scores = {k: segmentation_scores(v) for k, v in hists.items()}
    metrics: dict[str, Any] = {
        name: {m: scores[k][m] for m in METRICS}
        for k, name in (("dcnn", "before"), ("crf", "after"))
    }
    metrics["mean_iu_gain"] = scores["crf"]["mean_iu"] - scores["dcnn"]["mean_iu"]
    metrics["num_images"] = len(rows)
    curves = {
        "DCNN": trimap_scores(dcnn, labels, widths, num_classes),
        "DCNN+CRF": trimap_scores(crf, labels, widths, num_classes),
    }
    return metrics, curves, kept


def write_figures(curves: dict, kept: list[tuple], out_dir: str | Path) -> None:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    plot_trimap(curves, out_dir / "trimap.png")
    plots.prediction_grid(
        kept, out_dir / "predictions.png", ("input", "ground truth", "DCNN", "DCNN+CRF")
    )


def trimap_table(curves: dict) -> dict[str, dict[str, float | None]]:
    """JSON-ready trimap mean IU per method and width (NaN as null)."""
    out: dict[str, dict[str, float | None]] = {}
    for name, result in curves.items():
        out[name] = {
            str(int(w) if float(w).is_integer() else w): (
                None if not np.isfinite(r["mean_iu"]) else float(r["mean_iu"])
            )
            for w, r in result.items()
        }
    return out
