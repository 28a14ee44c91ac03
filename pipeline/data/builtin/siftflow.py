"""Built-in, deterministic synthetic outdoor scenes in the real SIFT Flow on-disk layout.

Why: the tiny profile must exercise the SIFT Flow path (the parser, FCN's label conventions,
the semantic + geometric pair FCN trains jointly, scoring only classes present in test) with no
download. The generator writes what ``SiftFlowDataset.zip`` holds and
:class:`pipeline.data.datasets.siftflow.SIFTFlow` reads::

    SiftFlowDataset/Images/spatial_envelope_256x256_static_8outdoorcategories/<id>.jpg
    SiftFlowDataset/SemanticLabels/spatial_envelope_256x256_static_8outdoorcategories/<id>.mat
        S: H x W, 0 = void, 1..33 (SIFT Flow's classes); names: the 33 class names
    SiftFlowDataset/GeoLabels/spatial_envelope_256x256_static_8outdoorcategories/<id>.mat
        S: H x W, -1 = void, 1 sky, 2 horizontal, 3 vertical; names: the 3 names
    SiftFlowDataset/TestSet1.txt   the test images, ``<folder>\\<id>.jpg`` (Windows paths)

Ids are ``<category>_syn<index>``, the category drawn from SIFT Flow's eight (coast, forest,
highway, insidecity, mountain, opencountry, street, tallbuilding). A scene follows its category
as the real photographs do: sky above a wavy horizon (sun and moon rare), ground below it (road
with sidewalks and crosswalks in towns, sea and sand on coasts, field, grass, river, desert in
the country) and vertical things standing on it (buildings with windows, doors, balconies and
awnings; mountains, trees, cars, buses, people, cows, poles, street lights, signs, fences,
staircases, bridges, boats, rocks, plants, birds in the sky). Objects shrink towards the
horizon. So a few classes (sky, building, mountain, road, tree, sea) cover most pixels and most
classes are rare, as in the real set; a few small unlabelled spots are void.

Every class occurs: the ``j``-th image of a split additionally shows class ``j mod 33`` (the
test split skips cow, desert and moon, which, as in the real set, never occur in test), so a
set with at least 33 trainval images holds all 33 classes. Geometric labels follow the semantic
ones (sky, sun, moon -> sky; ground classes -> horizontal; everything else -> vertical). Each
class has its own colour and texture (:mod:`pipeline.data.builtin.scenes`), jittered per image,
with lighting and noise. Image ``i`` depends only on ``(seed, i)`` and the split sizes; the
output is byte-identical from run to run.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from pipeline.data.builtin.matfile import write_mat
from pipeline.data.builtin.scenes import Look, ellipse, paint_classes, rect, void_blobs
from pipeline.data.datasets.siftflow import (
    ABSENT_FROM_TEST,
    GEO_CLASSES,
    SIFTFLOW_CLASSES,
    SUBDIR,
)
from pipeline.runtime.fsutil import atomic_path
from pipeline.runtime.progress import progress_bar

CATEGORIES = (
    "coast", "forest", "highway", "insidecity", "mountain", "opencountry", "street",
    "tallbuilding",
)  # fmt: skip
SEM = {name: i + 1 for i, name in enumerate(SIFTFLOW_CLASSES)}  # raw semantic values, 0 = void
SKY_CLASSES = ("sky", "sun", "moon")
GROUND_CLASSES = (
    "crosswalk", "desert", "field", "grass", "river", "road", "sand", "sea", "sidewalk",
)  # fmt: skip
BACKDROP = ("sky", "sun", "moon", "bird", "mountain")
#: raw semantic value (0..33) -> raw geometric value (-1 void, 1 sky, 2 horizontal, 3 vertical)
GEO_OF_SEM = np.array(
    [-1] + [1 if n in SKY_CLASSES else 2 if n in GROUND_CLASSES else 3 for n in SIFTFLOW_CLASSES],
    np.int16,
)
LOOKS = {
    "awning": Look((215, 70, 45), "vstripes", 0.45, 3),
    "balcony": Look((205, 200, 185), "vstripes", 0.55, 2),
    "bird": Look((35, 30, 30)),
    "boat": Look((240, 240, 245), "hstripes", 0.25, 3),
    "bridge": Look((150, 70, 45), "checker", 0.3, 3),
    "building": Look((175, 125, 95), "checker", 0.15, 4),
    "bus": Look((235, 195, 35), "hstripes", 0.15, 4),
    "car": Look((170, 25, 35), "plain", 0.0),
    "cow": Look((240, 240, 235), "blotch", 0.85, 3),
    "crosswalk": Look((235, 235, 230), "vstripes", 0.7, 3),
    "desert": Look((220, 150, 75), "hstripes", 0.15, 5),
    "door": Look((100, 60, 30), "vstripes", 0.2, 3),
    "fence": Look((160, 115, 60), "vstripes", 0.55, 2),
    "field": Look((190, 180, 95), "hstripes", 0.2, 3),
    "grass": Look((75, 155, 50), "speckle", 0.3),
    "moon": Look((235, 235, 210)),
    "mountain": Look((110, 105, 135), "blotch", 0.25, 6),
    "person": Look((210, 70, 170), "hstripes", 0.3, 4),
    "plant": Look((120, 175, 40), "dots", 0.45, 3),
    "pole": Look((70, 70, 75)),
    "river": Look((55, 135, 125), "hstripes", 0.15, 3),
    "road": Look((85, 85, 92), "speckle", 0.15),
    "rock": Look((130, 110, 90), "blotch", 0.35, 3),
    "sand": Look((225, 205, 155), "speckle", 0.1),
    "sea": Look((30, 80, 155), "hstripes", 0.2, 3),
    "sidewalk": Look((170, 165, 155), "checker", 0.2, 4),
    "sign": Look((30, 95, 205)),
    "sky": Look((135, 185, 240), "vgrad", 0.25),
    "staircase": Look((185, 175, 165), "hstripes", 0.4, 2),
    "streetlight": Look((40, 45, 35), "hstripes", 0.3, 2),
    "sun": Look((255, 240, 150)),
    "tree": Look((35, 90, 40), "blotch", 0.45, 3),
    "window": Look((35, 50, 80), "plain", 0.0),
}
SEM_LOOKS = {SEM[name]: look for name, look in LOOKS.items()}
MAT_PLATFORM = "densepipe builtin SIFT Flow"


@dataclass(frozen=True)
class SIFTFlowBuiltinSpec:
    """What the generator makes: ``num_trainval`` + ``num_test`` images (the test ones spread
    evenly over the indices), ``height`` x ``width`` pixels (the real ones are 256 x 256)."""

    num_trainval: int = 64
    num_test: int = 24
    height: int = 96
    width: int = 96
    seed: int = 0

    def __post_init__(self) -> None:
        if min(self.height, self.width) < 32:
            raise ValueError(f"images must be at least 32x32, got {self.width}x{self.height}")
        if self.num_trainval < 1:
            raise ValueError(f"num_trainval must be >= 1, got {self.num_trainval}")
        if self.num_test < 1:
            raise ValueError(f"num_test must be >= 1, got {self.num_test}")

    @property
    def num_images(self) -> int:
        return self.num_trainval + self.num_test

    def split_indices(self) -> dict[str, list[int]]:
        """0-based image indices of ``trainval`` / ``test`` (test interleaved, as TestSet1's)."""
        n, k = self.num_images, self.num_test
        test = [i for i in range(n) if ((i + 1) * k) // n > (i * k) // n]
        chosen = set(test)
        return {"trainval": [i for i in range(n) if i not in chosen], "test": test}


def scene_category(spec: SIFTFlowBuiltinSpec, index: int) -> str:
    """Image ``index``'s category, drawn (not cycled: the test images are evenly spaced)."""
    rng = np.random.default_rng([spec.seed, index, 1])
    return CATEGORIES[int(rng.integers(len(CATEGORIES)))]


def siftflow_example_id(spec: SIFTFlowBuiltinSpec, index: int) -> str:
    return f"{scene_category(spec, index)}_syn{index:04d}"


class _Scene:
    """A semantic class map under construction (raw values 0..33) with the scene's layout."""

    def __init__(self, rng: np.random.Generator, height: int, width: int, horizon: float):
        self.rng, self.h, self.w = rng, height, width
        amp, phase = rng.uniform(0, 0.03) * height, rng.uniform(0, 2 * np.pi)
        cols = np.arange(width)
        self.horizon = horizon * height + amp * np.sin(phase + 2 * np.pi * cols / width)
        self.yy, self.xx = np.mgrid[0:height, 0:width]
        self.sem = np.full((height, width), SEM["sky"], np.int16)
        self.buildings: list[tuple[float, float, float]] = []  # (top, x0, x1)
        self.road: tuple[float, float, float] | None = None  # (vanishing x, half width, spread)

    @property
    def ground(self) -> np.ndarray:
        return self.yy >= self.horizon[None, :]

    def depth(self) -> np.ndarray:
        """Per pixel, how far below the horizon it lies as a fraction of the ground's height."""
        below = (self.yy - self.horizon[None, :]) / (self.h - self.horizon[None, :])
        return np.clip(below, 0.0, 1.0)

    def paint(self, mask: np.ndarray, name: str, over: tuple[str, ...] | None = None) -> int:
        """Give ``mask`` class ``name`` (only where it now shows one of ``over``)."""
        if over is not None:
            mask = mask & np.isin(self.sem, [SEM[n] for n in over])
        self.sem[mask] = SEM[name]
        return int(mask.sum())

    def has(self, name: str) -> bool:
        return bool((self.sem == SEM[name]).any())

    def spot(self, near: float = 0.1, far: float = 0.95) -> tuple[float, float, float]:
        """A ground point (row, column) and its perspective scale (0.3 far .. 1 near)."""
        col = self.rng.uniform(0.05, 0.95) * self.w
        frac = self.rng.uniform(near, far)
        hor = self.horizon[int(col)]
        return hor + frac * (self.h - 1 - hor), col, 0.3 + 0.7 * frac


# -- ground ------------------------------------------------------------------------------------
def _ground_fill(s: _Scene, name: str, start: float = 0.0, end: float = 1.0) -> int:
    depth = s.depth()
    band = s.ground & (depth >= start) & (depth <= end)
    return s.paint(band, name, over=GROUND_CLASSES)


def _road(s: _Scene) -> int:
    vx = s.rng.uniform(0.3, 0.7) * s.w
    half, spread = s.rng.uniform(0.01, 0.05) * s.w, s.rng.uniform(0.5, 1.0) * s.w / s.h
    below = s.yy - s.horizon[None, :]
    s.road = (vx, half, spread)
    return s.paint(s.ground & (np.abs(s.xx - vx) <= half + spread * below), "road", GROUND_CLASSES)


def _sidewalk(s: _Scene) -> int:
    if s.road is None:
        return _ground_fill(s, "sidewalk", s.rng.uniform(0.5, 0.8))
    vx, half, spread = s.road
    below = s.yy - s.horizon[None, :]
    edge = half + spread * below
    band = s.ground & (np.abs(s.xx - vx) > edge) & (np.abs(s.xx - vx) <= 1.8 * edge + 0.04 * s.w)
    return s.paint(band, "sidewalk", over=GROUND_CLASSES)


def _crosswalk(s: _Scene) -> int:
    if s.road is None or not s.has("road"):
        _road(s)
    depth = s.depth()
    start = s.rng.uniform(0.3, 0.7)
    band = (depth >= start) & (depth <= start + s.rng.uniform(0.1, 0.2))
    return s.paint(band, "crosswalk", over=("road",))


def _sea(s: _Scene) -> int:
    return _ground_fill(s, "sea", 0.0, s.rng.uniform(0.3, 0.8))


def _river(s: _Scene) -> int:
    centre = s.rng.uniform(0.25, 0.7)
    amp, phase = s.rng.uniform(0.02, 0.1), s.rng.uniform(0, 2 * np.pi)
    wave = centre + amp * np.sin(phase + 2 * np.pi * s.xx / s.w * s.rng.uniform(0.5, 1.5))
    width = s.rng.uniform(0.05, 0.12)
    return s.paint(s.ground & (np.abs(s.depth() - wave) < width), "river", GROUND_CLASSES)


def _band(name: str, low: tuple[float, float]) -> Callable[[_Scene], int]:
    """A ground class filling the ground from a random depth in ``low`` down to the bottom."""

    def add(s: _Scene) -> int:
        return _ground_fill(s, name, s.rng.uniform(*low), 1.0)

    return add


# -- backdrop ----------------------------------------------------------------------------------
def _mountain(s: _Scene, tall: tuple[float, float] = (0.12, 0.35)) -> int:
    knots = s.rng.uniform(0.3, 1.0, 6)
    profile = np.interp(np.arange(s.w), np.linspace(0, s.w - 1, 6), knots)
    ridge = s.horizon - s.rng.uniform(*tall) * s.h * profile
    return s.paint((s.yy >= ridge[None, :]) & ~s.ground, "mountain", over=BACKDROP)


def _building(
    s: _Scene,
    tall: tuple[float, float] = (0.15, 0.45),
    wide: tuple[float, float] = (0.15, 0.4),
    front: bool = False,
) -> int:
    """A building on the horizon, behind what stands there (``front``: in front of it)."""
    x0 = s.rng.uniform(-0.1, 0.85) * s.w
    x1 = x0 + s.rng.uniform(*wide) * s.w
    top = max(1.0, float(s.horizon.min()) - s.rng.uniform(*tall) * s.h)
    mask = (s.xx >= x0) & (s.xx < x1) & (s.yy >= top) & ~s.ground
    n = s.paint(mask, "building", over=None if front else (*BACKDROP, "building"))
    if n:
        s.buildings.append((top, max(0.0, x0), min(float(s.w), x1)))
    return n


def _on_building(s: _Scene) -> tuple[float, float, float, float]:
    """(top, x0, x1, base row) of a building, one built first if the scene has none."""
    if not s.buildings:
        _building(s)
    if not s.buildings:  # something hid it
        _building(s, front=True)
    top, x0, x1 = s.buildings[int(s.rng.integers(len(s.buildings)))]
    base = float(s.horizon[int(np.clip((x0 + x1) / 2, 0, s.w - 1))])
    return top, x0, x1, base


def _windows(s: _Scene) -> int:
    top, x0, x1, base = _on_building(s)
    ww, wh = max(1.0, 0.035 * s.w), max(2.0, 0.045 * s.h)
    step_x, step_y = ww * s.rng.uniform(1.8, 2.6), wh * s.rng.uniform(1.6, 2.2)
    mask = np.zeros_like(s.ground)
    for y in np.arange(top + 0.5 * wh, base - 2.5 * wh, step_y):
        for x in np.arange(x0 + 0.5 * ww, x1 - ww, step_x):
            mask |= rect(s.h, s.w, y, y + wh, x, x + ww)
    return s.paint(mask, "window", over=("building",))


def _door(s: _Scene) -> int:
    _, x0, x1, base = _on_building(s)
    dw, dh = max(2.0, 0.05 * s.w), max(3.0, 0.1 * s.h)
    x = s.rng.uniform(x0, max(x0, x1 - dw))
    return s.paint(rect(s.h, s.w, base - dh, base, x, x + dw), "door", over=("building",))


def _balcony(s: _Scene) -> int:
    top, x0, x1, base = _on_building(s)
    bw, bh = max(3.0, 0.08 * s.w), max(2.0, 0.025 * s.h)
    y = s.rng.uniform(top + 2 * bh, max(top + 2 * bh, base - 0.15 * s.h))
    x = s.rng.uniform(x0, max(x0, x1 - bw))
    return s.paint(rect(s.h, s.w, y, y + bh, x, x + bw), "balcony", ("building", "window"))


def _awning(s: _Scene) -> int:
    _, x0, x1, base = _on_building(s)
    aw, ah = max(4.0, 0.1 * s.w), max(2.0, 0.03 * s.h)
    y, x = base - 0.12 * s.h - ah, s.rng.uniform(x0, max(x0, x1 - aw))
    return s.paint(rect(s.h, s.w, y, y + ah, x, x + aw), "awning", ("building", "window", "door"))


def _sky_disc(name: str, radius: tuple[float, float]) -> Callable[[_Scene], int]:
    def add(s: _Scene) -> int:
        r = s.rng.uniform(*radius) * s.h
        low = max(r + 1.0, float(s.horizon.min()) - 1.5 * r)
        cy, cx = s.rng.uniform(r, low), s.rng.uniform(r, s.w - r)
        return s.paint(ellipse(s.h, s.w, cy, cx, r, r), name, over=("sky",))

    return add


def _birds(s: _Scene) -> int:
    n = 0
    for _ in range(int(s.rng.integers(1, 4))):
        cy = s.rng.uniform(0.05, 0.8) * float(s.horizon.min())
        cx = s.rng.uniform(0.05, 0.95) * s.w
        ry, rx = s.rng.uniform(0.6, 1.0) * s.h / 96, s.rng.uniform(1.5, 2.5) * s.h / 96
        n += s.paint(ellipse(s.h, s.w, cy, cx, ry, rx), "bird", over=("sky",))
    return n


def _bridge(s: _Scene) -> int:
    hor = float(s.horizon.min())
    deck = hor - s.rng.uniform(0.08, 0.2) * s.h
    thick = max(2.0, 0.04 * s.h)
    x0 = s.rng.uniform(-0.2, 0.3) * s.w
    x1 = x0 + s.rng.uniform(0.5, 1.0) * s.w
    mask = rect(s.h, s.w, deck, deck + thick, x0, x1)
    for x in np.linspace(x0, x1, int(s.rng.integers(2, 4)) + 2)[1:-1]:
        mask |= rect(s.h, s.w, deck, float(s.horizon[int(np.clip(x, 0, s.w - 1))]) + 2, x, x + 2)
    return s.paint(mask, "bridge", over=(*BACKDROP, *GROUND_CLASSES, "building", "tree"))


# -- things on the ground ----------------------------------------------------------------------
def _tree(s: _Scene, far: float = 0.5) -> int:
    y, x, scale = s.spot(0.0, far)
    tall = scale * s.rng.uniform(0.25, 0.45) * s.h
    trunk = rect(
        s.h, s.w, y - 0.45 * tall, y + 1, x - max(0.6, 0.05 * tall), x + max(0.6, 0.05 * tall)
    )
    crown = ellipse(s.h, s.w, y - 0.65 * tall, x, 0.35 * tall, s.rng.uniform(0.2, 0.35) * tall)
    return s.paint(trunk | crown, "tree")


def _treeline(s: _Scene) -> int:
    n = 0
    for x in np.arange(-0.05 * s.w, 1.05 * s.w, s.rng.uniform(0.08, 0.14) * s.w):
        tall = s.rng.uniform(0.25, 0.55) * s.h
        y = float(s.horizon[int(np.clip(x, 0, s.w - 1))]) + s.rng.uniform(0, 0.05) * s.h
        crown = ellipse(s.h, s.w, y - 0.5 * tall, x, 0.5 * tall, s.rng.uniform(0.08, 0.14) * s.w)
        n += s.paint(crown, "tree")
    return n


def _car(s: _Scene) -> int:
    y, x, scale = s.spot(0.1, 0.9)
    length, height = scale * 0.24 * s.h, scale * 0.08 * s.h
    body = rect(s.h, s.w, y - height, y, x - length / 2, x + length / 2)
    cabin = rect(s.h, s.w, y - 1.7 * height, y - height, x - length / 4, x + length / 4)
    return s.paint(body | cabin, "car")


def _bus(s: _Scene) -> int:
    y, x, scale = s.spot(0.1, 0.8)
    length, height = scale * 0.42 * s.h, scale * 0.2 * s.h
    return s.paint(rect(s.h, s.w, y - height, y, x - length / 2, x + length / 2), "bus")


def _person(s: _Scene) -> int:
    y, x, scale = s.spot(0.1, 0.95)
    tall, half = scale * 0.22 * s.h, max(0.6, scale * 0.03 * s.h)
    body = rect(s.h, s.w, y - 0.8 * tall, y, x - half, x + half)
    head = ellipse(s.h, s.w, y - 0.88 * tall, x, 0.1 * tall, 0.08 * tall)
    return s.paint(body | head, "person")


def _cow(s: _Scene) -> int:
    y, x, scale = s.spot(0.1, 0.9)
    ry, rx = scale * 0.05 * s.h, scale * 0.1 * s.h
    mask = ellipse(s.h, s.w, y - 2.2 * ry, x, ry, rx)
    for dx in (-0.6 * rx, 0.6 * rx):
        mask |= rect(s.h, s.w, y - 1.5 * ry, y, x + dx - 0.6, x + dx + 0.6)
    mask |= ellipse(s.h, s.w, y - 2.8 * ry, x + 1.1 * rx, 0.6 * ry, 0.35 * rx)
    return s.paint(mask, "cow")


def _rock(s: _Scene) -> int:
    y, x, scale = s.spot(0.1, 0.95)
    ry, rx = scale * s.rng.uniform(0.04, 0.1) * s.h, scale * s.rng.uniform(0.07, 0.15) * s.h
    return s.paint(ellipse(s.h, s.w, y - 0.6 * ry, x, ry, rx), "rock")


def _plant(s: _Scene) -> int:
    y, x, scale = s.spot(0.1, 0.95)
    mask = np.zeros_like(s.ground)
    for _ in range(3):
        r = scale * s.rng.uniform(0.03, 0.06) * s.h
        mask |= ellipse(s.h, s.w, y - r + s.rng.uniform(-r, 0), x + s.rng.uniform(-2, 2) * r, r, r)
    return s.paint(mask, "plant")


def _stick(s: _Scene, y: float, x: float, tall: float, name: str) -> int:
    half = max(0.6, 0.008 * s.w)
    return s.paint(rect(s.h, s.w, y - tall, y + 1, x - half, x + half), name)


def _pole(s: _Scene) -> int:
    y, x, scale = s.spot(0.1, 0.9)
    return _stick(s, y, x, scale * 0.35 * s.h, "pole")


def _streetlight(s: _Scene) -> int:
    y, x, scale = s.spot(0.1, 0.9)
    tall = scale * 0.4 * s.h
    head = rect(s.h, s.w, y - tall, y - tall + max(1.5, 0.02 * s.h), x - 0.05 * s.h, x + 1)
    return _stick(s, y, x, tall, "streetlight") + s.paint(head, "streetlight")


def _sign(s: _Scene) -> int:
    y, x, scale = s.spot(0.1, 0.9)
    tall, side = scale * 0.25 * s.h, max(2.0, scale * 0.08 * s.h)
    _stick(s, y, x, tall, "pole")
    return s.paint(
        rect(s.h, s.w, y - tall - side, y - tall + 1, x - side / 2, x + side / 2), "sign"
    )


def _fence(s: _Scene) -> int:
    y, x, scale = s.spot(0.05, 0.7)
    tall, length = max(2.0, scale * 0.07 * s.h), s.rng.uniform(0.3, 0.8) * s.w
    return s.paint(rect(s.h, s.w, y - tall, y, x - length / 2, x + length / 2), "fence")


def _staircase(s: _Scene) -> int:
    y, x, scale = s.spot(0.1, 0.8)
    steps, step_h, wide = 4, max(1.0, scale * 0.03 * s.h), scale * 0.22 * s.h
    mask = np.zeros_like(s.ground)
    for k in range(steps):
        half = wide / 2 * (1 - 0.18 * k)
        mask |= rect(s.h, s.w, y - (k + 1) * step_h, y - k * step_h, x - half, x + half)
    return s.paint(mask, "staircase")


def _boat(s: _Scene) -> int:
    water = np.isin(s.sem, [SEM["sea"], SEM["river"]])
    if not water.any():
        _sea(s)
        water = s.sem == SEM["sea"]
    rows, cols = np.nonzero(water)
    k = int(s.rng.integers(len(rows)))
    y, x = float(rows[k]), float(cols[k])
    scale = 0.3 + 0.7 * float(s.depth()[rows[k], cols[k]])
    length, height = scale * 0.2 * s.h, max(1.5, scale * 0.05 * s.h)
    hull = rect(s.h, s.w, y - height, y, x - length / 2, x + length / 2)
    cabin = rect(s.h, s.w, y - 2.2 * height, y - height, x - length / 5, x + length / 5)
    return s.paint(hull | cabin, "boat")


#: class name -> how to add one instance of it to a scene (returns the pixels it painted)
ADDERS: dict[str, Callable[[_Scene], int]] = {
    "awning": _awning,
    "balcony": _balcony,
    "bird": _birds,
    "boat": _boat,
    "bridge": _bridge,
    "building": _building,
    "bus": _bus,
    "car": _car,
    "cow": _cow,
    "crosswalk": _crosswalk,
    "desert": _band("desert", (0.2, 0.6)),
    "door": _door,
    "fence": _fence,
    "field": _band("field", (0.0, 0.6)),
    "grass": _band("grass", (0.2, 0.7)),
    "moon": _sky_disc("moon", (0.03, 0.05)),
    "mountain": _mountain,
    "person": _person,
    "plant": _plant,
    "pole": _pole,
    "river": _river,
    "road": _road,
    "rock": _rock,
    "sand": _band("sand", (0.4, 0.8)),
    "sea": _sea,
    "sidewalk": _sidewalk,
    "sign": _sign,
    "sky": lambda s: int((s.sem == SEM["sky"]).sum()),
    "staircase": _staircase,
    "streetlight": _streetlight,
    "sun": _sky_disc("sun", (0.04, 0.07)),
    "tree": _tree,
    "window": _windows,
}


#: the plans' steps: one instance of a class, or a variant for a category
_STEPS: dict[str, Callable[[_Scene], int]] = {
    **ADDERS,
    "city building": functools.partial(_building, tall=(0.3, 0.6), wide=(0.2, 0.5)),
    "tall building": functools.partial(_building, tall=(0.6, 0.85), wide=(0.25, 0.55)),
    "big mountain": functools.partial(_mountain, tall=(0.25, 0.5)),
    "treeline": _treeline,
}

# per category: horizon range (fraction of the height), base ground, then (class, probability,
# most instances) painted in order: backdrop first, then ground details, then things
PLANS: dict[str, tuple[tuple[float, float], str, tuple[tuple[str, float, int], ...]]] = {
    "coast": ((0.38, 0.55), "sand", (
        ("sea", 1.0, 1), ("mountain", 0.4, 1), ("building", 0.1, 1), ("tree", 0.15, 2),
        ("rock", 0.4, 2), ("boat", 0.5, 2), ("person", 0.2, 2), ("plant", 0.1, 1),
        ("bird", 0.15, 1), ("sun", 0.05, 1), ("moon", 0.02, 1),
    )),
    "forest": ((0.55, 0.75), "grass", (
        ("field", 0.1, 1), ("treeline", 1.0, 1), ("tree", 0.9, 4), ("plant", 0.5, 3),
        ("rock", 0.2, 1), ("person", 0.1, 1), ("cow", 0.03, 1),
    )),
    "highway": ((0.4, 0.55), "grass", (
        ("field", 0.5, 1), ("road", 1.0, 1), ("mountain", 0.4, 1), ("building", 0.3, 2),
        ("bridge", 0.1, 1), ("tree", 0.4, 3), ("fence", 0.3, 1), ("car", 0.8, 3),
        ("bus", 0.2, 1), ("sign", 0.3, 1), ("pole", 0.3, 2), ("streetlight", 0.3, 2),
        ("sun", 0.04, 1),
    )),
    "insidecity": ((0.6, 0.8), "sidewalk", (
        ("road", 1.0, 1), ("sidewalk", 1.0, 1), ("city building", 1.0, 4), ("window", 0.8, 2),
        ("door", 0.6, 2), ("balcony", 0.25, 2), ("awning", 0.25, 1), ("staircase", 0.1, 1),
        ("tree", 0.2, 1), ("car", 0.5, 2), ("person", 0.4, 3), ("pole", 0.2, 1),
        ("sign", 0.2, 1), ("streetlight", 0.2, 1),
    )),
    "mountain": ((0.5, 0.7), "field", (
        ("grass", 0.5, 1), ("river", 0.2, 1), ("big mountain", 1.0, 1), ("tree", 0.3, 3),
        ("rock", 0.3, 2), ("plant", 0.2, 2), ("bird", 0.05, 1), ("moon", 0.02, 1),
    )),
    "opencountry": ((0.4, 0.6), "field", (
        ("grass", 0.6, 1), ("desert", 0.06, 1), ("river", 0.15, 1), ("mountain", 0.5, 1),
        ("treeline", 0.2, 1), ("tree", 0.5, 3), ("plant", 0.3, 2), ("rock", 0.2, 1),
        ("fence", 0.15, 1), ("cow", 0.06, 2), ("bird", 0.05, 1), ("sun", 0.04, 1),
    )),
    "street": ((0.5, 0.7), "sidewalk", (
        ("road", 1.0, 1), ("sidewalk", 1.0, 1), ("crosswalk", 0.25, 1),
        ("city building", 1.0, 4), ("window", 0.7, 2), ("door", 0.5, 2), ("balcony", 0.2, 1),
        ("awning", 0.3, 2), ("staircase", 0.1, 1), ("tree", 0.2, 1), ("car", 0.6, 3),
        ("bus", 0.1, 1), ("person", 0.5, 3), ("streetlight", 0.4, 2), ("sign", 0.3, 1),
        ("pole", 0.3, 2),
    )),
    "tallbuilding": ((0.8, 0.95), "sidewalk", (
        ("road", 0.5, 1), ("tall building", 1.0, 4), ("window", 1.0, 3), ("door", 0.2, 1),
        ("balcony", 0.15, 1), ("tree", 0.2, 1), ("car", 0.2, 1), ("person", 0.1, 1),
    )),
}  # fmt: skip


def featured_class(spec: SIFTFlowBuiltinSpec, index: int) -> str:
    """The class image ``index`` is made to show: the ``j``-th image of a split shows class
    ``j mod 33`` (the test split cycles over the 30 classes that occur in test)."""
    for split, indices in spec.split_indices().items():
        if index in indices:
            j = indices.index(index)
            names = [n for n in SIFTFLOW_CLASSES if split != "test" or n not in ABSENT_FROM_TEST]
            return names[j % len(names)]
    raise IndexError(f"image {index} is not in the set of {spec.num_images}")


def render_siftflow_example(
    spec: SIFTFlowBuiltinSpec, index: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Image ``index``: HxWx3 uint8 RGB, HxW int16 raw semantic (0 void, 1..33) and raw
    geometric (-1 void, 1..3) labels."""
    rng = np.random.default_rng([spec.seed, index])
    featured = featured_class(spec, index)
    in_test = index in spec.split_indices()["test"]
    horizon, base, extras = PLANS[scene_category(spec, index)]
    s = _Scene(rng, spec.height, spec.width, rng.uniform(*horizon))
    s.paint(s.ground, base)
    for name, probability, most in extras:
        if (in_test and name in ABSENT_FROM_TEST) or rng.random() >= probability:
            continue
        for _ in range(int(rng.integers(1, most + 1))):
            _STEPS[name](s)
    for _ in range(4):  # the featured class, retried where something hid it
        if ADDERS[featured](s) and s.has(featured):
            break
    semantic = s.sem.copy()
    image = paint_classes(semantic, SEM_LOOKS, rng)
    unit = spec.height / 96
    spots = void_blobs(rng, spec.height, spec.width, int(rng.integers(0, 4)), (unit, 3.5 * unit))
    semantic[spots & (semantic != SEM[featured])] = 0  # the featured class stays labelled
    return image, semantic, GEO_OF_SEM[semantic]


def write_builtin_siftflow(root: Path, spec: SIFTFlowBuiltinSpec, progress: bool = True) -> Path:
    """Write the dataset to ``root/SiftFlowDataset`` atomically and return that folder."""
    final = Path(root) / "SiftFlowDataset"
    sem_names = np.array(SIFTFLOW_CLASSES, dtype=object)[None, :]
    geo_names = np.array(GEO_CLASSES, dtype=object)[None, :]
    with atomic_path(final) as tmp:
        folders = {k: tmp / k / SUBDIR for k in ("Images", "SemanticLabels", "GeoLabels")}
        for folder in folders.values():
            folder.mkdir(parents=True)
        bar = progress_bar(total=spec.num_images, desc="builtin SIFT Flow", disable=not progress)
        for i in range(spec.num_images):
            image_id = siftflow_example_id(spec, i)
            image, semantic, geometric = render_siftflow_example(spec, i)
            Image.fromarray(image).save(folders["Images"] / f"{image_id}.jpg", quality=92)
            write_mat(
                folders["SemanticLabels"] / f"{image_id}.mat",
                {"S": semantic, "names": sem_names},
                MAT_PLATFORM,
            )
            write_mat(
                folders["GeoLabels"] / f"{image_id}.mat",
                {"S": geometric, "names": geo_names},
                MAT_PLATFORM,
            )
            bar.update()
        bar.close()
        test = sorted(siftflow_example_id(spec, i) for i in spec.split_indices()["test"])
        (tmp / "TestSet1.txt").write_text("".join(f"{SUBDIR}\\{i}.jpg\n" for i in test))
    return final
