"""DVC stage `train@<experiment>`: train one experiment's model with Ray Train.

Settings: train.common + experiments.<name>.train in params.yaml (see pipeline/experiment.py).
Usage: python stages/train.py EXPERIMENT
"""

import argparse

import mlflow

from pipeline.data.prepare import prepared_bytes, read_prepared
from pipeline.experiment import (
    check_batch_fits,
    check_input_columns,
    check_no_leakage,
    check_scales_fit,
    experiment,
    load_trained,
    prepared_dir,
    run_name,
    train_config,
)
from pipeline.params import load_params, repo_root
from pipeline.report import plots
from pipeline.runtime.console import announce_limits, run_stage
from pipeline.runtime.raycluster import init_ray
from pipeline.runtime.tracking import (
    flatten,
    log_dataset,
    log_model,
    stage_run,
    tracking_uri,
    ui_url,
)
from pipeline.training.loop import train

#: splits up to this size (Parquet bytes) are cached in Ray's object store for the whole run
CACHE_SPLIT_BYTES = 128 * 1024 * 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("experiment", help="an experiment declared in params.yaml")
    key = parser.parse_args().experiment
    params = load_params()
    config = train_config(params, key)  # validates params before any expensive work
    entry = experiment(params, key)
    ray_params = params.section("ray")
    images = check_batch_fits(params, key, config, ray_params.get("num_workers", 0))
    check_input_columns(params, key, config)
    check_scales_fit(params, key, config)
    check_no_leakage(params, key)
    limits = announce_limits(params)
    init_ray(params)
    with stage_run(params, f"train {key}", tags={"densepipe.kind": "train", "model": key}) as run:
        mlflow.log_params(flatten({**params.section("train.common"), **entry["train"]}))
        mlflow.log_params(
            {"model": config.model, "dataset": entry["dataset"], "init": entry["init"]}
        )
        mlflow.log_params({**flatten(config.model_options), "mask": entry["mask"]["train"]})
        log_dataset(entry["dataset"], prepared_dir(entry["dataset"], "train"), "training")
        config.mlflow_uri, config.mlflow_run_id = tracking_uri(params), run.info.run_id
        train_ds = read_prepared(prepared_dir(entry["dataset"], "train"))
        if limits.get("train_images"):
            train_ds = train_ds.limit(images)  # the first N rows, in shard order
        if prepared_bytes(prepared_dir(entry["dataset"], "train")) < CACHE_SPLIT_BYTES:
            # a small split is read once into the object store: every epoch then streams the
            # same blocks (same order) instead of re-reading the files
            train_ds = train_ds.materialize()
        history = train(
            config,
            {"train": train_ds, "val": read_prepared(prepared_dir(entry["dataset"], "val"))},
            num_workers=ray_params.get("num_workers", 0),
            cpus_per_worker=ray_params.get("cpus_per_worker", 1),
            use_gpu=ray_params.get("use_gpu", False),
            storage_path=str(repo_root() / "ray_results"),
            name=run_name(params, key, config),
            checkpoint_every=int(ray_params.get("checkpoint_every", 0) or 0),
            max_failures=int(ray_params.get("max_failures", 0) or 0),
        )
        plots.training_curves(history, repo_root() / config.out_dir / "curves.png", title=key)
        mlflow.log_artifact(str(repo_root() / config.out_dir / "curves.png"))
        # the final model, loadable with mlflow.pytorch.load_model (the run's Models column)
        log_model(load_trained(params, key)[0])
    losses = [h["loss"] for h in history if "loss" in h]
    final = f"final loss {losses[-1]:.4f}" if losses else "no training steps (init = model)"
    print(f"{key}: {len(losses)} steps, {final}; MLflow: {ui_url(params, run.info.experiment_id)}")


if __name__ == "__main__":
    run_stage(main)
