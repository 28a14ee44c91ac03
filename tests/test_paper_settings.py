"""Audit of ``profile: paper``: the resolved training settings of each experiment against the
settings its paper states (FCN PAMI 2016, DeepLab v1 ICLR 2015, PixelNet arXiv 1609.06694v1).

One table, ``PAPER_SETTINGS``, of rows ``(experiment, setting, paper value, citation)``. A
setting is read from the experiment's resolved configuration:

* a ``TrainConfig`` attribute, dotted into its dict fields (``model_options.sampling.per_image``,
  ``augment.mirror``); a key that is absent reads as None;
* ``entry:<path>``: the experiment's declaration (``pipeline.experiment.experiment``);
* ``params:<path>``: any resolved params.yaml key (the CRF search, the datasets);
* ``model:<path>``: an attribute of the model built on the meta device (no memory, no weights);
* ``lr_mult:<group>``: that optimizer parameter group's lr over ``lr`` (``param_groups``);
* a derived quantity of ``DERIVED`` (images per optimizer step, images seen, final lr, ...).

A citation that starts "not in the paper" names the reference code the value comes from
(../shared/notes/reference-facts.md). A row where params.yaml disagrees with the paper keeps the
paper's value and is a strict xfail (``WRONG``) whose reason names the params.yaml key: fixing
params.yaml turns it into an XPASS, which fails until the mark is removed.

No training, no Ray, no data: params.yaml is read and resolved, models are built on ``meta``.
"""

from __future__ import annotations

import functools
import math
from dataclasses import replace
from typing import Any

import pytest
import torch
import yaml
from tests_helpers import REPO

from pipeline.experiment import declared_experiments, experiment, train_config
from pipeline.models import build_model, param_groups
from pipeline.params import Params
from pipeline.training.loop import TrainConfig, make_scheduler


@functools.cache
def paper_params() -> Params:
    """params.yaml under ``profile: paper``, without a trial run's caps (``limits``)."""
    data = yaml.safe_load((REPO / "params.yaml").read_text())
    data["profile"] = "paper"
    data["limits"] = None
    return Params(data, str(REPO / "params.yaml"))


@functools.cache
def config(name: str) -> TrainConfig:
    return train_config(paper_params(), name, root=REPO)


@functools.cache
def entry(name: str) -> dict:
    return experiment(paper_params(), name)


@functools.cache
def model(name: str) -> torch.nn.Module:
    cfg = config(name)
    with torch.device("meta"):
        return build_model(cfg.model, cfg.num_classes, **cfg.model_options)


def lr_at(cfg: TrainConfig, step: int) -> float:
    """The base lr at optimizer step ``step`` (0-based) under ``cfg.lr_policy``, in closed form
    (``test_lr_at_matches_the_training_scheduler`` checks it against ``make_scheduler``)."""
    if cfg.lr_policy == "fixed":
        return cfg.lr
    if cfg.lr_policy == "step":
        return cfg.lr * cfg.lr_gamma ** (step // cfg.lr_step)
    if cfg.lr_policy == "multistep":
        return cfg.lr * cfg.lr_gamma ** sum(step >= m for m in cfg.lr_milestones)
    if cfg.lr_policy == "poly":
        return cfg.lr * (1 - min(step, cfg.iterations) / cfg.iterations) ** cfg.lr_power
    raise ValueError(f"unknown lr_policy {cfg.lr_policy!r}")


def _modules(name: str, trainable: bool) -> list[str]:
    """Top-level modules whose parameters all learn (``trainable``) or are all fixed."""
    learns: dict[str, list[bool]] = {}
    for pname, p in model(name).named_parameters():
        learns.setdefault(pname.split(".")[0], []).append(p.requires_grad)
    return sorted(m for m, flags in learns.items() if all(f == trainable for f in flags))


def _images_per_step(cfg: TrainConfig) -> int:
    return cfg.batch_size * cfg.accumulate


DERIVED = {
    # images whose gradients make one update (batch x accumulation: the paper's "batch")
    "images_per_step": lambda name: _images_per_step(config(name)),
    # images the whole run sees (the papers count epochs or images)
    "images_seen": lambda name: config(name).iterations * _images_per_step(config(name)),
    # PixelNet's N pixels x M images per update
    "pixels_per_step": lambda name: (
        config(name).model_options["sampling"]["per_image"] * _images_per_step(config(name))
    ),
    # the base lr of the last optimizer step
    "lr_final": lambda name: lr_at(config(name), config(name).iterations - 1),
    # the scales training images are drawn at ([1.0]: no rescaling)
    "train_scales": lambda name: list(config(name).augment.get("scales") or [1.0]),
    "trainable": lambda name: _modules(name, trainable=True),
    "frozen": lambda name: _modules(name, trainable=False),
}


def _dotted(node: Any, path: str) -> Any:
    for part in path.split("."):
        node = node.get(part) if isinstance(node, dict) else getattr(node, part, None)
    return node


def setting_value(name: str, setting: str) -> Any:
    """Our value of ``setting`` for experiment ``name`` (see the module docstring)."""
    kind, _, path = setting.rpartition(":")
    if kind == "entry":
        return _dotted(entry(name), path)
    if kind == "params":
        return paper_params().get(path, None)
    if kind == "model":
        return _dotted(model(name), path)
    if kind == "lr_mult":
        cfg = config(name)
        groups = param_groups(model(name), cfg.lr, cfg.weight_decay)
        found = [g["lr"] / cfg.lr for g in groups if g.get("name") == path]
        return found[0] if found else None
    if kind:
        raise ValueError(f"unknown setting kind {kind!r} in {setting!r}")
    if setting in DERIVED:
        return DERIVED[setting](name)
    first, _, rest = setting.partition(".")
    value = getattr(config(name), first)
    return _dotted(value, rest) if rest else value


def same(ours: Any, paper: Any) -> bool:
    number = (int, float)
    if isinstance(paper, float) and isinstance(ours, number) and not isinstance(ours, bool):
        return math.isclose(ours, paper, rel_tol=1e-9)
    return ours == paper


# -- citations used by many rows ------------------------------------------------------------
FCN_SGD = "FCN PAMI §4.1 From classifier to dense FCN: SGD with momentum"
FCN_FIXED_LR = "FCN PAMI §4.1: fixed learning rate (reference code: lr_policy fixed)"
FCN_WD = "FCN PAMI §4.1: weight decay '5e-4 or 2e-4'; 5e-4 in the reference code solvers"
FCN_HEAVY_M = "FCN PAMI §4.2 Image-to-image learning, §6.2, Table 3 caption: momentum 0.99"
FCN_HEAVY_B = "FCN PAMI §4.2, Table 3 caption: batch size one (online learning)"
FCN_LOSS = "FCN PAMI §4.2: 'We do not normalize the loss' (summed over pixels)"
FCN_ITERS = "not in the paper: reference code FCN VOC solvers, 100k iterations"
FCN_T1_M = "FCN PAMI §4.1: Table 1 nets trained with momentum 0.9"
FCN_T1_B = "FCN PAMI §4.1, §4.2: Table 1 nets accumulate gradients over 20 images"
FCN_T2 = "FCN PAMI Table 2 caption: a fixed sequence of 100,000 images"
FCN_T3_M = "FCN PAMI Table 3 caption: batch size one and high momentum (0.99)"
FCN_T3_B = "FCN PAMI Table 3 caption: batch size one"
FCN_T8 = "FCN PAMI §6.1, Table 8 (masked region: fg | bg | shape)"
DL_SGD = "DeepLab §3.1: standard SGD"
DL_LR = "DeepLab §5 Training: initial learning rate 0.001"
DL_HEAD = "DeepLab §5 Training: 0.01 for the final classifier layer (10x)"
DL_STEP = "DeepLab §5 Training: lr x0.1 at every 2000 iterations"
DL_BATCH = "DeepLab §5 Training: mini-batch of 20 images"
DL_M = "DeepLab §5 Training: momentum 0.9"
DL_WD = "DeepLab §5 Training: weight decay 0.0005"
DL_DATA = "DeepLab §5 Dataset: VOC 2012 + SBD augmented train (10,582)"
DL_CRF = "DeepLab §5 Training (CRF cross-validation)"
PN_TRAIN = "PixelNet §4 Default training"
PN_NET = "PixelNet §4 Default network"
PN_BATCH = "PixelNet §3 Mini-batch sampling, Table 2 baseline 2000 x 5"
PN_CONV7 = "PixelNet §4.1 Adding conv-7, Table 3"
PN_CONTEXT = "PixelNet §4.1, Tables 1-3: PASCAL-Context 59-class"
PN_SCHEDULE = "PixelNet §4 Default training: x0.1 twice, every 8 epochs after 80, to 1e-5"
PN_MS = "PixelNet §4.1 Analysis-4: fine-tune, lr 1e-3, step 8 epochs, stop at 24 epochs"
PN_EDGE = "PixelNet §4.3 Training (edges)"
PN_EDGE_SAMPLE = "PixelNet §4.3 Analysis-1, Table 6: 2000 pixels per image"

CONTEXT_TRAIN = 4_998  # PASCAL-Context train images (the dataset's count, not in PixelNet)
HED_BSDS = 9_600  # PixelNet §4.3: HED's augmented BSDS (rotations, flips), without resizing
CONV5 = ["conv1_2", "conv2_2", "conv3_3", "conv4_3", "conv5_3"]
CONV7 = [*CONV5, "fc7"]  # VGG's fc7 is PixelNet's conv-7
DEEPLABS = [
    "deeplab-largefov",
    "deeplab",
    "deeplab-7x7",
    "deeplab-4x4",
    "deeplab-msc",
    "deeplab-largefov-msc",
]


def _fcn_heavy(name: str) -> list[tuple]:
    """FCN-VGG16's reference regime (Table 3): SGD, batch 1, momentum 0.99, summed loss."""
    return [
        (name, "optimizer", "sgd", FCN_SGD),
        (name, "lr_policy", "fixed", FCN_FIXED_LR),
        (name, "momentum", 0.99, FCN_HEAVY_M),
        (name, "images_per_step", 1, FCN_HEAVY_B),
        (name, "weight_decay", 5e-4, FCN_WD),
        (name, "loss_reduction", "image", FCN_LOSS),
    ]


def _deeplab(name: str) -> list[tuple]:
    return [
        (name, "optimizer", "sgd", DL_SGD),
        (name, "lr", 1e-3, DL_LR),
        (name, "lr_mult:head_weights", 10.0, DL_HEAD),
        (name, "lr_policy", "step", DL_STEP),
        (name, "lr_step", 2000, DL_STEP),
        (name, "lr_gamma", 0.1, DL_STEP),
        (name, "images_per_step", 20, DL_BATCH),
        (name, "momentum", 0.9, DL_M),
        (name, "weight_decay", 5e-4, DL_WD),
        (name, "entry:dataset", "voc_aug", DL_DATA),
    ]


PAPER_SETTINGS: list[tuple[str, str, Any, str]] = [
    # -- FCN staged: 32s -> 16s -> 8s ------------------------------------------------------
    *_fcn_heavy("fcn32s"),
    ("fcn32s", "lr", 1e-10, "not in the paper: reference code FCN voc-fcn32s solver"),
    ("fcn32s", "iterations", 100_000, FCN_ITERS),
    ("fcn32s", "lr_mult:biases", 2.0, "FCN PAMI §4.1: doubled learning rate for biases"),
    ("fcn32s", "entry:init", "backbone", "FCN PAMI §4.1: fine-tuned from the ImageNet VGG16"),
    ("fcn32s", "loss_kind", "softmax", "FCN PAMI §4.4 Loss: per-pixel softmax loss"),
    ("fcn32s", "loss_sample_p", 1.0, "FCN PAMI §4.4 Patch sampling: unsampled whole images"),
    ("fcn32s", "augment.mirror", False, "FCN PAMI §4.4 Augmentation: no improvement, unused"),
    ("fcn32s", "augment.jitter", 0, "FCN PAMI §4.4 Augmentation: no improvement, unused"),
    ("fcn32s", "entry:dataset", "voc_fcn", "FCN PAMI §4.4 More training data: SBD (8,498)"),
    (
        "fcn32s",
        "params:data.voc_fcn.splits.val",
        "seg11valid",
        "FCN PAMI §4.4 footnote 5: the 736 VOC2011 val images not in SBD train",
    ),
    ("fcn32s", "frozen", ["upscore"], "FCN PAMI §4.4 Dense Prediction: final upsampling fixed"),
    *_fcn_heavy("fcn16s"),
    ("fcn16s", "lr", 1e-12, "FCN PAMI §4.3: 100x below FCN-32s (value: reference code)"),
    ("fcn16s", "iterations", 100_000, FCN_ITERS),
    ("fcn16s", "entry:init", "fcn32s", "FCN PAMI §4.3: staged, initialised from FCN-32s"),
    ("fcn16s", "frozen", ["upscore16"], "FCN PAMI §4.3: 2x upsampling learned, final fixed"),
    *_fcn_heavy("fcn8s"),
    ("fcn8s", "lr", 1e-14, "FCN PAMI §4.3: 100x more below FCN-16s (value: reference code)"),
    ("fcn8s", "iterations", 100_000, FCN_ITERS),
    ("fcn8s", "entry:init", "fcn16s", "FCN PAMI §4.3: staged, initialised from FCN-16s"),
    ("fcn8s", "frozen", ["upscore8"], "FCN PAMI §4.3: 2x upsamplings learned, final fixed"),
    # -- FCN-8s all at once ----------------------------------------------------------------
    *_fcn_heavy("fcn8s-atonce"),
    ("fcn8s-atonce", "entry:init", "backbone", "FCN PAMI §4.3: all-at-once from VGG16"),
    ("fcn8s-atonce", "iterations", 300_000, "not in the paper: reference code at-once solver"),
    (
        "fcn8s-atonce",
        "model:scale_pool4.factor",
        0.01,
        "FCN PAMI §4.3: streams scaled by fixed constants (values: reference code)",
    ),
    (
        "fcn8s-atonce",
        "model:scale_pool3.factor",
        0.0001,
        "FCN PAMI §4.3: streams scaled by fixed constants (values: reference code)",
    ),
    ("fcn8s-atonce", "frozen", ["upscore8"], "FCN PAMI §4.4 Dense Prediction: final fixed"),
    # -- FCN Table 3 comparisons -----------------------------------------------------------
    ("fcn32s-fixed", "trainable", ["score_fr"], "FCN PAMI Table 3: 'fixed' fixes all features"),
    ("fcn32s-fixed", "momentum", 0.99, FCN_T3_M),
    ("fcn32s-fixed", "images_per_step", 1, FCN_T3_B),
    ("fcn-pool5", "momentum", 0.99, FCN_T3_M),
    ("fcn-pool5", "images_per_step", 1, FCN_T3_B),
    ("fcn-pool4", "momentum", 0.99, FCN_T3_M),
    ("fcn-pool4", "images_per_step", 1, FCN_T3_B),
    ("fcn-pool3", "momentum", 0.99, FCN_T3_M),
    ("fcn-pool3", "images_per_step", 1, FCN_T3_B),
    # -- FCN Table 2: accumulation, online, heavy ------------------------------------------
    ("fcn32s-accum", "momentum", 0.9, "FCN PAMI §4.2, §6.2: accumulation at momentum 0.9"),
    ("fcn32s-accum", "images_per_step", 20, "FCN PAMI §4.2: gradients accumulated over 20"),
    ("fcn32s-accum", "images_seen", 100_000, FCN_T2),
    ("fcn32s-accum", "loss_reduction", "image", FCN_LOSS),
    ("fcn32s-online", "momentum", 0.9, "FCN PAMI §4.2, §6.2: online = batch 1 at 0.9"),
    ("fcn32s-online", "images_per_step", 1, "FCN PAMI §4.2: batch size one (online)"),
    ("fcn32s-online", "images_seen", 100_000, FCN_T2),
    ("fcn32s-heavy", "momentum", 0.99, "FCN PAMI §4.2, §6.2: heavy = batch 1 at 0.99"),
    ("fcn32s-heavy", "images_per_step", 1, "FCN PAMI §4.2: batch size one (heavy)"),
    ("fcn32s-heavy", "images_seen", 100_000, FCN_T2),
    ("fcn32s-heavy", "lr", 1e-10, "not in the paper: reference code FCN voc-fcn32s solver"),
    # -- FCN Table 1: other backbones ------------------------------------------------------
    ("fcn32s-alexnet", "momentum", 0.9, FCN_T1_M),
    ("fcn32s-alexnet", "images_per_step", 20, FCN_T1_B),
    ("fcn32s-alexnet", "lr_policy", "fixed", "FCN PAMI §4.1: fixed learning rates"),
    ("fcn32s-googlenet", "momentum", 0.9, FCN_T1_M),
    ("fcn32s-googlenet", "images_per_step", 20, FCN_T1_B),
    ("fcn32s-googlenet", "lr_policy", "fixed", "FCN PAMI §4.1: fixed learning rates"),
    # -- FCN ablations ---------------------------------------------------------------------
    ("fcn32s-loss-sampling", "loss_sample_p", 0.5, "FCN PAMI §4.4 Patch sampling, Fig. 5"),
    (
        "fcn32s-loss-sampling",
        "images_per_step",
        2,
        "FCN PAMI §4.4 Patch sampling: images per batch grown by 1/p",
    ),
    ("fcn32s-augment", "augment.mirror", True, "FCN PAMI §4.4 Augmentation: random mirroring"),
    ("fcn32s-augment", "augment.jitter", 32, "FCN PAMI §4.4 Augmentation: jitter up to 32 px"),
    ("fcn32s-sigmoid", "loss_kind", "sigmoid", "FCN PAMI §4.4 Loss: sigmoid cross-entropy"),
    (
        "fcn32s-null-background",
        "loss_kind",
        "sigmoid-null",
        "FCN PAMI §6.1: 'null' background, sigmoid cross-entropy without background",
    ),
    # -- FCN Table 8: masking --------------------------------------------------------------
    ("fcn32s-test-mask-fg", "entry:mask", {"train": "none", "test": "fg"}, FCN_T8),
    ("fcn32s-test-mask-fg", "entry:init", "fcn32s", "FCN PAMI Table 8: the reference net"),
    ("fcn32s-test-mask-fg", "iterations", 0, "FCN PAMI Table 8: reference net, test-time mask"),
    ("fcn32s-test-mask-bg", "entry:mask", {"train": "none", "test": "bg"}, FCN_T8),
    ("fcn32s-test-mask-bg", "entry:init", "fcn32s", "FCN PAMI Table 8: the reference net"),
    ("fcn32s-fg-only", "entry:mask", {"train": "bg", "test": "bg"}, FCN_T8),
    ("fcn32s-bg-only", "entry:mask", {"train": "fg", "test": "fg"}, FCN_T8),
    ("fcn32s-shape", "entry:mask", {"train": "shape", "test": "shape"}, FCN_T8),
    # -- DeepLab v1 --------------------------------------------------------------------------
    *(row for name in DEEPLABS for row in _deeplab(name)),
    (
        "deeplab-largefov",
        "iterations",
        6000,
        "not in the paper: reference code DeepLab-LargeFOV release solver (max_iter 6000)",
    ),
    (
        "deeplab-largefov",
        "loss_reduction",
        "pixel",
        "DeepLab §3.1: positions equally weighted; the mean over positions (not the sum the "
        "text writes) is not in the paper: reference code Caffe SoftmaxWithLoss, lr 1e-3",
    ),
    (
        "deeplab-largefov",
        "params:data.voc_aug.splits.train",
        "train_aug",
        DL_DATA,
    ),
    ("deeplab-msc", "entry:init", "deeplab", "DeepLab §4.3: MSc on the trained DeepLab"),
    ("deeplab-msc", "trainable", ["fc8_msc", "msc"], "DeepLab §4.3: only new weights adjusted"),
    ("deeplab-largefov-msc", "entry:init", "deeplab-largefov", "DeepLab §4.3: MSc on LargeFOV"),
    (
        "deeplab-largefov-msc",
        "trainable",
        ["fc8_msc", "msc"],
        "DeepLab §4.3: only the newly added weights are adjusted",
    ),
    # -- DeepLab CRF search (the crf stages of deeplab-largefov and the others) ---------------
    ("deeplab-largefov", "params:crf.base.w2", 3, f"{DL_CRF}: default w2 = 3, fixed"),
    ("deeplab-largefov", "params:crf.base.sigma_gamma", 3, f"{DL_CRF}: default σγ = 3, fixed"),
    ("deeplab-largefov", "params:crf.base.iterations", 10, f"{DL_CRF}: 10 mean field iterations"),
    ("deeplab-largefov", "params:crf.search.num_images", 100, f"{DL_CRF}: 100 val images"),
    (
        "deeplab-largefov",
        "params:crf.search.coarse.w1",
        [5, 6, 7, 8, 9, 10],
        f"{DL_CRF}: w1 in [5, 10] (no step given; integers ours)",
    ),
    (
        "deeplab-largefov",
        "params:crf.search.coarse.sigma_alpha",
        list(range(50, 101, 10)),
        f"{DL_CRF}: σα in [50:10:100]",
    ),
    (
        "deeplab-largefov",
        "params:crf.search.coarse.sigma_beta",
        list(range(3, 11)),
        f"{DL_CRF}: σβ in [3:1:10]",
    ),
    # -- PixelNet segmentation ---------------------------------------------------------------
    ("pixelnet-seg", "optimizer", "sgd", f"{PN_TRAIN}: Caffe SGD, momentum 0.9"),
    ("pixelnet-seg", "lr", 1e-3, f"{PN_TRAIN}: fixed learning rate 1e-3 for 80 epochs"),
    ("pixelnet-seg", "momentum", 0.9, f"{PN_TRAIN}: momentum 0.9"),
    ("pixelnet-seg", "weight_decay", 5e-4, f"{PN_TRAIN}: weight decay 0.0005"),
    ("pixelnet-seg", "lr_final", 1e-5, PN_SCHEDULE),
    (
        "pixelnet-seg",
        "images_seen",
        pytest.approx(96 * CONTEXT_TRAIN, rel=0.05),
        "PixelNet §4 Default training, §4.1 Analysis-3: 80 + 8 + 8 = 96 epochs of "
        "PASCAL-Context train (4,998; ±5% for round iteration counts)",
    ),
    ("pixelnet-seg", "images_per_step", 5, PN_BATCH),
    ("pixelnet-seg", "model_options.sampling.per_image", 2000, PN_BATCH),
    ("pixelnet-seg", "pixels_per_step", 10_000, PN_BATCH),
    (
        "pixelnet-seg",
        "model_options.sampling.positive_share",
        None,
        "PixelNet §4.3 Analysis-1: uniform sampling sufficed for segmentation",
    ),
    ("pixelnet-seg", "model_options.layers", CONV5, f"{PN_NET}: conv-{{1_2,2_2,3_3,4_3,5_3}}"),
    ("pixelnet-seg", "model_options.mlp", [4096, 4096], f"{PN_NET}: 3 fc layers of 4,096"),
    ("pixelnet-seg", "entry:dataset", "context59", PN_CONTEXT),
    ("pixelnet-seg-fc1", "lr", 1e-7, "PixelNet §4.1 Analysis-1: fc-1 at initial lr 1e-7"),
    ("pixelnet-seg-fc1", "model_options.mlp", [], "PixelNet Table 1: fc-1 (linear)"),
    ("pixelnet-seg-fc2", "lr", 1e-7, "PixelNet §4.1 Analysis-1: fc-2 at initial lr 1e-7"),
    ("pixelnet-seg-fc2", "model_options.mlp", [4096], "PixelNet Table 1: fc-2 (one hidden)"),
    ("pixelnet-seg-d1024", "model_options.mlp", [1024, 1024], "PixelNet Table 1: d-1024"),
    ("pixelnet-seg-500x5", "model_options.sampling.per_image", 500, "PixelNet Table 2: 500 x 5"),
    ("pixelnet-seg-500x5", "images_per_step", 5, "PixelNet Table 2: 500 x 5"),
    ("pixelnet-seg-2000x1", "model_options.sampling.per_image", 2000, "PixelNet Table 2: 2000 x 1"),
    ("pixelnet-seg-2000x1", "images_per_step", 1, "PixelNet Table 2: 2000 x 1"),
    ("pixelnet-seg-conv7-0_5", "model_options.layers", CONV7, PN_CONV7),
    ("pixelnet-seg-conv7-0_5", "train_scales", [0.5], "PixelNet Table 3: (0.5), half scale"),
    ("pixelnet-seg-conv7-0_5", "entry:test_scales", [0.5], "PixelNet Table 3: (0.5)"),
    ("pixelnet-seg-conv7-0_25-0_5", "model_options.layers", CONV7, PN_CONV7),
    ("pixelnet-seg-conv7-0_25-0_5", "train_scales", [0.25, 0.5], "PixelNet Table 3: (0.25,0.5)"),
    ("pixelnet-seg-conv7-0_5-1_0", "model_options.layers", CONV7, PN_CONV7),
    ("pixelnet-seg-conv7-0_5-1_0", "train_scales", [1.0], "PixelNet §4.1: full scale 1.0x"),
    ("pixelnet-seg-conv7-multiscale", "model_options.layers", CONV7, PN_CONV7),
    ("pixelnet-seg-conv7-multiscale", "entry:init", "pixelnet-seg-conv7-0_5", PN_MS),
    ("pixelnet-seg-conv7-multiscale", "lr", 1e-3, PN_MS),
    ("pixelnet-seg-conv7-multiscale", "lr_final", 1e-5, PN_MS),
    (
        "pixelnet-seg-conv7-multiscale",
        "images_seen",
        pytest.approx(24 * CONTEXT_TRAIN, rel=0.05),
        f"{PN_MS} (24 epochs of PASCAL-Context train, 4,998)",
    ),
    (
        "pixelnet-seg-conv7-multiscale",
        "entry:test_scales",
        [0.25, 0.5, 1.0],
        "PixelNet §4.1 Analysis-4: test-time average over 0.25x, 0.5x and 1x",
    ),
    ("pixelnet-seg-conv7-multiscale", "entry:dataset", "context59", PN_CONTEXT),
    # -- PixelNet edges ----------------------------------------------------------------------
    ("pixelnet-edges", "entry:task", "edges", "PixelNet §4.3 Baseline: sigmoid cross-entropy"),
    ("pixelnet-edges", "entry:dataset", "bsds", "PixelNet §4.3: BSDS500"),
    (
        "pixelnet-edges",
        "params:data.bsds.options.min_annotators",
        3,
        "PixelNet §4.3: positives where >= 3 of 5 annotators agree (as HED)",
    ),
    ("pixelnet-edges", "lr", 1e-3, f"{PN_EDGE}: initial learning rate 1e-3"),
    ("pixelnet-edges", "momentum", 0.9, f"{PN_TRAIN}: momentum 0.9 (all experiments)"),
    ("pixelnet-edges", "weight_decay", 5e-4, f"{PN_TRAIN}: weight decay 0.0005 (all)"),
    ("pixelnet-edges", "images_per_step", 5, f"{PN_EDGE}: batches of 5 images"),
    ("pixelnet-edges", "pixels_per_step", 10_000, f"{PN_EDGE}: 10,000 pixels per batch"),
    ("pixelnet-edges", "model_options.sampling.per_image", 2000, PN_EDGE_SAMPLE),
    ("pixelnet-edges", "model_options.sampling.positive_share", 0.5, "PixelNet Tables 6-7: 50%"),
    ("pixelnet-edges", "model_options.layers", CONV5, "PixelNet §4.3 Baseline: segmentation's"),
    ("pixelnet-edges", "train_scales", [0.5, 1.0], f"{PN_EDGE}: random 0.5x or 1.0x"),
    (
        "pixelnet-edges",
        "images_seen",
        25 * HED_BSDS,
        f"{PN_EDGE}: 25 epochs of the 9,600 HED-augmented images (48,000 iterations of 5)",
    ),
    ("pixelnet-edges", "lr_final", 1e-5, f"{PN_EDGE}: lr x0.1 at epochs 15 and 20"),
    (
        "pixelnet-edges-uniform",
        "model_options.sampling.positive_share",
        None,
        "PixelNet Table 6: uniform",
    ),
    ("pixelnet-edges-uniform", "model_options.sampling.per_image", 2000, PN_EDGE_SAMPLE),
    ("pixelnet-edges-25", "model_options.sampling.positive_share", 0.25, "PixelNet Table 6: 25%"),
    ("pixelnet-edges-75", "model_options.sampling.positive_share", 0.75, "PixelNet Table 6: 75%"),
    ("pixelnet-edges-conv7", "model_options.layers", CONV7, "PixelNet §4.3 Analysis-2, Table 7"),
    ("pixelnet-edges-conv7", "train_scales", [0.5, 1.0], "PixelNet Table 7: (0.5x,1.0x)"),
    ("pixelnet-edges-conv7-25", "model_options.layers", CONV7, "PixelNet Table 7: conv-7"),
    (
        "pixelnet-edges-conv7-25",
        "model_options.sampling.positive_share",
        0.25,
        "PixelNet Table 7: (25%)",
    ),
    ("pixelnet-edges-conv7-1x", "train_scales", [1.0], "PixelNet Table 7: (1.0x)"),
    ("pixelnet-edges-conv7-25-1x", "train_scales", [1.0], "PixelNet Table 7: (25%)-(1.0x)"),
    (
        "pixelnet-edges-conv7-25-1x",
        "model_options.sampling.positive_share",
        0.25,
        "PixelNet Table 7: (25%)-(1.0x)",
    ),
    # -- PixelNet surface normals (Table 5 comes from Bansal et al. [4]) -----------------------
    ("pixelnet-normals", "entry:task", "normals", "PixelNet §4.2, Table 5"),
    ("pixelnet-normals", "entry:dataset", "nyud", "PixelNet §4.2: NYU Depth v2"),
    (
        "pixelnet-normals",
        "params:data.nyud.splits",
        {"train": "trainval", "val": "test"},
        "FCN PAMI §5 NYUDv2: the standard 795 train / 654 test split",
    ),
    ("pixelnet-normals", "entry:test_scales", [1.0], "PixelNet §4.2: a single scale"),
    ("pixelnet-normals", "momentum", 0.9, f"{PN_TRAIN}: 'for all the experiments'"),
    ("pixelnet-normals", "weight_decay", 5e-4, f"{PN_TRAIN}: 'for all the experiments'"),
]

_PIXELNET_TRAIN = "experiments.default.train.pixelnet-seg.train (&pixelnet_train)"
_PIXELNET_EDGES = "experiments.default.train.pixelnet-edges.train (&pixelnet_edges)"

#: rows where params.yaml disagrees with the paper: (experiment, setting) -> xfail reason
WRONG: dict[tuple[str, str], str] = {}


def _cases() -> list:
    cases = []
    for name, setting, paper, citation in PAPER_SETTINGS:
        reason = WRONG.get((name, setting))
        marks = [pytest.mark.xfail(strict=True, reason=reason)] if reason else []
        cases.append(
            pytest.param(name, setting, paper, citation, marks=marks, id=f"{name}:{setting}")
        )
    return cases


@pytest.mark.parametrize(("name", "setting", "paper", "citation"), _cases())
def test_paper_setting(name: str, setting: str, paper: Any, citation: str):
    ours = setting_value(name, setting)
    assert same(ours, paper), f"{name} {setting}: ours {ours!r}, paper {paper!r} ({citation})"


def test_table_rows_are_unique_declared_experiments():
    declared = declared_experiments(paper_params())
    keys = [(name, setting) for name, setting, _, _ in PAPER_SETTINGS]
    assert len(keys) == len(set(keys)), "a (experiment, setting) row appears twice"
    assert {name for name, _ in keys} <= set(declared)
    assert set(WRONG) <= set(keys), "an xfail reason without its row"


def test_every_deeplab_variant_is_audited():
    """A DeepLab variant added to params.yaml gets the §5 training rows too."""
    declared = declared_experiments(paper_params())
    variants = {name for name in declared if entry(name)["model"].startswith("deeplab")}
    assert variants == set(DEEPLABS)


@pytest.mark.parametrize(
    ("name", "policy"),
    [("deeplab-largefov", "step"), ("deeplab-largefov", "poly"), ("pixelnet-edges", "multistep")],
)
def test_lr_at_matches_the_training_scheduler(name: str, policy: str):
    """``lr_at`` (used by ``lr_final``) is what training's ``make_scheduler`` does."""
    cfg = replace(config(name), lr_policy=policy)
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([param], lr=cfg.lr, momentum=cfg.momentum)
    scheduler = make_scheduler(optimizer, cfg)
    checkpoints = {0, 1, cfg.lr_step - 1, cfg.lr_step, 2 * cfg.lr_step, cfg.iterations - 1}
    checkpoints |= {m + d for m in cfg.lr_milestones for d in (-1, 0, 1)}
    for step in range(cfg.iterations):
        if step in checkpoints:
            lr = optimizer.param_groups[0]["lr"]
            assert math.isclose(lr, lr_at(cfg, step), rel_tol=1e-9, abs_tol=1e-15), step
        optimizer.step()
        scheduler.step()
