"""FCN's upper bound on mean IU by output stride (PAMI §6.3, CVPR-ext Appendix A).

The paper downsamples the ground truth by a factor f, upsamples it back and scores it against
the original, "to simulate the best results obtainable with a particular downsampling factor".
It does not say how it downsampled, so the resampling is an option (``METHODS``); every method
predicts one label per cell of an f x f grid anchored at the top-left pixel, and is upsampled
back by nearest neighbour (each pixel takes its cell's label). Image sizes not divisible by f
get a ceil-sized grid whose last row/column of cells is partial; the upsampled map is cropped
back to the original size.

Methods (ties broken towards the lower class index, i.e. background first):

- ``nearest-center``: the pixel at the centre of the cell's in-image part, row
  ``i*f + h_i // 2`` with ``h_i = min(f, H - i*f)`` (for even f the lower-right of the central
  2x2). ``nearest`` is an alias.
- ``nearest-topleft``: the pixel at the cell's top-left corner (``label[::f, ::f]``).
- ``majority``: per-cell majority vote over non-void pixels; void if the cell is all void.
- ``majority-void``: per-cell majority vote in which void is one more candidate.
- ``pil-nearest``: ``PIL.Image.resize(NEAREST)`` to ``(ceil(W/f), ceil(H/f))`` and back to
  ``(W, H)``; PIL samples at scaled pixel centres, so cells are not exactly the f x f grid.
  It is scored pixel by pixel (several times slower); the cell-aligned methods are scored from
  per-cell class counts, built once at the finest factor and summed up to coarser ones.

Scoring: ONE confusion matrix per factor accumulated over all images (FCN's dataset-level
definition, ``pipeline.metrics.segmentation``). Pixels void in the ORIGINAL label are ignored.
A void prediction on a valid pixel (a nearest sample that hit void) counts as a miss for its
true class and a false positive for no class: it is kept in an extra "void" column of the
matrix, which is dropped from the class means.

Default ``majority``, chosen on all 736 seg11valid labels (SegmentationClassAug) against the
paper's 50.9 / 73.3 / 86.1 / 92.8 / 96.4 / 98.5 (f = 128 .. 4). Mean IU (%), ours:

    method            128    64    32    16     8     4   mean |dev|  max |dev|
    majority         55.6  71.8  84.4  93.1  98.2  99.9      1.92       4.74
    majority-void    55.2  71.1  83.5  91.6  95.3  97.9      2.01       4.31
    pil-nearest      53.9  69.5  81.9  90.3  95.0  97.2      2.71       4.21
    nearest-center   52.9  68.8  81.4  90.2  95.1  97.3      2.73       4.74
    nearest-topleft  34.3  52.0  68.9  81.8  91.0  95.9     12.33      21.26

All fall as f grows; all but ``nearest-topleft`` (its samples sit half a cell off the cell
centre, shifting the whole map) stay within 6 points of the paper at every factor; ``majority``
has the smallest mean absolute deviation (RMS ties with ``majority-void`` at 2.35), so it is the
default. It is also the natural oracle: the one label per cell that gets the most scored pixels
right. Its excess at f <= 8 comes from VOC's void outlines absorbing the boundary cells;
``majority-void`` lets void win a cell, stays below the paper there, and is the closest
alternative.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from pipeline.errors import DataError
from pipeline.metrics.segmentation import confusion_matrix, segmentation_scores

VOID = 255
METHODS: tuple[str, ...] = (
    "nearest-center",
    "nearest-topleft",
    "majority",
    "majority-void",
    "pil-nearest",
)
ALIASES: dict[str, str] = {"nearest": "nearest-center"}
DEFAULT_METHOD = "majority"
PAPER_FACTORS: tuple[int, ...] = (128, 64, 32, 16, 8, 4)


def resolve_method(method: str) -> str:
    """Canonical method name; ValueError listing the choices for an unknown one."""
    name = ALIASES.get(method, method)
    if name not in METHODS:
        choices = ", ".join([*METHODS, *ALIASES])
        raise ValueError(f"unknown upper-bound method {method!r}; choose one of: {choices}")
    return name


def load_label(path: Path, num_classes: int = 21) -> np.ndarray:
    """Class-index label (uint8, 255 void) read as indices, never as colours; DataError if bad."""
    try:
        with Image.open(path) as im:
            if im.mode not in ("P", "L"):
                raise DataError(f"{path}: label must be a palette or grayscale PNG, got {im.mode}")
            label = np.array(im)
    except FileNotFoundError as e:
        raise DataError(f"{path}: label file not found") from e
    except DataError:
        raise
    except Exception as e:  # PIL raises several types for truncated/corrupt files
        raise DataError(f"{path}: cannot read label ({e})") from e
    bad = (label >= num_classes) & (label != VOID)
    if bad.any():
        raise DataError(
            f"{path}: label values {sorted(np.unique(label[bad]).tolist())[:5]} are outside "
            f"0..{num_classes - 1} and not void ({VOID})"
        )
    return label


def _cell_counts(label: np.ndarray, factor: int, num_classes: int) -> np.ndarray:
    """Per-cell histogram of shape (grid_h, grid_w, num_classes + 1); the last bin is void.

    Cells form a ceil-sized grid anchored at the top-left; partial cells count in-image pixels.
    """
    h, w = label.shape
    gh, gw = -(-h // factor), -(-w // factor)
    k = num_classes + 1
    lut = np.arange(256, dtype=np.int64)
    lut[VOID] = num_classes
    codes = (np.arange(h) // factor * (gw * k))[:, None] + (np.arange(w) // factor * k)[None, :]
    codes += lut[label]
    return np.bincount(codes.ravel(), minlength=gh * gw * k).reshape(gh, gw, k)


def _centre_index(size: int, factor: int) -> np.ndarray:
    starts = np.arange(0, size, factor)
    return starts + np.minimum(factor, size - starts) // 2


def downsample(label: np.ndarray, factor: int, method: str, num_classes: int = 21) -> np.ndarray:
    """Coarse label, one value per f x f cell (ceil grid); 255 where the method yields void."""
    method = resolve_method(method)
    if factor < 1:
        raise ValueError(f"downsampling factor must be >= 1, got {factor}")
    h, w = label.shape
    if method == "nearest-center":
        return label[np.ix_(_centre_index(h, factor), _centre_index(w, factor))]
    if method == "nearest-topleft":
        return label[::factor, ::factor]
    if method == "pil-nearest":
        size = (-(-w // factor), -(-h // factor))
        return np.array(Image.fromarray(label).resize(size, Image.Resampling.NEAREST))
    counts = _cell_counts(label, factor, num_classes)
    if method == "majority":
        coarse = counts[:, :, :num_classes].argmax(axis=2)
        coarse[counts[:, :, :num_classes].sum(axis=2) == 0] = VOID
    else:  # majority-void: void is a candidate like any class
        coarse = counts.argmax(axis=2)
        coarse[coarse == num_classes] = VOID
    return coarse.astype(np.uint8)


def upsample(coarse: np.ndarray, factor: int, shape: tuple[int, int], method: str) -> np.ndarray:
    """Nearest-neighbour upsampling back to ``shape`` (each pixel takes its cell's label)."""
    h, w = shape
    if resolve_method(method) == "pil-nearest":
        return np.array(Image.fromarray(coarse).resize((w, h), Image.Resampling.NEAREST))
    return coarse[np.ix_(np.arange(h) // factor, np.arange(w) // factor)]


def simulate(label: np.ndarray, factor: int, method: str, num_classes: int = 21) -> np.ndarray:
    """The best prediction obtainable at output stride ``factor``: down then up again."""
    coarse = downsample(label, factor, method, num_classes)
    return upsample(coarse, factor, label.shape, method)


def _scores(hist: np.ndarray, num_classes: int) -> dict:
    """FCN scores of a matrix with an extra void-prediction column, dropped from class means."""
    s = segmentation_scores(hist)
    ius = s["per_class_iu"][:num_classes]
    valid = [v for v in ius if v is not None]
    s["per_class_iu"] = ius
    s["mean_iu"] = float(np.mean(valid)) if valid else float("nan")
    s["void_predicted_pixels"] = int(hist[:num_classes, num_classes].sum())
    s["pixels"] = int(hist.sum())
    return s


def _label_paths(labels_dir: Path, ids: Sequence[str]) -> list[Path]:
    if not ids:
        raise DataError(f"{labels_dir}: no image ids given")
    paths = [Path(labels_dir) / f"{i}.png" for i in ids]
    missing = [p for p in paths if not p.is_file()]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise DataError(f"{missing[0]}: label file not found{more}")
    return paths


def _aggregate(counts: np.ndarray, ratio: int) -> np.ndarray:
    """Sum ``ratio`` x ``ratio`` blocks of a cell-count grid (a coarser grid anchored alike)."""
    gh, gw, k = counts.shape
    ch, cw = -(-gh // ratio), -(-gw // ratio)
    if (ch * ratio, cw * ratio) != (gh, gw):
        counts = np.pad(counts, ((0, ch * ratio - gh), (0, cw * ratio - gw), (0, 0)))
    rows = counts.reshape(ch, ratio, cw * ratio * k).sum(axis=1, dtype=counts.dtype)
    return rows.reshape(ch, cw, ratio, k).sum(axis=2, dtype=counts.dtype)


def _cell_hist(counts: np.ndarray, coarse: np.ndarray, num_classes: int) -> np.ndarray:
    """Confusion matrix of the nearest-upsampled ``coarse`` label, from per-cell truth counts.

    Upsampling gives every pixel of a cell the cell's label, so ``hist[t, p]`` is the number of
    class-t pixels in cells labelled p: equal to ``confusion_matrix(label, simulate(...))``
    (checked in the tests) without touching every pixel again.
    """
    k = num_classes + 1
    pred = np.where(coarse == VOID, num_classes, coarse).ravel().astype(np.int64)
    truth = counts.reshape(-1, k)[:, :num_classes]  # void truth is ignored
    cell, cls = np.nonzero(truth)  # sparse: most cells hold one class
    hist = np.bincount(cls * k + pred[cell], weights=truth[cell, cls], minlength=k * k)
    return np.rint(hist).astype(np.int64).reshape(k, k)


def _image_hists(
    label: np.ndarray, factors: list[int], methods: list[str], num_classes: int
) -> dict[tuple[str, int], np.ndarray]:
    """Per (method, factor) confusion matrices of one label, with a void-prediction column."""
    k = num_classes + 1
    out: dict[tuple[str, int], np.ndarray] = {}
    grids: dict[int, np.ndarray] = {}  # cell counts by factor, each built from a finer one
    if any(m != "pil-nearest" for m in methods):
        base = int(np.gcd.reduce(factors))
        grids[base] = _cell_counts(label, base, num_classes).astype(np.int32)
    for f in sorted(factors):
        counts = None
        for m in methods:
            if m == "pil-nearest":  # not cell-aligned: score every pixel
                pred = simulate(label, f, m, num_classes)
                pred = np.where(pred == VOID, num_classes, pred)
                out[m, f] = confusion_matrix(label, pred, k)
                continue
            if counts is None:
                finer = max(g for g in grids if f % g == 0)
                counts = grids[f] = _aggregate(grids[finer], f // finer)
            if m == "majority":
                coarse = counts[:, :, :num_classes].argmax(axis=2).astype(np.uint8)
                coarse[counts[:, :, :num_classes].sum(axis=2) == 0] = VOID
            elif m == "majority-void":
                coarse = counts.argmax(axis=2).astype(np.uint8)
                coarse[coarse == num_classes] = VOID
            else:
                coarse = downsample(label, f, m, num_classes)
            out[m, f] = _cell_hist(counts, coarse, num_classes)
    return out


def compare_methods(
    labels_dir: Path,
    ids: Sequence[str],
    factors: Iterable[int] = PAPER_FACTORS,
    methods: Iterable[str] = METHODS,
    num_classes: int = 21,
) -> dict[str, dict]:
    """``upper_bound`` for several methods, reading each label once."""
    methods = [resolve_method(m) for m in methods]
    factors = [int(f) for f in factors]
    if not factors or min(factors) < 1:
        raise ValueError(f"factors must be integers >= 1, got {factors}")
    if not 1 <= num_classes < VOID:
        raise ValueError(f"num_classes must be in 1..{VOID - 1}, got {num_classes}")
    paths = _label_paths(labels_dir, ids)  # all files checked before any work
    k = num_classes + 1
    hists = {(m, f): np.zeros((k, k), dtype=np.int64) for m in methods for f in factors}
    for path in paths:
        label = load_label(path, num_classes)
        for key, hist in _image_hists(label, factors, methods, num_classes).items():
            hists[key] += hist
    return {
        m: {
            "method": m,
            "num_images": len(paths),
            "num_classes": num_classes,
            "factors": {f: _scores(hists[m, f], num_classes) for f in factors},
        }
        for m in methods
    }


def upper_bound(
    labels_dir: Path,
    ids: list[str],
    factors: list[int],
    method: str = DEFAULT_METHOD,
    num_classes: int = 21,
) -> dict:
    """Scores of ground truth down- and up-sampled by each factor, against the original.

    Returns ``{"method", "num_images", "num_classes", "factors": {f: scores}}`` where scores
    are ``segmentation_scores`` fields as fractions (``mean_iu``, ``pixel_acc``, ``mean_acc``,
    ``fw_iu``, ``per_class_iu``) plus ``void_predicted_pixels`` and ``pixels``.
    """
    name = resolve_method(method)
    return compare_methods(labels_dir, ids, factors, [name], num_classes)[name]
