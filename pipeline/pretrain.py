"""Stand-in for ImageNet pretraining: a VGG16 classifier trained on the built-in images.

Why: a tiny BN-free VGG trained from scratch as an FCN collapses to background within a
minutes-long budget (``shared/notes/tiny-default.md``), exactly as the paper's recipe
(ImageNet classifier -> convolutionalize -> fine-tune) predicts. So the tiny profile first
trains the same trunk as a multi-label classifier ("which classes are present?") on 224x224
canvases holding one built-in image at the centre, the setting fc6 (7x7 over pool5) was designed
for. The result is a state dict in torchvision's VGG16 layout, which the FCNs load through the
same conversion code as torchvision's ImageNet weights.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from pipeline.data.base import VOID
from pipeline.data.loader import InputSpec, decode_rows
from pipeline.evaluate import iter_rows

CANVAS = 224


@dataclass
class PretrainConfig:
    num_classes: int
    width: float
    optimizer: str = "adam"
    lr: float = 1e-3
    weight_decay: float = 0.0
    batch_size: int = 16
    epochs: int = 6
    precision: str = "bf16"
    seed: int = 0


def to_canvas(images: list[np.ndarray], spec: InputSpec) -> torch.Tensor:
    """Normalise and centre each image on a 224x224 canvas of zeros (= the mean colour)."""
    x = torch.zeros(len(images), 3, CANVAS, CANVAS)
    for i, img in enumerate(images):
        h, w = img.shape[:2]
        if max(h, w) > CANVAS:
            raise ValueError(f"pretraining images must fit in {CANVAS}x{CANVAS}, got {h}x{w}")
        top, left = (CANVAS - h) // 2, (CANVAS - w) // 2
        x[i, :, top : top + h, left : left + w] = torch.from_numpy(spec.normalise(img[None])[0])
    return x


def presence(label: np.ndarray, num_classes: int) -> np.ndarray:
    """Multi-label target: which non-background classes appear in the label."""
    target = np.zeros(num_classes, np.float32)
    values = np.unique(label)
    values = values[(values != VOID) & (values > 0) & (values < num_classes)]
    target[values] = 1.0
    return target


def _load(table, spec: InputSpec, num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    pairs = [decode_rows(row)[0] for row in iter_rows(table)]
    x = to_canvas([img for img, _ in pairs], spec)
    y = torch.from_numpy(np.stack([presence(lab, num_classes) for _, lab in pairs]))
    return x, y


def pretrain_classifier(
    train_table, val_table, spec: InputSpec, config: PretrainConfig, progress: bool = True
) -> tuple[dict, list[dict]]:
    """Train the classifier; return its state dict and per-epoch history (loss, val F1)."""
    from pipeline.models.vgg import VGG16Classifier

    torch.manual_seed(config.seed)
    model = VGG16Classifier(config.num_classes, width=config.width)
    model = model.to(memory_format=torch.channels_last)
    opt_cls = {"adam": torch.optim.Adam, "sgd": torch.optim.SGD}[config.optimizer]
    kwargs = {"momentum": 0.9} if config.optimizer == "sgd" else {}
    optimizer = opt_cls(
        model.parameters(), lr=config.lr, weight_decay=config.weight_decay, **kwargs
    )
    x_train, y_train = _load(train_table, spec, config.num_classes)
    x_val, y_val = _load(val_table, spec, config.num_classes)
    dtype = torch.bfloat16 if config.precision == "bf16" else None
    gen = torch.Generator().manual_seed(config.seed)
    history, t0 = [], time.time()
    for epoch in range(config.epochs):
        model.train()
        order = torch.randperm(len(x_train), generator=gen)
        losses = []
        batches = range(0, len(order) - config.batch_size + 1, config.batch_size)
        for start in tqdm(batches, desc=f"pretrain epoch {epoch + 1}", disable=not progress):
            idx = order[start : start + config.batch_size]
            xb = x_train[idx].contiguous(memory_format=torch.channels_last)
            with torch.autocast("cpu", dtype=dtype, enabled=dtype is not None):
                logits = model(xb)
            loss = F.binary_cross_entropy_with_logits(logits.float(), y_train[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
        f1 = _presence_f1(model, x_val, y_val, dtype)
        history.append(
            {"epoch": epoch + 1, "loss": float(np.mean(losses)), "val_f1": f1,
             "time": time.time() - t0}
        )
    return model.state_dict(), history


def _presence_f1(model, x, y, dtype) -> float:
    """Micro-F1 of present/absent decisions at 0.5 on the validation images."""
    model.eval()
    with torch.no_grad(), torch.autocast("cpu", dtype=dtype, enabled=dtype is not None):
        pred = torch.cat([model(x[i : i + 50]).float() for i in range(0, len(x), 50)]) > 0
    tp = (pred & (y > 0)).sum().item()
    fp = (pred & (y == 0)).sum().item()
    fn = (~pred & (y > 0)).sum().item()
    return 2 * tp / max(2 * tp + fp + fn, 1)
