"""A sweep as data: params.yaml ``sweeps.<name>``, validated before any trial starts.

A sweep names a base experiment, a search space over its ``train.*`` / ``model_options.*``
settings (nested keys such as ``train.augment.jitter`` too), fixed overrides, the number of
samples, a scheduler (``fifo`` or ``asha``, rungs in optimizer steps), the metric the task
produces and the resources of one trial. Every error names the params key; a swept value is
checked by resolving the experiment's TrainConfig with it (the same validation as ``train@``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Any

import torch

from pipeline.data.loader import Augment, InputSpec
from pipeline.errors import ParamsError
from pipeline.experiment import (
    OVERRIDE_SECTIONS,
    declared_experiments,
    declared_in_sets,
    experiment,
    train_config,
)
from pipeline.models import build_model
from pipeline.params import Params, choice, positive
from pipeline.training.loop import TrainConfig

DISTRIBUTIONS = ("grid", "choice", "uniform", "loguniform")
SCHEDULERS = ("fifo", "asha")
#: what each task's validation reports (``val_*`` of ``training.loop.evaluate_model``), with the
#: direction that is better
TASK_METRICS = {
    "segmentation": {
        "val_mean_iu": "max",
        "val_pixel_acc": "max",
        "val_mean_acc": "max",
        "val_fw_iu": "max",
        "val_loss": "min",  # cross-entropy per labelled pixel: no plateau for ASHA to tie on
    },
    "edges": {"val_ods": "max", "val_ois": "max", "val_ap": "max"},
    "normals": {
        "val_mean": "min",
        "val_median": "min",
        "val_rmse": "min",
        "val_within_11_25": "max",
        "val_within_22_5": "max",
        "val_within_30": "max",
    },
}
SWEEP_KEYS = (
    "experiment", "space", "fixed", "num_samples", "scheduler", "metric", "mode",
    "report_every", "max_concurrent", "resources", "seed",
)  # fmt: skip
RESOURCE_KEYS = ("cpus", "gpus", "workers")


@dataclass
class SweepSpec:
    """One validated sweep. ``space``: key -> (distribution, values or bounds)."""

    name: str
    experiment: str
    task: str
    space: dict[str, tuple[str, list]]
    fixed: dict[str, Any]
    num_samples: int
    scheduler: dict
    metric: str
    mode: str
    report_every: int
    max_concurrent: int
    resources: dict = field(default_factory=dict)
    seed: int = 0
    iterations: int = 0  # the base config's optimizer steps (ASHA's max_t)

    @property
    def where(self) -> str:
        return f"sweeps.{self.name}"

    @property
    def scheduler_label(self) -> str:
        """``asha``, or ``asha on val_loss`` when its rungs compare another metric than the
        sweep's."""
        rungs = self.scheduler.get("metric")
        if rungs and rungs != self.metric:
            return f"{self.scheduler['kind']} on {rungs}"
        return self.scheduler["kind"]

    def trial_bundle(self) -> dict:
        """Resources of the trial's own process: all of them when it trains itself (no Train
        workers), a sliver when its Ray Train workers hold them."""
        if self.resources["workers"]:
            return {"CPU": 0.01}
        return {"CPU": self.resources["cpus"], "GPU": self.resources["gpus"]}

    def worker_bundle(self) -> dict | None:
        if not self.resources["workers"]:
            return None
        return {"CPU": self.resources["cpus"], "GPU": self.resources["gpus"]}

    def trial_total(self) -> dict:
        """Everything one running trial holds."""
        total = dict(self.trial_bundle())
        for key, value in (self.worker_bundle() or {}).items():
            total[key] = total.get(key, 0) + value * self.resources["workers"]
        return total


def declared_sweeps(params: Params) -> dict[str, dict]:
    """Every sweep params.yaml declares, in any experiment set's ``sweeps`` (the active set
    wins)."""
    return declared_in_sets(params, "sweeps")


def active_sweeps(params: Params) -> list[str]:
    """The sweeps ``dvc repro`` runs: the active set's ``sweeps`` (``run.sweeps``), each on an
    experiment that set trains (dvc.yaml declares that experiment's settings as its params)."""
    sweeps = params.get("run.sweeps", {}) or {}
    if not isinstance(sweeps, dict):
        raise ParamsError(f"run.sweeps must map sweep names to sweeps, got {sweeps!r}")
    trained = params.get("run.train", {}) or {}
    for name, entry in sweeps.items():
        base = (entry or {}).get("experiment")
        if base not in trained:
            raise ParamsError(
                f"run.sweeps.{name}.experiment: {base!r} is not trained by the active set "
                f"(run.train: {sorted(trained)})"
            )
    return list(sweeps)


def sweep_spec(params: Params, name: str) -> SweepSpec:
    """Parse and validate ``sweeps.<name>``: every swept and fixed value resolves into a valid
    TrainConfig of the base experiment, the metric is one its task produces."""
    known = declared_sweeps(params)
    if name not in known:
        raise ParamsError(f"sweeps: no sweep {name!r}; declared: {sorted(known)}")
    entry = dict(known[name] or {})
    where = f"sweeps.{name}"
    unknown = sorted(set(entry) - set(SWEEP_KEYS))
    if unknown:
        raise ParamsError(f"{where}: unknown key(s) {unknown}; known: {list(SWEEP_KEYS)}")
    base = entry.get("experiment")
    if base not in declared_experiments(params):
        raise ParamsError(
            f"{where}.experiment: {base!r} is not a declared experiment; declared: "
            f"{sorted(declared_experiments(params))}"
        )
    if experiment(params, base)["init"] != "backbone":
        raise ParamsError(
            f"{where}.experiment: {base!r} starts from another experiment; a sweep's base "
            "experiment starts from the backbone (the sweep stage tracks models/backbone)"
        )
    task = experiment(params, base)["task"]
    space = _space(entry.get("space"), f"{where}.space")
    fixed = dict(entry.get("fixed") or {})
    for key in fixed:
        _check_key(key, f"{where}.fixed")
    overlap = sorted(set(space) & set(fixed))
    if overlap:
        raise ParamsError(f"{where}: {overlap} both swept (space) and fixed")
    metric = entry.get("metric") or next(iter(TASK_METRICS[task]))
    if metric not in TASK_METRICS[task]:
        raise ParamsError(
            f"{where}.metric: {metric!r} is not produced by task {task!r} (experiment "
            f"{base!r}); it reports {sorted(TASK_METRICS[task])}"
        )
    mode = choice(f"{where}.mode", entry.get("mode") or TASK_METRICS[task][metric], ("min", "max"))
    scheduler = _scheduler(entry.get("scheduler") or {"kind": "fifo"}, f"{where}.scheduler")
    if scheduler["kind"] == "asha":  # its rungs compare the sweep's metric unless it names one
        rungs = scheduler["metric"] or metric
        if rungs not in TASK_METRICS[task]:
            raise ParamsError(
                f"{where}.scheduler.metric: {rungs!r} is not produced by task {task!r} "
                f"(experiment {base!r}); it reports {sorted(TASK_METRICS[task])}"
            )
        rungs_mode = mode if rungs == metric else TASK_METRICS[task][rungs]
        scheduler.update(metric=rungs, mode=rungs_mode)
    resources = {"cpus": 1, "gpus": 0, "workers": 0, **(entry.get("resources") or {})}
    unknown = sorted(set(resources) - set(RESOURCE_KEYS))
    if unknown:
        raise ParamsError(f"{where}.resources: unknown key(s) {unknown}; known: {RESOURCE_KEYS}")
    positive(f"{where}.resources.cpus", resources["cpus"], kind=float)
    positive(f"{where}.resources.gpus", resources["gpus"], kind=float, allow_zero=True)
    positive(f"{where}.resources.workers", resources["workers"], kind=int, allow_zero=True)
    spec = SweepSpec(
        name=name,
        experiment=base,
        task=task,
        space=space,
        fixed=fixed,
        num_samples=positive(f"{where}.num_samples", entry.get("num_samples", 1), kind=int),
        scheduler=scheduler,
        metric=metric,
        mode=mode,
        report_every=positive(f"{where}.report_every", entry.get("report_every"), kind=int),
        max_concurrent=positive(
            f"{where}.max_concurrent", entry.get("max_concurrent", 1), kind=int
        ),
        resources=resources,
        seed=int(entry.get("seed", 0)),
    )
    spec.iterations = _check_values(params, spec).iterations
    if scheduler["kind"] == "asha" and scheduler["grace_period"] > spec.iterations:
        raise ParamsError(
            f"{where}.scheduler.grace_period = {scheduler['grace_period']} exceeds the "
            f"{spec.iterations} optimizer steps of a trial"
        )
    return spec


def _check_key(key: Any, where: str) -> None:
    section, _, rest = str(key).partition(".")
    if not isinstance(key, str) or section not in OVERRIDE_SECTIONS or not rest:
        raise ParamsError(
            f"{where}: key {key!r} must be train.<setting> or model_options.<option> "
            "(nested: train.augment.jitter)"
        )


def _space(raw: Any, where: str) -> dict[str, tuple[str, list]]:
    if not isinstance(raw, dict) or not raw:
        raise ParamsError(f"{where} must map settings to distributions, got {raw!r}")
    space = {}
    for key, dist in raw.items():
        _check_key(key, where)
        at = f"{where}.{key}"
        if not isinstance(dist, dict) or len(dist) != 1:
            raise ParamsError(f"{at} must be one of {{{', '.join(DISTRIBUTIONS)}: ...}}")
        kind, values = next(iter(dist.items()))
        choice(f"{at} distribution", kind, DISTRIBUTIONS)
        if not isinstance(values, list) or not values:
            raise ParamsError(f"{at}.{kind} needs a non-empty list, got {values!r}")
        if kind in ("uniform", "loguniform"):
            if len(values) != 2 or not all(_is_number(v) for v in values):
                raise ParamsError(f"{at}.{kind} needs [low, high] numbers, got {values!r}")
            low, high = (float(v) for v in values)
            if not low < high:
                raise ParamsError(f"{at}.{kind}: low {low} must be below high {high}")
            if kind == "loguniform" and low <= 0:
                raise ParamsError(f"{at}.loguniform: bounds must be > 0, got {values!r}")
            values = [low, high]
        space[key] = (kind, list(values))
    return space


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _scheduler(raw: Any, where: str) -> dict:
    if not isinstance(raw, dict):
        raise ParamsError(f"{where} must be {{kind: fifo | asha, ...}}, got {raw!r}")
    kind = choice(f"{where}.kind", raw.get("kind", "fifo"), SCHEDULERS)
    if kind == "fifo":
        extra = sorted(set(raw) - {"kind"})
        if extra:
            raise ParamsError(f"{where}: {extra} apply to asha only")
        return {"kind": "fifo"}
    extra = sorted(set(raw) - {"kind", "grace_period", "reduction_factor", "metric"})
    if extra:
        raise ParamsError(f"{where}: unknown key(s) {extra}")
    grace = positive(f"{where}.grace_period", raw.get("grace_period"), kind=int)
    factor = raw.get("reduction_factor", 2)
    if not _is_number(factor) or factor <= 1:
        raise ParamsError(f"{where}.reduction_factor must be a number > 1, got {factor!r}")
    metric = raw.get("metric")
    if metric is not None and not isinstance(metric, str):
        raise ParamsError(f"{where}.metric must be a validation metric's name, got {metric!r}")
    return {
        "kind": "asha",
        "grace_period": grace,
        "reduction_factor": float(factor),
        "metric": metric,
    }


def corner_values(spec: SweepSpec) -> list[dict]:
    """The trial values that bound the space: every grid/choice value, each range's two ends
    (one combination per value is enough to catch a bad one: keys are checked separately)."""
    options = {key: values for key, (_, values) in spec.space.items()}
    longest = max(len(v) for v in options.values())
    return [{k: v[i % len(v)] for k, v in options.items()} for i in range(longest)]


def trial_config(
    params: Params, spec: SweepSpec, values: dict, root=None, out_dir: str | None = None
) -> TrainConfig:
    """The base experiment's TrainConfig with the fixed and the trial's values on top."""
    config = train_config(
        params,
        spec.experiment,
        root=root,
        overrides={**spec.fixed, **values},
        where=f"{spec.where}.space.train",
    )
    if out_dir is not None:
        config.out_dir = out_dir
    return config


def _check_values(params: Params, spec: SweepSpec) -> TrainConfig:
    """Resolve the config at every corner of the space; a swept key the experiment lacks (a
    TrainConfig field, a nested setting, a model option) or a value it refuses is a ParamsError
    naming the key. Returns the config with the first corner's values."""
    for key in {**spec.fixed, **spec.space}:
        _check_exists(params, spec, key)
    first = None
    for values in corner_values(spec):
        config = trial_config(params, spec, values)
        first = first or config
        try:
            with torch.device("meta"):
                build_model(config.model, config.num_classes, **config.model_options)
        except (TypeError, ValueError, KeyError, ParamsError) as err:
            raise ParamsError(
                f"{spec.where}: model {config.model!r} refuses the trial's model_options "
                f"{config.model_options}: {err}"
            ) from err
    if spec.report_every > first.iterations:
        raise ParamsError(
            f"{spec.where}.report_every = {spec.report_every} exceeds the {first.iterations} "
            "optimizer steps of a trial: no validation would be reported"
        )
    return first


def _check_exists(params: Params, spec: SweepSpec, key: str) -> None:
    """A ``train.`` key must be a TrainConfig field, its nested part a field of that setting
    (``train.augment.jitter``); ``model_options.`` keys are checked by building the model."""
    section, _, rest = key.partition(".")
    head, _, nested = rest.partition(".")
    if section != "train":
        return
    if head not in TrainConfig.__dataclass_fields__:
        raise ParamsError(
            f"{spec.where}: {key!r}: experiment {spec.experiment!r} has no train setting {head!r}"
        )
    if nested:
        base = train_config(params, spec.experiment)
        known = set(getattr(base, head) or {}) | set(_NESTED.get(head, ()))
        if nested.split(".")[0] not in known:
            raise ParamsError(
                f"{spec.where}: {key!r}: train.{head} has no {nested!r}; known: {sorted(known)}"
            )


_NESTED = {
    "augment": [f.name for f in fields(Augment)],
    "input": [f.name for f in fields(InputSpec)],
}


def grid_size(spec: SweepSpec) -> int:
    """Trials Tune will run: num_samples x the product of the grid lengths."""
    grids = [len(v) for kind, v in spec.space.values() if kind == "grid"]
    return spec.num_samples * math.prod(grids)
