"""`dvc repro` of a micro profile in a temporary copy: every stage runs for real.

Checks: the whole DAG produces the report and metrics; a second repro reruns nothing; changing
one training param invalidates exactly the stages downstream of it; MLflow holds finished runs
with metrics and artifacts, grouped under one parent.
"""

import json
import subprocess

import pytest
import yaml
from tests_helpers import scratch_project

from pipeline.runtime.localray import ENV, LocalCluster

pytestmark = pytest.mark.slow

# the staged chain, an evaluation-only masking experiment, DeepLab with its CRF, PixelNet edges
MICRO_RUN = (
    "fcn32s",
    "fcn16s",
    "fcn8s",
    "fcn32s-test-mask-fg",
    "deeplab-largefov",
    "pixelnet-edges",
)


# two trials of FCN-32s, ASHA: the sweep stage's outputs, report section and MLflow children
MICRO_SWEEP = {
    "experiment": "fcn32s",
    "space": {"train.lr": {"grid": [1.0e-3, 3.0e-2]}},
    "fixed": {"train.iterations": 4},
    "num_samples": 1,
    "scheduler": {"kind": "asha", "grace_period": 2, "reduction_factor": 2},
    "report_every": 2,
    "max_concurrent": 1,
    "resources": {"cpus": 1},
}


def micro(params: dict) -> dict:
    """Smallest settings that still run every stage."""
    for name in ("voc_aug", "voc_fcn"):  # DeepLab/PixelNet read voc_aug, FCN reads voc_fcn
        params["data"][name]["builtin"].update(num_train=12, num_val=4, size=48)
    params["data"]["bsds"]["builtin"].update(num_train=6, num_val=3, height=48, width=64)
    params["evaluate"]["edges"]["n_thresholds"] = {"tiny": 5, "paper": 99}
    params["backbone"]["pretrain"].update(epochs=1, patches_per_image=2)
    declared = params["experiments"]["all"]["train"]
    params["run"] = {
        "train": {k: declared[k] for k in MICRO_RUN},
        "crf": ["deeplab-largefov"],
        "datasets": ["voc_aug", "voc_fcn", "bsds"],
        "sweeps": {"micro": MICRO_SWEEP},
    }
    for entry in params["run"]["train"].values():
        if entry.get("train", {}).get("iterations") != 0:
            entry.setdefault("train", {})["iterations"] = {"tiny": 2, "paper": 100000}
    declared["deeplab-largefov"]["train"]["batch_size"] = {"tiny": 4, "paper": 20}
    search = params["crf"]["search"]
    search["num_images"] = {"tiny": 3, "paper": 100}
    search["coarse"] = {"w1": [3], "sigma_alpha": [10, 30], "sigma_beta": [3]}
    search["fine"] = {"sigma_alpha": 5.0}
    search["radius"] = 1
    params["crf"]["trimap_max_width"] = 5
    params["crf"]["num_qualitative"] = 2
    params["train"]["common"]["batch_size"] = {"tiny": 4, "paper": 1}
    params["model"]["width"] = {"tiny": 0.0625, "paper": 1.0}
    params["ray"]["object_store_mb"] = 150
    return params


def run(cmd, cwd, env):
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    assert result.returncode == 0, (
        f"{cmd} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    )
    return result.stdout


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """The micro DAG, every stage connected to one local Ray head (as `make repro` runs it:
    `python -m pipeline.runtime.localray -- dvc repro`)."""
    root, env = scratch_project(tmp_path_factory.mktemp("e2e") / "repo", micro, "e2e-test")
    head = LocalCluster(workers=0, object_store_mb=200, head_cpus=2)
    env = {**env, **ENV, "RAY_ADDRESS": head.address}
    try:
        run(["dvc", "repro"], root, env)
        yield root, env
    finally:
        head.shutdown()


def test_repro_produces_report_and_metrics(project):
    root, _ = project
    report = (root / "reports" / "results.md").read_text()
    for model in ("fcn32s", "fcn16s", "fcn8s"):
        assert f"| {model} | `{model}` |" in report
        metrics = json.loads((root / "metrics" / f"{model}.json").read_text())
        assert 0 <= metrics["mean_iu"] <= 1 and metrics["num_images"] == 4
        assert (root / "reports" / "figures" / model / "predictions.png").stat().st_size > 0
        assert (root / "models" / model / "model.pt").is_file()
    assert "59.4" in report  # the paper's number sits beside ours
    crf = json.loads((root / "metrics" / "deeplab-largefov-crf.json").read_text())
    assert crf["num_images"] == 4
    for when in ("before", "after"):
        assert 0 <= crf[when]["mean_iu"] <= 1
    row = next(line for line in report.splitlines() if line.startswith("| DeepLab-LargeFOV |"))
    cells = [c.strip() for c in row.split("|")[2:-1]]
    assert cells[0] == "`deeplab-largefov`"
    assert cells[1] == f"{100 * crf['before']['mean_iu']:.2f}"
    assert cells[2] == f"{100 * crf['after']['mean_iu']:.2f}"
    assert cells[3:5] == ["62.25", "67.64"]  # DeepLab Table 1(a), beside ours
    # masking at test time only (FCN Table 8): the fcn32s weights, evaluated on masked input
    masked = json.loads((root / "metrics" / "fcn32s-test-mask-fg.json").read_text())
    assert masked["mask"]["test"] == "fg" and 0 <= masked["mean_iu_fg"] <= 1
    assert "| Reference-BG (test: foreground masked) | `fcn32s-test-mask-fg` |" in report
    assert "(not in `run`)" in report  # declared experiments outside the micro set are listed
    # edges: the PixelNet model and Canny through the same BSDS benchmark, beside PixelNet's
    edges = json.loads((root / "metrics" / "pixelnet-edges.json").read_text())
    canny = json.loads((root / "metrics" / "canny.json").read_text())
    for m in (edges, canny):
        assert m["num_images"] == 3 and all(0 <= m[k] <= 1 for k in ("ods", "ois", "ap"))
    assert f"| Canny | `canny` (baseline) | {canny['ods']:.3f} |" in report
    assert (root / "reports" / "figures" / "pixelnet-edges" / "edges_pr_curve.png").is_file()
    sweep = json.loads((root / "metrics" / "sweep-micro.json").read_text())
    assert sweep["trials"] == 2 and sweep["metric"] == "val_mean_iu"
    assert [r["values"]["train.lr"] for r in sweep["rows"]] == [1.0e-3, 3.0e-2]
    assert all(r["status"] in ("finished", "stopped early") for r in sweep["rows"])
    assert sweep["best"] == max(r["best"] for r in sweep["rows"])
    trials = (root / "sweeps" / "micro" / "trials.csv").read_text().splitlines()
    assert trials[0].startswith("trial,train.lr,status") and len(trials) == 3
    best = yaml.safe_load((root / "sweeps" / "micro" / "best.yaml").read_text())
    assert best["micro-best"]["model"] == "fcn32s"
    assert best["micro-best"]["train"]["lr"] == sweep["best_values"]["train.lr"]
    assert (root / "sweeps" / "micro" / "curves.png").stat().st_size > 0
    assert "## Sweep `micro` (fcn32s, asha)" in report
    upper = json.loads((root / "metrics" / "upper_bound.json").read_text())
    assert upper["methods"]["majority"]["num_images"] == 4
    best = json.loads((root / "models" / "crf" / "deeplab-largefov" / "best.json").read_text())
    assert best["num_trials"] == 4 and best["num_images"] == 3  # 2 coarse + 2 new fine points
    figures = root / "reports" / "figures" / "deeplab-largefov-crf"
    assert (figures / "trimap.png").stat().st_size > 0
    assert (figures / "predictions.png").stat().st_size > 0
    assert "figures/deeplab-largefov-crf/trimap.png" in report


def test_second_repro_is_a_no_op_and_param_change_is_local(project):
    root, env = project
    out = run(["dvc", "repro"], root, env)
    assert "Running stage" not in out
    status = json.loads(run(["dvc", "status", "--json"], root, env) or "{}")
    assert status == {}
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["run"]["train"]["fcn16s"]["train"]["lr"]["tiny"] = 5e-4
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    status = json.loads(run(["dvc", "status", "--json"], root, env))
    # fcn16s's own stages read the param (and the report lists the run set); nothing upstream
    assert set(status) == {"train@fcn16s", "evaluate@fcn16s", "report"}
    # once fcn16s retrains (its model changes), FCN-8s, initialised from it, is out of date
    # too, through its model dependency; what it would in turn invalidate (evaluate@fcn8s) is
    # the same mechanism one level down, left unrun to keep the suite short
    out = run(["dvc", "repro", "--single-item", "train@fcn16s"], root, env)
    ran = {line.split("'")[1] for line in out.splitlines() if line.startswith("Running stage")}
    assert ran == {"train@fcn16s"}
    status = json.loads(run(["dvc", "status", "--json"], root, env))
    assert set(status) == {"train@fcn8s", "evaluate@fcn16s", "report"}
    assert {"changed deps": {"models/fcn16s": "modified"}} in status["train@fcn8s"]


def test_mlflow_holds_finished_runs_with_metrics_and_artifacts(project):
    import mlflow

    root, _ = project
    client = mlflow.MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("densepipe")
    runs = client.search_runs([experiment.experiment_id], "tags.`densepipe.group` = 'e2e-test'")
    names = {r.info.run_name: r for r in runs}
    for model in ("fcn32s", "fcn16s", "fcn8s"):
        train_run, eval_run = names[f"train {model}"], names[f"evaluate {model}"]
        assert train_run.info.status == eval_run.info.status == "FINISHED"
        assert "train_loss" in train_run.data.metrics
        assert "mean_iu" in eval_run.data.metrics
        artifacts = {a.path for a in client.list_artifacts(eval_run.info.run_id, "figures")}
        assert "figures/predictions.png" in artifacts
        # the final model is a logged model of the run (mlflow.pytorch.load_model loads it)
        assert client.get_run(train_run.info.run_id).outputs.model_outputs
    parents = [r for r in runs if r.data.tags.get("densepipe.parent") == "true"]
    assert len(parents) == 1
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
    # the sweep is one stage run with a child run per trial (logged by Tune's driver)
    sweep = names["sweep micro"]
    trials = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == sweep.info.run_id]
    assert len(children) == len(runs) - 1 - len(trials)
    assert sorted(r.info.run_name for r in trials) == ["micro trial-0", "micro trial-1"]
    for trial in trials:
        assert trial.info.status == "FINISHED" and "val_mean_iu" in trial.data.metrics
        assert "train.lr" in trial.data.params
        history = client.get_metric_history(trial.info.run_id, "val_mean_iu")
        assert [m.step for m in history][:2] == [2, 4][: len(history)]
