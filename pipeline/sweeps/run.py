"""One sweep end to end, shared by the DVC stage ``sweep@NAME`` and ``densepipe sweep NAME``:
validate, connect to Ray, run the trials under an MLflow parent run, write the outputs."""

from __future__ import annotations

import mlflow

from pipeline.experiment import check_no_leakage
from pipeline.params import Params, repo_root
from pipeline.runtime.console import announce_limits
from pipeline.runtime.raycluster import init_ray
from pipeline.runtime.tracking import flatten, group_id, stage_run, tracking_uri
from pipeline.sweeps.outputs import write_outputs
from pipeline.sweeps.spec import sweep_spec
from pipeline.sweeps.tuning import run_sweep


def run_named_sweep(params: Params, name: str) -> dict:
    """Run ``sweeps.<name>``; returns the summary written to ``metrics/sweep-<name>.json``."""
    spec = sweep_spec(params, name)  # every bad value fails here, before Ray starts
    check_no_leakage(params, spec.experiment)
    announce_limits(params)
    init_ray(params)
    root = repo_root()
    tags = {"densepipe.kind": "sweep", "densepipe.sweep": name, "model": spec.experiment}
    with stage_run(params, f"sweep {name}", tags=tags) as parent:
        mlflow.log_params(flatten({"space": {k: str(v) for k, v in spec.space.items()}}))
        mlflow.log_params({"experiment": spec.experiment, "metric": spec.metric})
        rows = run_sweep(
            params,
            spec,
            root,
            mlflow_uri=tracking_uri(params),
            parent_run_id=parent.info.run_id,
            experiment_id=parent.info.experiment_id,
            group=group_id(),
        )
        result = write_outputs(
            params, spec, rows, root / "sweeps" / name, root / "metrics" / f"sweep-{name}.json"
        )
        mlflow.log_metric(f"best_{spec.metric}", result["best"])
        mlflow.log_artifacts(str(root / "sweeps" / name), artifact_path="sweep")
    print(
        f"{name}: best {spec.metric} {result['best']:.4f} ({result['best_trial']}: "
        f"{result['best_values']}); {result['finished']} finished, {result['stopped_early']} "
        f"stopped early, {result['failed']} failed, {result['trial_steps']} trial-steps"
    )
    return result
