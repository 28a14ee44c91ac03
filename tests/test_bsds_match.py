"""The exact BSDS pixel correspondence: optimal for BSDS's objective, never worse than CSA."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy.optimize import linear_sum_assignment

from pipeline.metrics.bsds_match import MatchGrid, correspond_exact
from pipeline.metrics.edges import (
    benchmark_thresholds,
    correspond,
    evaluate_image,
    load_ground_truth,
    load_prediction,
    thin_boundaries,
)

MAX_DIST = 0.0075


def _pairs(match1: np.ndarray, match2: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(pred pixel, true pixel) coordinates of every pair, from ``correspondPixels`` outputs."""
    height = match1.shape[0]
    py, px = np.nonzero(match1)
    j = match1[py, px].astype(np.int64) - 1  # 1-based column-major index of the partner
    gy, gx = j % height, j // height
    back = match2[gy, gx].astype(np.int64) - 1
    np.testing.assert_array_equal(back, px * height + py)  # the two maps agree
    return np.stack([py, px], 1), np.stack([gy, gx], 1)


def _objective(bmap, gt, match1, match2, grid: MatchGrid, max_dist: float) -> int:
    """BSDS's integer cost of a matching: rint(100 d) per pair, plus the outlier weight for each
    of the n1 + n2 - k outlier edges of its perfect matching (k pairs)."""
    p, g = _pairs(match1, match2)
    d = np.hypot(*(p - g).T)
    assert (d <= max_dist * np.hypot(*bmap.shape)).all()
    assert len({tuple(x) for x in g}) == len(g)  # each true pixel used once
    outliers = int(bmap.sum() + gt.sum()) - len(p)
    return int(np.rint(d * 100).sum()) + outliers * grid.outlier_weight


def _dense_optimum(bmap: np.ndarray, gt: np.ndarray, grid: MatchGrid, max_dist: float) -> int:
    """The same objective on the complete BSDS graph (every outlier edge), solved densely."""
    p, g = np.argwhere(bmap), np.argwhere(gt)
    n1, n2 = len(p), len(g)
    radius = max_dist * np.hypot(*bmap.shape)
    cost = np.full((n1 + n2, n2 + n1), float(grid.outlier_weight))
    d = np.hypot(*(p[:, None, :] - g[None, :, :]).transpose(2, 0, 1))
    cost[:n1, :n2] = np.where(d <= radius, np.rint(d * 100), 1e12)
    rows, cols = linear_sum_assignment(cost)
    return int(cost[rows, cols].sum())


def _strokes(rng: np.random.Generator, size: int, jitter: int) -> tuple[np.ndarray, np.ndarray]:
    """Random polylines as truth, and the same lines shifted, broken and cluttered as a map."""
    gt = np.zeros((size, size), dtype=bool)
    pred = np.zeros_like(gt)
    for _ in range(6):
        y0, x0, y1, x1 = rng.integers(0, size, 4)
        t = np.linspace(0, 1, 2 * size)
        y, x = np.rint(y0 + t * (y1 - y0)).astype(int), np.rint(x0 + t * (x1 - x0)).astype(int)
        gt[y, x] = True
        keep = rng.random(t.size) < 0.8
        sy, sx = rng.integers(-jitter, jitter + 1, 2)
        pred[np.clip(y[keep] + sy, 0, size - 1), np.clip(x[keep] + sx, 0, size - 1)] = True
    pred |= rng.random(gt.shape) < 0.01
    return pred, gt


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_exact_matching_is_optimal_on_the_complete_graph(seed: int) -> None:
    """Its cost equals the dense assignment's over every outlier edge (the objective the CSA
    matcher approximates with a random sparse graph). A 3.4-pixel radius on 60x60 maps."""
    pred, gt = _strokes(np.random.default_rng(seed), 60, jitter=3)
    max_dist = 0.04
    grid = MatchGrid.create(pred.shape, max_dist)
    match1, match2 = correspond_exact(pred, gt, max_dist)
    p, g = _pairs(match1, match2)
    assert 0 < len(p) < pred.sum()  # some pairs, some outliers
    assert len(np.unique(np.hypot(*(p - g).T))) > 3  # pairs at several distances
    expected = _dense_optimum(pred, gt, grid, max_dist)
    assert _objective(pred, gt, match1, match2, grid, max_dist) == expected


def test_exact_matching_is_never_worse_than_csa(shared_data: Path) -> None:
    """On thinned golden maps, against every annotator: a cost no higher than the CSA matcher's
    (its own real-valued cost), usually with more pairs."""
    golden = shared_data / "bsds-bench-golden"
    if not golden.is_dir():
        pytest.skip(f"BSDS golden case not found under {shared_data}")
    pred = load_prediction(golden / "png" / "2018.png")[100:220, 100:260]
    gts = [g[100:220, 100:260] != 0 for g in load_ground_truth(golden / "groundTruth/2018.mat")]
    radius = MAX_DIST * np.hypot(*pred.shape)
    outlier = 100.0 * radius
    more = 0
    for t in (0.1, 0.5):
        bmap = thin_boundaries(pred >= t)
        for gt in gts:
            m1, m2, csa_cost, oc = correspond(bmap, gt, MAX_DIST)
            assert oc == pytest.approx(outlier)
            e1, e2 = correspond_exact(bmap, gt, MAX_DIST)
            p, g = _pairs(e1, e2)
            k = len(p)
            cost = np.hypot(*(p - g).T).sum() + (bmap.sum() + gt.sum() - 2 * k) * outlier
            assert cost <= csa_cost + 0.005 * k  # optimum of rint(100 d): 0.005 per pair
            more += k - int((m2 > 0).sum())
    assert more >= 0


def test_counts_do_not_depend_on_how_thresholds_are_split() -> None:
    """99 thresholds of an 8-bit map (runs of equal maps, reused) in one call or in 7 blocks, as
    Ray tasks split them, and a second run: the same counts, bit for bit."""
    rng = np.random.default_rng(5)
    pred_mask, gt = _strokes(rng, 90, jitter=2)
    strength = np.round(rng.random(gt.shape) * 40) / 40  # few distinct values, like a PNG
    pred = np.where(pred_mask, 0.2 + 0.8 * strength, 0.3 * strength)
    th = benchmark_thresholds(99)
    whole = evaluate_image(pred, [gt, np.roll(gt, 1, axis=0)], th)
    blocks = np.concatenate(
        [evaluate_image(pred, [gt, np.roll(gt, 1, axis=0)], b) for b in np.array_split(th, 7)],
        axis=1,
    )
    again = evaluate_image(pred, [gt, np.roll(gt, 1, axis=0)], th)
    assert np.array_equal(whole, blocks) and np.array_equal(whole, again)
    assert len(np.unique(whole[2])) > 10  # the curve moves: a real sweep, not one map
