"""Built-in, deterministic synthetic scenes in the real PASCAL-Context (+ VOC2010) on-disk layout.

Why: the tiny profile must exercise the PASCAL-Context path (the full 459-class ``LabelMap``,
the 59-class task that maps every other class to background, the 33-class task that maps them to
void) with no download. The generator writes what the release and VOC2010 hold and
:class:`pipeline.data.datasets.context.PascalContext` reads::

    PASCAL-Context/trainval/<id>.mat     LabelMap: H x W uint16, 1..459 (labels.txt), 0 unlabelled
    PASCAL-Context/labels.txt            "1: accordion" ... "459: wool" (the real full list)
    PASCAL-Context/59_labels.txt         "1: aeroplane" ... "59: wood" (FCN's task names)
    PASCAL-Context/33_labels.txt         "1: aeroplane" ... "33: ceiling"
    VOCdevkit/VOC2010/JPEGImages/<id>.jpg
    VOCdevkit/VOC2010/ImageSets/Main/{train,val}.txt

Scenes are whole-scene labelled, as PASCAL-Context's are: outdoor ones (sky, sun; mountain,
building with windows and doors, tree line, bridge; grass, ground, road with sidewalk, water
with sand, snow, rail track with platform; fences) and indoor ones (ceiling with lights; wall
with windows, curtains, doors, pictures, mirrors, clocks, shelves of books; floor with rugs),
each with VOC's objects and PASCAL-Context's other things where they belong (plates, food,
cups, computers, keyboards and mice on tables; pillows and bedclothes on beds; boats on water,
trains on tracks, aeroplanes and birds in the sky). Several classes that are in neither task
list (:data:`FULL_ONLY`: sun, sand, pole, bridge, picture, mirror, clock, rug, pillow, box) cover
real areas, so the 59-class mapping (-> background) and the 33-class mapping (-> void) change
pixels; a few small unlabelled spots are 0.

Every class occurs: the ``j``-th image of a split additionally shows the ``j``-th class of
:data:`FEATURED` (the 59 task classes, then :data:`FULL_ONLY`), so a split with at least 69
images holds them all. Each class has its own colour and texture
(:mod:`pipeline.data.builtin.scenes`). Image ``i`` depends only on ``(seed, i)`` and the split
sizes; the output is byte-identical from run to run.
"""

from __future__ import annotations

import colorsys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from pipeline.data.builtin.matfile import write_mat
from pipeline.data.builtin.scenes import (
    SCENE_TEXTURES,
    Look,
    ellipse,
    paint_classes,
    rect,
    void_blobs,
)
from pipeline.data.builtin.voc import shape_mask
from pipeline.data.datasets.context import CONTEXT_33, CONTEXT_59, FCN_RENAMES
from pipeline.runtime.fsutil import atomic_path
from pipeline.runtime.progress import progress_bar

#: the release's labels.txt (index = position + 1), hard-coded: generation reads no fixture
CONTEXT_459 = (
    "accordion", "aeroplane", "air conditioner", "antenna", "artillery", "ashtray", "atrium",
    "baby carriage", "bag", "ball", "balloon", "bamboo weaving", "barrel", "baseball bat",
    "basket", "basketball backboard", "bathtub", "bed", "bedclothes", "beer", "bell", "bench",
    "bicycle", "binoculars", "bird", "bird cage", "bird feeder", "bird nest", "blackboard",
    "board", "boat", "bone", "book", "bottle", "bottle opener", "bowl", "box", "bracelet", "brick",
    "bridge", "broom", "brush", "bucket", "building", "bus", "cabinet", "cabinet door", "cage",
    "cake", "calculator", "calendar", "camel", "camera", "camera lens", "can", "candle",
    "candle holder", "cap", "car", "card", "cart", "case", "casette recorder", "cash register",
    "cat", "cd", "cd player", "ceiling", "cell phone", "cello", "chain", "chair", "chessboard",
    "chicken", "chopstick", "clip", "clippers", "clock", "closet", "cloth", "clothes tree",
    "coffee", "coffee machine", "comb", "computer", "concrete", "cone", "container",
    "control booth", "controller", "cooker", "copying machine", "coral", "cork", "corkscrew",
    "counter", "court", "cow", "crabstick", "crane", "crate", "cross", "crutch", "cup", "curtain",
    "cushion", "cutting board", "dais", "disc", "disc case", "dishwasher", "dock", "dog",
    "dolphin", "door", "drainer", "dray", "drink dispenser", "drinking machine", "drop", "drug",
    "drum", "drum kit", "duck", "dumbbell", "earphone", "earrings", "egg", "electric fan",
    "electric iron", "electric pot", "electric saw", "electronic keyboard", "engine", "envelope",
    "equipment", "escalator", "exhibition booth", "extinguisher", "eyeglass", "fan", "faucet",
    "fax machine", "fence", "ferris wheel", "fire extinguisher", "fire hydrant", "fire place",
    "fish", "fish tank", "fishbowl", "fishing net", "fishing pole", "flag", "flagstaff", "flame",
    "flashlight", "floor", "flower", "fly", "foam", "food", "footbridge", "forceps", "fork",
    "forklift", "fountain", "fox", "frame", "fridge", "frog", "fruit", "funnel", "furnace",
    "game controller", "game machine", "gas cylinder", "gas hood", "gas stove", "gift box",
    "glass", "glass marble", "globe", "glove", "goal", "grandstand", "grass", "gravestone",
    "ground", "guardrail", "guitar", "gun", "hammer", "hand cart", "handle", "handrail", "hanger",
    "hard disk drive", "hat", "hay", "headphone", "heater", "helicopter", "helmet", "holder",
    "hook", "horse", "horse-drawn carriage", "hot-air balloon", "hydrovalve", "ice",
    "inflator pump", "ipod", "iron", "ironing board", "jar", "kart", "kettle", "key", "keyboard",
    "kitchen range", "kite", "knife", "knife block", "ladder", "ladder truck", "ladle", "laptop",
    "leaves", "lid", "life buoy", "light", "light bulb", "lighter", "line", "lion", "lobster",
    "lock", "machine", "mailbox", "mannequin", "map", "mask", "mat", "match book", "mattress",
    "menu", "metal", "meter box", "microphone", "microwave", "mirror", "missile", "model", "money",
    "monkey", "mop", "motorbike", "mountain", "mouse", "mouse pad", "musical instrument", "napkin",
    "net", "newspaper", "oar", "ornament", "outlet", "oven", "oxygen bottle", "pack", "pan",
    "paper", "paper box", "paper cutter", "parachute", "parasol", "parterre", "patio", "pelage",
    "pen", "pen container", "pencil", "person", "photo", "piano", "picture", "pig", "pillar",
    "pillow", "pipe", "pitcher", "plant", "plastic", "plate", "platform", "player", "playground",
    "pliers", "plume", "poker", "poker chip", "pole", "pool table", "postcard", "poster", "pot",
    "pottedplant", "printer", "projector", "pumpkin", "rabbit", "racket", "radiator", "radio",
    "rail", "rake", "ramp", "range hood", "receiver", "recorder", "recreational machines",
    "remote control", "road", "robot", "rock", "rocket", "rocking horse", "rope", "rug", "ruler",
    "runway", "saddle", "sand", "saw", "scale", "scanner", "scissors", "scoop", "screen",
    "screwdriver", "sculpture", "scythe", "sewer", "sewing machine", "shed", "sheep", "shell",
    "shelves", "shoe", "shopping cart", "shovel", "sidecar", "sidewalk", "sign", "signal light",
    "sink", "skateboard", "ski", "sky", "sled", "slippers", "smoke", "snail", "snake", "snow",
    "snowmobiles", "sofa", "spanner", "spatula", "speaker", "speed bump", "spice container",
    "spoon", "sprayer", "squirrel", "stage", "stair", "stapler", "stick", "sticky note", "stone",
    "stool", "stove", "straw", "stretcher", "sun", "sunglass", "sunshade", "surveillance camera",
    "swan", "sweeper", "swim ring", "swimming pool", "swing", "switch", "table", "tableware",
    "tank", "tap", "tape", "tarp", "telephone", "telephone booth", "tent", "tire", "toaster",
    "toilet", "tong", "tool", "toothbrush", "towel", "toy", "toy car", "track", "train",
    "trampoline", "trash bin", "tray", "tree", "tricycle", "tripod", "trophy", "truck", "tube",
    "turtle", "tvmonitor", "tweezers", "typewriter", "umbrella", "unknown", "vacuum cleaner",
    "vending machine", "video camera", "video game console", "video player", "video tape",
    "violin", "wakeboard", "wall", "wallet", "wardrobe", "washing machine", "watch", "water",
    "water dispenser", "water pipe", "water skate board", "watermelon", "whale", "wharf", "wheel",
    "wheelchair", "window", "window blinds", "wineglass", "wire", "wood", "wool",
)  # fmt: skip
FULL = {name: i + 1 for i, name in enumerate(CONTEXT_459)}
#: the task names as full-list names (FCN's renames)
TASK_59 = tuple(FCN_RENAMES.get(n, n) for n in CONTEXT_59[1:])
TASK_33 = tuple(FCN_RENAMES.get(n, n) for n in CONTEXT_33)
#: full-list classes in neither task that the scenes use: background for 59, void for 33
FULL_ONLY = ("sun", "sand", "pole", "bridge", "picture", "mirror", "clock", "rug", "pillow", "box")
FEATURED = TASK_59 + FULL_ONLY
OUTDOOR_ONLY = (
    "sky", "sun", "mountain", "building", "tree", "grass", "ground", "road", "sidewalk", "water",
    "snow", "sand", "track", "platform", "bridge", "fence", "aeroplane", "bird", "boat", "train",
    "bus", "car", "truck", "motorbike", "bicycle", "horse", "cow", "sheep", "bench", "sign",
    "rock", "flower", "pole",
)  # fmt: skip
INDOOR_ONLY = (
    "ceiling", "wall", "floor", "light", "curtain", "shelves", "book", "cabinet", "bed",
    "bedclothes", "pillow", "sofa", "table", "chair", "tvmonitor", "computer", "keyboard",
    "mouse", "cup", "plate", "food", "bottle", "cloth", "picture", "mirror", "clock", "rug", "cat",
)  # fmt: skip
MAT_PLATFORM = "densepipe builtin PASCAL-Context"

# regions: natural colours and textures
SCENE_LOOKS = {
    "sky": Look((135, 185, 240), "vgrad", 0.25),
    "sun": Look((255, 240, 150)),
    "mountain": Look((110, 105, 135), "blotch", 0.25, 6),
    "building": Look((175, 125, 95), "checker", 0.15, 4),
    "tree": Look((35, 90, 40), "blotch", 0.45, 3),
    "grass": Look((75, 155, 50), "speckle", 0.3),
    "ground": Look((140, 110, 75), "speckle", 0.2),
    "road": Look((85, 85, 92), "speckle", 0.15),
    "sidewalk": Look((170, 165, 155), "checker", 0.2, 4),
    "water": Look((30, 80, 155), "hstripes", 0.2, 3),
    "snow": Look((240, 245, 250), "speckle", 0.05),
    "sand": Look((225, 205, 155), "speckle", 0.1),
    "track": Look((105, 80, 60), "vstripes", 0.5, 3),
    "platform": Look((190, 185, 120), "hstripes", 0.15, 5),
    "bridge": Look((150, 70, 45), "checker", 0.3, 3),
    "fence": Look((160, 115, 60), "vstripes", 0.55, 2),
    "ceiling": Look((235, 232, 220), "plain", 0.0),
    "wall": Look((200, 185, 150), "hstripes", 0.05, 6),
    "floor": Look((150, 100, 60), "hstripes", 0.25, 3),
    "window": Look((160, 210, 235), "checker", 0.35, 5),
    "door": Look((100, 60, 30), "vstripes", 0.2, 3),
    "curtain": Look((150, 40, 60), "vstripes", 0.3, 2),
    "rug": Look((130, 30, 90), "checker", 0.4, 2),
    "light": Look((255, 250, 200)),
    "shelves": Look((120, 80, 45), "hstripes", 0.45, 4),
    "bed": Look((110, 75, 50), "plain", 0.0),
    "bedclothes": Look((90, 130, 200), "dots", 0.35, 3),
}


@dataclass(frozen=True)
class _Thing:
    """An object class: where it goes (``place``), its outline (voc ``SHAPES``), its radius as a
    fraction of the image height."""

    place: str
    shape: str
    size: float


THINGS = {
    "aeroplane": _Thing("sky", "cross", 0.12),
    "bicycle": _Thing("ground", "ring", 0.07),
    "bird": _Thing("sky", "diamond", 0.04),
    "boat": _Thing("water", "hbar", 0.1),
    "bottle": _Thing("table", "vbar", 0.06),
    "bus": _Thing("ground", "square", 0.14),
    "car": _Thing("ground", "hbar", 0.12),
    "cat": _Thing("ground", "triangle", 0.07),
    "chair": _Thing("ground", "square", 0.09),
    "cow": _Thing("ground", "square", 0.08),
    "table": _Thing("ground", "hbar", 0.18),
    "dog": _Thing("ground", "triangle", 0.07),
    "horse": _Thing("ground", "diamond", 0.1),
    "motorbike": _Thing("ground", "ring", 0.08),
    "person": _Thing("ground", "vbar", 0.15),
    "pottedplant": _Thing("ground", "disc", 0.06),
    "sheep": _Thing("ground", "disc", 0.07),
    "sofa": _Thing("ground", "hbar", 0.15),
    "train": _Thing("track", "hbar", 0.2),
    "tvmonitor": _Thing("wall", "square", 0.07),
    "bag": _Thing("ground", "square", 0.05),
    "bed": _Thing("ground", "hbar", 0.22),
    "bench": _Thing("ground", "hbar", 0.09),
    "book": _Thing("shelves", "vbar", 0.04),
    "cabinet": _Thing("ground", "square", 0.12),
    "cloth": _Thing("wall", "triangle", 0.07),
    "computer": _Thing("table", "square", 0.05),
    "cup": _Thing("table", "disc", 0.03),
    "flower": _Thing("ground", "disc", 0.03),
    "food": _Thing("plate", "disc", 0.025),
    "keyboard": _Thing("table", "hbar", 0.05),
    "light": _Thing("ceiling", "disc", 0.04),
    "mouse": _Thing("table", "disc", 0.018),
    "curtain": _Thing("wall", "vbar", 0.12),
    "sign": _Thing("raised", "diamond", 0.05),
    "plate": _Thing("table", "disc", 0.04),
    "rock": _Thing("ground", "disc", 0.07),
    "shelves": _Thing("wall", "square", 0.13),
    "truck": _Thing("ground", "square", 0.15),
    "wood": _Thing("ground", "square", 0.07),
    "pole": _Thing("ground", "vbar", 0.16),
    "picture": _Thing("wall", "square", 0.07),
    "mirror": _Thing("wall", "vbar", 0.09),
    "clock": _Thing("wall", "ring", 0.045),
    "pillow": _Thing("bed", "disc", 0.04),
    "bedclothes": _Thing("bed", "hbar", 0.12),
    "box": _Thing("ground", "square", 0.05),
}


def _thing_look(k: int) -> Look:
    """Object class ``k``: a hue by the golden ratio, saturation/value and texture cycling."""
    hue = (k * 0.61803398875) % 1.0
    sat, val = (0.85, 0.55, 0.7)[k % 3], (0.95, 0.75, 0.55, 0.85)[k % 4]
    rgb = tuple(int(round(255 * c)) for c in colorsys.hsv_to_rgb(hue, sat, val))
    texture = SCENE_TEXTURES[k % 6]  # plain, stripes, checker, dots, speckle
    return Look(rgb, texture, 0.0 if texture == "plain" else 0.35, 3)


LOOKS = {
    **{name: _thing_look(k) for k, name in enumerate(THINGS) if name not in SCENE_LOOKS},
    **SCENE_LOOKS,
}
FULL_LOOKS = {FULL[name]: look for name, look in LOOKS.items()}


@dataclass(frozen=True)
class ContextBuiltinSpec:
    """What the generator makes: ``num_train`` + ``num_val`` VOC2010-style images of
    ``height`` x ``width`` pixels (the real ones are about 500 x 375)."""

    num_train: int = 80
    num_val: int = 24
    height: int = 96
    width: int = 128
    seed: int = 0

    def __post_init__(self) -> None:
        if min(self.height, self.width) < 32:
            raise ValueError(f"images must be at least 32x32, got {self.width}x{self.height}")
        if self.num_train < 1:
            raise ValueError(f"num_train must be >= 1, got {self.num_train}")
        if self.num_val < 1:
            raise ValueError(f"num_val must be >= 1, got {self.num_val}")

    def split_indices(self) -> dict[str, range]:
        a = self.num_train
        return {"train": range(0, a), "val": range(a, a + self.num_val)}


def context_example_id(index: int) -> str:
    return f"2010_{index:06d}"


class _Scene:
    """A full-class label map (0..459) under construction, indoor or outdoor."""

    def __init__(self, rng: np.random.Generator, height: int, width: int, indoor: bool):
        self.rng, self.h, self.w, self.indoor = rng, height, width, indoor
        self.yy, self.xx = np.mgrid[0:height, 0:width]
        self.labels = np.zeros((height, width), np.int16)
        self.boxes: dict[str, list[tuple[float, float, float, float]]] = {}  # (y0, y1, x0, x1)
        if indoor:
            self.top = rng.uniform(0.08, 0.22) * height  # ceiling | wall
            self.horizon = np.full(width, rng.uniform(0.58, 0.78) * height)  # wall | floor
            self.paint(self.yy < self.top, "ceiling")
            self.paint(self.yy >= self.top, "wall")
            self.paint(self.below(0.0), "floor")
        else:
            amp, phase = rng.uniform(0, 0.04) * height, rng.uniform(0, 2 * np.pi)
            base = rng.uniform(0.35, 0.6) * height
            self.horizon = base + amp * np.sin(phase + 2 * np.pi * np.arange(width) / width)
            self.top = 0.0
            self.paint(self.yy >= 0, "sky")

    def below(self, start: float, end: float = 1.0) -> np.ndarray:
        """Pixels of the ground/floor between depths ``start`` and ``end`` (0 horizon, 1 bottom)."""
        depth = (self.yy - self.horizon[None, :]) / (self.h - self.horizon[None, :])
        return (self.yy >= self.horizon[None, :]) & (depth >= start) & (depth <= end)

    def paint(self, mask: np.ndarray, name: str, over: tuple[str, ...] | None = None) -> int:
        if over is not None:
            mask = mask & np.isin(self.labels, [FULL[n] for n in over])
        self.labels[mask] = FULL[name]
        return int(mask.sum())

    def has(self, name: str) -> bool:
        return bool((self.labels == FULL[name]).any())

    def pick(self, names: tuple[str, ...]) -> tuple[int, int] | None:
        """A random pixel showing one of ``names`` (None if there is none)."""
        rows, cols = np.nonzero(np.isin(self.labels, [FULL[n] for n in names]))
        if not len(rows):
            return None
        k = int(self.rng.integers(len(rows)))
        return int(rows[k]), int(cols[k])

    def put(self, name: str, shape: str, cy: float, cx: float, r: float, over=None) -> int:
        mask = shape_mask(shape, self.h, self.w, cy, cx, r)
        n = self.paint(mask, name, over)
        if n:
            self.boxes.setdefault(name, []).append((cy - r, cy + r, cx - r, cx + r))
        return n


GROUND = ("grass", "ground", "road", "sidewalk", "snow", "sand", "water", "track", "platform")
BACKDROP = ("sky", "sun", "mountain", "building", "tree", "bridge")


# -- regions -----------------------------------------------------------------------------------
def _ground_band(name: str, start: tuple[float, float]) -> Callable[[_Scene], int]:
    def add(s: _Scene) -> int:
        return s.paint(s.below(s.rng.uniform(*start)), name, over=GROUND)

    return add


def _road(s: _Scene) -> int:
    vx = s.rng.uniform(0.3, 0.7) * s.w
    below = s.yy - s.horizon[None, :]
    edge = s.rng.uniform(0.01, 0.05) * s.w + s.rng.uniform(0.4, 0.9) * s.w / s.h * below
    n = s.paint(s.below(0.0) & (np.abs(s.xx - vx) <= edge), "road", over=GROUND)
    wide = s.below(0.0) & (np.abs(s.xx - vx) > edge) & (np.abs(s.xx - vx) <= 1.7 * edge + 3)
    return n + (s.paint(wide, "sidewalk", over=GROUND) if s.rng.random() < 0.7 else 0)


def _sidewalk(s: _Scene) -> int:
    return s.paint(s.below(s.rng.uniform(0.55, 0.8)), "sidewalk", over=GROUND)


def _water(s: _Scene) -> int:
    n = s.paint(s.below(0.0, s.rng.uniform(0.4, 0.8)), "water", over=GROUND)
    return n + (s.paint(s.below(0.75), "sand", over=GROUND) if s.rng.random() < 0.5 else 0)


def _track(s: _Scene) -> int:
    start = s.rng.uniform(0.25, 0.55)
    n = s.paint(s.below(start, start + 0.2), "track", over=GROUND)
    if s.rng.random() < 0.7:
        n += s.paint(s.below(start + 0.2, start + 0.45), "platform", over=GROUND)
    return n


def _platform(s: _Scene) -> int:
    if not s.has("track"):
        _track(s)
    start = s.rng.uniform(0.6, 0.8)
    return s.paint(s.below(start), "platform", over=tuple(n for n in GROUND if n != "track"))


def _mountain(s: _Scene) -> int:
    knots = s.rng.uniform(0.3, 1.0, 6)
    ridge = s.horizon - s.rng.uniform(0.12, 0.35) * s.h * np.interp(
        np.arange(s.w), np.linspace(0, s.w - 1, 6), knots
    )
    mask = (s.yy >= ridge[None, :]) & (s.yy < s.horizon[None, :])
    return s.paint(mask, "mountain", over=("sky", "sun"))


def _building(s: _Scene) -> int:
    x0 = s.rng.uniform(-0.1, 0.8) * s.w
    x1 = x0 + s.rng.uniform(0.2, 0.45) * s.w
    y0 = max(1.0, float(s.horizon.min()) - s.rng.uniform(0.2, 0.5) * s.h)
    mask = (s.xx >= x0) & (s.xx < x1) & (s.yy >= y0) & (s.yy < s.horizon[None, :])
    n = s.paint(mask, "building", over=("sky", "sun", "mountain", "building"))
    if n:
        s.boxes.setdefault("building", []).append((y0, float(s.horizon.min()), x0, x1))
    return n


def _treeline(s: _Scene) -> int:
    n = 0
    for x in np.arange(-0.05 * s.w, 1.05 * s.w, s.rng.uniform(0.07, 0.12) * s.w):
        tall = s.rng.uniform(0.15, 0.35) * s.h
        y = float(s.horizon[int(np.clip(x, 0, s.w - 1))])
        crown = ellipse(s.h, s.w, y - 0.4 * tall, x, 0.5 * tall, s.rng.uniform(0.06, 0.1) * s.w)
        n += s.paint(crown, "tree", over=(*BACKDROP, *GROUND))
    return n


def _bridge(s: _Scene) -> int:
    deck = float(s.horizon.min()) - s.rng.uniform(0.08, 0.2) * s.h
    x0 = s.rng.uniform(-0.2, 0.3) * s.w
    x1 = x0 + s.rng.uniform(0.5, 1.0) * s.w
    mask = rect(s.h, s.w, deck, deck + max(2.0, 0.05 * s.h), x0, x1)
    for x in np.linspace(x0, x1, 4)[1:-1]:
        mask |= rect(s.h, s.w, deck, float(s.horizon[int(np.clip(x, 0, s.w - 1))]) + 2, x, x + 2)
    return s.paint(mask, "bridge", over=(*BACKDROP, *GROUND))


def _fence(s: _Scene) -> int:
    row = float(s.horizon.mean()) + s.rng.uniform(0.05, 0.4) * (s.h - float(s.horizon.mean()))
    tall, x0 = max(2.0, 0.07 * s.h), s.rng.uniform(-0.2, 0.5) * s.w
    mask = rect(s.h, s.w, row - tall, row, x0, x0 + s.rng.uniform(0.3, 0.8) * s.w)
    return s.paint(mask, "fence")


def _on_building(name: str, tall: float, wide: float) -> Callable[[_Scene], int]:
    """Windows/doors: on a building outdoors (one built first if needed), on the wall indoors."""

    def add(s: _Scene) -> int:
        if s.indoor:
            y0, y1, x0, x1 = s.top, float(s.horizon[0]), 0.0, float(s.w)
            host: tuple[str, ...] = ("wall",)
        else:
            if not s.boxes.get("building"):
                _building(s)
            boxes = s.boxes.get("building") or [(0.0, float(s.horizon.min()), 0.0, float(s.w))]
            y0, y1, x0, x1 = boxes[int(s.rng.integers(len(boxes)))]
            host = ("building",)
        h, w = tall * s.h, wide * s.w
        y = y1 - h if name == "door" else s.rng.uniform(y0 + 1, max(y0 + 1, y1 - 1.5 * h))
        x = s.rng.uniform(x0, max(x0, x1 - w))
        return s.paint(rect(s.h, s.w, y, y + h, x, x + w), name, over=host)

    return add


def _rug(s: _Scene) -> int:
    cy = float(s.horizon[0]) + s.rng.uniform(0.3, 0.7) * (s.h - float(s.horizon[0]))
    cx = s.rng.uniform(0.2, 0.8) * s.w
    mask = ellipse(
        s.h, s.w, cy, cx, s.rng.uniform(0.06, 0.12) * s.h, s.rng.uniform(0.15, 0.3) * s.w
    )
    return s.paint(mask, "rug", over=("floor",))


# -- things ------------------------------------------------------------------------------------
def _host(s: _Scene, name: str) -> tuple[float, float, float, float]:
    """The box of a ``name`` (table, bed, shelves, plate) in the scene, made first if missing."""
    if not s.boxes.get(name):
        ADDERS[name](s)
    boxes = s.boxes.get(name) or [(s.h * 0.5, s.h * 0.6, s.w * 0.4, s.w * 0.6)]
    return boxes[int(s.rng.integers(len(boxes)))]


def _thing(name: str, boost: float = 1.0) -> Callable[[_Scene], int]:
    """Add a ``name`` where it belongs; ``boost`` > 1: a bigger one, near the camera."""
    thing = THINGS[name]

    def add(s: _Scene) -> int:
        place, r = thing.place, thing.size * s.h * boost
        if place in ("ground", "raised"):
            hor = float(s.horizon.mean())
            frac = s.rng.uniform(0.4, 0.95) if boost > 1 else s.rng.uniform(0.05, 0.9)
            scale = 0.45 + 0.55 * frac
            r *= scale
            cy = hor + frac * (s.h - 1 - hor) - 0.8 * r - (2.5 * r if place == "raised" else 0)
            cx = s.rng.uniform(0.05, 0.95) * s.w
            if place == "raised":  # a sign on its post
                s.paint(rect(s.h, s.w, cy, cy + 3.5 * r, cx - 0.6, cx + 0.6), "pole")
        elif place == "sky":
            cy = s.rng.uniform(r, max(r + 1, float(s.horizon.min()) - 1.5 * r))
            cx = s.rng.uniform(r, s.w - r)
        elif place in ("water", "track"):
            if not s.has(place):
                ADDERS[place](s)
            spot = s.pick((place,)) or (int(s.horizon.mean()) + 1, s.w // 2)
            cy, cx = spot[0] - 0.4 * r, spot[1]
        elif place == "wall":
            cy = s.rng.uniform(s.top + r, max(s.top + r + 1, float(s.horizon[0]) - r))
            cx = s.rng.uniform(r, s.w - r)
        elif place == "ceiling":
            cy, cx = s.rng.uniform(0.2, 0.8) * s.top, s.rng.uniform(r, s.w - r)
        else:  # on top of a table, bed, plate, or in shelves
            host = {"table": "table", "bed": "bed", "plate": "plate", "shelves": "shelves"}[place]
            y0, y1, x0, x1 = _host(s, host)
            cx = s.rng.uniform(x0 + 0.3 * (x1 - x0), x1 - 0.3 * (x1 - x0))
            cy = {"table": y0 + 0.1 * (y1 - y0) - 0.6 * r, "plate": (y0 + y1) / 2}.get(
                place, s.rng.uniform(y0 + r, max(y0 + r, y1 - r))
            )
        return s.put(name, thing.shape, cy, cx, r)

    return add


ADDERS: dict[str, Callable[[_Scene], int]] = {
    **{name: _thing(name) for name in THINGS},
    "sky": lambda s: int((s.labels == FULL["sky"]).sum()),
    "ceiling": lambda s: int((s.labels == FULL["ceiling"]).sum()),
    "wall": lambda s: int((s.labels == FULL["wall"]).sum()),
    "floor": lambda s: int((s.labels == FULL["floor"]).sum()),
    "sun": lambda s: s.put(
        "sun", "disc", s.rng.uniform(0.05, 0.25) * s.h, s.rng.uniform(0.1, 0.9) * s.w,
        s.rng.uniform(0.04, 0.07) * s.h, over=("sky",),
    ),
    "grass": _ground_band("grass", (0.0, 0.6)),
    "ground": _ground_band("ground", (0.0, 0.6)),
    "snow": _ground_band("snow", (0.0, 0.6)),
    "sand": _ground_band("sand", (0.4, 0.8)),
    "road": _road,
    "sidewalk": _sidewalk,
    "water": _water,
    "track": _track,
    "platform": _platform,
    "mountain": _mountain,
    "building": _building,
    "tree": _treeline,
    "bridge": _bridge,
    "fence": _fence,
    "window": _on_building("window", 0.15, 0.12),
    "door": _on_building("door", 0.3, 0.1),
    "rug": _rug,
}  # fmt: skip

# (class, probability, most instances), in painting order
OUTDOOR_PLAN = (
    ("mountain", 0.35, 1), ("building", 0.35, 2), ("window", 0.7, 2), ("door", 0.4, 1),
    ("tree", 0.35, 1), ("bridge", 0.05, 1), ("road", 0.3, 1), ("water", 0.2, 1),
    ("track", 0.1, 1), ("fence", 0.15, 1), ("sun", 0.08, 1), ("aeroplane", 0.08, 1),
    ("bird", 0.1, 2), ("boat", 0.15, 2), ("train", 0.05, 1), ("car", 0.25, 2),
    ("bus", 0.08, 1), ("truck", 0.06, 1), ("motorbike", 0.06, 1), ("bicycle", 0.06, 1),
    ("person", 0.4, 3), ("dog", 0.1, 1), ("horse", 0.08, 1), ("cow", 0.06, 2),
    ("sheep", 0.06, 2), ("bench", 0.05, 1), ("sign", 0.08, 1), ("pole", 0.1, 2),
    ("rock", 0.1, 2), ("flower", 0.08, 3), ("pottedplant", 0.04, 1), ("bag", 0.04, 1),
    ("box", 0.03, 1), ("wood", 0.04, 1),
)  # fmt: skip
INDOOR_PLAN = (
    ("light", 0.5, 2), ("window", 0.5, 1), ("curtain", 0.3, 2), ("door", 0.35, 1),
    ("picture", 0.35, 2), ("mirror", 0.12, 1), ("clock", 0.12, 1), ("shelves", 0.25, 1),
    ("book", 0.2, 3), ("cabinet", 0.2, 1), ("tvmonitor", 0.15, 1), ("rug", 0.3, 1),
    ("bed", 0.2, 1), ("bedclothes", 0.15, 1), ("pillow", 0.12, 2), ("sofa", 0.25, 1),
    ("table", 0.35, 1), ("plate", 0.2, 2), ("food", 0.15, 1), ("cup", 0.12, 1),
    ("bottle", 0.12, 2), ("computer", 0.1, 1), ("keyboard", 0.08, 1), ("mouse", 0.06, 1),
    ("chair", 0.3, 2), ("person", 0.35, 2), ("cat", 0.1, 1), ("dog", 0.08, 1),
    ("pottedplant", 0.12, 1), ("cloth", 0.08, 1), ("bag", 0.06, 1), ("box", 0.08, 1),
    ("wood", 0.04, 1),
)  # fmt: skip
OUTDOOR_GROUND = ("grass", "ground", "road", "snow", "sand", "water")
#: the photograph's subject, most images have one: a VOC object, big and near
SUBJECTS = {
    False: (
        "aeroplane", "bicycle", "bird", "boat", "bus", "car", "cow", "dog", "horse", "motorbike",
        "person", "sheep", "train", "pottedplant",
    ),
    True: ("bottle", "cat", "chair", "table", "dog", "person", "pottedplant", "sofa", "tvmonitor"),
}  # fmt: skip


def featured_class(spec: ContextBuiltinSpec, index: int) -> str:
    """The class image ``index`` is made to show: the ``j``-th of its split shows
    ``FEATURED[j mod len(FEATURED)]``."""
    for indices in spec.split_indices().values():
        if index in indices:
            return FEATURED[(index - indices.start) % len(FEATURED)]
    raise IndexError(f"image {index} is not in the set of {spec.num_train + spec.num_val}")


def render_context_example(spec: ContextBuiltinSpec, index: int) -> tuple[np.ndarray, np.ndarray]:
    """Image ``index``: HxWx3 uint8 RGB and the HxW uint16 LabelMap (0 unlabelled, 1..459)."""
    rng = np.random.default_rng([spec.seed, index])
    featured = featured_class(spec, index)
    if featured in OUTDOOR_ONLY:
        indoor = False
    elif featured in INDOOR_ONLY:
        indoor = True
    else:
        indoor = bool(rng.random() < 0.4)
    s = _Scene(rng, spec.height, spec.width, indoor)
    if not indoor:
        base = OUTDOOR_GROUND[int(rng.integers(len(OUTDOOR_GROUND)))]
        s.paint(s.below(0.0), "grass" if base in ("road", "water") else base)
        if base in ("road", "water"):
            ADDERS[base](s)
    for name, probability, most in INDOOR_PLAN if indoor else OUTDOOR_PLAN:
        if rng.random() >= probability:
            continue
        for _ in range(int(rng.integers(1, most + 1))):
            ADDERS[name](s)
    if rng.random() < 0.85:
        subjects = SUBJECTS[indoor]
        _thing(subjects[int(rng.integers(len(subjects)))], boost=2.5)(s)
    for _ in range(4):  # the featured class, retried where something hid it
        if ADDERS[featured](s) and s.has(featured):
            break
    labels = s.labels.astype(np.uint16)
    image = paint_classes(labels, FULL_LOOKS, rng)
    unit = spec.height / 96
    spots = void_blobs(rng, spec.height, spec.width, int(rng.integers(0, 4)), (unit, 3 * unit))
    labels[spots & (labels != FULL[featured])] = 0  # the featured class stays labelled
    return image, labels


def _name_list(names: tuple[str, ...]) -> str:
    return "".join(f"{i}: {name}\n" for i, name in enumerate(names, 1))


def write_builtin_context(root: Path, spec: ContextBuiltinSpec, progress: bool = True) -> Path:
    """Write ``root/VOCdevkit/VOC2010`` then ``root/PASCAL-Context`` (each atomically) and return
    the PASCAL-Context folder (the parser's root; it finds VOC2010 beside it)."""
    root = Path(root)
    splits = spec.split_indices()
    total = spec.num_train + spec.num_val
    labels: dict[str, np.ndarray] = {}
    with atomic_path(root / "VOCdevkit" / "VOC2010") as voc:
        (voc / "JPEGImages").mkdir(parents=True)
        (voc / "ImageSets" / "Main").mkdir(parents=True)
        bar = progress_bar(total=total, desc="builtin PASCAL-Context", disable=not progress)
        for split, indices in splits.items():
            ids = [context_example_id(i) for i in indices]
            for i, image_id in zip(indices, ids, strict=True):
                image, labels[image_id] = render_context_example(spec, i)
                Image.fromarray(image).save(voc / "JPEGImages" / f"{image_id}.jpg", quality=92)
                bar.update()
            (voc / "ImageSets" / "Main" / f"{split}.txt").write_text("\n".join(ids) + "\n")
        bar.close()
    final = root / "PASCAL-Context"
    with atomic_path(final) as tmp:
        (tmp / "trainval").mkdir(parents=True)
        for image_id, label_map in labels.items():
            write_mat(tmp / "trainval" / f"{image_id}.mat", {"LabelMap": label_map}, MAT_PLATFORM)
        (tmp / "labels.txt").write_text(_name_list(CONTEXT_459))
        (tmp / "59_labels.txt").write_text(_name_list(CONTEXT_59[1:]))
        (tmp / "33_labels.txt").write_text(_name_list(CONTEXT_33))
    return final
