"""FCN Table 8 input masking: which pixels each mask hides, on a hand-made image and label."""

import numpy as np
import pytest

from pipeline.data.datasets.base import VOID
from pipeline.data.loader import SHAPE_VALUE, InputSpec, collate
from pipeline.metrics.segmentation import segmentation_scores


def _example():
    image = np.full((4, 6, 3), 200, np.uint8)
    label = np.zeros((4, 6), np.uint8)
    label[1:3, 1:3] = 7  # an object
    label[0, 1:3] = VOID  # its void outline counts as foreground
    return image, label


@pytest.mark.parametrize("mask", ["none", "fg", "bg", "shape"])
def test_masks_hide_the_right_pixels(mask):
    image, label = _example()
    x, y = collate([(image, label)], InputSpec(mask=mask))
    fg = label != 0
    hidden = (x[0] == 0).all(dim=0).numpy()
    if mask == "none":
        assert not hidden.any()
    elif mask == "fg":
        assert (hidden == fg).all()
    elif mask == "bg":
        assert (hidden == ~fg).all()
    else:
        assert (hidden == ~fg).all() and (x[0][:, fg] == SHAPE_VALUE).all()
    assert (y[0].numpy() == label).all()  # the label is never masked


def test_padding_is_background_for_shape():
    image, label = _example()
    small = (image[:2, :3], label[:2, :3])
    x, _ = collate([(image, label), small], InputSpec(mask="shape"))
    assert (x[1][:, 2:, :] == 0).all() and (x[1][:, :, 3:] == 0).all()


def test_unknown_mask_is_refused():
    with pytest.raises(ValueError, match="sky"):
        InputSpec(mask="sky")


def test_mean_iu_without_background():
    hist = np.array([[8, 2, 0], [0, 4, 0], [0, 0, 6]])
    scores = segmentation_scores(hist)
    assert scores["mean_iu_fg"] == pytest.approx((4 / 6 + 1.0) / 2)
    assert scores["mean_iu"] == pytest.approx((0.8 + 4 / 6 + 1.0) / 3)
