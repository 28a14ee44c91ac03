"""FCN 3.4 loss sampling: whole final-layer cells are kept with probability p."""

import pytest
import torch

from pipeline.training.losses import labelled_cross_entropy, pixel_loss, sample_mask


@pytest.mark.parametrize("p", [0.25, 0.5, 0.9])
def test_kept_fraction_is_p_and_cells_are_whole(p):
    stride = 32
    labels = torch.zeros(8, 320, 480, dtype=torch.long)
    keep = sample_mask(labels, p, stride, generator=torch.Generator().manual_seed(0))
    cells = keep.reshape(8, 10, stride, 15, stride)
    # every stride x stride cell is all kept or all dropped
    assert torch.equal(cells.all(dim=(2, 4)), cells.any(dim=(2, 4)))
    fraction = keep.float().mean().item()  # 1,200 cells: binomial sd ~ 0.014 at p = 0.5
    assert fraction == pytest.approx(p, abs=0.05)


def test_ragged_border_cells_are_cropped_to_the_label():
    keep = sample_mask(torch.zeros(1, 33, 70, dtype=torch.long), 0.5, 32)
    assert keep.shape == (1, 33, 70)


def test_sampled_loss_counts_only_kept_pixels():
    logits = torch.randn(1, 3, 4, 4)
    labels = torch.randint(0, 3, (1, 4, 4))
    keep = torch.zeros(1, 4, 4, dtype=torch.bool)
    keep[:, :2] = True
    total, norm = pixel_loss(logits, labels, "softmax", "pixel", keep)
    full = torch.nn.functional.cross_entropy(logits, labels, reduction="none")
    assert total.item() == pytest.approx(full[:, :2].sum().item(), rel=1e-5)
    assert norm.item() == 8


def test_validation_loss_is_the_cross_entropy_of_the_labelled_pixels_only():
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 5, 7, 6, generator=generator)
    labels = torch.randint(0, 5, (2, 7, 6), generator=generator)
    labels[0, :2] = 255  # void
    labels[1, 3, 3] = 9  # outside the classes: not scored, as the confusion matrix does
    total, count = labelled_cross_entropy(logits, labels)
    reference = torch.nn.functional.cross_entropy(
        logits, torch.where(labels == 9, 255, labels), ignore_index=255, reduction="sum"
    )
    assert count == 2 * 7 * 6 - 2 * 6 - 1
    assert total == pytest.approx(float(reference), rel=1e-6)
    assert labelled_cross_entropy(logits, torch.full((2, 7, 6), 255)) == (0.0, 0)
