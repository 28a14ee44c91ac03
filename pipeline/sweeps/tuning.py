"""Run a sweep with Ray Tune: every trial is the base experiment's training (``train_loop``,
the code path of ``train@``) with the trial's values, reporting its validation metric every
``report_every`` optimizer steps so ASHA can stop it early.

A trial with no Ray Train workers trains in its own process on its CPUs (fast to start); with
``resources.workers`` it starts a TorchTrainer whose rank 0 reports are forwarded to Tune. The
prepared splits are read once by the driver and shared through the object store (trials then
start no Ray Data tasks, which would wait for the CPUs the trials hold). MLflow: the sweep is
one parent run, each trial a child run, all written by the driver (one writer: SQLite works, an
``mlflow server`` URI works across nodes). Impossible resources fail before any trial starts.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.data.prepare import read_prepared
from pipeline.errors import DataError, ParamsError
from pipeline.experiment import experiment, prepared_dir, train_images
from pipeline.params import Params, capped, trial_limits
from pipeline.runtime.tracking import GROUP_TAG
from pipeline.sweeps.spec import SweepSpec, grid_size, trial_config
from pipeline.training.loop import train, train_in_trial

STATUSES = ("finished", "stopped early", "failed")


@dataclass
class TrialRow:
    """One trial of a sweep, as trials.csv and the report print it."""

    trial: str  # trial-<index>: stable across reruns (Tune's ids are random)
    values: dict
    status: str
    reason: str
    steps: int
    final: float
    best: float
    wall_s: float
    node: str
    history: list  # [(step, metric)] of every report


def check_resources(spec: SweepSpec, nodes: list[dict]) -> None:
    """Refuse a trial the cluster can never place (Tune and Train would wait for ever): each
    bundle must fit on some alive node, a whole trial in the cluster. ``nodes``: the
    ``Resources`` of each alive node (``ray.nodes()``)."""
    totals: dict[str, float] = {}
    for node in nodes:
        for key, value in node.items():
            totals[key] = totals.get(key, 0.0) + value
    shown = {k: totals.get(k, 0.0) for k in ("CPU", "GPU")}
    per_node = [{k: n.get(k, 0.0) for k in ("CPU", "GPU")} for n in nodes]
    bundles = [spec.trial_bundle()] + [spec.worker_bundle()] * spec.resources["workers"]
    for bundle in filter(None, bundles):
        need = {k: v for k, v in bundle.items() if v}
        if not any(all(n.get(k, 0.0) >= v for k, v in need.items()) for n in nodes):
            raise ParamsError(
                f"{spec.where}.resources: a trial needs {need} on one node, but the cluster's "
                f"nodes have {per_node} (total {shown}): it could never start"
            )
    total = {k: v for k, v in spec.trial_total().items() if v}
    if any(totals.get(k, 0.0) < v for k, v in total.items()):
        raise ParamsError(
            f"{spec.where}.resources: one trial needs {total} in all, the cluster has {shown}"
        )


def cluster_nodes() -> list[dict]:
    import ray

    return [n["Resources"] for n in ray.nodes() if n.get("Alive")]


def _datasets(params: Params, spec: SweepSpec, root: Path) -> dict:
    """The base experiment's train and val splits, read once (``limits`` applied)."""
    dataset = experiment(params, spec.experiment)["dataset"]
    train_ds = read_prepared(prepared_dir(dataset, "train", root))
    if trial_limits(params)["train_images"]:
        train_ds = train_ds.limit(train_images(params, spec.experiment, root))
    val_ds = read_prepared(prepared_dir(dataset, "val", root))
    val_ds = val_ds.limit(capped(10**9, trial_limits(params)["eval_images"]))
    return {"train": train_ds.materialize(), "val": val_ds.materialize()}


def _search_space(spec: SweepSpec) -> dict:
    from ray import tune

    make = {
        "grid": tune.grid_search,
        "choice": tune.choice,
        "uniform": lambda v: tune.uniform(*v),
        "loguniform": lambda v: tune.loguniform(*v),
    }
    return {key: make[kind](values) for key, (kind, values) in spec.space.items()}


def _scheduler(spec: SweepSpec):
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    if spec.scheduler["kind"] == "fifo":
        return FIFOScheduler()
    return ASHAScheduler(
        time_attr="step",
        metric=spec.scheduler["metric"],
        mode=spec.scheduler["mode"],
        max_t=spec.iterations,
        grace_period=spec.scheduler["grace_period"],
        reduction_factor=spec.scheduler["reduction_factor"],
    )


def _trial(values: dict, params=None, spec=None, root=None, datasets=None, models=None) -> None:
    """One trial (runs in a Tune trial process, possibly on another node)."""
    import ray.data
    from ray import tune

    ray.data.DataContext.get_current().enable_progress_bars = False
    logging.getLogger("ray.data").setLevel(logging.WARNING)  # one line per trial event is enough
    trial_id = _trial_name(tune.get_context().get_trial_id())
    config = trial_config(params, spec, values, root=root, out_dir=str(Path(models) / trial_id))
    config.val_every = spec.report_every
    config.log_every = max(config.log_every, spec.report_every)
    if not spec.resources["workers"]:
        train_in_trial(config, datasets)
        return
    from ray.tune.integration.ray_train import TuneReportCallback

    train(
        config,
        datasets,
        num_workers=spec.resources["workers"],
        cpus_per_worker=spec.resources["cpus"],
        use_gpu=spec.resources["gpus"] > 0,
        storage_path=str(Path(models) / "ray-train"),
        name=trial_id,
        callbacks=[TuneReportCallback()],
    )


def _callback(spec: SweepSpec, mlflow_uri, parent_run_id, experiment_id, group):
    """Tune driver callback: MLflow child runs (one writer) and one console line per event."""
    from ray import tune

    class SweepCallback(tune.Callback):
        def __init__(self):
            self.runs: dict[str, str] = {}
            self.logged: dict[str, int] = {}
            self.client = None
            if mlflow_uri and parent_run_id:
                import mlflow

                self.client = mlflow.MlflowClient(mlflow_uri)
            self.done = 0
            self.total = grid_size(spec)
            self.t0 = time.time()

        def on_trial_start(self, iteration, trials, trial, **info):
            name = _trial_name(trial.trial_id)
            if self.client is not None:
                run = self.client.create_run(
                    experiment_id,
                    run_name=f"{spec.name} {name}",
                    tags={
                        "mlflow.parentRunId": parent_run_id,
                        GROUP_TAG: group,
                        "densepipe.kind": "sweep-trial",
                        "densepipe.sweep": spec.name,
                        "model": spec.experiment,
                    },
                )
                self.runs[trial.trial_id] = run.info.run_id
                for key, value in trial.config.items():
                    self.client.log_param(run.info.run_id, key, value)
            _say(f"{spec.name}: {name} started {_show(trial.config)}")

        def on_trial_result(self, iteration, trials, trial, result, **info):
            run_id = self.runs.get(trial.trial_id)
            step = int(result.get("step", 0))
            # an epoch that ends on a validation step reports that step twice: log it once
            if run_id is None or self.logged.get(trial.trial_id) == step:
                return
            self.logged[trial.trial_id] = step
            from mlflow.entities import Metric

            now = int(time.time() * 1000)
            fresh = result.get("val_step") == step  # else the metrics of an earlier validation
            items = [
                Metric(k, float(v), now, step)
                for k, v in result.items()
                if (k == "loss" or (fresh and k.startswith("val_") and k != "val_step"))
                and isinstance(v, (int, float))
                and math.isfinite(float(v))
            ]
            self.client.log_batch(run_id, metrics=items)

        def _end(self, trial, status):
            self.done += 1
            run_id = self.runs.get(trial.trial_id)
            if run_id is not None:
                self.client.set_terminated(run_id, status)
            last = trial.last_result or {}
            metric = last.get(spec.metric)
            shown = f"{spec.metric} {metric:.4f}" if isinstance(metric, float) else "no metric"
            elapsed = time.time() - self.t0
            eta = round(elapsed / self.done * (self.total - self.done))
            _say(
                f"{spec.name}: {_trial_name(trial.trial_id)} {status.lower()} at step "
                f"{last.get('step', 0)}, {shown} [{self.done}/{self.total} trials, "
                f"ETA {eta // 60}:{eta % 60:02d}]"
            )

        def on_trial_complete(self, iteration, trials, trial, **info):
            self._end(trial, "FINISHED")

        def on_trial_error(self, iteration, trials, trial, **info):
            self._end(trial, "FAILED")

    return SweepCallback()


def _say(line: str) -> None:
    print(line, flush=True)


def _trial_name(trial_id: str) -> str:
    return f"trial-{int(trial_id.rsplit('_', 1)[-1])}"


def _show(values: dict) -> str:
    return ", ".join(f"{k}={_fmt(v)}" for k, v in values.items())


def _fmt(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def run_sweep(
    params: Params,
    spec: SweepSpec,
    root: Path,
    *,
    mlflow_uri: str | None = None,
    parent_run_id: str | None = None,
    experiment_id: str | None = None,
    group: str = "",
) -> list[TrialRow]:
    """Run every trial of ``spec`` on the connected Ray cluster; one row per trial."""
    from ray import tune
    from ray.tune.search.basic_variant import BasicVariantGenerator

    check_resources(spec, cluster_nodes())
    import ray.data

    ray.data.DataContext.get_current().enable_progress_bars = False  # datasets carry it to trials
    datasets = _datasets(params, spec, root)
    key = json.dumps([spec.name, spec.space, spec.fixed, spec.seed], sort_keys=True, default=str)
    name = f"sweep-{spec.name}-{hashlib.sha256(key.encode()).hexdigest()[:12]}"
    storage = root / "ray_results"
    models = storage / name / "models"
    shutil.rmtree(storage / name, ignore_errors=True)  # a sweep reruns whole: no stale trials
    trainable = tune.with_parameters(
        _trial, params=params, spec=spec, root=root, datasets=datasets, models=str(models)
    )
    # the trial's own process only: a trial with Ray Train workers starts a TorchTrainer whose
    # workers request their own placement group (reserving them here too would hold them
    # twice, and the trainer would wait for ever for resources its own trial holds)
    resources = tune.PlacementGroupFactory([spec.trial_bundle()])
    tuner = tune.Tuner(
        tune.with_resources(trainable, resources),
        param_space=_search_space(spec),
        # no metric here: ASHA carries its own (the rungs may compare another one, e.g.
        # val_loss), and the best trial is picked from the rows (``best_row``)
        tune_config=tune.TuneConfig(
            num_samples=spec.num_samples,
            scheduler=_scheduler(spec),
            # the limit goes to the generator itself: Tune ignores ``max_concurrent_trials``
            # (with only a warning) when the search algorithm is a BasicVariantGenerator
            search_alg=BasicVariantGenerator(
                random_state=spec.seed, max_concurrent=spec.max_concurrent
            ),
            trial_name_creator=lambda t: _trial_name(t.trial_id),
            trial_dirname_creator=lambda t: _trial_name(t.trial_id),
        ),
        run_config=tune.RunConfig(
            name=name,
            storage_path=str(storage),
            verbose=0,
            callbacks=[_callback(spec, mlflow_uri, parent_run_id, experiment_id, group)],
        ),
    )
    results = tuner.fit()
    rows = [_row(spec, result) for result in results]
    shutil.rmtree(storage / name, ignore_errors=True)
    rows.sort(key=lambda r: int(r.trial.split("-")[1]))
    if not any(r.status != "failed" for r in rows):
        raise DataError(f"{spec.where}: every trial failed; the first: {rows[0].reason}")
    return rows


def _row(spec: SweepSpec, result) -> TrialRow:
    metrics = result.metrics or {}
    frame = result.metrics_dataframe
    by_step = {}  # each validation once, at the step it ran (reports repeat the latest)
    if frame is not None and spec.metric in frame and "val_step" in frame:
        for step, value in zip(frame["val_step"], frame[spec.metric]):
            if _number(step) and _number(value):
                by_step[int(step)] = float(value)
    history = sorted(by_step.items())
    values = [v for _, v in history]
    pick = max if spec.mode == "max" else min
    steps = int(metrics.get("step", 0))
    if result.error is not None:
        status, reason = "failed", str(result.error).strip().splitlines()[-1][:200]
    elif steps < spec.iterations:
        status, reason = "stopped early", f"{spec.scheduler_label} at step {steps}"
    else:
        status, reason = "finished", ""
    return TrialRow(
        trial=Path(result.path).name,  # trial_dirname_creator: trial-<index>
        values=dict(result.config or {}),
        status=status,
        reason=reason,
        steps=steps,
        final=values[-1] if values else float("nan"),
        best=pick(values) if values else float("nan"),
        wall_s=float(metrics.get("time_total_s", 0.0)),
        node=str(metrics.get("node", "")),
        history=history,
    )


def _number(value) -> bool:
    return isinstance(value, (int, float, np.number)) and math.isfinite(float(value))


def best_row(spec: SweepSpec, rows: list[TrialRow]) -> TrialRow:
    """The trial with the best metric (ties: the lower trial index)."""
    scored = [r for r in rows if r.status != "failed" and np.isfinite(r.best)]
    if not scored:
        raise DataError(f"{spec.where}: no trial reported {spec.metric}")
    sign = -1 if spec.mode == "max" else 1
    return min(scored, key=lambda r: (sign * r.best, int(r.trial.split("-")[1])))
