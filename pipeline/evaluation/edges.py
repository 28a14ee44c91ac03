"""Evaluate edge detectors on a prepared BSDS-style split: one path for learned models and Canny.

``evaluate_edge_maps`` is the single evaluation path: it takes soft edge maps (float, [0, 1],
one per image of the table, in any order), writes them and every annotator's boundaries (the
table's ``boundaries`` column) to a scratch folder in the layout the BSDS benchmark reads, and
runs :func:`pipeline.metrics.edges.evaluate_bsds` (NMS, thinning, CSA matching against every
annotator, one Ray task per image). ``evaluate_edge_model`` feeds it a model's dense
predictions (optionally averaged over test scales); ``evaluate_canny`` feeds it the Canny
baseline of :func:`pipeline.metrics.nms.canny_edges`. Both return the same dictionary and write
the same figures, so the numbers are directly comparable.

Rows are read like :mod:`pipeline.evaluation.segmentation` reads segmentation rows (batch 1, each
image at
its own size) and normalised with the model's :class:`~pipeline.data.loader.InputSpec`.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipeline.data.datasets.base import decode_image, decode_label
from pipeline.data.datasets.bsds import unstack
from pipeline.data.loader import InputSpec, iter_rows
from pipeline.errors import DataError
from pipeline.evaluation.inference import eval_rows, multiscale_probs
from pipeline.metrics.edges import evaluate_bsds, plot_pr_curve, write_edge_result
from pipeline.metrics.nms import canny_edges, edge_nms
from pipeline.report import plots
from pipeline.runtime.progress import progress_bar

__all__ = [
    "canny_maps",
    "evaluate_canny",
    "evaluate_edge_maps",
    "evaluate_edge_model",
    "predict_edge_map",
    "predict_edge_maps",
    "row_boundaries",
    "summary",
]


def row_boundaries(row: dict, index: int = 0) -> np.ndarray:
    """Every annotator's binary boundary map of one prepared row: ``(n, H, W)`` uint8."""
    if "boundaries" not in row:
        raise DataError(
            "edge evaluation needs the prepared 'boundaries' column (every annotator's map); "
            f"this table has {sorted(row)}"
        )
    height = int(row["height"][index])
    maps = unstack(row["boundaries"][index], height)
    return (maps != 0).astype(np.uint8)


def predict_edge_map(
    model: torch.nn.Module, image: np.ndarray, spec: InputSpec, scales: Sequence[float] = (1.0,)
) -> np.ndarray:
    """H x W float32 edge probabilities of one RGB uint8 image, averaged over ``scales``.

    PixelNet's multi-scale test, through the same
    :func:`pipeline.evaluation.inference.multiscale_probs`
    as segmentation: the sigmoid output of each rescaled input, resized back, averaged.
    """
    device = next(model.parameters()).device
    predict = getattr(model, "predict_dense", model)

    def run(x: torch.Tensor) -> torch.Tensor:
        scores = predict(x)
        if scores.shape[1] != 1:
            raise ValueError(f"edge prediction needs a 1-output model, got {scores.shape[1]}")
        return scores

    x = torch.from_numpy(spec.normalise(image[None])).to(device)
    prob = multiscale_probs(run, x, scales, torch.sigmoid)
    return prob[0, 0].cpu().clamp_(0.0, 1.0).numpy()


def predict_edge_maps(
    model: torch.nn.Module,
    table,
    spec: InputSpec,
    *,
    scales: Sequence[float] = (1.0,),
    limit: int | None = None,
) -> Iterator[tuple[str, np.ndarray]]:
    """``(id, H x W probabilities)`` for each row of ``table`` (batch 1, eval mode, no grad)."""
    for row in eval_rows(model, table, limit):
        image_id = str(row["id"][0])
        image = decode_image(row["image"][0], image_id)
        yield image_id, predict_edge_map(model, image, spec, scales)


def canny_maps(
    table, *, sigma: float = 2.0, limit: int | None = None
) -> Iterator[tuple[str, np.ndarray]]:
    """``(id, soft Canny map)`` for each row (see :func:`pipeline.metrics.nms.canny_edges`)."""
    for i, row in enumerate(iter_rows(table)):
        if limit is not None and i >= limit:
            break
        image_id = str(row["id"][0])
        yield image_id, canny_edges(decode_image(row["image"][0], image_id), sigma=sigma)


def _write_ground_truth(path: Path, boundaries: np.ndarray) -> None:
    """A BSDS ``groundTruth`` .mat holding one ``Boundaries`` struct per annotator."""
    import scipy.io

    gt = np.empty((1, boundaries.shape[0]), dtype=object)
    for k, b in enumerate(boundaries):
        gt[0, k] = {"Boundaries": np.ascontiguousarray(b, dtype=np.uint8)}
    scipy.io.savemat(str(path), {"groundTruth": gt})


def _edge_panel(array: np.ndarray) -> np.ndarray:
    """A map in [0, 1] as an RGB uint8 panel, edges dark on white (the BSDS convention),
    thickened so that one-pixel edges survive the grid's downscaling."""
    shown = plots.thicken_edges(np.clip(array, 0.0, 1.0))
    gray = (255 * (1.0 - shown)).astype(np.uint8)
    return np.repeat(gray[..., None], 3, axis=2)


def evaluate_edge_maps(
    maps: Iterable[tuple[str, np.ndarray]],
    table,
    *,
    n_thresholds: int,
    max_dist: float = 0.0075,
    nms: bool = True,
    num_cpus: int | None = None,
    out_dir: str | Path | None = None,
    name: str = "edges",
    keep_examples: int = 4,
    ids: Sequence[str] | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Score soft edge maps against every annotator of ``table`` with the BSDS benchmark.

    ``maps`` yields ``(id, H x W map in [0, 1])``; every id must be a row of ``table`` with
    the same size. Only the ids yielded are scored (``ids`` restricts further). ``nms`` runs
    structured-edge NMS before thresholding (in the per-image Ray task). Returns
    :meth:`EdgeResult.to_dict` (ODS/OIS as ``{f, precision, recall, threshold}``, AP, the PR
    curve, per-image rows) plus ``predict_seconds`` (time spent producing the maps) and
    ``eval_seconds``. With ``out_dir`` also writes ``<name>.json``, ``<name>_pr_curve.png`` and
    ``<name>_examples.png`` (image | consensus ground truth | prediction, after NMS when ``nms``;
    edges thickened for display).
    """
    wanted = None if ids is None else {str(i) for i in ids}
    rows = {str(row["id"][0]): row for row in iter_rows(table)}
    kept: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    order: list[str] = []
    with tempfile.TemporaryDirectory(prefix="densepipe-edges-") as tmp:
        pred_dir, gt_dir = Path(tmp) / "pred", Path(tmp) / "gt"
        pred_dir.mkdir()
        gt_dir.mkdir()
        t0 = time.perf_counter()
        total = len(wanted) if wanted is not None else table.num_rows
        bar = progress_bar(maps, total=total, desc=f"{name} maps", unit="img", disable=not progress)
        for image_id, edge_map in bar:
            image_id = str(image_id)
            if wanted is not None and image_id not in wanted:
                continue
            if image_id not in rows:
                raise DataError(f"edge map for {image_id!r}, which is not a row of the table")
            if image_id in order:
                raise DataError(f"two edge maps for {image_id!r}")
            row = rows[image_id]
            bounds = row_boundaries(row)
            edge_map = np.asarray(edge_map, dtype=np.float32)
            if edge_map.shape != bounds.shape[1:]:
                raise DataError(
                    f"{image_id}: edge map {edge_map.shape} vs ground truth {bounds.shape[1:]}"
                )
            if not np.isfinite(edge_map).all() or edge_map.min() < 0 or edge_map.max() > 1:
                raise DataError(f"{image_id}: edge map values must be finite and in [0, 1]")
            np.save(pred_dir / f"{image_id}.npy", edge_map)
            _write_ground_truth(gt_dir / f"{image_id}.mat", bounds)
            order.append(image_id)
            if out_dir is not None and len(kept) < keep_examples:
                shown = edge_nms(edge_map.astype(np.float64)) if nms else edge_map
                consensus = decode_label(row["label"][0], image_id) == 1
                image = decode_image(row["image"][0], image_id)
                kept.append((image, _edge_panel(consensus.astype(float)), _edge_panel(shown)))
        predict_seconds = time.perf_counter() - t0
        if not order:
            raise DataError("no edge maps to evaluate")
        t0 = time.perf_counter()
        result = evaluate_bsds(
            pred_dir,
            gt_dir,
            n_thresholds=n_thresholds,
            max_dist=max_dist,
            nms=nms,
            ids=order,
            num_cpus=num_cpus,
            progress=progress,
        )
        eval_seconds = time.perf_counter() - t0
    result.settings.pop("pred_dir", None)
    result.settings.pop("gt_dir", None)
    result.settings["name"] = name
    out = result.to_dict()
    out["predict_seconds"] = predict_seconds
    out["eval_seconds"] = eval_seconds
    if out_dir is not None:
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        write_edge_result(result, out_dir / f"{name}.json")
        plot_pr_curve({name: result}, out_dir / f"{name}_pr_curve.png")
        titles = ("image", "consensus GT", "prediction" + (" (NMS)" if nms else ""))
        plots.prediction_grid(kept, out_dir / f"{name}_examples.png", titles)
    return out


def evaluate_edge_model(
    model: torch.nn.Module,
    table,
    spec: InputSpec,
    *,
    n_thresholds: int,
    max_dist: float = 0.0075,
    nms: bool = True,
    scales: Sequence[float] = (1.0,),
    num_cpus: int | None = None,
    out_dir: str | Path | None = None,
    limit: int | None = None,
    name: str = "model",
    progress: bool = False,
) -> dict[str, Any]:
    """BSDS ODS/OIS/AP of a 1-output edge model (e.g. PixelNet ``task=edges``) on ``table``.

    Dense sigmoid predictions (averaged over ``scales``), NMS (``nms``), then the benchmark
    at ``n_thresholds`` thresholds against every annotator; see :func:`evaluate_edge_maps`.
    ``limit`` scores the first rows only. ``settings.scales`` records the test scales.
    """
    maps = predict_edge_maps(model, table, spec, scales=scales, limit=limit)
    out = evaluate_edge_maps(
        maps,
        table,
        n_thresholds=n_thresholds,
        max_dist=max_dist,
        nms=nms,
        num_cpus=num_cpus,
        out_dir=out_dir,
        name=name,
        progress=progress,
    )
    out["settings"]["scales"] = [float(s) for s in scales]
    return out


def evaluate_canny(
    table,
    *,
    n_thresholds: int,
    max_dist: float = 0.0075,
    sigma: float = 2.0,
    nms: bool = False,
    num_cpus: int | None = None,
    out_dir: str | Path | None = None,
    limit: int | None = None,
    name: str = "canny",
    progress: bool = False,
) -> dict[str, Any]:
    """The Canny baseline through the same evaluator (its ridges are already thin: no NMS)."""
    out = evaluate_edge_maps(
        canny_maps(table, sigma=sigma, limit=limit),
        table,
        n_thresholds=n_thresholds,
        max_dist=max_dist,
        nms=nms,
        num_cpus=num_cpus,
        out_dir=out_dir,
        name=name,
        progress=progress,
    )
    out["settings"]["canny_sigma"] = sigma
    return out


def summary(result: dict[str, Any]) -> dict[str, float | int]:
    """Flat DVC-metrics view of a result: ``ods``/``ois``/``ap`` as numbers (what the report's
    ODS/OIS/AP columns read), plus the ODS threshold, precisions, recalls and counts."""
    ods, ois = result["ods"], result["ois"]
    return {
        "ods": float(ods["f"]),
        "ois": float(ois["f"]),
        "ap": float(result["ap"]),
        "ods_precision": float(ods["precision"]),
        "ods_recall": float(ods["recall"]),
        "ods_threshold": float(ods["threshold"]),
        "ois_precision": float(ois["precision"]),
        "ois_recall": float(ois["recall"]),
        "n_images": int(result["n_images"]),
        "n_thresholds": int(result["settings"]["n_thresholds"]),
    }
