"""Stand-in for ImageNet pretraining: a VGG16 classifier trained on the built-in images.

Why: a tiny BN-free VGG trained from scratch as an FCN collapses to background within a
minutes-long budget (``shared/notes/tiny-default.md``), exactly as the paper's recipe
(ImageNet classifier -> convolutionalize -> fine-tune) predicts. So the tiny profile first
trains the same trunk as an ImageNet-style classifier of object-centred patches of the built-in
images (the class is the label at the patch centre), which learns within seconds where a
multi-label "which classes are present?" classifier of whole images did not. The result is a
state dict in torchvision's VGG16 layout, which the FCNs load through the same conversion code
as torchvision's ImageNet weights. (Its fc6 saw one pool5 cell replicated 7x7, so it is blind
to position: the tiny profile transfers the conv trunk only, ``backbone.transfer: features``.)
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from pipeline.data.datasets.base import VOID
from pipeline.data.loader import InputSpec, decode_rows, iter_rows
from pipeline.models.vgg import VGG16Classifier
from pipeline.runtime.progress import progress_bar
from pipeline.training.reproducible import make_reproducible

PATCH = 32


@dataclass
class PretrainConfig:
    num_classes: int
    width: float
    optimizer: str = "adam"
    lr: float = 1e-3
    weight_decay: float = 0.0
    batch_size: int = 32
    epochs: int = 6
    patches_per_image: int = 8
    patch_size: int = PATCH
    precision: str = "fp32"
    seed: int = 0


def sample_patches(
    pairs: list, spec: InputSpec, num_classes: int, per_image: int, size: int, rng
) -> tuple[torch.Tensor, torch.Tensor]:
    """Object-centric patches, ImageNet-style: the class is the label at the patch centre.

    Centres are drawn class-balanced among the (non-void) classes present in each image, so
    background does not swamp the objects.
    """
    half = size // 2
    xs, ys = [], []
    for image, label in pairs:
        padded = np.pad(image, ((half, half), (half, half), (0, 0)), mode="reflect")
        classes = [c for c in np.unique(label) if c != VOID and c < num_classes]
        for _ in range(per_image):
            c = classes[rng.integers(len(classes))]
            cy, cx = np.argwhere(label == c)[rng.integers((label == c).sum())]
            xs.append(padded[cy : cy + size, cx : cx + size])
            ys.append(c)
    x = torch.from_numpy(spec.normalise(np.stack(xs)))
    return x, torch.tensor(ys, dtype=torch.long)


def _pairs(table) -> list:
    return [decode_rows(row)[0] for row in iter_rows(table)]


def pretrain_classifier(
    train_table, val_table, spec: InputSpec, config: PretrainConfig, progress: bool = True
) -> tuple[dict, list[dict]]:
    """Train the classifier; return its state dict and per-epoch history (loss, val accuracy)."""
    make_reproducible(config.seed)
    rng = np.random.default_rng(config.seed)
    model = VGG16Classifier(config.num_classes, width=config.width)
    model = model.to(memory_format=torch.channels_last)
    opt_cls = {"adam": torch.optim.Adam, "sgd": torch.optim.SGD}[config.optimizer]
    kwargs = {"momentum": 0.9} if config.optimizer == "sgd" else {}
    optimizer = opt_cls(
        model.parameters(), lr=config.lr, weight_decay=config.weight_decay, **kwargs
    )
    train_pairs, val_pairs = _pairs(train_table), _pairs(val_table)
    args = (spec, config.num_classes, config.patches_per_image, config.patch_size)
    x_val, y_val = sample_patches(val_pairs, *args, np.random.default_rng(config.seed + 1))
    dtype = torch.bfloat16 if config.precision == "bf16" else None
    history, t0 = [], time.time()
    for epoch in range(config.epochs):
        model.train()
        x_train, y_train = sample_patches(train_pairs, *args, rng)
        order = torch.from_numpy(rng.permutation(len(x_train)))
        losses = []
        batches = range(0, len(order) - config.batch_size + 1, config.batch_size)
        for start in progress_bar(
            batches, desc=f"pretrain epoch {epoch + 1}", disable=not progress
        ):
            idx = order[start : start + config.batch_size]
            xb = x_train[idx].contiguous(memory_format=torch.channels_last)
            with torch.autocast("cpu", dtype=dtype, enabled=dtype is not None):
                logits = model(xb)
            loss = F.cross_entropy(logits.float(), y_train[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
        acc = _accuracy(model, x_val, y_val, dtype)
        history.append(
            {
                "epoch": epoch + 1,
                "loss": float(np.mean(losses)),
                "val_acc": acc,
                "time": time.time() - t0,
            }
        )
    return model.state_dict(), history


def _accuracy(model, x, y, dtype) -> float:
    """Patch classification accuracy on the validation images."""
    model.eval()
    with torch.no_grad(), torch.autocast("cpu", dtype=dtype, enabled=dtype is not None):
        pred = torch.cat([model(x[i : i + 100]).float().argmax(1) for i in range(0, len(x), 100)])
    return float((pred == y).float().mean())
