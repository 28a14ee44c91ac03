"""DVC stage `train@<run>`: train one model with Ray Train (settings: train.common + train.<run>).

Usage: python stages/train.py RUN --init {backbone|OTHER_RUN}
"""

import argparse

import mlflow

from pipeline import plots
from pipeline.data.prepare import read_prepared
from pipeline.experiment import train_config
from pipeline.params import load_params, repo_root
from pipeline.raycluster import init_ray
from pipeline.tracking import flatten, stage_run, tracking_uri
from pipeline.train import train

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("run", help="a key of the train section of params.yaml")
    parser.add_argument(
        "--init", default=None, help="backbone, or the run whose model to start from"
    )
    args = parser.parse_args()
    key = args.run
    params = load_params()
    config = train_config(params, key, init=args.init)  # validates params before any expensive work
    prepared = repo_root() / "data" / "prepared" / params.get("data.dataset")
    ray_params = params.section("ray")
    init_ray(params)
    with stage_run(params, f"train {key}", tags={"densepipe.kind": "train", "model": key}) as run:
        mlflow.log_params(
            flatten({**params.section("train.common"), **params.section(f"train.{key}")})
        )
        mlflow.log_params({"model": config.model, "init": config.init, **config.model_options})
        config.mlflow_uri, config.mlflow_run_id = tracking_uri(params), run.info.run_id
        history = train(
            config,
            {"train": read_prepared(prepared / "train"), "val": read_prepared(prepared / "val")},
            num_workers=ray_params.get("num_workers", 0),
            cpus_per_worker=ray_params.get("cpus_per_worker", 1),
            use_gpu=ray_params.get("use_gpu", False),
            storage_path=str(repo_root() / "ray_results"),
            name=f"train-{key}",
        )
        plots.training_curves(history, repo_root() / config.out_dir / "curves.png", title=key)
        mlflow.log_artifact(str(repo_root() / config.out_dir / "curves.png"))
        mlflow.log_artifact(str(repo_root() / config.out_dir / "model.pt"), artifact_path="model")
    print(f"{key}: {len(history)} records, final loss {history[-1].get('loss')}")
