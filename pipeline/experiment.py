"""From params.yaml to run configurations: the one place stage settings are resolved.

Keeps stages thin and gives tests and ``ray job submit`` sweeps the same resolution logic.
"""

from __future__ import annotations

from pathlib import Path

from pipeline.data.loader import InputSpec
from pipeline.errors import ParamsError
from pipeline.params import Params, choice, positive, repo_root
from pipeline.train import TrainConfig

OPTIMIZERS = ("sgd", "adam")
PRECISIONS = ("fp32", "bf16")
LR_POLICIES = ("fixed", "step", "poly")


def model_dir(name: str, root: Path | None = None) -> Path:
    return (root or repo_root()) / "models" / name


def init_path(init: str | None, root: Path | None = None) -> str | None:
    """``backbone`` -> the backbone classifier; a model key -> that model's final weights."""
    if not init:
        return None
    if init == "backbone":
        return str(model_dir("backbone", root) / "classifier.pt")
    return str(model_dir(init, root) / "model.pt")


def train_config(
    params: Params, key: str, init: str | None = None, root: Path | None = None
) -> TrainConfig:
    """Resolve ``train.common`` + ``train.<key>`` into a validated TrainConfig.

    ``init`` (from dvc.yaml, where the staged order lives): ``backbone`` or a model key.
    """
    if key not in params.section("train") or key == "common":
        known = [k for k in params.section("train") if k != "common"]
        raise ParamsError(f"train.{key}: no such training run; known: {known}")
    merged = {**params.section("train.common"), **params.section(f"train.{key}")}
    model = merged.pop("model", key)
    options = merged.pop("model_options", {}) or {}
    choice(f"train.{key}.optimizer", merged.get("optimizer"), OPTIMIZERS)
    choice(f"train.{key}.precision", merged.get("precision"), PRECISIONS)
    choice(f"train.{key}.lr_policy", merged.get("lr_policy", "fixed"), LR_POLICIES)
    for k in ("lr", "batch_size", "iterations", "accumulate"):
        positive(f"train.{key}.{k}", merged.get(k), kind=float)
    p = merged.get("loss_sample_p", 1.0)
    if not 0 < float(p) <= 1:
        raise ParamsError(f"train.{key}.loss_sample_p must be in (0, 1], got {p!r}")
    return TrainConfig(
        model=model,
        num_classes=params.get("model.num_classes"),
        out_dir=str(model_dir(key, root)),
        model_options={
            "width": params.get("model.width"),
            "dropout": params.get("model.dropout"),
            **options,
        },
        init=init_path(init, root),
        reset_head=init == "backbone" and params.get("backbone.transfer") == "features",
        input=dict(params.section("input")),
        **merged,
    )


def input_spec(params: Params) -> InputSpec:
    spec = params.section("input")
    choice("input.norm", spec.get("norm"), ("caffe", "torchvision"))
    return InputSpec(norm=spec["norm"], mean_bgr=tuple(spec["mean_bgr"]))


def load_trained(params: Params, key: str, root: Path | None = None):
    """The trained model of run ``key`` (weights from ``models/<key>/model.pt``) and its config."""
    import torch

    from pipeline.models import build_model

    config = train_config(params, key, root=root)
    model = build_model(config.model, config.num_classes, **config.model_options)
    state = torch.load(model_dir(key, root) / "model.pt", map_location="cpu", weights_only=True)
    model.load_state_dict(state)
    return model, config


def prepared_split(params: Params, split: str, root: Path | None = None):
    """A prepared split of the configured dataset as an in-memory Arrow table."""
    from pipeline.data.prepare import read_prepared_table

    dataset = params.get("data.dataset")
    return read_prepared_table((root or repo_root()) / "data" / "prepared" / dataset / split)
