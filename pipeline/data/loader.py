"""Turn prepared Parquet rows into model-ready tensors: decode, normalise, augment, pad.

One function serves training (Ray Train workers), pretraining, evaluation and tests, so every
path normalises inputs the same way.

Normalisation follows the weights: ``caffe`` (BGR, 0-255, per-channel mean subtracted, the FCN and
DeepLab releases) or ``torchvision`` (RGB, 0-1, ImageNet mean/std).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from pipeline.data.base import VOID, decode_image, decode_label

VOC_MEAN_BGR = (104.00699, 116.66877, 122.67892)
IMAGENET_MEAN_RGB = (0.485, 0.456, 0.406)
IMAGENET_STD_RGB = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class InputSpec:
    """How pixels become network input (must match the weights the model starts from)."""

    norm: str = "caffe"  # caffe | torchvision
    mean_bgr: tuple[float, float, float] = VOC_MEAN_BGR

    def normalise(self, images: np.ndarray) -> np.ndarray:
        """NxHxWx3 uint8 RGB -> Nx3xHxW float32 network input."""
        x = images.astype(np.float32)
        if self.norm == "caffe":
            x = x[..., ::-1] - np.asarray(self.mean_bgr, np.float32)
        elif self.norm == "torchvision":
            x = (x / 255.0 - np.asarray(IMAGENET_MEAN_RGB, np.float32)) / np.asarray(
                IMAGENET_STD_RGB, np.float32
            )
        else:
            raise ValueError(f"unknown input norm {self.norm!r} (caffe | torchvision)")
        return np.ascontiguousarray(x.transpose(0, 3, 1, 2))


@dataclass(frozen=True)
class Augment:
    """Training-time augmentation switches (FCN §4.3: mirroring and jittering up to 32 px)."""

    mirror: bool = False
    jitter: int = 0


def _shift(array: np.ndarray, dy: int, dx: int, fill) -> np.ndarray:
    """Translate by (dy, dx) pixels, filling the uncovered border with ``fill``."""
    out = np.full_like(array, fill)
    h, w = array.shape[:2]
    ys, yd = (slice(0, h - dy), slice(dy, h)) if dy >= 0 else (slice(-dy, h), slice(0, h + dy))
    xs, xd = (slice(0, w - dx), slice(dx, w)) if dx >= 0 else (slice(-dx, w), slice(0, w + dx))
    out[yd, xd] = array[ys, xs]
    return out


def decode_rows(batch: dict, augment: Augment | None = None, rng=None) -> list:
    """Decode a numpy batch of prepared rows to (image uint8 HxWx3, label uint8 HxW) pairs."""
    pairs = []
    for i in range(len(batch["id"])):
        image = decode_image(batch["image"][i], f"row {batch['id'][i]}")
        label = decode_label(batch["label"][i], f"row {batch['id'][i]}")
        if augment is not None and rng is not None:
            if augment.mirror and rng.random() < 0.5:
                image, label = image[:, ::-1], label[:, ::-1]
            if augment.jitter:
                dy, dx = rng.integers(-augment.jitter, augment.jitter + 1, 2)
                image, label = _shift(image, dy, dx, 0), _shift(label, dy, dx, VOID)
        pairs.append((np.ascontiguousarray(image), np.ascontiguousarray(label)))
    return pairs


def collate(pairs: list, spec: InputSpec) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad a list of (image, label) to the largest size (input 0 after normalising, label void)."""
    h = max(p[0].shape[0] for p in pairs)
    w = max(p[0].shape[1] for p in pairs)
    x = spec.normalise(np.stack([_pad(img, h, w, 0) for img, _ in pairs]))
    pad_value = 0.0
    for i, (img, _) in enumerate(pairs):  # padded pixels carry mean colour, i.e. 0 after norm
        x[i, :, img.shape[0] :, :] = pad_value
        x[i, :, :, img.shape[1] :] = pad_value
    y = np.stack([_pad(lab, h, w, VOID) for _, lab in pairs]).astype(np.int64)
    return torch.from_numpy(x), torch.from_numpy(y)


def _pad(array: np.ndarray, h: int, w: int, fill) -> np.ndarray:
    if array.shape[:2] == (h, w):
        return array
    out = np.full((h, w, *array.shape[2:]), fill, dtype=array.dtype)
    out[: array.shape[0], : array.shape[1]] = array
    return out


def batch_to_tensors(
    batch: dict, spec: InputSpec, augment: Augment | None = None, rng=None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Prepared rows -> (Nx3xHxW float input, NxHxW int64 labels)."""
    return collate(decode_rows(batch, augment, rng), spec)
