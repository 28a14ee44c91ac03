"""MLflow tracking: one run per training/evaluation stage, grouped under one parent per pipeline.

Grouping: every run carries the tag ``densepipe.group``; stages of one pipeline invocation share
it. ``make repro`` sets ``DENSEPIPE_RUN_GROUP`` to a fresh id per invocation; a bare ``dvc repro``
groups by git commit + params.yaml hash (the runs that produced one set of results). Each group
has a parent run (``densepipe.parent = true``) so the MLflow UI nests the stages under it.

The store is a local SQLite file by default (``mlflow.tracking_uri`` in params.yaml); a relative
``sqlite:///`` path is made absolute against the repo root, because MLflow would otherwise
silently create a new database in whatever directory a Ray worker runs in.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

from pipeline.params import Params, repo_root

GROUP_TAG = "densepipe.group"
PARENT_TAG = "densepipe.parent"


def tracking_uri(params: Params) -> str:
    """The absolute tracking URI (``MLFLOW_TRACKING_URI`` wins over params.yaml)."""
    uri = os.environ.get("MLFLOW_TRACKING_URI") or params.get("mlflow.tracking_uri")
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri[len(prefix) :].startswith("/"):
        uri = prefix + str(repo_root() / uri[len(prefix) :])
    return uri


def group_id(root: Path | None = None) -> str:
    """This pipeline invocation's group id (see module docstring)."""
    if os.environ.get("DENSEPIPE_RUN_GROUP"):
        return os.environ["DENSEPIPE_RUN_GROUP"]
    root = root or repo_root()
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "--short=10", "HEAD"],
            cwd=root,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (subprocess.CalledProcessError, FileNotFoundError):
        sha = "nogit"
    params_file = root / "params.yaml"
    digest = (
        hashlib.sha256(params_file.read_bytes()).hexdigest()[:8] if params_file.exists() else ""
    )
    return f"{sha}-{digest}"


def setup(params: Params) -> str:
    """Point MLflow at the store and experiment named in params.yaml; return the experiment id."""
    import mlflow

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    uri = tracking_uri(params)
    mlflow.set_tracking_uri(uri)
    name = params.get("mlflow.experiment")
    if uri.startswith("sqlite:") and mlflow.get_experiment_by_name(name) is None:
        # artifacts beside the database, not in whatever directory the process runs in
        store = Path(uri.removeprefix("sqlite:///")).parent / "mlartifacts"
        mlflow.create_experiment(name, artifact_location=store.as_uri())
    return mlflow.set_experiment(name).experiment_id


def _parent_run_id(experiment_id: str, group: str) -> str:
    """Find or create the parent run of ``group``."""
    import mlflow

    found = mlflow.search_runs(
        [experiment_id],
        filter_string=f"tags.`{GROUP_TAG}` = '{group}' and tags.`{PARENT_TAG}` = 'true'",
        max_results=1,
        output_format="list",
    )
    if found:
        return found[0].info.run_id
    client = mlflow.MlflowClient()
    run = client.create_run(
        experiment_id,
        run_name=f"pipeline {group}",
        tags={GROUP_TAG: group, PARENT_TAG: "true"},
    )
    client.set_terminated(run.info.run_id)
    return run.info.run_id


@contextlib.contextmanager
def stage_run(params: Params, name: str, tags: dict | None = None) -> Iterator:
    """Start this stage's MLflow run, nested under the pipeline group's parent run."""
    import mlflow

    experiment_id = setup(params)
    group = group_id()
    parent = _parent_run_id(experiment_id, group)
    all_tags = {GROUP_TAG: group, "densepipe.profile": params.profile, **(tags or {})}
    if os.environ.get("DVC_STAGE"):
        all_tags["dvc.stage"] = os.environ["DVC_STAGE"]
    with mlflow.start_run(run_name=name, parent_run_id=parent, tags=all_tags) as run:
        yield run


def flatten(d: dict, prefix: str = "") -> dict:
    """Nested params -> ``a.b.c`` keys, for ``mlflow.log_params``."""
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out
