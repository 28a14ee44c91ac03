"""NYU Depth v2 (1,449 labelled RGB-D frames) in Gupta et al.'s 40-class task, as FCN reads it.

Source: ``nyu_depth_v2_labeled.mat`` (MATLAB v7.3 = HDF5). h5py shows MATLAB arrays with their
axes reversed, so ``images`` is N x 3 x W x H, ``depths``/``rawDepths``/``labels`` N x W x H;
every frame is transposed back to H x W. Depths are float metres; ``labels`` hold 894 raw
classes (0 = unlabelled) that ``classMapping40.mat``'s ``mapClass`` coalesces to 1..40.

Conventions of FCN's ``NYUDSegDataLayer`` (it reads Gupta's ``rcnn-depth`` export):

* ids are ``5000 + i`` for the 1-based frame index ``i`` (``"5001"`` .. ``"6449"``);
* label = uint8(label40) - 1, so 1..40 become classes 0..39 and unlabelled 0 wraps to 255 =
  void, which is this project's void too;
* splits: FCN's ``train.txt`` (381) / ``val.txt`` (414) split ``splits.mat``'s 795 official
  training frames, ``test.txt`` is its 654 test frames;
* Gupta's export is cropped to the valid Kinect area, 425 x 560 (``crop=True``, the default;
  ``crop=False`` keeps the full frame). The crop needs 480 x 640 frames; a smaller frame
  (``crop=False`` only, e.g. the built-in 96 x 128 set of :mod:`pipeline.data.builtin.nyud`)
  is taken as the same field of view at a lower resolution: the NYU camera is scaled to it.

Extra columns: ``depth`` and ``raw_depth`` as uint16 PNGs in millimetres (0 = no measurement),
and ``hha`` (PNG, :mod:`pipeline.data.encodings.hha`; ``hha=False`` leaves it out), computed as
rcnn-depth does from
the millimetre depth with the camera intrinsics shifted by the crop. By default every pixel
enters HHA's normal fits, which reproduces the MATLAB golden frame (see
:mod:`pipeline.data.encodings.hha`);
``hha_mask_missing=True`` leaves out pixels without raw depth (``saveHHA``'s ``missingMask``).
The column is computed inside ``load_example``, i.e. inside the prepare stage's Ray Data map, so
frames are encoded in parallel.

``normals`` (PixelNet's surface-normal ground truth, on by default): least-squares normals of the
filled millimetre depth (:func:`pipeline.data.encodings.normals.depth_to_normals`, the fit HHA's
angle
channel uses, radius 3, same camera), as a 16-bit PNG of the three components
(:func:`pipeline.data.encodings.normals.normals_to_png`); pixels without a normal are 0 there and
NaN
when decoded. ``normals_mask_missing=True`` fits only pixels with raw depth and leaves pixels
without raw depth without a normal.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.data.datasets.base import VOID, encode_png, read_split_file, validate_label
from pipeline.data.encodings import hha
from pipeline.data.encodings.normals import NYU_CAMERA, depth_to_normals, normals_to_png
from pipeline.errors import DataError

NYUD_CLASSES = (
    "wall", "floor", "cabinet", "bed", "chair", "sofa", "table", "door", "window", "bookshelf",
    "picture", "counter", "blinds", "desk", "shelves", "curtain", "dresser", "pillow", "mirror",
    "floor mat", "clothes", "ceiling", "books", "refridgerator", "television", "paper", "towel",
    "shower curtain", "box", "whiteboard", "person", "night stand", "toilet", "sink", "lamp",
    "bathtub", "bag", "otherstructure", "otherfurniture", "otherprop",
)  # fmt: skip

ID_OFFSET = 5000
NUM_FRAMES = 1449
NUM_RAW_CLASSES = 894
FULL_SIZE = (480, 640)
# rcnn-depth's crop of the 480x640 frame (0-based, end-exclusive): rows 45:470, cols 40:600
GUPTA_CROP = (slice(45, 470), slice(40, 600))
LABELED_MAT = "nyu_depth_v2_labeled.mat"
SPLITS = ("train", "val", "test", "trainval")


def _find(root: Path, names: tuple[str, ...], what: str) -> Path:
    for name in names:
        if (root / name).is_file():
            return root / name
    raise DataError(f"{what} not found: looked for {', '.join(str(root / n) for n in names)}")


def _loadmat(path: Path) -> dict[str, Any]:
    import scipy.io

    try:
        return scipy.io.loadmat(str(path))
    except Exception as exc:
        raise DataError(f"cannot read MATLAB file {path}: {exc}") from exc


@functools.lru_cache(maxsize=8)
def _class_lut(path: str, mtime: float) -> np.ndarray:
    mat = _loadmat(Path(path))
    if "mapClass" not in mat:
        raise DataError(f"{path} has no 'mapClass' (expected classMapping40.mat)")
    mapping = np.asarray(mat["mapClass"]).ravel()
    if mapping.size != NUM_RAW_CLASSES or mapping.min() < 1 or mapping.max() > len(NYUD_CLASSES):
        raise DataError(
            f"mapClass in {path} has {mapping.size} entries in [{mapping.min()}, {mapping.max()}],"
            f" expected {NUM_RAW_CLASSES} in [1, {len(NYUD_CLASSES)}]"
        )
    return class_lut(mapping)


def class_lut(map_class: np.ndarray) -> np.ndarray:
    """Lookup table raw label (0..894) -> schema label: 0 (unlabelled) -> 255, c -> mapClass-1.

    The uint8 wrap-around is FCN's ``label -= 1`` on a uint8 array, made explicit.
    """
    lut = np.full(NUM_RAW_CLASSES + 1, VOID, np.uint8)
    lut[1:] = np.asarray(map_class, np.int64).ravel() - 1
    return lut


def metres_to_mm(depth: np.ndarray) -> np.ndarray:
    """Float metres -> uint16 millimetres (Gupta's PNG unit); non-finite or <= 0 -> 0."""
    d = np.where(np.isfinite(depth) & (depth > 0), depth, 0.0)
    return np.clip(np.round(d * 1000.0), 0, 65535).astype(np.uint16)


class NYUD:
    """NYUDv2 40-class, one record per frame of ``nyu_depth_v2_labeled.mat``.

    ``root`` holds ``nyu_depth_v2_labeled.mat``, ``splits.mat`` and ``classMapping40.mat``
    (directly or under ``metadata/``) and FCN's lists ``train/val/test.txt`` (directly or under
    ``fcn-splits/``). ``hha`` (None or True: on) adds the ``hha`` column;
    ``hha_mask_missing`` is :func:`pipeline.data.encodings.hha.depth_to_hha`'s ``mask_missing``.
    """

    name = "nyud"
    classes = NYUD_CLASSES
    num_classes = len(NYUD_CLASSES)
    splits = SPLITS

    def __init__(
        self,
        crop: bool = True,
        hha: bool | None = None,
        hha_mask_missing: bool = False,
        normals: bool = True,
        normals_mask_missing: bool = False,
    ) -> None:
        self.crop = crop
        self.hha = hha
        self.hha_mask_missing = bool(hha_mask_missing)
        self.normals = bool(normals)
        self.normals_mask_missing = bool(normals_mask_missing)

    def camera(self, base: Any, size: tuple[int, int]) -> Any:
        """``base`` (the full-frame NYU camera) for a frame of ``size`` as this parser yields it:
        shifted by Gupta's crop, as is for 480 x 640, else scaled to the smaller frame."""
        if self.crop:
            return base.crop(GUPTA_CROP[0].start, GUPTA_CROP[1].start)
        if tuple(size) == FULL_SIZE:
            return base
        return base.resize(size[0] / FULL_SIZE[0], size[1] / FULL_SIZE[1])

    # -- splits ----------------------------------------------------------------------------
    def list_ids(self, root: Path, split: str) -> list[str]:
        root = Path(root)
        if split not in SPLITS:
            raise DataError(f"unknown NYUD split {split!r} (one of {SPLITS}) for {root}")
        if split == "trainval":
            fcn = [self._fcn_list(root, s) for s in ("train", "val")]
            if all(ids is not None for ids in fcn):
                return fcn[0] + fcn[1]
            return self.official_ids(root, "train")
        ids = self._fcn_list(root, split)
        if ids is not None:
            return ids
        if split == "test":
            return self.official_ids(root, "test")
        raise DataError(
            f"FCN's NYUD {split}.txt not found in {root} or {root / 'fcn-splits'} "
            "(the 381/414 train/val split is FCN's own and cannot be derived from splits.mat)"
        )

    @staticmethod
    def _fcn_list(root: Path, split: str) -> list[str] | None:
        for folder in (root / "fcn-splits", root):
            if (folder / f"{split}.txt").is_file():
                return read_split_file(folder / f"{split}.txt")
        return None

    @staticmethod
    def official_ids(root: Path, split: str) -> list[str]:
        """FCN-style ids of the official 795/654 split in ``splits.mat`` (1-based indices)."""
        root = Path(root)
        path = _find(root, ("splits.mat", "metadata/splits.mat"), "NYUD splits.mat")
        key = {"train": "trainNdxs", "test": "testNdxs"}[split]
        mat = _loadmat(path)
        if key not in mat:
            raise DataError(f"{path} has no {key!r}")
        return [str(ID_OFFSET + int(i)) for i in np.asarray(mat[key]).ravel()]

    # -- examples --------------------------------------------------------------------------
    def label_lut(self, root: Path) -> np.ndarray:
        path = _find(
            Path(root), ("classMapping40.mat", "metadata/classMapping40.mat"), "classMapping40.mat"
        )
        return _class_lut(str(path), path.stat().st_mtime)

    def read_frame(self, root: Path, example_id: str) -> dict[str, np.ndarray]:
        """Frame ``example_id`` as H x W arrays: rgb uint8, depth/raw_depth metres, labels raw."""
        import h5py

        path = Path(root) / LABELED_MAT
        if not path.is_file():
            raise DataError(f"NYUD labelled data not found: {path}")
        try:
            index = int(example_id) - ID_OFFSET - 1
        except ValueError:
            msg = f"NYUD id {example_id!r} is not 5000 + a frame number ({path})"
            raise DataError(msg) from None
        try:
            with h5py.File(path, "r") as f:
                for key in ("images", "depths", "rawDepths", "labels"):
                    if key not in f:
                        raise DataError(f"{path} has no {key!r} array (not nyu_depth_v2_labeled)")
                n = f["labels"].shape[0]
                if not 0 <= index < n:
                    raise DataError(
                        f"NYUD id {example_id!r} outside 5001..{ID_OFFSET + n} in {path}"
                    )
                if f["images"].ndim != 4 or f["images"].shape[1] != 3:
                    raise DataError(f"images in {path} have shape {f['images'].shape}, not Nx3xWxH")
                frame = {
                    "rgb": np.asarray(f["images"][index]).transpose(2, 1, 0),
                    "depth": np.asarray(f["depths"][index], np.float32).T,
                    "raw_depth": np.asarray(f["rawDepths"][index], np.float32).T,
                    "labels": np.asarray(f["labels"][index]).T,
                }
        except DataError:
            raise
        except Exception as exc:  # OSError for corrupt/truncated HDF5
            raise DataError(f"cannot read frame {example_id} from {path}: {exc}") from exc
        size = frame["rgb"].shape[:2]
        for key in ("depth", "raw_depth", "labels"):
            if frame[key].shape != size:
                raise DataError(
                    f"{key} of frame {example_id} in {path} is {frame[key].shape}, image {size}"
                )
        if self.crop:
            if size != FULL_SIZE:
                raise DataError(f"frame {example_id} in {path} is {size}, cannot apply crop")
            frame = {k: v[GUPTA_CROP] for k, v in frame.items()}
        return frame

    def load_example(self, root: Path, example_id: str) -> dict[str, Any]:
        root = Path(root)
        source = f"{root / LABELED_MAT} frame {example_id}"
        frame = self.read_frame(root, example_id)
        depth = frame["depth"]
        if not (np.isfinite(depth) & (depth > 0)).any():  # before HHA and normals fit nothing
            raise DataError(f"{source}: depth is all zero or NaN (no measurement in the frame)")
        raw = frame["labels"]
        if raw.size and int(raw.max()) > NUM_RAW_CLASSES:
            raise DataError(f"{source}: raw label {int(raw.max())} > {NUM_RAW_CLASSES}")
        label = self.label_lut(root)[raw.astype(np.int64)]
        rgb = np.ascontiguousarray(frame["rgb"], np.uint8)
        validate_label(label, self.num_classes, rgb.shape[:2], source)
        depth_mm = metres_to_mm(frame["depth"])
        raw_mm = metres_to_mm(frame["raw_depth"])
        record: dict[str, Any] = {
            "id": example_id,
            "image": encode_png(rgb),
            "label": encode_png(label),
            "height": rgb.shape[0],
            "width": rgb.shape[1],
            "depth": encode_png(depth_mm),
            "raw_depth": encode_png(raw_mm),
        }
        if self.hha is not False:
            record["hha"] = self._hha(depth_mm, raw_mm, source)
        if self.normals:
            record["normals"] = self._normals(depth_mm, raw_mm)
        return record

    def _normals(self, depth_mm: np.ndarray, raw_mm: np.ndarray) -> bytes:
        """Surface normals of the filled millimetre depth (HHA's fit), as a 16-bit PNG."""
        mask = raw_mm > 0 if self.normals_mask_missing else None
        camera = self.camera(NYU_CAMERA, depth_mm.shape)
        normals = depth_to_normals(depth_mm.astype(np.float64) / 1000.0, mask, camera)
        if mask is not None:
            normals[~mask] = np.nan
        return normals_to_png(normals)

    def _hha(self, depth_mm: np.ndarray, raw_mm: np.ndarray, source: str) -> bytes:
        """HHA from the millimetre depth (what rcnn-depth's saveHHA reads), crop-aware camera."""
        camera = None
        if self.crop or depth_mm.shape != FULL_SIZE:
            camera = self.camera(NYU_CAMERA, depth_mm.shape)
        if (depth_mm == 0).any():
            raise DataError(f"{source}: filled depth has missing pixels, cannot compute HHA")
        depth_m = depth_mm.astype(np.float64) / 1000.0
        raw_m = raw_mm.astype(np.float64) / 1000.0
        image = hha.depth_to_hha(depth_m, raw_m, camera, mask_missing=self.hha_mask_missing)
        return hha.hha_to_png(image)
