"""Pixel sampling for PixelNet training (Bansal et al. 2016, §3 "Mini-batch sampling").

A mini-batch is ``N`` pixels from each of ``M`` images (2,000 x 5 by default): neighbouring
pixels are so correlated that a few from many images beat all from one (Table 2).  Pixels are
drawn uniformly over valid (non-void) pixels, or, for edges, with a fixed share of positives
(Table 6: 25/50/75%), because edge pixels are too rare for uniform sampling to find.

Points are an ``(K, 3)`` int64 tensor of ``(image, y, x)`` rows; sampling runs on the CPU with
an optional ``torch.Generator``, so a seeded generator reproduces a batch exactly.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from pipeline.errors import ParamsError

__all__ = [
    "SPREADS",
    "VOID",
    "SamplingConfig",
    "allocate",
    "sample_pixels",
    "valid_pixels",
]

VOID = 255
#: "images": N pixels from each of M images; "single": all N*M from one image (Table 2 rows)
SPREADS = ("images", "single")


@dataclass(frozen=True)
class SamplingConfig:
    """How a batch's training pixels are drawn (the model option ``sampling``).

    ``per_image``: N; ``positive_share``: fraction of positives for edge training (None =
    uniform); ``spread``: one of :data:`SPREADS`.
    """

    per_image: int = 2000
    positive_share: float | None = None
    spread: str = "images"

    def __post_init__(self) -> None:
        n = self.per_image
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ParamsError(f"model.sampling.per_image must be a positive integer, got {n!r}")
        share = self.positive_share
        if share is not None and (
            isinstance(share, bool) or not isinstance(share, int | float) or not 0 <= share <= 1
        ):
            raise ParamsError(
                f"model.sampling.positive_share must be null or in [0, 1], got {share!r}"
            )
        if self.spread not in SPREADS:
            raise ParamsError(
                f"model.sampling.spread must be one of {SPREADS}, got {self.spread!r}"
            )

    @classmethod
    def from_options(cls, options: SamplingConfig | Mapping[str, Any] | None) -> SamplingConfig:
        """From a params mapping (unknown keys are an error, naming the known ones)."""
        if options is None:
            return cls()
        if isinstance(options, cls):
            return options
        if not isinstance(options, Mapping):
            raise ParamsError(f"model.sampling must be a mapping, got {options!r}")
        known = {"per_image", "positive_share", "spread"}
        unknown = sorted(set(options) - known)
        if unknown:
            raise ParamsError(f"model.sampling: unknown key(s) {unknown}; known: {sorted(known)}")
        return cls(**options)


def allocate(per_image: int, num_images: int, spread: str = "images") -> list[int]:
    """Samples per image: ``per_image`` from each, or all ``per_image * num_images`` from the
    first (Table 2's "N x 1" rows, at the same total as the spread batch)."""
    if spread not in SPREADS:
        raise ParamsError(f"sampling spread must be one of {SPREADS}, got {spread!r}")
    if num_images < 1:
        return []
    if spread == "single":
        return [per_image * num_images] + [0] * (num_images - 1)
    return [per_image] * num_images


def valid_pixels(target: torch.Tensor) -> torch.Tensor:
    """B x H x W mask of pixels with a label: labels != 255, or, for a B x 3 x H x W normals
    map, finite vectors of non-zero length (NaN or zero marks missing depth)."""
    if target.dim() == 3:
        return target != VOID
    if target.dim() == 4 and target.shape[1] == 3 and target.is_floating_point():
        finite = torch.isfinite(target).all(1)
        length = torch.nan_to_num(target, nan=0.0).square().sum(1)
        return finite & (length > 1e-12)
    raise ValueError(
        f"expected B x H x W labels or B x 3 x H x W normals, got {tuple(target.shape)}"
    )


def _choose(pool: torch.Tensor, n: int, generator: torch.Generator | None) -> torch.Tensor:
    """``n`` entries of ``pool``: without replacement when it has enough, else with."""
    if n <= 0 or pool.numel() == 0:
        return pool[:0]
    if n <= pool.numel():
        return pool[torch.randperm(pool.numel(), generator=generator)[:n]]
    return pool[torch.randint(pool.numel(), (n,), generator=generator)]


def sample_pixels(
    valid: torch.Tensor,
    counts: int | Sequence[int],
    *,
    positive: torch.Tensor | None = None,
    positive_share: float | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """``(K, 3)`` int64 ``(image, y, x)`` rows: ``counts[b]`` valid pixels of image ``b``.

    Uniform over ``valid`` (B x H x W bool) unless ``positive_share`` is given: then
    ``round(share * n)`` come from ``valid & positive`` and the rest from ``valid & ~positive``
    (all from the other group when one is empty). Void pixels are never drawn; images without
    valid pixels contribute none. Draws are without replacement when the pool is large enough.
    """
    if valid.dim() != 3 or valid.dtype != torch.bool:
        raise ValueError(
            f"valid must be a B x H x W bool mask, got {valid.dtype} {tuple(valid.shape)}"
        )
    b_count, _, w = valid.shape
    if isinstance(counts, int):
        counts = [counts] * b_count
    if len(counts) != b_count:
        raise ValueError(f"{len(counts)} sample counts for {b_count} images")
    if positive_share is not None:
        if positive is None:
            raise ValueError("positive_share needs a positive mask")
        if not 0 <= positive_share <= 1:
            raise ValueError(f"positive_share must be in [0, 1], got {positive_share}")
    valid = valid.cpu()
    positive = positive.cpu().bool() if positive is not None else None
    rows = []
    for b, n in enumerate(counts):
        if n <= 0:
            continue
        mask = valid[b].reshape(-1)
        if positive_share is None:
            flat = _choose(mask.nonzero().squeeze(1), n, generator)
        else:
            pos_mask = positive[b].reshape(-1)
            pos = (mask & pos_mask).nonzero().squeeze(1)
            neg = (mask & ~pos_mask).nonzero().squeeze(1)
            n_pos = int(round(positive_share * n))
            if pos.numel() == 0:
                n_pos = 0
            elif neg.numel() == 0:
                n_pos = n
            flat = torch.cat([_choose(pos, n_pos, generator), _choose(neg, n - n_pos, generator)])
        image = torch.full_like(flat, b)
        rows.append(torch.stack([image, flat // w, flat % w], 1))
    if not rows:
        return torch.zeros((0, 3), dtype=torch.long)
    return torch.cat(rows)
