"""The MLflow experiment as a person meets it, against a real ``mlflow server``: densepipe's
experiment is tagged as classic ML with a description, a train run logged the way the train stage
logs it has its name, model/dataset params, dataset input, metric and a model that
``mlflow.pytorch.load_model`` gives back working; and the URL the stages print opens, in headless
Chromium, on the runs table (MLflow 3.17 opens an experiment on its GenAI overview otherwise).
"""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest
import torch

from pipeline.models import build_model
from pipeline.params import Params
from pipeline.runtime import tracking

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def logged(mlflow_server, tmp_path_factory):
    """A train and an evaluate run of one pipeline group, logged through densepipe's tracking."""
    import mlflow

    previous = mlflow.get_tracking_uri()
    mp = pytest.MonkeyPatch()
    mp.delenv("MLFLOW_TRACKING_URI", raising=False)
    mp.setenv("DENSEPIPE_RUN_GROUP", "ui-test")
    params = Params(
        {"profile": "tiny", "mlflow": {"tracking_uri": mlflow_server, "experiment": "densepipe"}}
    )
    prepared = tmp_path_factory.mktemp("prepared") / "voc_fcn" / "train"
    torch.manual_seed(0)
    net = build_model("fcn32s", 21, width=0.0625).eval()
    tags = {"densepipe.kind": "train", "model": "fcn32s"}
    with tracking.stage_run(params, "train fcn32s", tags=tags) as run:
        mlflow.log_params({"model": "fcn32s", "dataset": "voc_fcn"})
        tracking.log_dataset("voc_fcn", prepared, "training")
        mlflow.log_metrics({"train_loss": 0.5, "val_mean_iu": 0.25}, step=10)
        model_uri = tracking.log_model(net)
    tags = {"densepipe.kind": "evaluate", "model": "fcn32s"}
    with tracking.stage_run(params, "evaluate fcn32s", tags=tags) as evaluated:
        mlflow.log_params({"model": "fcn32s", "dataset": "voc_fcn"})
        mlflow.log_metrics({"mean_iu": 0.3})
    mp.undo()
    url = tracking.ui_url(params, run.info.experiment_id)
    yield mlflow.MlflowClient(mlflow_server), run, evaluated, net, model_uri, url
    mlflow.set_tracking_uri(previous)


def test_experiment_is_classic_ml_with_a_description(logged, mlflow_server):
    client, run, _, _, _, url = logged
    experiment = client.get_experiment(run.info.experiment_id)
    assert experiment.name == "densepipe"
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    assert "FCN, DeepLab v1 and PixelNet" in experiment.tags["mlflow.note.content"]
    view = json.loads(experiment.tags["mlflow.sharedViewState.densepipe"])
    assert {"metrics.`mean_iu`", "metrics.`ods`", "params.`model`"} <= set(view["selectedColumns"])
    assert url == (
        f"{mlflow_server}/#/experiments/{experiment.experiment_id}/runs"
        "?workflowType=machine_learning&viewStateShareKey=densepipe"
    )


def test_runs_carry_what_the_table_compares(logged):
    client, run, evaluated, _, _, _ = logged
    train = client.get_run(run.info.run_id)
    assert train.info.run_name == "train fcn32s"
    assert train.data.params["model"] == "fcn32s" and train.data.params["dataset"] == "voc_fcn"
    assert train.data.metrics["val_mean_iu"] == pytest.approx(0.25)
    assert [d.dataset.name for d in train.inputs.dataset_inputs] == ["voc_fcn"]
    assert train.data.tags["densepipe.group"] == "ui-test"
    parent = client.get_run(train.data.tags["mlflow.parentRunId"])
    assert parent.info.run_name == "pipeline ui-test"
    evaluation = client.get_run(evaluated.info.run_id)
    assert evaluation.data.tags["mlflow.parentRunId"] == parent.info.run_id
    assert evaluation.data.metrics["mean_iu"] == pytest.approx(0.3)


def test_final_model_loads_and_predicts_like_the_original(logged):
    import mlflow

    client, run, _, net, model_uri, _ = logged
    assert [o.model_id for o in client.get_run(run.info.run_id).outputs.model_outputs] == [
        model_uri.removeprefix("models:/")
    ]
    assert mlflow.get_tracking_uri() == client.tracking_uri  # the stage's setup pointed it there
    loaded = mlflow.pytorch.load_model(model_uri, map_location="cpu")
    x = torch.rand(2, 3, 40, 48, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(loaded(x), net(x))


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium (Debian package `chromium`)")
def test_printed_url_opens_on_the_runs_table(logged, tmp_path):
    *_, url = logged
    result = subprocess.run(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--disable-background-networking",
            f"--user-data-dir={tmp_path / 'profile'}",  # a fresh browser: no remembered toggle
            "--virtual-time-budget=5000",
            "--dump-dom",
            url,
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    dom = result.stdout
    assert "densepipe" in dom, result.stderr[-2000:]
    # the runs table (not the GenAI overview) in densepipe's view: runs grouped by stage kind,
    # each with its name, dataset and main metric
    assert "matching runs" in dom  # the table's footer ("3 matching runs")
    for shown in ("Group: train", "Group: evaluate", "train fcn32s", "evaluate fcn32s"):
        assert shown in dom, shown
    assert "voc_fcn" in dom and "mean_iu" in dom
