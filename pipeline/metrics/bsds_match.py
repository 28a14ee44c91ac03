"""The BSDS pixel correspondence solved exactly: SciPy's sparse assignment, not the CSA matcher.

The BSDS ``correspondPixels`` pairs predicted and true boundary pixels within ``max_dist`` x
image diagonal at minimum cost: a pair costs its distance (``rint(100 d)``), a pixel left
unmatched costs the outlier weight ``ow = ceil(100 * outlier_cost * radius)``. Its CSA solver
only sees a random sparse graph of outlier edges (degree 6, seeded from the clock), so it misses
a few matches the objective prefers and varies from run to run (MATLAB's runs differ by ~1e-3).

Here the same objective is solved exactly with ``min_weight_full_bipartite_matching`` (LAPJVsp)
on the usual reduction of "match or pay the outlier cost" to a full matching: left nodes are the
predicted pixels and a copy of every true pixel, right nodes the true pixels and a copy of every
predicted one; a real pair (i, j) costs ``2 w``, pixel-to-own-copy ``ow`` (unmatched), and
copy-to-copy ``(j', i')`` 0, so the copies of matched pixels pair up among themselves. Every
full matching is a valid correspondence and its cost is twice BSDS's (up to a constant), so the
optimum is BSDS's optimum. Only pixels with a partner within the radius enter the graph.

The answer is a function of the two maps alone (no random numbers), and 10-30x faster than the
CSA matcher on BSDS maps. Ties (equal-cost optima) are broken by LAPJVsp's deterministic order.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import sparse
from scipy.sparse.csgraph import min_weight_full_bipartite_matching

#: CSA works on integer costs: BSDS multiplies distances by this and rounds
COST_SCALE = 100


@dataclass(frozen=True)
class MatchGrid:
    """The match neighbourhood of one image shape: offsets within the radius as flat steps in a
    map padded by ``pad`` on every side, their integer costs, and the outlier weight."""

    shape: tuple[int, int]
    pad: int
    steps: np.ndarray
    costs: np.ndarray
    outlier_weight: int

    @classmethod
    def create(cls, shape: tuple[int, int], max_dist: float, outlier_cost: float = 100.0):
        """As ``matchEdgeMaps``: radius ``max_dist * hypot(h, w)``, offsets with d^2 <= r^2."""
        h, w = int(shape[0]), int(shape[1])
        diagonal = math.sqrt(h * h + w * w)  # the same float operations as the C++ wrapper
        radius = max_dist * diagonal
        pad = math.ceil(radius)
        dy, dx = np.mgrid[-pad : pad + 1, -pad : pad + 1]
        d2 = dy * dy + dx * dx
        keep = d2 <= radius * radius
        return cls(
            shape=(h, w),
            pad=pad,
            steps=(dy[keep] * (w + 2 * pad) + dx[keep]).astype(np.int64),
            costs=np.rint(np.sqrt(d2[keep]) * COST_SCALE).astype(np.int64),
            outlier_weight=math.ceil(outlier_cost * max_dist * diagonal * COST_SCALE),
        )

    def flat(self, mask: np.ndarray) -> np.ndarray:
        """Flat indices of ``mask``'s pixels in the padded map, in row-major order."""
        y, x = np.nonzero(mask)
        return (y + self.pad) * (self.shape[1] + 2 * self.pad) + (x + self.pad)

    def index_map(self, mask: np.ndarray) -> np.ndarray:
        """The padded map holding each pixel's number (row-major) and -1 elsewhere: a truth map
        prepared once and matched against every threshold's prediction."""
        h, w = self.shape
        out = np.full((h + 2 * self.pad) * (w + 2 * self.pad), -1, dtype=np.int64)
        out[self.flat(mask)] = np.arange(int(np.count_nonzero(mask)))
        return out


def match_pixels(
    grid: MatchGrid, pred_flat: np.ndarray, truth_index: np.ndarray, n_truth: int
) -> np.ndarray:
    """Minimum-cost correspondence of predicted pixels (``grid.flat``) with a truth map
    (``grid.index_map``): for each predicted pixel (row-major), the number of its true partner
    (row-major) or -1."""
    partner = np.full(pred_flat.size, -1, dtype=np.int64)
    if not pred_flat.size or not n_truth:
        return partner
    near = truth_index[pred_flat[:, None] + grid.steps[None, :]]
    rows, cols = np.nonzero(near >= 0)
    if not rows.size:
        return partner
    truth = near[rows, cols]
    cost = grid.costs[cols]
    # Number the matchable pixels of each side 0..a-1 and 0..b-1.
    pred_nodes, left = np.unique(rows, return_inverse=True)
    is_truth_node = np.zeros(n_truth, dtype=bool)
    is_truth_node[truth] = True
    truth_nodes = np.flatnonzero(is_truth_node)
    right = np.cumsum(is_truth_node)[truth] - 1
    a, b = pred_nodes.size, truth_nodes.size
    ow = grid.outlier_weight
    # Left: predicted pixels, then copies of true ones; right: true pixels, then copies of
    # predicted ones. Every edge weighs 1 more than its cost (a full matching has a + b edges
    # either way, and a weight of 0 would be an absent entry for the sparse solver).
    row = np.concatenate([left, np.arange(a), a + np.arange(b), a + right])
    col = np.concatenate([right, b + np.arange(a), np.arange(b), b + left])
    weight = np.concatenate(
        [2 * cost + 1, np.full(a, ow + 1), np.full(b, ow + 1), np.ones(left.size, np.int64)]
    )
    graph = sparse.csr_matrix((weight.astype(np.float64), (row, col)), shape=(a + b, a + b))
    _, match = min_weight_full_bipartite_matching(graph)
    real = match[:a] < b
    partner[pred_nodes[real]] = truth_nodes[match[:a][real]]
    return partner


def correspond_exact(
    bmap: np.ndarray, gt: np.ndarray, max_dist: float = 0.0075, outlier_cost: float = 100.0
) -> tuple[np.ndarray, np.ndarray]:
    """``correspondPixels`` solved exactly, with its outputs: two float maps holding each matched
    pixel's partner as a 1-based column-major (MATLAB) linear index, 0 where unmatched."""
    bmap, gt = np.asarray(bmap) != 0, np.asarray(gt) != 0
    if bmap.shape != gt.shape or bmap.ndim != 2:
        raise ValueError(f"need two 2-D maps of one shape, got {bmap.shape} and {gt.shape}")
    grid = MatchGrid.create(bmap.shape, max_dist, outlier_cost)
    n_truth = int(np.count_nonzero(gt))
    partner = match_pixels(grid, grid.flat(bmap), grid.index_map(gt), n_truth)
    height = bmap.shape[0]
    py, px = np.nonzero(bmap)
    gy, gx = np.nonzero(gt)
    pairs = np.flatnonzero(partner >= 0)
    j = partner[pairs]
    match1, match2 = np.zeros(bmap.shape), np.zeros(gt.shape)
    match1[py[pairs], px[pairs]] = gx[j] * height + gy[j] + 1
    match2[gy[j], gx[j]] = px[pairs] * height + py[pairs] + 1
    return match1, match2
