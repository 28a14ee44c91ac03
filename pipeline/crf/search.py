"""DeepLab's CRF parameter search (paper §5): a coarse grid, then a finer one around its best.

w2=3, σγ=3 fixed; coarse grid w1 ∈ 5..10, σα ∈ 50:10:100, σβ ∈ 3:1:10 on (up to) 100 val
images, then a finer grid around the best. Trials run as parallel Ray tasks over examples put in
the object store once; every trial is logged from the driver as a child run of one MLflow parent
(one writer, so a SQLite store never sees "database is locked").
"""

from __future__ import annotations

import itertools
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, fields, replace
from typing import Any

import mlflow
import numpy as np
import ray
from mlflow.entities import Metric, Param, RunTag

from pipeline.crf.dense import refine
from pipeline.crf.params import CRFParams
from pipeline.crf.transport import (
    decode_probs,
    encode_probs,
    image_array,
    label_array,
    num_classes_of,
)
from pipeline.errors import DataError, ParamsError
from pipeline.metrics.segmentation import confusion_matrix, segmentation_scores
from pipeline.runtime.progress import progress_bar

# Paper §5 coarse grid (MATLAB ranges [5, 10], [50:10:100], [3:1:10]); w2 = σγ = 3 fixed.
COARSE_GRID: dict[str, list[float]] = {
    "w1": [5.0, 6.0, 7.0, 8.0, 9.0, 10.0],
    "sigma_alpha": [float(v) for v in range(50, 101, 10)],
    "sigma_beta": [float(v) for v in range(3, 11)],
}


@dataclass(frozen=True)
class Example:
    """One search example, compact in the object store: RGB image, encoded probs, label."""

    image: np.ndarray  # HxWx3 uint8
    probs: bytes  # encode_probs output
    label: np.ndarray  # HxW uint8, 255 = void
    num_classes: int

    def decoded_probs(self) -> np.ndarray:
        h, w = self.label.shape
        return decode_probs(self.probs, (self.num_classes, h, w))


def make_example(image: Any, probs: Any, label: Any, source: str = "example") -> Example:
    """Normalise one example: images/labels decoded if bytes, probs encoded if an array."""
    image = image_array(image, source)
    label = label_array(label, source)
    h, w = label.shape
    if isinstance(probs, bytes | bytearray | memoryview):
        data = bytes(probs)
        c = num_classes_of(data, h)
    else:
        probs = np.asarray(probs)
        c = probs.shape[0]
        data = encode_probs(probs)
    if image.shape[:2] != (h, w):
        raise DataError(f"{source}: image {image.shape[:2]} and label {(h, w)} differ in size")
    return Example(image=image, probs=data, label=label, num_classes=c)


def _as_example(item: Any, i: int) -> Example:
    if isinstance(item, Example):
        return item
    if isinstance(item, Mapping):
        source = str(item.get("id", f"example {i}"))
        return make_example(item["image"], item["probs"], item["label"], source)
    image, probs, label = item
    return make_example(image, probs, label, f"example {i}")


def expand_grid(
    grid: Mapping[str, Sequence[float]] | Iterable[CRFParams], base: CRFParams | None = None
) -> list[CRFParams]:
    """A grid as CRFParams: a list is kept, a dict of value lists is its Cartesian product.

    Keys absent from the dict take ``base``'s values (default: w2 = σγ = 3, 10 iterations).
    """
    base = base or CRFParams()
    if isinstance(grid, Mapping):
        names = {f.name for f in fields(CRFParams)}
        for key in grid:
            if key not in names:
                raise ParamsError(f"crf.search.grid.{key} is not a CRF parameter")
        keys = list(grid)
        return [
            replace(base, **dict(zip(keys, combo)))
            for combo in itertools.product(*(list(grid[k]) for k in keys))
        ]
    return list(grid)


def fine_grid(
    best: CRFParams,
    steps: Mapping[str, float] | None = None,
    radius: int = 2,
) -> dict[str, list[float]]:
    """The paper's refinement round: finer steps around the coarse round's best values.

    Default steps halve the coarse ones (w1 0.5, σα 5, σβ 0.5), ``radius`` steps either side;
    values that would not be valid (w1 < 0, σ <= 0) are dropped.
    """
    steps = dict(steps or {"w1": 0.5, "sigma_alpha": 5.0, "sigma_beta": 0.5})
    out: dict[str, list[float]] = {}
    for key, step in steps.items():
        centre = float(getattr(best, key))
        values = [centre + k * step for k in range(-radius, radius + 1)]
        low_ok = (lambda v: v >= 0) if key.startswith("w") else (lambda v: v > 0)
        out[key] = [round(v, 6) for v in values if low_ok(v)]
    return out


def _evaluate_chunk(
    examples: list[Example], indices: list[int], params: dict[str, float], backend: str
) -> np.ndarray:
    """Summed confusion matrix of one trial over some examples (runs as a Ray task)."""
    crf_params = CRFParams(**params)
    n = examples[indices[0]].num_classes
    hist = np.zeros((n, n), dtype=np.int64)
    for i in indices:
        ex = examples[i]
        pred = refine(ex.image, ex.decoded_probs(), crf_params, backend)
        hist += confusion_matrix(ex.label, pred, n)
    return hist


def evaluate(
    examples: Sequence[Any], params: CRFParams, num_classes: int, backend: str = "pydensecrf"
) -> dict[str, Any]:
    """One trial, in-process: segmentation scores of the refined examples (dataset-level IU)."""
    exs = _prepare(examples, num_classes)
    hist = _evaluate_chunk(exs, list(range(len(exs))), params.to_dict(), backend)
    return segmentation_scores(hist)


def _check_classes(examples: list[Example], num_classes: int) -> None:
    for i, ex in enumerate(examples):
        if ex.num_classes != num_classes:
            raise DataError(f"example {i} has {ex.num_classes} score channels, not {num_classes}")


def _chunks(n_items: int, n_trials: int, cpus: int) -> list[list[int]]:
    """Split examples so that trials x chunks gives every CPU work (at least 2 tasks per CPU)."""
    want = max(1, min(n_items, math.ceil(2 * cpus / max(n_trials, 1))))
    bounds = np.linspace(0, n_items, want + 1).round().astype(int)
    return [list(range(a, b)) for a, b in zip(bounds[:-1], bounds[1:]) if b > a]


class _TrialLogger:
    """Child runs under one parent, written from the driver only (one SQLite writer)."""

    def __init__(self, parent_run_id: str | None, tracking_uri: str | None, run_name: str):
        self.client = mlflow.MlflowClient(tracking_uri=tracking_uri)
        self.own_parent = parent_run_id is None
        if parent_run_id is None:
            name = os.environ.get("MLFLOW_EXPERIMENT_NAME", "crf-search")
            exp = self.client.get_experiment_by_name(name)
            exp_id = exp.experiment_id if exp else self.client.create_experiment(name)
            parent_run_id = self.client.create_run(exp_id, run_name=run_name).info.run_id
        self.parent_id = parent_run_id
        self.experiment_id = self.client.get_run(parent_run_id).info.experiment_id

    @classmethod
    def maybe(
        cls, parent_run_id: str | None, tracking_uri: str | None, run_name: str
    ) -> _TrialLogger | None:
        if parent_run_id is None and tracking_uri is None:
            return None
        return cls(parent_run_id, tracking_uri, run_name)

    def log_trial(self, record: Mapping[str, Any]) -> str:
        index = int(record["trial"])
        tags = {"mlflow.parentRunId": self.parent_id, "densepipe.crf_trial": str(index)}
        if "round" in record:
            tags["densepipe.crf_round"] = str(record["round"])
        run = self.client.create_run(
            self.experiment_id, run_name=f"crf-trial-{index:04d}", tags=tags
        )
        rid = run.info.run_id
        self.client.log_batch(
            rid,
            params=[Param(f.name, str(record[f.name])) for f in fields(CRFParams)],
            metrics=[
                Metric(k, float(record[k]), 0, 0)
                for k in ("mean_iu", "pixel_acc", "mean_acc")
                if record.get(k) is not None and math.isfinite(record[k])
            ],
        )
        self.client.set_terminated(rid)
        return rid

    def finish(self, best: CRFParams, best_score: float, n_trials: int) -> None:
        """Best values as parent tags (mutable, unlike params) + metric; close our own parent."""
        tags = [RunTag(f"crf.best.{k}", str(v)) for k, v in best.to_dict().items()]
        metrics = [Metric("best_mean_iu", float(best_score), 0, n_trials)]
        self.client.log_batch(self.parent_id, metrics=metrics, tags=tags)
        if self.own_parent:
            self.client.set_terminated(self.parent_id)


def _run_trials(
    exs: list[Example],
    trials_params: list[CRFParams],
    backend: str,
    logger: _TrialLogger | None,
    first_index: int = 0,
    round_name: str | None = None,
    progress: bool = False,
) -> list[dict[str, Any]]:
    """All trials as Ray tasks (trial x chunk of examples), gathered as they finish."""
    if not ray.is_initialized():
        ray.init(configure_logging=False, include_dashboard=False)
    cpus = max(1, int(ray.cluster_resources().get("CPU", 1)))
    examples_ref = ray.put(exs)  # once: every task reads the same object
    remote = ray.remote(num_cpus=1)(_evaluate_chunk)
    chunks = _chunks(len(exs), len(trials_params), cpus)
    pending: dict[Any, int] = {}
    for t, p in enumerate(trials_params):
        for chunk in chunks:
            pending[remote.remote(examples_ref, chunk, p.to_dict(), backend)] = t
    hists: dict[int, np.ndarray] = {}
    remaining = dict.fromkeys(range(len(trials_params)), len(chunks))
    records: list[dict[str, Any]] = [{} for _ in trials_params]
    refs = list(pending)
    desc = f"CRF search ({round_name})" if round_name else "CRF search"
    bar = progress_bar(total=len(trials_params), desc=desc, unit="trial", disable=not progress)
    while refs:
        done, refs = ray.wait(refs, num_returns=1)
        t = pending.pop(done[0])
        hist = ray.get(done[0])
        hists[t] = hists[t] + hist if t in hists else hist
        remaining[t] -= 1
        if remaining[t]:
            continue
        scores = segmentation_scores(hists.pop(t))
        record: dict[str, Any] = {
            **trials_params[t].to_dict(),
            "mean_iu": scores["mean_iu"],
            "pixel_acc": scores["pixel_acc"],
            "mean_acc": scores["mean_acc"],
            "trial": first_index + t,
        }
        if round_name is not None:
            record["round"] = round_name
        if logger is not None:
            record["run_id"] = logger.log_trial(record)
        records[t] = record
        bar.update(1)
    bar.close()
    return records


def _best(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Highest mean IU (NaN counts as worst); ties go to the earlier trial."""

    def key(r: dict[str, Any]) -> tuple[float, int]:
        score = r["mean_iu"] if math.isfinite(r["mean_iu"]) else -math.inf
        return (score, -r["trial"])

    return max(records, key=key)


def _prepare(examples: Sequence[Any], num_classes: int) -> list[Example]:
    exs = [_as_example(e, i) for i, e in enumerate(examples)]
    if not exs:
        raise DataError("CRF search needs at least one example")
    _check_classes(exs, num_classes)
    return exs


def search(
    examples: Sequence[Any],
    grid: Mapping[str, Sequence[float]] | Iterable[CRFParams],
    num_classes: int,
    mlflow_parent_run_id: str | None = None,
    tracking_uri: str | None = None,
    *,
    base: CRFParams | None = None,
    backend: str = "pydensecrf",
    run_name: str = "crf-search",
    progress: bool = False,
) -> tuple[CRFParams, list[dict[str, Any]]]:
    """Evaluate every grid point on the examples as parallel Ray tasks; return (best, trials).

    ``examples``: ``Example``s, ``(image, probs, label)`` tuples or dicts with those keys
    (arrays or encoded bytes; float probs are stored quantised with ``encode_probs``, the form
    the predict stage writes). They go into the object store once. Mean IU per trial is
    dataset-level (one confusion matrix summed over the examples; 255 ignored; nanmean over
    classes). Ties go to the earlier grid point. MLflow logging happens when a parent run id or
    a tracking URI is given: each trial is a child run (params + mean_iu, pixel_acc, mean_acc);
    without a parent id a parent run ``run_name`` is created (experiment
    ``$MLFLOW_EXPERIMENT_NAME`` or "crf-search"). Ray is initialised if it is not yet.
    """
    trials_params = expand_grid(grid, base)
    if not trials_params:
        raise ParamsError("crf.search.grid is empty")
    exs = _prepare(examples, num_classes)
    logger = _TrialLogger.maybe(mlflow_parent_run_id, tracking_uri, run_name)
    records = _run_trials(exs, trials_params, backend, logger, progress=progress)
    best = _best(records)
    if logger is not None:
        logger.finish(trials_params[best["trial"]], best["mean_iu"], len(records))
    return trials_params[best["trial"]], records


def coarse_to_fine_search(
    examples: Sequence[Any],
    num_classes: int,
    coarse: Mapping[str, Sequence[float]] | None = None,
    fine_steps: Mapping[str, float] | None = None,
    mlflow_parent_run_id: str | None = None,
    tracking_uri: str | None = None,
    *,
    base: CRFParams | None = None,
    backend: str = "pydensecrf",
    radius: int = 2,
    run_name: str = "crf-search",
    progress: bool = False,
) -> tuple[CRFParams, list[dict[str, Any]]]:
    """Paper §5: the coarse grid, then ``fine_grid`` around its best; (best, trials of both).

    Both rounds log under the same parent run; records carry ``round`` = coarse / fine.
    """
    exs = _prepare(examples, num_classes)
    logger = _TrialLogger.maybe(mlflow_parent_run_id, tracking_uri, run_name)
    coarse_params = expand_grid(coarse or COARSE_GRID, base)
    if not coarse_params:
        raise ParamsError("crf.search.grid is empty")
    records = _run_trials(exs, coarse_params, backend, logger, 0, "coarse", progress)
    centre = coarse_params[_best(records)["trial"]]
    seen = {p for p in coarse_params}
    fine_params = [
        p for p in expand_grid(fine_grid(centre, fine_steps, radius), centre) if p not in seen
    ]
    if fine_params:
        records += _run_trials(exs, fine_params, backend, logger, len(records), "fine", progress)
    all_params = coarse_params + fine_params
    best = _best(records)
    if logger is not None:
        logger.finish(all_params[best["trial"]], best["mean_iu"], len(records))
    return all_params[best["trial"]], records
