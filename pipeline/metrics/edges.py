"""The BSDS500 boundary benchmark (ODS, OIS, AP), reproducing the MATLAB ``bench`` code.

Per image (``evaluation_bdry_image.m``): for each threshold t in
``linspace(1/(n+1), n/(n+1), n)`` the map is binarised (``pb >= t``), thinned
(``bwmorph(..., 'thin', inf)``) and matched against every annotator with the bipartite
``correspondPixels`` (minimum-cost pixel pairs within ``max_dist`` x image diagonal). Recall
counts accumulate over annotators (``cntR += matched truth``, ``sumR += truth``); a predicted
pixel counts as correct if it matches *any* annotator (``cntP = |OR of matches|``,
``sumP = predicted``).

Dataset (``collect_eval_bdry.m``): counts are summed over images. ODS is the best F of the
summed curve with linear interpolation between neighbouring thresholds (``maxF``, 100 steps);
OIS sums each image's counts at its best (discrete) threshold; AP is the area under the PR
curve interpolated at recall 0:0.01:1 (precision 0 outside the observed recall range). This
is what pyedgeeval calls ``AUC``; its ``AP`` is a different quantity.

Matching (97% of the time with the CSA matcher) is solved exactly by default
(:mod:`pipeline.metrics.bsds_match`: the same objective, SciPy's sparse assignment, no random
numbers; 10-30x faster, and within 5e-4 of the MATLAB golden outputs). ``matcher="csa"`` keeps
pyedgeeval's compiled ``correspond_pixels`` (the original BSDS C++ matcher): it draws its random
graph from one global generator that the C++ library seeds from the clock at load time, so
:func:`correspond` reseeds it with a fixed seed before every call and a matching depends on its
inputs alone (MATLAB's own runs differ from each other by about 1e-3 for the same reason).
Thinning is scikit-image's ``thin`` (the ``bwmorph`` lookup tables): pyedgeeval's own thinning
stops as soon as its *first* sub-iteration changes nothing, which can leave pixels that
``bwmorph`` would remove (seen on 45 of 300 random 40x40 masks; none on the golden maps).
Work shared between thresholds is done once: the truth side of the matching is indexed once per
image, and a threshold whose binary or thinned map equals the previous one reuses its counts.

The per-image work (all thresholds of one image) runs as a Ray task so that a 99-threshold
evaluation scales with cores and nodes; the driver only sums counts. Workers read the files
themselves, so every node must see ``pred_dir`` and ``gt_dir`` (shared storage).
"""

from __future__ import annotations

import ctypes
import functools
import json
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from pipeline.errors import DataError
from pipeline.metrics.bsds_match import MatchGrid, match_pixels
from pipeline.metrics.nms import edge_nms
from pipeline.runtime.fsutil import atomic_path, write_text_atomic
from pipeline.runtime.progress import progress_bar

PRED_SUFFIXES = (".png", ".npy")


class ODS(NamedTuple):
    f: float
    precision: float
    recall: float
    threshold: float


class OIS(NamedTuple):
    f: float
    precision: float
    recall: float


@dataclass(frozen=True)
class ImageScore:
    """One row of ``eval_bdry_img.txt``: an image's best (interpolated) threshold and scores."""

    id: str
    threshold: float
    recall: float
    precision: float
    f: float


@dataclass
class EdgeResult:
    """Benchmark outcome: summary scores, the dataset PR curve and per-image rows.

    ``counts[i]`` holds image i's ``(cntR, sumR, cntP, sumP)`` per threshold, so results can
    be merged or re-scored without matching again (not written to JSON: it is large).
    """

    ods: ODS
    ois: OIS
    ap: float
    thresholds: np.ndarray
    recall: np.ndarray
    precision: np.ndarray
    f: np.ndarray
    images: list[ImageScore]
    counts: np.ndarray | None = None
    settings: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary, curve and per-image rows (plain floats)."""
        return {
            "ods": {k: float(v) for k, v in self.ods._asdict().items()},
            "ois": {k: float(v) for k, v in self.ois._asdict().items()},
            "ap": float(self.ap),
            "n_images": len(self.images),
            "settings": dict(self.settings),
            "curve": {
                "threshold": [float(x) for x in self.thresholds],
                "recall": [float(x) for x in self.recall],
                "precision": [float(x) for x in self.precision],
                "f": [float(x) for x in self.f],
            },
            "images": [
                {
                    "id": s.id,
                    "threshold": float(s.threshold),
                    "recall": float(s.recall),
                    "precision": float(s.precision),
                    "f": float(s.f),
                }
                for s in self.images
            ],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EdgeResult:
        """Inverse of ``to_dict`` (without per-image counts)."""
        curve = data["curve"]
        return cls(
            ods=ODS(**data["ods"]),
            ois=OIS(**data["ois"]),
            ap=float(data["ap"]),
            thresholds=np.asarray(curve["threshold"], dtype=np.float64),
            recall=np.asarray(curve["recall"], dtype=np.float64),
            precision=np.asarray(curve["precision"], dtype=np.float64),
            f=np.asarray(curve["f"], dtype=np.float64),
            images=[ImageScore(**row) for row in data["images"]],
            settings=dict(data.get("settings", {})),
        )


# ---------------------------------------------------------------------------------------------
# Scoring (pure numpy, the MATLAB formulas)


def benchmark_thresholds(n_thresholds: int) -> np.ndarray:
    """MATLAB's ``linspace(1/(n+1), 1-1/(n+1), n)``."""
    if n_thresholds < 1:
        raise ValueError(f"n_thresholds must be >= 1, got {n_thresholds}")
    return np.linspace(1.0 / (n_thresholds + 1), 1.0 - 1.0 / (n_thresholds + 1), n_thresholds)


def fmeasure(recall: np.ndarray | float, precision: np.ndarray | float) -> np.ndarray | float:
    """``2PR / (P + R)``, 0 where both are 0 (MATLAB ``fmeasure``)."""
    denom = precision + recall
    return 2.0 * precision * recall / (denom + (denom == 0))


def recall_precision(counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Recall and precision from ``(cntR, sumR, cntP, sumP)`` stacked on axis -2."""
    cnt_r, sum_r, cnt_p, sum_p = (counts[..., k, :] for k in range(4))
    return cnt_r / (sum_r + (sum_r == 0)), cnt_p / (sum_p + (sum_p == 0))


def max_f(
    thresholds: np.ndarray, recall: np.ndarray, precision: np.ndarray
) -> tuple[float, float, float, float]:
    """MATLAB ``maxF``: best F along the curve, interpolating linearly between thresholds.

    Returns ``(threshold, recall, precision, f)``. Like MATLAB's ``linspace(0, 1)`` it tries
    100 points per segment and keeps the first strict maximum.
    """
    best = (float(thresholds[0]), float(recall[0]), float(precision[0]))
    best_f = float(fmeasure(recall[0], precision[0]))
    if len(thresholds) < 2:
        return (*best, best_f)
    d = np.linspace(0.0, 1.0, 100)[None, :]
    t = thresholds[1:, None] * d + thresholds[:-1, None] * (1 - d)
    r = recall[1:, None] * d + recall[:-1, None] * (1 - d)
    p = precision[1:, None] * d + precision[:-1, None] * (1 - d)
    f = fmeasure(r, p)
    k = int(np.argmax(f))  # row-major = MATLAB's loop order; argmax keeps the first maximum
    if f.flat[k] > best_f:
        return float(t.flat[k]), float(r.flat[k]), float(p.flat[k]), float(f.flat[k])
    return (*best, best_f)


def area_pr(recall: np.ndarray, precision: np.ndarray) -> float:
    """BSDS "AP": precision interpolated at recall 0:0.01:1 (0 outside the data), summed x 0.01."""
    r_unique, index = np.unique(recall, return_index=True)
    if r_unique.size < 2:
        return 0.0
    grid = np.linspace(0.0, 1.0, 101)
    p_interp = np.interp(grid, r_unique, precision[index], left=0.0, right=0.0)
    return float(p_interp.sum() * 0.01)


def score_counts(
    ids: Sequence[str],
    counts: np.ndarray,
    thresholds: np.ndarray,
    settings: dict[str, Any] | None = None,
) -> EdgeResult:
    """Turn per-image counts ``(n_images, 4, n_thresholds)`` into the benchmark's scores."""
    counts = np.asarray(counts, dtype=np.float64)
    if counts.ndim != 3 or counts.shape[1] != 4 or counts.shape[2] != len(thresholds):
        raise ValueError(f"counts must be (n, 4, {len(thresholds)}), got {counts.shape}")
    if len(ids) != counts.shape[0] or not len(ids):
        raise ValueError("need one counts block per id, and at least one image")
    images = []
    best_counts = np.zeros(4)
    for image_id, c in zip(ids, counts):
        r, p = recall_precision(c)
        images.append(ImageScore(str(image_id), *max_f(thresholds, r, p)))
        best_counts += c[:, int(np.argmax(fmeasure(r, p)))]
    total = counts.sum(axis=0)
    recall, precision = recall_precision(total)
    ois_r, ois_p = recall_precision(best_counts[:, None])
    return EdgeResult(
        ods=ODS(*_reorder(max_f(thresholds, recall, precision))),
        ois=OIS(float(fmeasure(ois_r[0], ois_p[0])), float(ois_p[0]), float(ois_r[0])),
        ap=area_pr(recall, precision),
        thresholds=np.asarray(thresholds, dtype=np.float64),
        recall=recall,
        precision=precision,
        f=fmeasure(recall, precision),
        images=images,
        counts=counts,
        settings=dict(settings or {}),
    )


def _reorder(trpf: tuple[float, float, float, float]) -> tuple[float, float, float, float]:
    """``max_f``'s (t, r, p, f) -> ODS's (f, p, r, t)."""
    t, r, p, f = trpf
    return f, p, r, t


# ---------------------------------------------------------------------------------------------
# Per-image matching


def thin_boundaries(bmap: np.ndarray) -> np.ndarray:
    """``bwmorph(bmap, 'thin', inf)`` (scikit-image implements the same lookup tables)."""
    from skimage.morphology import thin

    return thin(bmap)


#: the matcher's seed (any nonzero value: 0 means "from the clock" in its Random class)
MATCHER_SEED = 1


@functools.cache
def _matcher() -> tuple[Any, Any]:
    """pyedgeeval's ``correspond_pixels`` and its library's ``Random::reseed(&Random::rand, s)``."""
    from pyEdgeEval._lib import correspond_pixels

    library = ctypes.CDLL(sys.modules["pyEdgeEval._lib.correspond_pixels"].__file__)
    generator = ctypes.addressof(ctypes.c_char.in_dll(library, "_ZN6Random4randE"))
    reseed = library._ZN6Random6reseedEm
    reseed.argtypes, reseed.restype = [ctypes.c_void_p, ctypes.c_uint64], None
    return correspond_pixels, lambda: reseed(generator, MATCHER_SEED)


def correspond(bmap: np.ndarray, gt: np.ndarray, max_dist: float) -> tuple[Any, ...]:
    """The BSDS matcher (``correspondPixels``) with its random generator reseeded first: the same
    inputs give the same matching in any process, task split or order."""
    correspond_pixels, reseed = _matcher()
    reseed()
    return correspond_pixels(bmap, gt, max_dist=max_dist)


MATCHERS = ("exact", "csa")


def evaluate_image(
    pred: np.ndarray,
    boundaries: Sequence[np.ndarray],
    thresholds: np.ndarray,
    max_dist: float = 0.0075,
    thin: bool = True,
    nms: bool = False,
    matcher: str = "exact",
) -> np.ndarray:
    """One image's counts ``(4, n_thresholds)``: cntR, sumR, cntP, sumP (``evaluation_bdry_image``).

    ``pred`` is a float map in [0, 1]; ``boundaries`` the annotators' binary maps. ``matcher``:
    ``"exact"`` (:mod:`pipeline.metrics.bsds_match`, the default) or ``"csa"`` (BSDS's own
    randomised ``correspondPixels``, reseeded: 10-30x slower, a few matches fewer).
    """
    if matcher not in MATCHERS:
        raise ValueError(f"matcher must be one of {MATCHERS}, got {matcher!r}")
    pred = np.asarray(pred, dtype=np.float64)
    if nms:
        pred = edge_nms(pred)
    gts = [np.asarray(b) != 0 for b in boundaries]
    grid = MatchGrid.create(pred.shape, max_dist)
    # The truth side of the matching is the same at every threshold: index it once.
    truths = [(grid.index_map(g), int(np.count_nonzero(g))) for g in gts]
    counts = np.zeros((4, len(thresholds)))
    counts[1] = sum(n for _, n in truths)
    previous_raw: np.ndarray | None = None
    previous: np.ndarray | None = None
    for i, t in enumerate(thresholds):
        # A map with few distinct values (8-bit PNGs) is often the same at neighbouring
        # thresholds, and different maps can thin to the same one: the same input to the
        # matcher gives the same counts, reused without thinning or matching again.
        raw = pred >= t
        if previous_raw is not None and np.array_equal(raw, previous_raw):
            counts[:, i] = counts[:, i - 1]
            continue
        previous_raw = raw
        bmap = thin_boundaries(raw) if thin else raw
        if previous is not None and np.array_equal(bmap, previous):
            counts[:, i] = counts[:, i - 1]
            continue
        previous = bmap
        if matcher == "exact":
            pred_flat = grid.flat(bmap)
            acc_p = np.zeros(pred_flat.size, dtype=bool)
            for index, n_truth in truths:
                matched = match_pixels(grid, pred_flat, index, n_truth) >= 0
                acc_p |= matched
                counts[0, i] += float(np.count_nonzero(matched))  # one true pixel per pair
        else:
            acc_p = np.zeros(bmap.shape, dtype=bool)
            for gt in gts:
                if not bmap.any() or not gt.any():
                    continue  # nothing to match: the matcher would return no pairs
                match1, match2, _, _ = correspond(bmap, gt, max_dist)
                acc_p |= match1 > 0
                counts[0, i] += float((match2 > 0).sum())
        counts[2, i] = float(np.count_nonzero(acc_p))
        counts[3, i] = float(np.count_nonzero(bmap))
    return counts


def load_prediction(path: str | os.PathLike) -> np.ndarray:
    """A boundary map as float64 in [0, 1]: 8-bit PNG / 255 (16-bit / 65535) or ``.npy``."""
    path = Path(path)
    try:
        if path.suffix == ".npy":
            pred = np.load(path, allow_pickle=False).astype(np.float64)
            if pred.size and (not np.isfinite(pred).all() or pred.min() < 0 or pred.max() > 1):
                raise DataError(f"{path}: .npy boundary maps must be finite values in [0, 1]")
        else:
            from PIL import Image

            with Image.open(path) as im:
                mode = im.mode
                raw = np.array(im)
            if mode in ("L", "1"):
                pred = raw.astype(np.float64) / (1.0 if mode == "1" else 255.0)
            elif mode in ("I;16", "I;16B", "I;16L"):
                pred = raw.astype(np.float64) / 65535.0
            else:
                raise DataError(f"{path}: boundary PNG must be single-channel 8/16-bit, not {mode}")
    except DataError:
        raise
    except Exception as exc:  # unreadable / truncated file
        raise DataError(f"cannot read boundary map {path}: {exc}") from exc
    if pred.ndim != 2:
        raise DataError(f"{path}: boundary map must be 2-D, got shape {pred.shape}")
    return pred


def load_ground_truth(path: str | os.PathLike) -> list[np.ndarray]:
    """The annotators' boundary maps of a BSDS ``.mat`` (``groundTruth{k}.Boundaries``)."""
    from scipy.io import loadmat

    try:
        gt = loadmat(str(path))["groundTruth"]
        return [np.asarray(gt[0, k]["Boundaries"][0, 0]) for k in range(gt.shape[1])]
    except Exception as exc:
        raise DataError(f"cannot read BSDS ground truth {path}: {exc}") from exc


def evaluate_files(
    pred_path: str,
    gt_path: str,
    thresholds: np.ndarray,
    max_dist: float = 0.0075,
    thin: bool = True,
    nms: bool = False,
    matcher: str = "exact",
) -> np.ndarray:
    """Load one prediction and its ground truth and return its counts (the Ray task body)."""
    pred = load_prediction(pred_path)
    gts = load_ground_truth(gt_path)
    for gt in gts:
        if gt.shape != pred.shape:
            raise DataError(
                f"{pred_path}: shape {pred.shape} does not match ground truth {gt_path} "
                f"({gt.shape})"
            )
    return evaluate_image(
        pred, gts, thresholds, max_dist=max_dist, thin=thin, nms=nms, matcher=matcher
    )


# ---------------------------------------------------------------------------------------------
# Dataset evaluation with Ray

_REMOTE_EVAL = None
THRESHOLDS_PER_TASK = 25  # matching dominates; this many thresholds of one image per Ray task


def _remote_eval():
    """The Ray task, created lazily so that importing this module does not import Ray."""
    global _REMOTE_EVAL
    if _REMOTE_EVAL is None:
        import ray

        _REMOTE_EVAL = ray.remote(num_cpus=1, max_retries=0)(evaluate_files)
    return _REMOTE_EVAL


def _find_prediction(pred_dir: Path, image_id: str) -> Path:
    found = [
        pred_dir / f"{image_id}{s}"
        for s in PRED_SUFFIXES
        if (pred_dir / f"{image_id}{s}").is_file()
    ]
    if not found:
        raise DataError(
            f"no prediction for image {image_id}: expected {pred_dir / image_id}.png/.npy"
        )
    if len(found) > 1:
        raise DataError(f"ambiguous prediction for image {image_id}: {found[0]} and {found[1]}")
    return found[0]


def _resolve_inputs(
    pred_dir: Path, gt_dir: Path, ids: Sequence[str] | None
) -> list[tuple[str, Path, Path]]:
    """Check every file exists before any matching starts; ids default to all ``gt_dir/*.mat``."""
    if not gt_dir.is_dir():
        raise DataError(f"ground-truth folder not found: {gt_dir}")
    if not pred_dir.is_dir():
        raise DataError(f"prediction folder not found: {pred_dir}")
    if ids is None:
        ids = sorted(p.stem for p in gt_dir.glob("*.mat"))
        if not ids:
            raise DataError(f"no ground-truth .mat files in {gt_dir}")
    jobs = []
    for image_id in ids:
        gt_path = gt_dir / f"{image_id}.mat"
        if not gt_path.is_file():
            raise DataError(f"ground truth not found: {gt_path}")
        jobs.append((str(image_id), _find_prediction(pred_dir, str(image_id)), gt_path))
    return jobs


def evaluate_bsds(
    pred_dir: str | os.PathLike,
    gt_dir: str | os.PathLike,
    n_thresholds: int = 99,
    max_dist: float = 0.0075,
    thin: bool = True,
    nms: bool = False,
    ids: Sequence[str] | None = None,
    num_cpus: int | None = None,
    progress: bool = True,
    matcher: str = "exact",
) -> EdgeResult:
    """Run the BSDS boundary benchmark on ``pred_dir`` against ``gt_dir``.

    One Ray task (1 CPU) per image and block of at most ``THRESHOLDS_PER_TASK`` thresholds
    (thresholds are matched independently, so a 99-threshold image is 4 tasks: few images still
    keep every CPU busy); ``num_cpus`` bounds how many run at once (default: as many as the
    cluster schedules). Ray is initialised if needed (``RAY_ADDRESS`` honoured). ``matcher``:
    see :func:`evaluate_image`. The counts of an image do not depend on the task split.
    """
    import ray

    if num_cpus is not None and num_cpus < 1:
        raise ValueError(f"num_cpus must be >= 1, got {num_cpus}")
    if matcher not in MATCHERS:
        raise ValueError(f"matcher must be one of {MATCHERS}, got {matcher!r}")
    jobs = _resolve_inputs(Path(pred_dir), Path(gt_dir), ids)
    thresholds = benchmark_thresholds(n_thresholds)
    blocks = np.array_split(thresholds, -(-len(thresholds) // THRESHOLDS_PER_TASK))
    tasks = [(j, b) for j in range(len(jobs)) for b in range(len(blocks))]
    if not ray.is_initialized():
        ray.init(include_dashboard=False, configure_logging=False)
    remote = _remote_eval()
    block_refs = [ray.put(b) for b in blocks]
    limit = len(tasks) if num_cpus is None else num_cpus
    results: dict[tuple[int, int], np.ndarray] = {}
    pending: dict[Any, tuple[int, int]] = {}
    next_task = 0
    with progress_bar(total=len(tasks), desc="BSDS eval", unit="task", disable=not progress) as bar:
        while next_task < len(tasks) or pending:
            while next_task < len(tasks) and len(pending) < limit:
                job, block = tasks[next_task]
                _, pred_path, gt_path = jobs[job]
                ref = remote.remote(
                    str(pred_path), str(gt_path), block_refs[block], max_dist, thin, nms, matcher
                )
                pending[ref] = tasks[next_task]
                next_task += 1
            done, _ = ray.wait(list(pending), num_returns=1)
            key = pending.pop(done[0])
            try:
                results[key] = ray.get(done[0])
            except ray.exceptions.RayTaskError as exc:
                for ref in pending:
                    ray.cancel(ref)
                if isinstance(exc.cause, DataError):
                    raise exc.cause from None
                raise
            bar.update(1)
    counts = np.stack(
        [
            np.concatenate([results[j, b] for b in range(len(blocks))], axis=1)
            for j in range(len(jobs))
        ]
    )
    settings = {
        "n_thresholds": n_thresholds,
        "max_dist": max_dist,
        "thin": thin,
        "nms": nms,
        "matcher": matcher,
        "pred_dir": str(pred_dir),
        "gt_dir": str(gt_dir),
    }
    return score_counts([j[0] for j in jobs], counts, thresholds, settings)


# ---------------------------------------------------------------------------------------------
# Outputs


def write_edge_result(result: EdgeResult, path: str | os.PathLike) -> None:
    """Write ``result.to_dict()`` as JSON, atomically (a DVC metrics file)."""
    write_text_atomic(path, json.dumps(result.to_dict(), indent=2) + "\n")


def read_edge_result(path: str | os.PathLike) -> EdgeResult:
    """Read a JSON written by ``write_edge_result``."""
    try:
        return EdgeResult.from_dict(json.loads(Path(path).read_text()))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DataError(f"cannot read edge result {path}: {exc}") from exc


def plot_pr_curve(results: dict[str, EdgeResult], path: str | os.PathLike) -> None:
    """The usual BSDS plot: iso-F contours, one PR curve per method, ODS point and F in legend.

    Uses an Agg canvas directly, so the global matplotlib backend is left alone.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 6))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    r = np.linspace(0.01, 1.0, 200)
    for f_iso in np.arange(0.1, 1.0, 0.1):
        rr = r[r > f_iso / 2 + 1e-9]
        pp = f_iso * rr / (2 * rr - f_iso)
        keep = pp <= 1
        ax.plot(rr[keep], pp[keep], color="#7fbf7f", linewidth=0.7, zorder=1)
        ax.annotate(f"{f_iso:.1f}", (rr[keep][-1], pp[keep][-1]), fontsize=7, color="#4f9f4f")
    ranked = sorted(results.items(), key=lambda kv: -kv[1].ods.f)
    for name, res in ranked:
        shown = res.recall > 0.01  # as the MATLAB plot script: drop the empty tail
        (line,) = ax.plot(
            res.recall[shown],
            res.precision[shown],
            linewidth=2,
            label=f"[F={res.ods.f:.3f}] {name}",
            zorder=3,
        )
        ax.plot(res.ods.recall, res.ods.precision, "o", color=line.get_color(), zorder=4)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("Recall")
    ax.set_ylabel("Precision")
    ax.set_title("BSDS500 boundary benchmark")
    ax.grid(True, linewidth=0.3)
    ax.set_aspect("equal")
    if results:
        ax.legend(loc="lower left", fontsize=8)
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=(path.suffix.lstrip(".") or "png"), dpi=120, bbox_inches="tight")
