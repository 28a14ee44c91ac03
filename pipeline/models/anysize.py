"""Dense scores at any input size: what ``densepipe predict`` runs and ``densepipe export`` traces.

Every model returns scores at its input's size, but PixelNet's trunk needs one unit after its
floor-mode pooling (32 px): a smaller input is padded at the bottom and right with 0 (the mean
colour once normalised, as the loader pads a batch) and the scores are cut back to the input.
FCN's padding 100 and DeepLab's ceil-mode pooling take even a 1x1 image as it is.

:class:`DenseGraph` is the same computation written for tracing: the padding is traced tensor
arithmetic, and PixelNet runs its one-pass dense path (``predict_dense_traceable``) instead of a
Python loop over row bands, so one exported file serves every input size.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.models.pixelnet import PixelNet

__all__ = [
    "DenseGraph",
    "dense_scores",
    "min_input_size",
    "nonnegative",
    "pad_bottom_right",
    "pad_to_min",
]


def min_input_size(model: nn.Module) -> int:
    """The smallest height and width ``model`` takes as it is (1: any)."""
    return int(getattr(model, "min_input_size", 1))


def nonnegative(value: int | torch.Tensor) -> int | torch.Tensor:
    """``max(value, 0)`` of a size difference. While tracing, sizes are 0-dim tensors and a
    Python ``max`` would freeze the example's choice into the trace; a clamp stays traced."""
    return value.clamp(min=0) if isinstance(value, torch.Tensor) else max(value, 0)


def pad_bottom_right(x: torch.Tensor, rows, cols) -> torch.Tensor:
    """``x`` with ``max(rows, 0)`` zero rows below and ``max(cols, 0)`` zero columns to the
    right (ints, or traced sizes: see :func:`nonnegative`)."""
    rows, cols = nonnegative(rows), nonnegative(cols)
    if not torch.jit.is_tracing() and not (rows or cols):
        return x
    return F.pad(x, (0, cols, 0, rows))


def pad_to_min(x: torch.Tensor, size: int) -> torch.Tensor:
    """``x`` (N x C x H x W) padded with 0 at the bottom and right to at least ``size`` square."""
    if size <= 1:
        return x
    return pad_bottom_right(x, size - x.shape[-2], size - x.shape[-1])


def dense_scores(model: nn.Module, x: torch.Tensor, *, traceable: bool = False) -> torch.Tensor:
    """N x K x H x W scores of ``model`` (in eval mode) for a normalised N x 3 x H x W input of
    any size. PixelNet runs its memory-bounded row bands, or with ``traceable`` its one pass."""
    h, w = x.shape[-2:]
    padded = pad_to_min(x, min_input_size(model))
    if isinstance(model, PixelNet):
        scores = model.predict_dense_traceable(padded) if traceable else model.predict_dense(padded)
    else:
        scores = model(padded)
    return scores[..., :h, :w]


class DenseGraph(nn.Module):
    """``dense_scores(model, x, traceable=True)`` as a module: the graph an export traces."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return dense_scores(self.model, x, traceable=True)
