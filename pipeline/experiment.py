"""From params.yaml to run configurations: the one place experiment settings are resolved.

An experiment (params.yaml ``experiments``) names a model, its dataset, where it starts from
(``init``), its training overrides of ``train.common``, input masking and the paper-table rows it
reproduces. dvc.yaml expands the active set (``run``) into stages; stages, tests and ``ray job
submit`` sweeps all resolve an experiment through this module.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from pathlib import Path

import torch

from pipeline.data.leakage import check_prepared
from pipeline.data.loader import MASKS, MODALITIES, InputSpec
from pipeline.data.prepare import (
    prepared_columns,
    prepared_rows,
    prepared_sizes,
    read_prepared_table,
)
from pipeline.data.sources.acquire import data_config
from pipeline.errors import DataError, ParamsError
from pipeline.evaluation.trained import TrainedModel
from pipeline.models import build_model, load_weights_file
from pipeline.models.anysize import min_input_size
from pipeline.models.weights import load_state_strict, read_state_dict
from pipeline.params import (
    Params,
    capped,
    choice,
    positive,
    positive_list,
    repo_root,
    trial_limits,
)
from pipeline.training.loop import TrainConfig

OPTIMIZERS = ("sgd", "adam")
PRECISIONS = ("fp32", "bf16")
LR_POLICIES = ("fixed", "step", "multistep", "poly")
TASKS = ("segmentation", "edges", "normals")
EXPERIMENT_KEYS = (
    "model", "dataset", "init", "task", "train", "model_options", "mask", "test_scales", "tables",
)  # fmt: skip


def model_dir(name: str, root: Path | None = None) -> Path:
    return (root or repo_root()) / "models" / name


def declared_in_sets(params: Params, section: str) -> dict[str, dict]:
    """Every entry of ``section`` (``train``, ``sweeps``) that any experiment set declares, by
    name (the active set, ``run.<section>``, wins)."""
    found: dict[str, dict] = {}
    for spec in (params.get("experiments", {}) or {}).values():
        for name, entry in ((spec or {}).get(section) or {}).items():
            found.setdefault(name, entry)
    found.update(params.get(f"run.{section}", {}) or {})
    return found


def declared_experiments(params: Params) -> dict[str, dict]:
    """Every experiment params.yaml declares, in any set, by name (the active set wins)."""
    return declared_in_sets(params, "train")


def run_names(params: Params) -> list[str]:
    """The experiments the active ``run`` set trains, in declaration order."""
    return list(params.get("run.train", {}) or {})


def experiment(params: Params, name: str) -> dict:
    """One experiment's declaration, validated; errors name the params key."""
    known = declared_experiments(params)
    if name not in known:
        raise ParamsError(f"experiments: no experiment {name!r}; declared: {sorted(known)}")
    entry = dict(known[name] or {})
    where = f"experiments.{name}"
    unknown = sorted(set(entry) - set(EXPERIMENT_KEYS))
    if unknown:
        raise ParamsError(f"{where}: unknown key(s) {unknown}; known: {list(EXPERIMENT_KEYS)}")
    for key in ("model", "dataset", "init"):
        if not isinstance(entry.get(key), str) or not entry[key]:
            got = entry.get(key)
            raise ParamsError(f"{where}.{key} must be a plain name (dvc.yaml uses it), got {got!r}")
    if entry["init"] != "backbone" and entry["init"] not in known:
        raise ParamsError(f"{where}.init: {entry['init']!r} is not 'backbone' or an experiment")
    entry.setdefault("task", "segmentation")
    choice(f"{where}.task", entry["task"], TASKS)
    mask = {"train": "none", "test": "none", **(entry.get("mask") or {})}
    for when in ("train", "test"):
        choice(f"{where}.mask.{when}", mask[when], MASKS)
    if entry["task"] == "normals" and mask != {"train": "none", "test": "none"}:
        raise ParamsError(f"{where}.mask: input masking needs class labels, not task normals")
    entry["mask"] = mask
    scales = entry.get("test_scales", [1.0])
    entry["test_scales"] = list(positive_list(f"{where}.test_scales", scales))
    entry["train"] = dict(entry.get("train") or {})
    entry["model_options"] = dict(entry.get("model_options") or {})
    entry["tables"] = dict(entry.get("tables") or {})
    return entry


def init_path(init: str | None, root: Path | None = None) -> str | None:
    """``backbone`` -> the backbone classifier; an experiment -> that model's final weights."""
    if not init:
        return None
    if init == "backbone":
        return str(model_dir("backbone", root) / "classifier.pt")
    return str(model_dir(init, root) / "model.pt")


def _backbone_init(params: Params, model: str, root: Path | None) -> tuple[str | None, bool]:
    """Where a model starts from the backbone stage: (weights, re-initialise fc6/fc7).

    The backbone stage holds a VGG16 classifier. FCN-AlexNet/GoogLeNet (FCN Table 1) take
    torchvision's ImageNet weights of their own architecture under ``backbone.source: imagenet``
    and start from scratch otherwise (the tiny profile pretrains VGG16 only).
    """
    import torch

    with torch.device("meta"):
        arch = getattr(build_model(model, 2, width=0.125), "arch", "vgg16")
    if arch != "vgg16":
        source = params.get("backbone.source")
        if source == "file":  # a VGG16 state dict: never silently train FCN-AlexNet from scratch
            raise ParamsError(
                f"backbone.source 'file' holds VGG16 weights; {model!r} (FCN Table 1) needs "
                f"ImageNet {arch} weights: set backbone.source: imagenet, or leave it out of run"
            )
        return ("imagenet" if source == "imagenet" else None), False
    return init_path("backbone", root), params.get("backbone.transfer") == "features"


def class_names(params: Params, dataset: str) -> tuple[str, ...]:
    """The classes a dataset's labels index (VOC 21, NYUD 40, SIFT Flow 33, Context 60 / 33)."""
    return tuple(data_config(params, dataset).dataset().classes)


def num_classes(params: Params, entry: dict) -> int:
    """Edges have one output (sigmoid), normals three (x, y, z); segmentation one per class of
    the experiment's dataset."""
    task = entry["task"]
    return {"edges": 1, "normals": 3}.get(task) or len(class_names(params, entry["dataset"]))


OVERRIDE_SECTIONS = ("train", "model_options")


def set_dotted(target: dict, key: str, value, where: str) -> None:
    """``target["a"]["b"] = value`` for ``key`` "a.b" (copying the nested dicts it passes)."""
    head, _, rest = key.partition(".")
    if not rest:
        target[head] = value
        return
    inner = target.get(head)
    if inner is not None and not isinstance(inner, dict):
        raise ParamsError(f"{where}: {head!r} is {inner!r}, not a section with {rest!r}")
    target[head] = dict(inner or {})
    set_dotted(target[head], rest, value, where)


def apply_overrides(merged: dict, model_options: dict, overrides: dict, where: str) -> None:
    """A sweep trial's values (``train.lr``, ``train.augment.jitter``, ``model_options.dropout``)
    over an experiment's resolved settings."""
    for key, value in (overrides or {}).items():
        section, _, rest = key.partition(".")
        if section not in OVERRIDE_SECTIONS or not rest:
            raise ParamsError(f"{where}: {key!r} must be train.<key> or model_options.<key>")
        set_dotted(merged if section == "train" else model_options, rest, value, f"{where}.{key}")


def train_config(
    params: Params,
    name: str,
    root: Path | None = None,
    overrides: dict | None = None,
    where: str | None = None,
) -> TrainConfig:
    """Resolve ``train.common`` + ``experiments.<name>.train`` into a validated TrainConfig;
    ``overrides`` (a sweep trial's ``train.*`` / ``model_options.*`` values) go on top and are
    validated the same way (errors then name ``where``, the sweep's key)."""
    entry = experiment(params, name)
    merged = {**params.section("train.common"), **entry["train"]}
    options = {
        "width": params.get("model.width"),
        "dropout": params.get("model.dropout"),
        **entry["model_options"],
    }
    where = where or f"experiments.{name}.train"
    apply_overrides(merged, options, overrides, where)
    unknown = sorted(set(merged) - set(TrainConfig.__dataclass_fields__))
    if unknown:
        raise ParamsError(f"{where}: unknown key(s) {unknown}")
    choice(f"{where}.optimizer", merged.get("optimizer"), OPTIMIZERS)
    choice(f"{where}.precision", merged.get("precision"), PRECISIONS)
    choice(f"{where}.lr_policy", merged.get("lr_policy", "fixed"), LR_POLICIES)
    for k in ("lr", "batch_size", "accumulate"):
        positive(f"{where}.{k}", merged.get(k), kind=float)
    positive(f"{where}.iterations", merged.get("iterations"), kind=int, allow_zero=True)
    if merged.get("lr_policy") == "multistep":
        steps = merged.get("lr_milestones")
        if (
            not isinstance(steps, list)
            or not steps
            or any(isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in steps)
            or steps != sorted(set(steps))
        ):
            raise ParamsError(
                f"{where}.lr_milestones must be increasing positive step numbers for lr_policy "
                f"multistep, got {steps!r}"
            )
    p = merged.get("loss_sample_p", 1.0)
    if not 0 < float(p) <= 1:
        raise ParamsError(f"{where}.loss_sample_p must be in (0, 1], got {p!r}")
    limits = trial_limits(params)
    merged["iterations"] = capped(int(merged["iterations"]), limits["iterations"])
    merged["batch_size"] = capped(int(merged["batch_size"]), limits["batch_size"])
    if limits["eval_images"]:
        merged["max_val_images"] = capped(
            int(merged.get("max_val_images") or limits["eval_images"]), limits["eval_images"]
        )
    if entry["init"] == "backbone":
        init, reset = _backbone_init(params, entry["model"], root)
    else:
        init, reset = init_path(entry["init"], root), False
    return TrainConfig(
        model=entry["model"],
        num_classes=num_classes(params, entry),
        out_dir=str(model_dir(name, root)),
        model_options=options,
        init=init,
        reset_head=reset,
        task=entry["task"],
        input=input_settings(params, entry["dataset"], options, entry["mask"]["train"]),
        **merged,
    )


def train_images(params: Params, name: str, root: Path | None = None) -> int:
    """Training images experiment ``name`` will see: its prepared train split, capped by
    ``limits.train_images``."""
    rows = prepared_rows(prepared_dir(experiment(params, name)["dataset"], "train", root))
    return capped(rows, trial_limits(params)["train_images"])


def check_batch_fits(
    params: Params, name: str, config: TrainConfig, num_workers: int, root: Path | None = None
) -> int:
    """A batch that can never form is a ParamsError before training starts, not an endless
    loop of empty epochs (each worker drops its last incomplete batch). Returns the image count."""
    images = train_images(params, name, root)
    workers = max(1, num_workers)
    entry = experiment(params, name)
    key = (
        f"experiments.{name}.train.batch_size"
        if "batch_size" in entry["train"]
        else "train.common.batch_size"
    )
    if config.batch_size % workers:
        raise ParamsError(
            f"{key} = {config.batch_size} is not divisible by ray.num_workers = {workers}"
        )
    if images // workers < config.batch_size // workers or images == 0:
        raise ParamsError(
            f"{key} = {config.batch_size} but the train split of {entry['dataset']!r} has "
            f"{images} image(s)"
            + (f" for {workers} workers" if workers > 1 else "")
            + ": no batch can form; lower the batch size or use more data"
        )
    return images


def check_input_columns(params: Params, name: str, config: TrainConfig, root: Path | None = None):
    """The prepared columns the model reads (depth / HHA for an RGB-D / HHA / RGB-HHA net, the
    extra heads' labels) must exist in its dataset: a ParamsError before any step otherwise."""
    spec = InputSpec(**config.input)
    needed = [*MODALITIES[spec.modality], *spec.extra_labels]
    if not needed:
        return
    dataset = experiment(params, name)["dataset"]
    have = set(prepared_columns(prepared_dir(dataset, "train", root)))
    missing = [c for c in needed if c not in have]
    if missing:
        raise ParamsError(
            f"experiments.{name}: model {config.model!r} "
            f"(model_options {config.model_options}) reads the prepared column(s) {missing}, "
            f"which dataset {dataset!r} does not have ({sorted(have)}): pick a dataset with "
            "them (depth and HHA: nyud with options.hha; geo_label: siftflow)"
        )


def check_scales_fit(params: Params, name: str, config: TrainConfig, root: Path | None = None):
    """Training rescales images by ``augment.scales``; a model with a smallest input (PixelNet's
    trunk: one unit after every floor-mode pool) must get at least that from the smallest train
    image at the smallest scale: a ParamsError before any step, not a traceback from a worker.
    (Evaluation pads such inputs: ``models.anysize.dense_scores``.)"""
    scales = (config.augment or {}).get("scales") or [1.0]
    with torch.device("meta"):  # only the layer structure is needed: no weights allocated
        net = build_model(config.model, config.num_classes, **config.model_options)
    need = min_input_size(net)
    if need <= 1:
        return
    entry = experiment(params, name)
    folder = prepared_dir(entry["dataset"], "train", root)
    try:
        sizes = prepared_sizes(folder)
    except DataError:
        return  # the data checks name a missing split
    if not sizes:
        return
    smallest = min(min(hw) for hw in sizes)
    scale = min(float(s) for s in scales)
    if max(1, round(smallest * scale)) < need:
        key = "train.augment.scales"
        key = (
            f"experiments.{name}.{key}" if "augment" in entry["train"] else f"{key} (train.common)"
        )
        raise ParamsError(
            f"{key} = {list(scales)}: at {scale:g}x the smallest {entry['dataset']!r} train image "
            f"side ({smallest} px) becomes {round(smallest * scale)} px, below the {need}-pixel "
            f"input {config.model!r} needs (its pooling): use a larger scale"
        )


def check_no_leakage(params: Params, name: str, root: Path | None = None) -> None:
    """Experiment ``name`` never evaluates on what it trains on: its prepared val split shares
    no id and no identical image with its train split (a DataError naming both). Reads two
    Parquet columns, so the train and sweep stages run it before Ray starts."""
    dataset = experiment(params, name)["dataset"]
    splits = params.get(f"data.{dataset}.splits", None)
    dirs = {split: prepared_dir(dataset, split, root) for split in ("train", "val")}
    check_prepared(dataset, dirs, splits if isinstance(splits, dict) else None)


def run_name(params: Params, name: str, config: TrainConfig, root: Path | None = None) -> str:
    """``train-<name>-<hash>``: the Ray Train run (and checkpoints) of exactly this config on
    exactly these inputs. A killed driver's rerun finds its checkpoints under this name; any
    change of the resolved config, the prepared data or the initial weights gives a new name,
    so a stale checkpoint is never resumed. Files enter by name, size and modification time
    (a rewritten file gives a new name: the safe direction)."""
    settings = {k: v for k, v in asdict(config).items() if k not in ("mlflow_uri", "mlflow_run_id")}
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode())
    dataset = experiment(params, name)["dataset"]
    files = [p for s in ("train", "val") for p in sorted(prepared_dir(dataset, s, root).glob("*"))]
    if config.init and Path(config.init).is_file():
        files.append(Path(config.init))
    for path in files:
        info = path.stat()
        digest.update(f"{path.name}:{info.st_size}:{info.st_mtime_ns}".encode())
    return f"train-{name}-{digest.hexdigest()[:12]}"


def input_settings(
    params: Params, dataset: str, model_options: dict | None = None, mask: str = "none"
) -> dict:
    """:class:`InputSpec` fields for a model reading ``dataset``: the ``input`` section (the
    dataset's own mean colour where ``input.dataset_mean_bgr`` has one, as FCN's NYUD and SIFT
    Flow layers subtract), the model's input ``modality`` and the label columns of its extra
    heads (``model_options``: none for a plain RGB classifier such as the backbone)."""
    model_options = model_options or {}
    section = dict(params.section("input"))
    choice("input.norm", section.get("norm"), ("caffe", "torchvision"))
    means = section.pop("dataset_mean_bgr", None) or {}
    mean = means.get(dataset, section["mean_bgr"])
    if not isinstance(mean, list | tuple) or len(mean) != 3:
        raise ParamsError(f"input mean for {dataset!r} must be 3 numbers, got {mean!r}")
    return {
        **section,
        "mean_bgr": tuple(float(v) for v in mean),
        "mask": mask,
        "modality": model_options.get("modality", "rgb"),
        "extra_labels": tuple(model_options.get("extra_heads") or ()),
    }


def input_spec(params: Params, key: str, mask: str = "none") -> InputSpec:
    """How experiment ``key``'s rows become network input at test time (``mask``: Table 8)."""
    entry = experiment(params, key)
    return InputSpec(**input_settings(params, entry["dataset"], entry["model_options"], mask))


def load_trained(params: Params, key: str, root: Path | None = None):
    """The trained model of experiment ``key`` (``models/<key>/model.pt``) and its config; an
    untrained experiment or a file of another model is a DataError naming the file."""
    config = train_config(params, key, root=root)
    path = model_dir(key, root) / "model.pt"
    if not path.is_file():
        raise DataError(
            f"experiment {key!r} has no trained model at {path} (dvc repro train@{key})"
        )
    model = build_model(config.model, config.num_classes, **config.model_options)
    load_state_strict(model, read_state_dict(path, str(path)), str(path))
    return model, config


def trained_model(params: Params, key: str, root: Path | None = None) -> TrainedModel:
    """Experiment ``key``'s trained model with what predict and export need: its task, test
    scales, input normalisation, class names and searched CRF parameters' file."""
    entry = experiment(params, key)
    if entry["mask"]["test"] != "none":
        raise ParamsError(
            f"experiments.{key}.mask.test is {entry['mask']['test']!r}: that input (FCN Table 8) "
            "is built from the true labels, which new images do not have"
        )
    model, config = load_trained(params, key, root)
    return TrainedModel(
        model=model,
        name=key,
        task=entry["task"],
        loss_kind=config.loss_kind,
        scales=tuple(entry["test_scales"]),
        spec=input_spec(params, key),
        classes=class_names(params, entry["dataset"]) if entry["task"] == "segmentation" else None,
        crf_file=crf_best_path(key, root),
    )


def weights_model(
    params: Params,
    weights: str | Path,
    model: str,
    *,
    n_classes: int | None = None,
    width: float | None = None,
    task: str = "segmentation",
    options: dict | None = None,
    dataset: str | None = None,
) -> TrainedModel:
    """A model from a state-dict file rather than an experiment: ``model`` (a build_model name)
    with ``options``; ``width`` read off the weights unless given. ``dataset`` (a data.<name>)
    names the classes and picks the input mean; ``n_classes`` defaults by task (edges 1, normals
    3, else the dataset's classes or ``model.num_classes``). Segmentation is taken as
    softmax-trained."""
    choice("--task", task, TASKS)
    options = dict(options or {})
    classes = class_names(params, dataset) if dataset and task == "segmentation" else None
    if n_classes is None:
        n_classes = {"edges": 1, "normals": 3}.get(task) or (
            len(classes) if classes else params.get("model.num_classes")
        )
    if classes and len(classes) != n_classes:
        raise ParamsError(f"--dataset {dataset} has {len(classes)} classes, the model {n_classes}")
    net = load_weights_file(model, weights, n_classes, width=width, **options)
    settings = input_settings(params, dataset, options)
    return TrainedModel(
        model=net,
        name=Path(weights).stem,
        task=task,
        spec=InputSpec(**settings),
        classes=classes,
    )


def crf_best_path(key: str, root: Path | None = None) -> Path:
    """The searched dense-CRF parameters of experiment ``key`` (crf_search writes, crf reads)."""
    return model_dir("crf", root) / key / "best.json"


def prepared_dir(dataset: str, split: str, root: Path | None = None) -> Path:
    """Where the prepare stage writes ``split`` of ``dataset``: ``data/prepared/<name>/<split>``."""
    return (root or repo_root()) / "data" / "prepared" / dataset / split


def prepared_split(params: Params, key: str, split: str, root: Path | None = None):
    """A prepared split of experiment ``key``'s dataset as an in-memory Arrow table; any split
    but ``train`` is capped at ``limits.eval_images`` (its first rows)."""
    table = read_prepared_table(prepared_dir(experiment(params, key)["dataset"], split, root))
    limit = trial_limits(params)["eval_images"] if split != "train" else None
    return table.slice(0, capped(table.num_rows, limit))
