"""MLflow tracking: one run per training/evaluation stage, grouped under one parent per pipeline.

Grouping: every run carries the tag ``densepipe.group``; stages of one pipeline invocation share
it. ``make repro`` sets ``DENSEPIPE_RUN_GROUP`` to a fresh id per invocation; a bare ``dvc repro``
groups by git commit + params.yaml hash (the runs that produced one set of results). Each group
has a parent run (``densepipe.parent = true``) so the MLflow UI nests the stages under it.

The MLflow UI (3.17) opens an experiment on its GenAI overview unless the sidebar's workflow
toggle says "Model training", a per-browser setting (default GenAI) that the experiment's
``mlflow.experimentKind`` tag does not change: the tag only spares the "what kind of experiment"
prompt. :func:`ui_url` is therefore the experiment's runs table with
``?workflowType=machine_learning``, which opens it there in any browser; the train and evaluate
stages print it. The URL also names a view the experiment carries (the UI's "shared view", an
experiment tag ``mlflow.sharedViewState.<key>``): runs grouped by stage kind (train, evaluate,
crf, ...) with the Dataset and Models columns, the main metrics (mean IU, ODS) and the model
param, so runs compare at a glance instead of hiding under their collapsed parent run. The
experiment also has a description (``mlflow.note.content``, shown above the table), its runs
names (``train fcn32s``), model/dataset params and a dataset input, and train runs the final
model (``mlflow.pytorch.load_model``).

The store is a local SQLite file by default (``mlflow.tracking_uri`` in params.yaml); a relative
``sqlite:///`` path is made absolute against the repo root, because MLflow would otherwise
silently create a new database in whatever directory a Ray worker runs in.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import subprocess
import warnings
from collections.abc import Iterator
from pathlib import Path

from pipeline.params import Params, repo_root

GROUP_TAG = "densepipe.group"
PARENT_TAG = "densepipe.parent"
#: what `make mlflow-ui` / `make mlflow-server` serve when the store is a local file
LOCAL_UI = "http://127.0.0.1:5000"
DESCRIPTION = """\
densepipe: FCN, DeepLab v1 and PixelNet reproduced by a DVC + Ray pipeline.

Each pipeline invocation is a parent run (`pipeline <group>`) with one child run per stage:
`train <experiment>` (params `model`, `dataset`; `train_loss` and `val_*` curves; the final
model), `evaluate <experiment>` (`mean_iu`, `pixel_acc`, ... or `ods`/`ois`/`ap` for edges),
`crf`, `crf_search`, `sweep`. The link the stages print opens this table grouped by stage kind
with the main metrics as columns; filter with e.g. `params.dataset = 'voc_fcn'`.
"""
KIND_TAG = "densepipe.kind"
#: the runs table's view (MLflow 3.17's shared-view format: column ids and a grouping)
VIEW_KEY = "densepipe"
RUNS_VIEW = {
    "selectedColumns": [
        "attributes.`Dataset`",
        "attributes.`Models`",
        "metrics.`mean_iu`",
        "metrics.`ods`",
        "metrics.`after_mean_iu`",
        "metrics.`val_mean_iu`",
        "params.`model`",
        "params.`dataset`",
    ],
    "groupBy": {
        "aggregateFunction": "max",
        "groupByKeys": [{"mode": "tag", "groupByData": KIND_TAG}],
    },
}
EXPERIMENT_TAGS = {
    "mlflow.experimentKind": "custom_model_development",  # classic ML, not a GenAI app
    "mlflow.note.content": DESCRIPTION,
    f"mlflow.sharedViewState.{VIEW_KEY}": json.dumps(RUNS_VIEW),
}


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
    experiment = mlflow.set_experiment(name)
    client = mlflow.MlflowClient()
    for key, value in EXPERIMENT_TAGS.items():
        if experiment.tags.get(key) != value:
            client.set_experiment_tag(experiment.experiment_id, key, value)
    return experiment.experiment_id


def ui_url(params: Params, experiment_id: str) -> str:
    """The experiment's runs table in the MLflow UI (see module docstring): on the tracking
    server itself, or on ``make mlflow-ui`` for a local store."""
    uri = tracking_uri(params)
    base = uri.rstrip("/") if uri.startswith(("http://", "https://")) else LOCAL_UI
    query = f"workflowType=machine_learning&viewStateShareKey={VIEW_KEY}"
    return f"{base}/#/experiments/{experiment_id}/runs?{query}"


def log_dataset(name: str, path: Path, context: str) -> None:
    """Name the prepared split a run read (the runs table's Dataset column): a reference, no
    data is uploaded."""
    import mlflow
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset

    with warnings.catch_warnings():  # two equivalent local-file source classes are registered
        warnings.simplefilter("ignore", UserWarning)
        source = resolve_dataset_source(Path(path).resolve().as_uri())
    mlflow.log_input(MetaDataset(source, name=name), context=context)


def log_model(model, name: str = "model") -> str:
    """Log a trained ``nn.Module`` to the active run; returns its URI for
    ``mlflow.pytorch.load_model``. Pickled (the ``pt2`` format needs an export with fixed input
    shapes), with the requirement pinned (inference would cost seconds); loading needs this
    project's ``pipeline`` package importable."""
    import mlflow
    import torch

    # MLflow warns about pickle on every call: a choice made here (above), not news per stage
    logger = logging.getLogger("mlflow.pytorch")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        info = mlflow.pytorch.log_model(
            model.eval(),
            name=name,
            serialization_format="pickle",
            pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"],
        )
    finally:
        logger.setLevel(level)
    return info.model_uri


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
        tags={GROUP_TAG: group, PARENT_TAG: "true", KIND_TAG: "pipeline"},
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
