"""Per-pixel losses of the FCN paper, each a params choice.

``reduction``: ``image`` is Caffe's unnormalised loss (summed over pixels, averaged over the
images of a batch: ``normalize: false`` in the reference nets); ``pixel`` averages over valid
pixels. ``kind``: ``softmax`` cross-entropy (the default), ``sigmoid`` (independent per-class
sigmoid cross-entropy, FCN §6.1) or ``sigmoid-null`` (sigmoid with the background class dropped:
background is where no class fires). ``sample_p`` keeps each final-layer cell with probability
p (loss sampling, FCN §3.4); dropped cells contribute nothing.

Returned as ``(loss_sum, normaliser)`` so data-parallel training can normalise globally.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

VOID = 255
KINDS = ("softmax", "sigmoid", "sigmoid-null")
REDUCTIONS = ("image", "pixel")


def sample_mask(labels: torch.Tensor, p: float, stride: int, generator=None) -> torch.Tensor:
    """Keep each ``stride x stride`` output cell with probability ``p`` (all its pixels)."""
    n, h, w = labels.shape
    gh, gw = -(-h // stride), -(-w // stride)
    keep = torch.rand((n, 1, gh, gw), generator=generator) < p
    keep = keep.repeat_interleave(stride, 2).repeat_interleave(stride, 3)[:, 0, :h, :w]
    return keep.to(labels.device)


def pixel_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    kind: str = "softmax",
    reduction: str = "image",
    keep: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (summed loss over counted pixels, normaliser: #images or #valid pixels)."""
    valid = labels != VOID
    if keep is not None:
        valid = valid & keep
    logits = logits.float()
    if kind == "softmax":
        per_pixel = F.cross_entropy(logits, labels.masked_fill(~valid, 0), reduction="none")
    elif kind in ("sigmoid", "sigmoid-null"):
        target = F.one_hot(labels.masked_fill(~valid, 0), logits.shape[1]).permute(0, 3, 1, 2)
        if kind == "sigmoid-null":
            logits, target = logits[:, 1:], target[:, 1:]
        per_pixel = F.binary_cross_entropy_with_logits(
            logits, target.float(), reduction="none"
        ).sum(1)
    else:
        raise ValueError(f"unknown loss kind {kind!r} ({', '.join(KINDS)})")
    total = (per_pixel * valid).sum()
    if reduction == "image":
        norm = torch.tensor(float(labels.shape[0]), device=total.device)
    elif reduction == "pixel":
        norm = valid.sum().float().clamp_min(1.0)
    else:
        raise ValueError(f"unknown loss reduction {reduction!r} ({', '.join(REDUCTIONS)})")
    return total, norm


def labelled_cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> tuple[float, int]:
    """Summed softmax cross-entropy over the labelled pixels (0 <= label < classes) and their
    count: validation's loss, the same measure whatever the training loss's normalisation or
    kind. Unlike mean IU it moves before the first object pixel is predicted right, which is
    what lets ASHA part trials still level on the all-background plateau."""
    labels = labels.to(logits.device).long()
    in_range = (labels >= 0) & (labels < logits.shape[1])
    total, _ = pixel_loss(logits, labels.masked_fill(~in_range, VOID), "softmax", "pixel")
    return float(total), int(in_range.sum())


def predict_labels(logits: torch.Tensor, kind: str = "softmax", threshold: float = 0.5):
    """Class map from logits; for ``sigmoid-null`` background where no class passes threshold."""
    if kind == "sigmoid-null":
        probs = torch.sigmoid(logits[:, 1:])
        best, idx = probs.max(1)
        return torch.where(best > threshold, idx + 1, torch.zeros_like(idx))
    return logits.argmax(1)
