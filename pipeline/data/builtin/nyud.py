"""Built-in, deterministic synthetic RGB-D rooms in the real NYU Depth v2 on-disk layout.

Why: the tiny profile must exercise the NYUDv2 path (the v7.3 ``nyu_depth_v2_labeled.mat``
parser, the 894 -> 40 class mapping, HHA, PixelNet's surface normals of Table 5) with no
download. The generator writes what :class:`pipeline.data.datasets.nyud.NYUD` reads from the real
files::

    NYUDv2/nyu_depth_v2_labeled.mat      MATLAB v7.3 (HDF5 with a 512-byte MATLAB header):
                                         images N x 3 x W x H uint8, depths / rawDepths N x W x H
                                         single (metres; raw 0 = no measurement), labels
                                         N x W x H uint16 (894 raw classes, 0 = unlabelled)
    NYUDv2/metadata/splits.mat           trainNdxs / testNdxs (1-based frame numbers)
    NYUDv2/metadata/classMapping40.mat   mapClass (1 x 894, raw -> 1..40) and className
    NYUDv2/fcn-splits/{train,val,test}.txt, classes.txt   FCN's lists (ids 5000 + frame)

Frames are small (96 x 128 by default) and cover the NYU camera's whole field of view: the
parser scales the NYU intrinsics to them, so ``data.nyud.options.crop`` (Gupta's 425 x 560
crop of a 480 x 640 frame) must be false for this set (params.yaml: ``{tiny: false, ...}``).

A scene is a ray-cast room seen by a camera 1.1-1.5 m above the floor, pitched down 5-25
degrees, turned up to 25 degrees and slightly rolled: floor, ceiling, back and side walls, a
picture on the back wall and 1-3 cuboid furniture pieces (box, cabinet, dresser, night stand,
bookshelf) standing on the floor, turned about the vertical. So the depth is made of planes
and its least-squares normals are meaningful. The colour correlates with orientation and class
as in a real room: each class has its own albedo (with per-scene variation), floors carry
planks or carpet texture in world coordinates, and two coloured directional lights (warm from
the upper left, cool from the right) plus ambient light shade every face by its orientation.

Labels follow the real format: each surface gets one of the raw classes (1..894) that this
set's ``mapClass`` sends to its 40-class category (``MAP_CLASS``: a fixed many-to-one map, not
the real one), and a one-pixel band around objects is unlabelled (0, void after the mapping).
``depths`` is the exact rendered depth (the "filled" map); ``rawDepths`` has Kinect-like holes
(0) along depth discontinuities and in a few blobs. The HDF5 and MAT files are written with
fixed headers and no timestamps, so the output is byte-identical from run to run. Frame ``i``
depends only on ``(seed, i)``.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from pipeline.data.datasets.nyud import (
    FULL_SIZE,
    ID_OFFSET,
    LABELED_MAT,
    NUM_RAW_CLASSES,
    NYUD_CLASSES,
)
from pipeline.data.encodings.normals import NYU_CAMERA, CameraIntrinsics
from pipeline.runtime.fsutil import atomic_path
from pipeline.runtime.progress import progress_bar

# raw class k (1..894) -> 40-class category: ((k - 1) * 7) mod 40 + 1, about 22 raw classes
# per category (7 is prime to 40), as the real map sends many raw names to one category
MAP_CLASS = (np.arange(NUM_RAW_CLASSES) * 7) % len(NYUD_CLASSES) + 1

FURNITURE = ("box", "cabinet", "dresser", "night stand", "bookshelf")
# albedo (HSV) per class: hue, saturation, value; each scene jitters them
ALBEDO_HSV = {
    "wall": (0.11, 0.15, 0.85),
    "floor": (0.07, 0.55, 0.55),
    "ceiling": (0.12, 0.04, 0.95),
    "picture": (0.60, 0.60, 0.70),
    "box": (0.09, 0.55, 0.78),
    "cabinet": (0.06, 0.65, 0.42),
    "dresser": (0.10, 0.10, 0.90),
    "night stand": (0.03, 0.45, 0.55),
    "bookshelf": (0.08, 0.40, 0.30),
}
# directional lights (towards the light, world frame: x right, y up, z forward) and colours
LIGHTS = (
    (np.array([-0.45, 0.75, -0.50]), np.array([1.00, 0.88, 0.70]) * 0.70),
    (np.array([0.80, 0.15, -0.55]), np.array([0.55, 0.68, 1.00]) * 0.45),
)
AMBIENT = 0.25
MAT73_HEADER = b"MATLAB 7.3 MAT-file, Platform: densepipe builtin NYUDv2, Created on: 1970-01-01 "
MAT5_HEADER = b"MATLAB 5.0 MAT-file, Platform: densepipe builtin NYUDv2, Created on: 1970-01-01"


@dataclass(frozen=True)
class NYUDBuiltinSpec:
    """What the generator makes: ``num_train`` official training frames (FCN's train/val lists
    take alternate ones), ``num_test`` test frames, spread evenly over the frame numbers."""

    num_train: int = 40
    num_test: int = 16
    height: int = 96
    width: int = 128
    max_objects: int = 3
    seed: int = 0

    def __post_init__(self) -> None:
        if min(self.height, self.width) < 32:
            raise ValueError(f"frames must be at least 32x32, got {self.width}x{self.height}")
        if self.num_train < 2:
            raise ValueError(f"num_train must be >= 2 (FCN's train and val), got {self.num_train}")
        if self.num_test < 1:
            raise ValueError(f"num_test must be >= 1, got {self.num_test}")
        if self.max_objects < 1:
            raise ValueError(f"max_objects must be >= 1, got {self.max_objects}")

    @property
    def num_frames(self) -> int:
        return self.num_train + self.num_test

    def split_frames(self) -> dict[str, list[int]]:
        """1-based frame numbers of the official ``train`` / ``test`` split (interleaved)."""
        n, k = self.num_frames, self.num_test
        test = [i for i in range(1, n + 1) if (i * k) // n > ((i - 1) * k) // n]
        chosen = set(test)
        return {"train": [i for i in range(1, n + 1) if i not in chosen], "test": test}

    def camera(self) -> CameraIntrinsics:
        """The NYU colour camera scaled to this frame size (what the parser derives too)."""
        return NYU_CAMERA.resize(self.height / FULL_SIZE[0], self.width / FULL_SIZE[1])


def _hsv(h: float, s: float, v: float) -> np.ndarray:
    import colorsys

    return np.array(colorsys.hsv_to_rgb(h % 1.0, min(max(s, 0.0), 1.0), min(max(v, 0.0), 1.0)))


def _rot_x(a: float) -> np.ndarray:
    c, s = np.cos(a), np.sin(a)
    return np.array([[1, 0, 0], [0, c, -s], [0, s, c]])


def _rot_y(a: float) -> np.ndarray:
    c, s = np.cos(a), np.sin(a)
    return np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])


def _rot_z(a: float) -> np.ndarray:
    c, s = np.cos(a), np.sin(a)
    return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])


def _raw_class(rng: np.random.Generator, name: str) -> int:
    """A raw class (1..894) that ``MAP_CLASS`` sends to category ``name``."""
    category = NYUD_CLASSES.index(name) + 1
    return int(rng.choice(np.flatnonzero(MAP_CLASS == category) + 1))


class _Hits:
    """Nearest surface per ray: depth t, world normal, surface index."""

    def __init__(self, shape: tuple[int, int]):
        self.t = np.full(shape, np.inf)
        self.normal = np.zeros((*shape, 3))
        self.surface = np.full(shape, -1, np.int32)

    def offer(self, t: np.ndarray, normal: np.ndarray, surface: int) -> None:
        closer = (t > 1e-6) & (t < self.t)
        self.t[closer] = t[closer]
        self.normal[closer] = normal[closer] if normal.ndim == 3 else normal
        self.surface[closer] = surface


def _box_hit(d: np.ndarray, centre, half, yaw: float) -> tuple[np.ndarray, np.ndarray]:
    """Ray (from the origin, directions ``d``) against a cuboid turned by ``yaw``: (t, normal)."""
    r = _rot_y(-yaw)
    dl = d @ r.T
    ol = r @ -np.asarray(centre, float)
    with np.errstate(divide="ignore", invalid="ignore"):
        t1 = (-np.asarray(half) - ol) / dl
        t2 = (np.asarray(half) - ol) / dl
    lo, hi = np.minimum(t1, t2), np.maximum(t1, t2)
    # a ray parallel to a slab is inside it (or never enters) for every t
    parallel = dl == 0
    inside = np.abs(ol) <= np.asarray(half)
    lo = np.where(parallel, np.where(inside, -np.inf, np.inf), lo)
    hi = np.where(parallel, np.where(inside, np.inf, -np.inf), hi)
    near, far = lo.max(-1), hi.min(-1)
    t = np.where((near <= far) & (near > 0), near, np.inf)
    axis = lo.argmax(-1)
    normal_l = np.zeros_like(dl)
    sign = -np.sign(np.take_along_axis(dl, axis[..., None], -1))[..., 0]
    np.put_along_axis(normal_l, axis[..., None], sign[..., None], -1)
    return t, normal_l @ _rot_y(yaw).T


def render_nyud_frame(spec: NYUDBuiltinSpec, index: int) -> dict[str, np.ndarray]:
    """Frame ``index`` (0-based): rgb HxWx3 uint8, depth / raw_depth HxW float32 metres,
    labels HxW uint16 raw classes (0 unlabelled)."""
    rng = np.random.default_rng([spec.seed, index])
    h, w = spec.height, spec.width
    cam = spec.camera()
    # camera rays (camera frame: x right, y down, z forward, z = 1: t is the depth)
    u = (np.arange(1, w + 1) - cam.cx) / cam.fx
    v = (np.arange(1, h + 1) - cam.cy) / cam.fy
    d_cam = np.stack(np.broadcast_arrays(u[None, :], v[:, None], np.ones((h, w))), -1)
    pitch, yaw = np.deg2rad(rng.uniform(5, 25)), np.deg2rad(rng.uniform(-25, 25))
    roll = np.deg2rad(rng.uniform(-3, 3))
    to_world = _rot_y(yaw) @ _rot_x(pitch) @ _rot_z(roll) @ np.diag([1.0, -1.0, 1.0])
    d = d_cam @ to_world.T  # world: x right, y up, z forward; the camera at the origin

    cam_height = rng.uniform(1.1, 1.5)
    left, right = rng.uniform(1.3, 2.6), rng.uniform(1.3, 2.6)
    back, ceiling = rng.uniform(3.2, 5.5), rng.uniform(2.4, 2.9) - cam_height
    names = ["floor", "ceiling", "wall", "wall", "wall"]
    hits = _Hits((h, w))
    with np.errstate(divide="ignore", invalid="ignore"):
        hits.offer(-cam_height / d[..., 1], np.array([0.0, 1.0, 0.0]), 0)
        hits.offer(ceiling / d[..., 1], np.array([0.0, -1.0, 0.0]), 1)
        hits.offer(-left / d[..., 0], np.array([1.0, 0.0, 0.0]), 2)
        hits.offer(right / d[..., 0], np.array([-1.0, 0.0, 0.0]), 3)
        hits.offer(back / d[..., 2], np.array([0.0, 0.0, -1.0]), 4)
    albedo = {
        i: _hsv(*(np.array(ALBEDO_HSV[n]) + rng.normal(0, [0.02, 0.05, 0.05])))
        for i, n in enumerate(names)
    }
    # furniture: cuboids on the floor, turned about the vertical
    for _ in range(int(rng.integers(1, spec.max_objects + 1))):
        kind = FURNITURE[int(rng.integers(len(FURNITURE)))]
        tall = kind == "bookshelf"
        size = np.array(
            [rng.uniform(0.4, 1.0), rng.uniform(1.2, 1.9) if tall else rng.uniform(0.3, 1.0),
             rng.uniform(0.3, 0.6) if tall else rng.uniform(0.3, 0.9)]
        )  # fmt: skip
        reach = float(np.hypot(size[0], size[2]) / 2)
        x = rng.uniform(-left + reach, max(-left + reach, right - reach))
        z = rng.uniform(1.2 + reach, max(1.2 + reach, back - reach))
        centre = (x, -cam_height + size[1] / 2, z)
        t, normal = _box_hit(d, centre, size / 2, np.deg2rad(rng.uniform(-45, 45)))
        hits.offer(t, normal, len(names))
        albedo[len(names)] = _hsv(*(np.array(ALBEDO_HSV[kind]) + rng.normal(0, [0.02, 0.08, 0.08])))
        names.append(kind)
    t, normal, surface = hits.t, hits.normal, hits.surface.copy()
    p = d * t[..., None]  # world points

    # a picture on the back wall
    if rng.random() < 0.7:
        pw, ph = rng.uniform(0.4, 1.1), rng.uniform(0.3, 0.7)
        px = rng.uniform(-left + 0.1, right - 0.1 - pw)
        py = rng.uniform(-cam_height + 1.0, ceiling - 0.3 - ph)
        on = (surface == 4) & (p[..., 0] > px) & (p[..., 0] < px + pw)
        on &= (p[..., 1] > py) & (p[..., 1] < py + ph)
        surface[on] = len(names)
        albedo[len(names)] = _hsv(rng.uniform(0, 1), rng.uniform(0.4, 0.8), rng.uniform(0.4, 0.9))
        names.append("picture")

    # colour: albedo x texture x (ambient + coloured directional lights)
    colour = np.zeros((h, w, 3))
    for i, albedo_i in albedo.items():
        colour[surface == i] = albedo_i
    texture = np.ones((h, w))
    floor = surface == 0
    if rng.random() < 0.6:  # planks along the depth axis of the room, dark seams between
        across = p[..., 0][floor] / rng.uniform(0.12, 0.22)
        seam = np.abs(across - np.round(across)) < 0.06
        texture[floor] = 1.0 + 0.12 * np.sin(np.floor(across) * 2.3) - 0.25 * seam
    else:  # carpet: fine noise
        texture[floor] = 1.0 + 0.08 * rng.standard_normal(int(floor.sum()))
    picture = surface == len(names) - 1 if names[-1] == "picture" else np.zeros_like(floor)
    texture[picture] *= 1.0 + 0.25 * np.sign(np.sin(p[picture][:, 1] * 25.0))
    shade = np.full((h, w, 3), AMBIENT)
    for direction, light in LIGHTS:
        lit = np.clip(normal @ (direction / np.linalg.norm(direction)), 0.0, None)
        shade += lit[..., None] * light
    rgb = colour * texture[..., None] * shade * 255.0 + rng.normal(0.0, 2.0, (h, w, 3))
    rgb = np.clip(np.round(rgb), 0, 255).astype(np.uint8)

    # raw labels: one raw class per surface; a one-pixel unlabelled band around objects
    raw_of = np.array([_raw_class(rng, n) for n in names], np.uint16)
    labels = raw_of[surface]
    is_object = surface >= 5
    edge = np.zeros((h, w), bool)
    edge[:, :-1] |= surface[:, :-1] != surface[:, 1:]
    edge[:, 1:] |= surface[:, :-1] != surface[:, 1:]
    edge[:-1, :] |= surface[:-1, :] != surface[1:, :]
    edge[1:, :] |= surface[:-1, :] != surface[1:, :]
    labels[edge & is_object] = 0

    # depth: exact (the filled map); raw: holes at depth steps and in a few blobs
    depth = t.astype(np.float32)
    gy, gx = np.gradient(depth)
    holes = ndimage.binary_dilation(np.hypot(gx, gy) > 0.08 * depth, iterations=1)
    yy, xx = np.mgrid[0:h, 0:w]
    for _ in range(int(rng.integers(0, 3))):
        cy, cx, ry, rx = rng.uniform(0, h), rng.uniform(0, w), rng.uniform(2, 7), rng.uniform(2, 7)
        holes |= ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 < 1
    raw_depth = np.where(holes, 0.0, depth).astype(np.float32)
    return {"rgb": rgb, "depth": depth, "raw_depth": raw_depth, "labels": labels}


def nyud_example_id(frame: int) -> str:
    """FCN's id of the 1-based ``frame``."""
    return str(ID_OFFSET + frame)


def _write_labeled_mat(path: Path, frames: list[dict[str, np.ndarray]]) -> None:
    """MATLAB v7.3: HDF5 behind a 512-byte MATLAB header; arrays stored transposed, as MATLAB
    writes column-major data (h5py then sees N x 3 x W x H / N x W x H)."""
    import h5py

    arrays = {
        "images": (np.stack([f["rgb"] for f in frames]).transpose(0, 3, 2, 1), "uint8"),
        "depths": (np.stack([f["depth"] for f in frames]).transpose(0, 2, 1), "single"),
        "rawDepths": (np.stack([f["raw_depth"] for f in frames]).transpose(0, 2, 1), "single"),
        "labels": (np.stack([f["labels"] for f in frames]).transpose(0, 2, 1), "uint16"),
    }
    with h5py.File(path, "w", userblock_size=512) as f:
        for key, (array, matlab_class) in arrays.items():
            data = f.create_dataset(
                key,
                data=np.ascontiguousarray(array),
                chunks=(1, *array.shape[1:]),
                compression="gzip",
                compression_opts=4,
                track_times=False,
            )
            data.attrs["MATLAB_class"] = np.bytes_(matlab_class)
    with open(path, "r+b") as f:  # text, subsystem offset, version 0x0200, endianness 'IM'
        f.write(MAT73_HEADER.ljust(116, b" ") + b"\x00" * 8 + b"\x00\x02IM")


def _savemat(path: Path, variables: dict) -> None:
    """``scipy.io.savemat`` with a fixed header text (no creation date): identical bytes."""
    import scipy.io

    buf = io.BytesIO()
    scipy.io.savemat(buf, variables)
    path.write_bytes(MAT5_HEADER.ljust(116, b" ") + buf.getvalue()[116:])


def write_builtin_nyud(root: Path, spec: NYUDBuiltinSpec, progress: bool = True) -> Path:
    """Write the dataset to ``root/NYUDv2`` atomically and return that folder."""
    final = Path(root) / "NYUDv2"
    splits = spec.split_frames()
    with atomic_path(final) as tmp:
        (tmp / "metadata").mkdir(parents=True)
        (tmp / "fcn-splits").mkdir()
        bar = progress_bar(
            total=spec.num_frames, desc="builtin NYUDv2", disable=not progress, unit="img"
        )
        frames = []
        for i in range(spec.num_frames):
            frames.append(render_nyud_frame(spec, i))
            bar.update()
        bar.close()
        _write_labeled_mat(tmp / LABELED_MAT, frames)
        _savemat(
            tmp / "metadata" / "splits.mat",
            {
                "trainNdxs": np.asarray(splits["train"], np.float64)[:, None],
                "testNdxs": np.asarray(splits["test"], np.float64)[:, None],
            },
        )
        names = np.empty((1, len(NYUD_CLASSES)), dtype=object)
        names[0, :] = NYUD_CLASSES
        _savemat(
            tmp / "metadata" / "classMapping40.mat",
            {"mapClass": MAP_CLASS.astype(np.float64)[None, :], "className": names},
        )
        train = splits["train"]
        lists = {"train": train[0::2], "val": train[1::2], "test": splits["test"]}
        for name, ids in lists.items():
            text = "".join(nyud_example_id(i) + "\n" for i in ids)
            (tmp / "fcn-splits" / f"{name}.txt").write_text(text)
        (tmp / "fcn-splits" / "classes.txt").write_text("\n".join(NYUD_CLASSES) + "\n")
    return final
