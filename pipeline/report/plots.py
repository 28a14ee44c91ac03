"""Figures people would rather look at than read: training curves, prediction grids, confusion,
and a prediction laid over its image.

Every function writes one PNG atomically (matplotlib Agg backend, no display needed; the overlay
is drawn with PIL at the image's own resolution).
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image, ImageDraw, ImageFont  # noqa: E402
from scipy import ndimage  # noqa: E402

from pipeline.data.builtin.voc import voc_palette  # noqa: E402
from pipeline.runtime.fsutil import atomic_path  # noqa: E402

_PALETTE = np.asarray(voc_palette(), np.uint8).reshape(256, 3)


def colorize(label: np.ndarray) -> np.ndarray:
    """Class indices -> VOC colours (void 255 drawn in the VOC void colour)."""
    return _PALETTE[np.asarray(label, np.uint8)]


def overlay(
    image: np.ndarray,
    label: np.ndarray,
    path: Path,
    names: tuple[str, ...] | None = None,
    alpha: float = 0.5,
) -> None:
    """``image`` (HxWx3 uint8) with ``label``'s VOC colours blended in at full resolution, and
    beside it a legend of the classes present (``names[k]`` when known, else ``class k``)."""
    h, w = label.shape
    blend = image.astype(np.float32) * (1 - alpha) + colorize(label).astype(np.float32) * alpha
    present = [int(k) for k in np.unique(label)]
    size = max(12, min(h, 2000) // 30)  # legible beside small and large images alike
    font = ImageFont.load_default(size=size)
    lines = [f"{k} {names[k] if names and k < len(names) else f'class {k}'}" for k in present]
    pad, step = size // 2, int(size * 1.4)
    text_w = max(int(font.getlength(line)) for line in lines)
    legend_w, legend_h = 3 * pad + size + text_w, 2 * pad + step * len(lines)
    canvas = Image.new("RGB", (w + legend_w, max(h, legend_h)), "white")
    canvas.paste(Image.fromarray(np.round(blend).astype(np.uint8)), (0, 0))
    draw = ImageDraw.Draw(canvas)
    for i, (k, line) in enumerate(zip(present, lines)):
        x, y = w + pad, pad + i * step
        draw.rectangle([x, y, x + size, y + size], fill=tuple(int(c) for c in _PALETTE[k]))
        draw.rectangle([x, y, x + size, y + size], outline="black")
        draw.text((x + size + pad, y), line, fill="black", font=font)
    with atomic_path(path) as tmp:
        canvas.save(tmp, format="PNG")


def _save(fig, path: Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)


#: about how many pixels an image's longer side spans in a :func:`prediction_grid` panel (a
#: 2.2 in cell at 110 dpi, less matplotlib's margins: measured ~165)
PANEL_PX = 160


def thicken_edges(strength: np.ndarray, panel_px: int = PANEL_PX) -> np.ndarray:
    """A one-pixel edge map (binary or soft, edges high) widened for display: a max filter as
    wide as the factor by which the panel shrinks the map, plus a pixel each side.

    A 481 px BSDS map drawn ~165 px wide keeps about one row or column in three: its
    one-pixel ground-truth and NMS edges become scattered dots. A 7-pixel-wide line survives
    as a ~2.5-pixel one. Maps that are not shrunk are returned as they are. Display only: the
    benchmark scores the thin maps."""
    strength = np.asarray(strength)
    shrink = max(strength.shape[:2]) / panel_px
    size = 2 * int(np.ceil(shrink)) - 1
    return strength if size <= 1 else ndimage.maximum_filter(strength, size=size)


def prediction_grid(rows: list[tuple], path: Path, titles: tuple[str, ...]) -> None:
    """One row per example: (image, truth, prediction[, more label maps]) side by side."""
    n, m = len(rows), len(titles)
    fig, axes = plt.subplots(n, m, figsize=(2.2 * m, 2.2 * n), squeeze=False)
    for i, row in enumerate(rows):
        for j, panel in enumerate(row):
            ax = axes[i, j]
            ax.imshow(panel if panel.ndim == 3 else colorize(panel), interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(titles[j], fontsize=9)
    _save(fig, Path(path))


#: each task's validation curve: history key, axis label, axis top
VAL_CURVES = (
    ("val_mean_iu", "val mean IU", 1.0),
    ("val_ods", "val ODS", 1.0),
    ("val_mean", "val mean angle (deg)", 90.0),
)


def training_curves(history: list[dict], path: Path, title: str = "") -> None:
    """Training loss per step and the task's validation metric (where recorded): mean IU, the
    edges' ODS or the normals' mean angle."""
    steps = [h["step"] for h in history if "loss" in h]
    losses = [h["loss"] for h in history if "loss" in h]
    key, name, top = next((v for v in VAL_CURVES if any(v[0] in h for h in history)), VAL_CURVES[0])
    val = [(h["step"], h[key]) for h in history if key in h]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(steps, losses, lw=1, label="train loss")
    ax.set_xlabel("iteration")
    ax.set_ylabel("loss")
    if val:
        ax2 = ax.twinx()
        ax2.plot(*zip(*val), "o-", color="C1", label=name)
        ax2.set_ylabel(name)
        ax2.set_ylim(0, top)
        ax2.legend(loc="upper right")
    ax.legend(loc="upper left")
    ax.set_title(title)
    _save(fig, Path(path))


def confusion(hist: np.ndarray, classes: tuple[str, ...], path: Path) -> None:
    """Row-normalised confusion matrix (truth rows, predicted columns), classes present only."""
    present = np.flatnonzero(hist.sum(1) + hist.sum(0))
    sub = hist[np.ix_(present, present)].astype(float)
    with np.errstate(invalid="ignore", divide="ignore"):
        norm = np.nan_to_num(sub / sub.sum(1, keepdims=True))
    names = [classes[i] for i in present]
    fig, ax = plt.subplots(figsize=(1 + 0.45 * len(names), 1 + 0.45 * len(names)))
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(names)), names, rotation=90, fontsize=7)
    ax.set_yticks(range(len(names)), names, fontsize=7)
    ax.set_xlabel("predicted")
    ax.set_ylabel("truth")
    for (i, j), v in np.ndenumerate(norm):
        if v >= 0.01:
            ax.text(
                j,
                i,
                f"{v:.2f}",
                ha="center",
                va="center",
                fontsize=6,
                color="white" if v > 0.5 else "black",
            )
    _save(fig, Path(path))


def sweep_curves(histories: dict[str, list], metric: str, path: Path, stopped=()) -> None:
    """A sweep's validation metric against optimizer step, one line per trial (dashed: stopped
    early by the scheduler)."""
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for name, history in histories.items():
        if history:
            ax.plot(*zip(*history), "--" if name in stopped else "-", marker="o", ms=3, label=name)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel(metric)
    ax.legend(fontsize=7, ncol=2)
    _save(fig, Path(path))


def sweep_values(rows: list[dict], keys: list[str], metric: str, path: Path) -> None:
    """The best metric of each trial against each swept value (log x for log-scale ranges)."""
    fig, axes = plt.subplots(1, len(keys), figsize=(3.2 * len(keys), 3), squeeze=False)
    for ax, key in zip(axes[0], keys):
        xs = [r["values"][key] for r in rows]
        ys = [r["best"] for r in rows]
        numeric = all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in xs)
        if numeric and min(xs) > 0 and max(xs) / min(xs) > 20:
            ax.set_xscale("log")
        ax.scatter(xs if numeric else [str(x) for x in xs], ys)
        ax.set_xlabel(key)
        ax.set_ylabel(metric)
    _save(fig, Path(path))
