"""DVC stage `backbone`: the classifier weights every FCN starts from.

tiny: pretrain a width-scaled VGG16 classifier on the built-in images (stand-in for ImageNet).
paper: torchvision's ImageNet VGG16 (or a local state dict). Either way the output is a
classifier state dict in torchvision's layout, converted to the FCN by the same code.
"""

import json

import mlflow
import torch

from pipeline.data.loader import InputSpec
from pipeline.data.prepare import read_prepared_table
from pipeline.experiment import input_settings
from pipeline.models.weights import imagenet_state_dict, read_state_dict
from pipeline.params import choice, load_params, repo_root
from pipeline.runtime.console import run_stage
from pipeline.runtime.fsutil import atomic_path
from pipeline.runtime.tracking import flatten, stage_run
from pipeline.training.pretrain import PretrainConfig, pretrain_classifier


def main() -> None:
    params = load_params()
    root = repo_root()
    source = choice(
        "backbone.source", params.get("backbone.source"), ("pretrain", "imagenet", "file")
    )
    out = root / "models" / "backbone"
    history = []
    if source == "file":  # a bad path or file is the user's to fix: say so before any work
        state = read_state_dict(params.get("backbone.weights", None), "backbone.weights")
    with stage_run(params, "backbone", tags={"densepipe.kind": "pretrain"}):
        mlflow.log_params({"backbone.source": source})
        if source == "pretrain":
            prepared = root / "data" / "prepared" / params.get("backbone.dataset")
            config = PretrainConfig(
                num_classes=params.get("model.num_classes"),
                width=params.get("model.width"),
                **params.section("backbone.pretrain"),
            )
            mlflow.log_params(flatten(params.section("backbone.pretrain"), "pretrain."))
            state, history = pretrain_classifier(
                read_prepared_table(prepared / "train"),
                read_prepared_table(prepared / "val"),
                InputSpec(**input_settings(params, params.get("backbone.dataset"))),
                config,
            )
            for h in history:
                mlflow.log_metrics({"loss": h["loss"], "val_acc": h["val_acc"]}, step=h["epoch"])
        elif source == "imagenet":
            state = imagenet_state_dict("vgg16")
        with atomic_path(out) as tmp:
            tmp.mkdir(parents=True)
            torch.save(state, tmp / "classifier.pt")
            (tmp / "history.json").write_text(json.dumps(history, indent=1))
    print(f"backbone ({source}) -> {out}")


if __name__ == "__main__":
    run_stage(main)
