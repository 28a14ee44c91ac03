"""A real multi-node Ray cluster on this machine (head with 0 CPUs, two 1-CPU worker nodes, all
on 127.0.0.1, token auth on) and a real ``mlflow server``: a sweep submitted with
``ray job submit`` runs ``dvc repro`` of its stage on the cluster, its trials land on both
worker nodes, its outputs arrive in the project (on storage every node shares: here, one
machine's disk), and MLflow holds the sweep as a parent run with one child run per trial.
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from resume_helpers import registered_checkpoint
from tests_helpers import scratch_project

from pipeline.data.builtin.voc import BuiltinSpec, write_builtin_voc
from pipeline.data.datasets.voc import VOC
from pipeline.data.prepare import prepare_split
from pipeline.models.vgg import VGG16Classifier
from pipeline.params import load_params
from pipeline.runtime.localray import LocalCluster
from pipeline.sweeps.spec import sweep_spec
from pipeline.sweeps.tuning import run_sweep

pytestmark = pytest.mark.slow

SWEEP = {
    "experiment": "tinyfcn",
    "space": {"train.lr": {"grid": [1.0e-3, 3.0e-2]}},
    "fixed": {"train.iterations": 4},
    "num_samples": 1,
    "scheduler": {"kind": "fifo"},
    "report_every": 2,
    "max_concurrent": 2,
    "resources": {"cpus": 1},
}
# a trial that is a Ray Train group (one worker here): the trial's process holds 0.01 CPU and
# its TorchTrainer's worker a placement group of its own
SWEEP_DDP = {
    **SWEEP,
    "space": {"train.lr": {"grid": [1.0e-3]}},
    "max_concurrent": 1,
    "resources": {"cpus": 1, "workers": 1},
}


def cluster_params(params: dict) -> dict:
    params["model"]["width"] = 0.0625
    params["train"]["common"]["batch_size"] = 2
    params["ray"]["object_store_mb"] = 120
    params["run"] = {
        "train": {"tinyfcn": {"model": "fcn32s", "dataset": "voc", "init": "backbone"}},
        "crf": [],
        "datasets": ["voc"],
        "sweeps": {"multinode": SWEEP, "ddp": SWEEP_DDP},
    }
    return params


@pytest.fixture(scope="module")
def cluster():
    c = LocalCluster(workers=2)
    yield c
    c.shutdown()


@pytest.fixture(scope="module")
def project(ray_local, tmp_path_factory):
    """A scratch DVC project with prepared built-in VOC and a backbone classifier."""
    root, env = scratch_project(tmp_path_factory.mktemp("cl") / "repo", cluster_params, "cl")
    raw = write_builtin_voc(root / "scratch-raw", BuiltinSpec(num_train=8, num_val=4, size=40))
    for split in ("train", "val"):
        prepare_split(VOC(), raw, split, root / "data" / "prepared" / "voc" / split)
    (root / "models" / "backbone").mkdir(parents=True)
    torch.manual_seed(0)
    state = VGG16Classifier(num_classes=21, width=0.0625).state_dict()
    torch.save(state, root / "models" / "backbone" / "classifier.pt")
    return root, env


def test_a_sweep_submitted_as_a_ray_job_runs_on_both_worker_nodes(cluster, mlflow_server, project):
    root, _ = project
    runtime_env = {
        "env_vars": {"MLFLOW_TRACKING_URI": mlflow_server, "DENSEPIPE_RUN_GROUP": "cluster"}
    }
    submit = [
        str(Path(sys.executable).parent / "ray"),
        "job",
        "submit",
        "--address",
        cluster.dashboard,
        "--runtime-env-json",
        json.dumps(runtime_env),
        "--",
        "bash",
        "-c",
        f"cd {root} && dvc repro --single-item sweep@multinode",
    ]
    for _ in range(10):  # the head's job agent comes up a few seconds after the cluster
        result = subprocess.run(
            submit, env=cluster.env, capture_output=True, text=True, timeout=600
        )
        if "No available agent" not in result.stderr + result.stdout:
            break
        time.sleep(1)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "succeeded" in result.stdout.lower()

    # the outputs arrive in the project, as dvc.yaml declares them
    rows = list(csv.DictReader((root / "sweeps" / "multinode" / "trials.csv").open()))
    assert [float(r["train.lr"]) for r in rows] == [1.0e-3, 3.0e-2]
    assert all(r["status"] == "finished" and int(r["steps"]) == 4 for r in rows)
    workers = {n["id"] for n in cluster.alive_nodes() if n["cpu"] == 1}
    assert {r["node"] for r in rows} == workers  # one trial per worker node, none on the head
    summary = json.loads((root / "metrics" / "sweep-multinode.json").read_text())
    assert summary["trials"] == 2 and summary["finished"] == 2
    lock = (root / "dvc.lock").read_text()
    assert "sweep@multinode" in lock

    # MLflow through the server every node reaches: the sweep run and one child per trial
    import mlflow

    client = mlflow.MlflowClient(mlflow_server)
    experiment = client.get_experiment_by_name("densepipe")
    runs = client.search_runs([experiment.experiment_id], "tags.`densepipe.group` = 'cluster'")
    sweep = next(r for r in runs if r.info.run_name == "sweep multinode")
    assert sweep.info.status == "FINISHED"
    assert sweep.data.metrics["best_val_mean_iu"] == pytest.approx(summary["best"])
    trials = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == sweep.info.run_id]
    assert sorted(r.info.run_name for r in trials) == [f"multinode trial-{i}" for i in range(2)]
    for trial in trials:
        assert trial.info.status == "FINISHED"
        history = client.get_metric_history(trial.info.run_id, "val_mean_iu")
        assert [m.step for m in history] == [2, 4]


def test_a_sweep_trial_can_be_a_ray_train_group(project):
    """``resources.workers`` > 0: each trial starts a TorchTrainer (on the suite's 2-CPU
    runtime) whose rank 0 reports reach Tune, so the rows and the validation history fill."""
    root, _ = project
    params = load_params(root / "params.yaml")
    spec = sweep_spec(params, "ddp")
    rows = run_sweep(params, spec, root)
    assert [(r.status, r.steps) for r in rows] == [("finished", 4)]
    assert [step for step, _ in rows[0].history] == [2, 4]
    assert 0.0 <= rows[0].best <= 1.0


# -- training that survives: a 2-worker DDP run (one worker per node) on the same cluster ------


def drive(cluster, prepared, out: Path, storage: Path, name: str, *extra: str):
    """Start ``tests/cluster_train.py`` against the cluster (a driver process of its own)."""
    script = Path(__file__).parent / "cluster_train.py"
    cmd = [sys.executable, str(script), str(prepared), str(out), str(storage), name, *extra]
    env = {**cluster.env, "RAY_ADDRESS": cluster.address}
    return subprocess.Popen(
        cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def finish(proc) -> str:
    out, _ = proc.communicate(timeout=400)
    assert proc.returncode == 0, out[-4000:]
    return out


@pytest.fixture(scope="module")
def uninterrupted(cluster, prepared_voc8, tmp_path_factory):
    root = tmp_path_factory.mktemp("whole")
    finish(drive(cluster, prepared_voc8, root / "model", root / "ray", "whole"))
    return root / "model"


def assert_resumed_to_the_same_end(resumed: Path, whole: Path) -> None:
    history = json.loads((resumed / "history.json").read_text())
    points = [h["step"] for h in history if h.get("resumed")]
    assert len(points) == 1 and 4 <= points[0] < 16  # from a checkpoint, not from step 0
    reference = json.loads((whole / "history.json").read_text())
    losses = [h["loss"] for h in history if "loss" in h]
    assert losses == [h["loss"] for h in reference if "loss" in h]
    a = torch.load(whole / "model.pt", weights_only=True)
    b = torch.load(resumed / "model.pt", weights_only=True)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)  # exactly


def test_a_killed_worker_resumes_and_ends_with_the_uninterrupted_weights(
    cluster, prepared_voc8, uninterrupted, tmp_path
):
    marker, storage = tmp_path / "killed", tmp_path / "ray"
    proc = drive(
        cluster, prepared_voc8, tmp_path / "model", storage, "k",
        "--kill-worker", str(marker), "--max-failures", "1",
    )  # fmt: skip
    finish(proc)
    assert marker.exists()  # a worker did run, and died
    assert_resumed_to_the_same_end(tmp_path / "model", uninterrupted)
    assert not (storage / "k").exists()  # a finished run leaves nothing to resume


def test_a_lost_node_is_replaced_and_training_resumes_where_it_was(
    cluster, prepared_voc8, uninterrupted, tmp_path
):
    storage = tmp_path / "ray"
    proc = drive(cluster, prepared_voc8, tmp_path / "model", storage, "n", "--max-failures", "1")
    seen: set[str] = set()
    deadline = time.time() + 300
    while not registered_checkpoint(storage, seen):
        assert proc.poll() is None and time.time() < deadline, "no checkpoint before the end"
        time.sleep(0.02)
    cluster.kill_worker(-1)  # a whole worker node (raylet, its workers) is gone
    cluster.add_worker()  # and a new one joins, as an autoscaler would bring it
    out = finish(proc)
    assert "trained" in out
    assert_resumed_to_the_same_end(tmp_path / "model", uninterrupted)
