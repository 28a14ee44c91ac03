"""Test-time multi-scale averaging (PixelNet Table 3): one function serves segmentation and edges.

A "model" that scores classes from the colour of each pixel, at any input size, is exact at every
scale on an image of flat regions, so averaging scales must leave its prediction alone. A model
whose output is coarser than its input must still be voted back onto the full grid.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
import torch
import torch.nn.functional as F

from pipeline.data.datasets.base import encode_png
from pipeline.data.loader import InputSpec
from pipeline.errors import ParamsError
from pipeline.evaluation.inference import multiscale_probs, predict
from pipeline.evaluation.segmentation import evaluate

SIZE = 48


class ColourClassifier(torch.nn.Module):
    """Class k where channel k is brightest (3 classes), as logits scaled by ``sharpness``."""

    def __init__(self, stride: int = 1, sharpness: float = 0.1) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.ones(()))
        self.stride, self.sharpness = stride, sharpness
        self.sizes: list[tuple[int, int]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.sizes.append(tuple(x.shape[-2:]))
        logits = x * self.sharpness * self.weight
        if self.stride > 1:
            logits = F.avg_pool2d(logits, self.stride)
        return logits


def _table() -> pa.Table:
    """One image: left half blue-dominant (BGR channel 0), right half red-dominant (channel 2)."""
    image = np.zeros((SIZE, SIZE, 3), np.uint8)
    image[:, : SIZE // 2] = (40, 60, 250)  # RGB: blue high -> caffe BGR channel 0 high
    image[:, SIZE // 2 :] = (250, 60, 40)
    label = np.zeros((SIZE, SIZE), np.uint8)
    label[:, SIZE // 2 :] = 2
    return pa.table(
        {
            "id": ["a"],
            "image": [encode_png(image)],
            "label": [encode_png(label)],
            "height": [SIZE],
            "width": [SIZE],
        }
    )


def test_scale_equivariant_model_is_unchanged_by_averaging() -> None:
    table = _table()
    single = next(predict(ColourClassifier(), table, InputSpec()))
    model = ColourClassifier()
    multi = next(predict(model, table, InputSpec(), scales=(0.25, 0.5, 1.0)))
    assert model.sizes == [(12, 12), (24, 24), (48, 48)]  # each scale really ran
    assert multi.scores.shape == single.scores.shape == (3, SIZE, SIZE)
    # away from the boundary every scale agrees: the averaged softmax is the single-scale one
    inner = (slice(None), slice(None), np.r_[0:16, 32:48])
    np.testing.assert_allclose(
        multi.scores.softmax(0)[inner], single.scores.softmax(0)[inner], atol=1e-4
    )
    np.testing.assert_array_equal(multi.pred, single.pred)
    scores, _, _ = evaluate(ColourClassifier(), table, InputSpec(), 3, scales=(0.5, 1.0))
    assert scores["pixel_acc"] == 1.0


def test_average_not_sum_and_coarse_outputs_return_to_full_size() -> None:
    x = torch.randn(1, 3, SIZE, SIZE)
    softmax = lambda z: z.softmax(1)  # noqa: E731
    once = multiscale_probs(ColourClassifier(), x, (1.0,), softmax)
    twice = multiscale_probs(ColourClassifier(), x, (1.0, 1.0), softmax)
    torch.testing.assert_close(twice, once)
    assert torch.allclose(once.sum(1), torch.ones(1, SIZE, SIZE))
    coarse = multiscale_probs(ColourClassifier(stride=8), x, (0.5, 1.0), torch.sigmoid)
    assert coarse.shape == (1, 3, SIZE, SIZE)
    assert 0 <= coarse.min() and coarse.max() <= 1


def test_bad_scales_name_the_key() -> None:
    for bad in ([], [0.0], "0.5", [True]):
        with pytest.raises(ParamsError, match="test scales"):
            next(predict(ColourClassifier(), _table(), InputSpec(), scales=bad))
