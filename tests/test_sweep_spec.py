"""Sweeps as data: params.yaml ``sweeps`` parsed and validated before any trial starts; every
bad input is a ParamsError naming the key (issue: sweeps on a Ray cluster, item 6)."""

from __future__ import annotations

import copy

import pytest
import yaml

from pipeline.errors import ParamsError
from pipeline.params import Params, repo_root
from pipeline.sweeps.spec import (
    active_sweeps,
    corner_values,
    grid_size,
    sweep_spec,
    trial_config,
)
from pipeline.sweeps.tuning import _scheduler, check_resources

RAW = yaml.safe_load((repo_root() / "params.yaml").read_text())
BASE = {
    "experiment": "fcn32s",
    "space": {"train.lr": {"loguniform": [1e-3, 1e-1]}, "train.momentum": {"grid": [0.9, 0.99]}},
    "fixed": {"train.optimizer": "sgd", "train.iterations": 40},
    "num_samples": 2,
    "scheduler": {"kind": "asha", "grace_period": 10, "reduction_factor": 2},
    "metric": "val_mean_iu",
    "report_every": 10,
}


def params_with(sweep: dict | None = None, **changes) -> Params:
    data = copy.deepcopy(RAW)
    data["experiments"]["all"]["sweeps"]["s"] = {**copy.deepcopy(BASE), **(sweep or {})}
    data.update(changes)
    return Params(data, "test-params")


def test_the_declared_sweeps_parse_and_the_default_set_runs_one():
    params = Params(copy.deepcopy(RAW), "params.yaml")
    assert active_sweeps(params) == ["fcn32s-lr-momentum"]
    for name in RAW["experiments"]["all"]["sweeps"]:
        assert sweep_spec(params, name).num_samples >= 1


def test_a_sweep_resolves_trial_configs_through_the_experiment():
    spec = sweep_spec(params_with(), "s")
    assert grid_size(spec) == 4  # 2 samples x 2 momenta
    assert spec.iterations == 40 and spec.mode == "max"
    config = trial_config(params_with(), spec, {"train.lr": 0.02, "train.momentum": 0.9})
    assert (config.lr, config.momentum, config.optimizer, config.iterations) == (
        0.02,
        0.9,
        "sgd",
        40,
    )
    assert corner_values(spec) == [
        {"train.lr": 1e-3, "train.momentum": 0.9},
        {"train.lr": 1e-1, "train.momentum": 0.99},
    ]


def test_nested_keys_override_only_their_leaf():
    sweep = {"space": {"train.augment.jitter": {"choice": [0, 8]}}, "fixed": {}}
    params = params_with(sweep)
    spec = sweep_spec(params, "s")
    config = trial_config(params, spec, {"train.augment.jitter": 8})
    base = trial_config(params, spec, {"train.augment.jitter": 0})
    assert config.augment == {**base.augment, "jitter": 8}


def test_the_task_picks_the_default_metric_and_mode():
    edges = {
        "experiment": "pixelnet-edges",
        "space": {"model_options.sampling.positive_share": {"grid": [0.25, 0.5]}},
        "fixed": {},
        "scheduler": {"kind": "fifo"},
        "metric": None,
        "report_every": 50,
    }
    spec = sweep_spec(params_with(edges), "s")
    assert (spec.metric, spec.mode, spec.task) == ("val_ods", "max", "edges")


def test_asha_rungs_compare_the_sweeps_metric_or_the_one_its_scheduler_names():
    spec = sweep_spec(params_with(), "s")
    assert (spec.scheduler["metric"], spec.scheduler["mode"]) == ("val_mean_iu", "max")
    assert spec.scheduler_label == "asha"
    rungs = {**BASE["scheduler"], "metric": "val_loss"}
    spec = sweep_spec(params_with({"scheduler": rungs}), "s")
    assert (spec.metric, spec.mode) == ("val_mean_iu", "max")  # what the sweep picks the best by
    assert (spec.scheduler["metric"], spec.scheduler["mode"]) == ("val_loss", "min")
    assert spec.scheduler_label == "asha on val_loss"
    asha = _scheduler(spec)
    assert (asha.metric, asha._mode) == ("val_loss", "min")  # what its rungs compare


@pytest.mark.parametrize(
    "change, message",
    [
        ({"experiment": "fcn99s"}, "sweeps.s.experiment: 'fcn99s' is not a declared experiment"),
        ({"experiment": "fcn16s"}, "starts from another experiment"),
        ({"space": {}}, "sweeps.s.space must map settings"),
        ({"space": None}, "sweeps.s.space must map settings"),
        ({"space": {"train.lr": {"loguniform": [0, 1e-2]}}}, "bounds must be > 0"),
        ({"space": {"train.lr": {"loguniform": [-1, 1e-2]}}}, "bounds must be > 0"),
        ({"space": {"train.lr": {"uniform": [0.1, 0.01]}}}, "low 0.1 must be below high 0.01"),
        ({"space": {"train.lr": {"uniform": [0.1, 0.2, 0.3]}}}, "needs [low, high] numbers"),
        ({"space": {"train.lr": {"normal": [0.1, 0.2]}}}, "distribution' must be one of"),
        ({"space": {"train.lr": {"grid": []}}}, "sweeps.s.space.train.lr.grid needs a non-empty"),
        ({"space": {"train.lr": [0.1]}}, "sweeps.s.space.train.lr must be one of"),
        ({"space": {"lr": {"grid": [0.1]}}}, "key 'lr' must be train.<setting>"),
        ({"space": {"train.bogus": {"grid": [1]}}}, "has no train setting 'bogus'"),
        ({"space": {"train.augment.spin": {"grid": [1]}}}, "train.augment has no 'spin'"),
        ({"space": {"model_options.heads": {"grid": [2]}}}, "refuses the trial's model_options"),
        ({"space": {"train.optimizer": {"grid": ["sgd", "rmsprop"]}}}, "optimizer"),
        ({"space": {"train.lr": {"grid": [0.1, -1]}}}, "sweeps.s.space.train.lr"),
        ({"metric": "val_ods"}, "'val_ods' is not produced by task 'segmentation'"),
        ({"mode": "best"}, "sweeps.s.mode"),
        ({"report_every": 100}, "report_every = 100 exceeds the 40 optimizer steps"),
        ({"report_every": 0}, "sweeps.s.report_every"),
        ({"num_samples": 0}, "sweeps.s.num_samples"),
        ({"max_concurrent": -1}, "sweeps.s.max_concurrent"),
        ({"scheduler": {"kind": "hyperband"}}, "sweeps.s.scheduler.kind"),
        ({"scheduler": {"kind": "asha", "grace_period": 400}}, "grace_period = 400 exceeds"),
        ({"scheduler": {"kind": "asha", "grace_period": 5, "reduction_factor": 1}}, "> 1"),
        ({"scheduler": {"kind": "fifo", "grace_period": 5}}, "apply to asha only"),
        (
            {"scheduler": {"kind": "asha", "grace_period": 10, "metric": "val_ods"}},
            "sweeps.s.scheduler.metric: 'val_ods' is not produced by task 'segmentation'",
        ),
        ({"scheduler": {"kind": "asha", "grace_period": 10, "metric": 3}}, "scheduler.metric"),
        ({"scheduler": {"kind": "fifo", "metric": "val_loss"}}, "apply to asha only"),
        ({"resources": {"cpus": 0}}, "sweeps.s.resources.cpus"),
        ({"resources": {"tpus": 1}}, "sweeps.s.resources: unknown key"),
        ({"fixed": {"train.lr": 0.1}}, "both swept (space) and fixed"),
        ({"colour": "red"}, "sweeps.s: unknown key(s) ['colour']"),
    ],
)
def test_bad_sweeps_fail_with_the_key(change, message):
    with pytest.raises(ParamsError) as err:
        sweep_spec(params_with(change), "s")
    assert message in str(err.value)


def test_unknown_sweep_names_are_refused():
    with pytest.raises(ParamsError, match="sweeps: no sweep 'nope'"):
        sweep_spec(params_with(), "nope")
    run = {**RAW["run"], "sweeps": {"s": {**BASE, "experiment": "fcn32s-fixed"}}}
    with pytest.raises(ParamsError, match="run.sweeps.s.experiment: 'fcn32s-fixed' is not trained"):
        active_sweeps(params_with(run=run))


NODES = [{"CPU": 0.0, "memory": 1e9}, {"CPU": 1.0}, {"CPU": 1.0}]  # head + two 1-CPU nodes


def test_resources_a_cluster_can_never_give_fail_fast_with_its_resources():
    fits = sweep_spec(params_with({"resources": {"cpus": 1}}), "s")
    check_resources(fits, NODES)
    too_big = sweep_spec(params_with({"resources": {"cpus": 2}}), "s")
    with pytest.raises(ParamsError, match=r"needs \{'CPU': 2\} on one node.*total \{'CPU': 2.0"):
        check_resources(too_big, NODES)
    gpu = sweep_spec(params_with({"resources": {"cpus": 1, "gpus": 1}}), "s")
    with pytest.raises(ParamsError, match="sweeps.s.resources: a trial needs.*'GPU': 1"):
        check_resources(gpu, NODES)
    ddp = sweep_spec(params_with({"resources": {"cpus": 1, "workers": 3}}), "s")
    with pytest.raises(ParamsError, match="one trial needs .* in all"):
        check_resources(ddp, NODES)
    check_resources(sweep_spec(params_with({"resources": {"cpus": 0.9, "workers": 2}}), "s"), NODES)
