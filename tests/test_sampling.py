"""PixelNet pixel sampling: never void, biased positive share, determinism, Table 2 spreads."""

from __future__ import annotations

import pytest
import torch

from pipeline.errors import ParamsError
from pipeline.models.sampling import SamplingConfig, allocate, sample_pixels, valid_pixels


def _labels(b: int = 3, h: int = 40, w: int = 50, void_share: float = 0.4, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 5, (b, h, w), generator=g)
    y[torch.rand((b, h, w), generator=g) < void_share] = 255
    return y


def test_never_samples_void_and_counts_per_image() -> None:
    y = _labels()
    pts = sample_pixels(valid_pixels(y), 300, generator=torch.Generator().manual_seed(1))
    assert pts.shape == (900, 3) and pts.dtype == torch.long
    assert (y[pts[:, 0], pts[:, 1], pts[:, 2]] != 255).all()
    assert torch.bincount(pts[:, 0]).tolist() == [300, 300, 300]
    # without replacement while the pool is large enough
    for b in range(3):
        flat = pts[pts[:, 0] == b, 1] * 50 + pts[pts[:, 0] == b, 2]
        assert flat.unique().numel() == 300


def test_uniform_covers_valid_pixels_evenly() -> None:
    y = torch.zeros((1, 4, 4), dtype=torch.long)
    y[0, :2] = 255  # 8 valid pixels in rows 2-3
    g = torch.Generator().manual_seed(0)
    hits = torch.zeros(4, 4)
    for _ in range(400):
        p = sample_pixels(valid_pixels(y), 2, generator=g)
        hits[p[:, 1], p[:, 2]] += 1
    assert hits[:2].sum() == 0
    assert hits[2:].min() > 60 and hits[2:].max() < 140  # 100 expected per pixel


def test_few_valid_pixels_sample_with_replacement() -> None:
    y = torch.full((2, 10, 10), 255)
    y[0, 3, 4] = 1
    y[0, 7, 7] = 2
    pts = sample_pixels(valid_pixels(y), 50, generator=torch.Generator().manual_seed(0))
    assert len(pts) == 50  # image 1 has no valid pixel and contributes none
    assert set(map(tuple, pts[:, 1:].tolist())) == {(3, 4), (7, 7)}


@pytest.mark.parametrize("share", [0.25, 0.5, 0.75])
def test_biased_sampling_positive_share(share: float) -> None:
    g = torch.Generator().manual_seed(3)
    y = (torch.rand((5, 64, 64), generator=g) < 0.05).long()  # ~5% edge pixels
    y[:, :4] = 255
    n = 400
    pts = sample_pixels(valid_pixels(y), n, positive=y == 1, positive_share=share, generator=g)
    labels = y[pts[:, 0], pts[:, 1], pts[:, 2]]
    assert (labels != 255).all()
    assert abs(labels.float().mean().item() - share) < 0.01
    uniform = sample_pixels(valid_pixels(y), n, generator=g)
    assert y[uniform[:, 0], uniform[:, 1], uniform[:, 2]].float().mean() < 0.1


def test_biased_sampling_without_positives_takes_negatives() -> None:
    y = torch.zeros((1, 8, 8), dtype=torch.long)
    pts = sample_pixels(valid_pixels(y), 20, positive=y == 1, positive_share=0.5)
    assert len(pts) == 20


def test_deterministic_with_generator() -> None:
    y = _labels()
    valid = valid_pixels(y)
    a = sample_pixels(valid, 100, generator=torch.Generator().manual_seed(7))
    b = sample_pixels(valid, 100, generator=torch.Generator().manual_seed(7))
    c = sample_pixels(valid, 100, generator=torch.Generator().manual_seed(8))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_table2_spreads() -> None:
    assert allocate(2000, 5) == [2000] * 5
    assert allocate(2000, 5, "single") == [10000, 0, 0, 0, 0]
    y = _labels(b=4)
    pts = sample_pixels(valid_pixels(y), allocate(50, 4, "single"))
    assert (pts[:, 0] == 0).all() and len(pts) == 200
    with pytest.raises(ParamsError):
        allocate(10, 2, "diagonal")


def test_valid_pixels_for_normals() -> None:
    n = torch.zeros((1, 3, 2, 2))
    n[0, 2] = 1.0
    n[0, :, 0, 0] = float("nan")
    n[0, :, 1, 1] = 0.0
    assert valid_pixels(n).tolist() == [[[False, True], [True, False]]]


def test_sampling_config_validation() -> None:
    assert SamplingConfig.from_options(None) == SamplingConfig(2000, None, "images")
    cfg = SamplingConfig.from_options({"per_image": 500, "positive_share": 0.25})
    assert cfg.per_image == 500 and cfg.positive_share == 0.25
    for bad in ({"per_image": 0}, {"positive_share": 1.5}, {"spread": "x"}, {"n": 3}):
        with pytest.raises(ParamsError):
            SamplingConfig.from_options(bad)
