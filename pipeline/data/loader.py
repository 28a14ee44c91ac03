"""Turn prepared Parquet rows into model-ready tensors: decode, normalise, augment, pad.

One function serves training (Ray Train workers), pretraining, evaluation and tests, so every
path normalises inputs the same way.

Normalisation follows the weights: ``caffe`` (BGR, 0-255, per-channel mean subtracted, the FCN and
DeepLab releases) or ``torchvision`` (RGB, 0-1, ImageNet mean/std).

Input masking (FCN Table 8) is part of the input spec because it must be the same wherever the
input is built: ``fg`` / ``bg`` replace the foreground / background pixels by the mean colour
(0 after normalising); ``shape`` keeps only the foreground/background mask itself.

Input modalities (FCN Table 5, the model's ``modality``): ``rgb``; ``hha`` (the prepared ``hha``
column, minus FCN's HHA mean, channels as stored); ``rgbd`` (RGB + the ``depth`` column as
``log(mm) - 7.844``, FCN's NYUD layer; missing depth 0, the mean); ``rgb-hha`` (6 channels, RGB
then HHA, for the late-fusion net). Two-headed models (SIFT Flow) learn extra label columns
(``extra_labels``, e.g. ``geo_label``): the target is then N x (1 + k) x H x W.

Targets: class labels (segmentation, edges), or for ``task="normals"`` the prepared ``normals``
column (PixelNet Table 5): B x 3 x H x W float32 camera-frame unit normals, NaN where a pixel
has none (and in padding). Augmentation moves them with the image; a mirror also negates their
x component (the surface faces the other way), rescaling resamples them nearest-neighbour.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from pipeline.data.datasets.base import VOID, decode_image, decode_label, decode_uint16
from pipeline.data.encodings.normals import png_to_normals
from pipeline.errors import DataError

MASKS = ("none", "fg", "bg", "shape")
#: what the network input holds; the prepared column each needs besides ``image``
MODALITIES = {"rgb": (), "hha": ("hha",), "rgbd": ("depth",), "rgb-hha": ("hha",)}
#: FCN's NYUD data layer: HHA mean (channel order as stored) and mean log depth (mm)
HHA_MEAN = (132.431, 94.076, 118.477)
LOG_DEPTH_MEAN = 7.844
#: mirroring a normals map negates the x component (camera frame: x right, y down, z forward)
MIRROR_NORMALS = np.array([-1.0, 1.0, 1.0], np.float32)
#: the value a foreground pixel takes in the ``shape`` input (background is 0, the mean)
SHAPE_VALUE = 100.0
VOC_MEAN_BGR = (104.00699, 116.66877, 122.67892)
IMAGENET_MEAN_RGB = (0.485, 0.456, 0.406)
IMAGENET_STD_RGB = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class InputSpec:
    """How pixels become network input (must match the weights the model starts from)."""

    norm: str = "caffe"  # caffe | torchvision
    mean_bgr: tuple[float, float, float] = VOC_MEAN_BGR
    mask: str = "none"  # none | fg | bg | shape (FCN Table 8; needs the label)
    modality: str = "rgb"  # rgb | hha | rgbd | rgb-hha (MODALITIES)
    hha_mean: tuple[float, float, float] = HHA_MEAN
    log_depth_mean: float = LOG_DEPTH_MEAN
    extra_labels: tuple[str, ...] = ()  # label columns of a model's extra heads (geo_label)

    def __post_init__(self):
        if self.mask not in MASKS:
            raise ValueError(f"unknown input mask {self.mask!r}; known: {MASKS}")
        if self.modality not in MODALITIES:
            raise ValueError(f"unknown input modality {self.modality!r}; known: {list(MODALITIES)}")
        object.__setattr__(self, "extra_labels", tuple(self.extra_labels))

    def normalise(self, images: np.ndarray) -> np.ndarray:
        """NxHxWxC decoded input (:func:`decode_input`) -> NxCxHxW float32 network input."""
        if self.modality == "rgb":
            return self._colour(images)
        x = images.astype(np.float32)
        if self.modality == "hha":
            parts = [x - np.asarray(self.hha_mean, np.float32)]
        else:
            parts = [self._colour(x[..., :3]).transpose(0, 2, 3, 1)]
        if self.modality == "rgb-hha":
            parts.append(x[..., 3:6] - np.asarray(self.hha_mean, np.float32))
        if self.modality == "rgbd":
            depth = x[..., 3:4]
            with np.errstate(divide="ignore"):
                log_depth = np.log(depth) - np.float32(self.log_depth_mean)
            parts.append(np.where(depth > 0, log_depth, 0.0).astype(np.float32))
        return np.ascontiguousarray(np.concatenate(parts, axis=-1).transpose(0, 3, 1, 2))

    def _colour(self, images: np.ndarray) -> np.ndarray:
        """NxHxWx3 RGB (0-255) -> Nx3xHxW float32, as the weights were trained."""
        x = images.astype(np.float32)
        if self.norm == "caffe":
            x = x[..., ::-1] - np.asarray(self.mean_bgr, np.float32)
        elif self.norm == "torchvision":
            x = (x / 255.0 - np.asarray(IMAGENET_MEAN_RGB, np.float32)) / np.asarray(
                IMAGENET_STD_RGB, np.float32
            )
        else:
            raise ValueError(f"unknown input norm {self.norm!r} (caffe | torchvision)")
        return np.ascontiguousarray(x.transpose(0, 3, 1, 2))


@dataclass(frozen=True)
class Augment:
    """Training-time augmentation switches.

    ``mirror`` / ``jitter``: FCN §4.3 (mirroring, translations up to ``jitter`` px).
    ``scales``: PixelNet's multi-scale training (edges: random 0.5x or 1.0x): one scale drawn
    per batch from the list, the image resized bilinearly and the label with nearest neighbour
    (class indices and void 255 stay exactly those values). Empty: off.
    ``edge_labels``: the labels are 0/1 edges (255 void): when shrinking, an output pixel is an
    edge if *any* input pixel under it is (nearest neighbour would drop every 1-px line that
    falls between the sampled rows, half of them at 0.5x, and turn them into negatives);
    void wins over non-edge the same way.
    """

    mirror: bool = False
    jitter: int = 0
    scales: tuple[float, ...] = ()
    edge_labels: bool = False

    def __post_init__(self) -> None:
        scales = self.scales
        if isinstance(scales, int | float) and not isinstance(scales, bool):
            scales = (scales,)
        try:
            scales = tuple(float(s) for s in (scales or ()))
        except (TypeError, ValueError):
            msg = f"augment.scales must be a list of numbers, got {self.scales!r}"
            raise ValueError(msg) from None
        if any(not s > 0 for s in scales):
            raise ValueError(f"augment.scales must be positive, got {list(scales)}")
        object.__setattr__(self, "scales", scales)


def _shift(array: np.ndarray, dy: int, dx: int, fill) -> np.ndarray:
    """Translate by (dy, dx) pixels, filling the uncovered border with ``fill``."""
    out = np.full_like(array, fill)
    h, w = array.shape[:2]
    ys, yd = (slice(0, h - dy), slice(dy, h)) if dy >= 0 else (slice(-dy, h), slice(0, h + dy))
    xs, xd = (slice(0, w - dx), slice(dx, w)) if dx >= 0 else (slice(-dx, w), slice(0, w + dx))
    out[yd, xd] = array[ys, xs]
    return out


def rescale(
    image: np.ndarray, label: np.ndarray, scale: float, edge_labels: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Resize an (image, label) pair by ``scale``: bilinear image, nearest-neighbour label.

    ``edge_labels`` (0/1 edges, 255 void) and ``scale < 1``: edge where any covered input pixel
    is an edge (box coverage > 0), else void where any is void, else 0 (no edge is lost, none
    is invented, and unsure pixels stay unsure).
    """
    from PIL import Image

    h, w = label.shape[:2]
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    image = resize_bilinear(image, size)
    if label.ndim == 3:  # a two-headed model's labels: each channel on its own
        channels = [
            Image.fromarray(label[..., c]).resize(size, Image.NEAREST)
            for c in range(label.shape[-1])
        ]
        return image, np.stack([np.asarray(c) for c in channels], axis=-1)
    nearest = np.asarray(Image.fromarray(label).resize(size, Image.NEAREST))
    if not edge_labels or scale >= 1.0:
        return image, nearest

    def covered(mask: np.ndarray) -> np.ndarray:
        return np.asarray(Image.fromarray(mask.astype(np.float32)).resize(size, Image.BOX)) > 0

    edges, void = covered(label == 1), covered(label == VOID)
    return image, np.where(edges, 1, np.where(void, VOID, 0)).astype(np.uint8)


def resize_bilinear(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize to ``size`` (w, h): RGB uint8 in one PIL call, any other input (HHA next
    to RGB, float depth) channel by channel at its own precision."""
    from PIL import Image

    if image.dtype == np.uint8 and image.ndim == 3 and image.shape[-1] == 3:
        return np.asarray(Image.fromarray(image).resize(size, Image.BILINEAR))
    mode = "L" if image.dtype == np.uint8 else "F"
    dtype = np.uint8 if mode == "L" else np.float32
    planes = []
    for c in range(image.shape[-1]):
        plane = Image.fromarray(np.ascontiguousarray(image[..., c], dtype=dtype), mode)
        planes.append(np.asarray(plane.resize(size, Image.BILINEAR)))
    return np.stack(planes, axis=-1).astype(image.dtype)


def decode_input(batch: dict, index: int, modality: str = "rgb") -> np.ndarray:
    """Row ``index``'s network input before normalising: HxWx3 uint8 RGB (``rgb``), the HHA
    image (``hha``), RGB + HHA (HxWx6 uint8) or RGB + depth in mm (HxWx4 float32)."""
    source = f"row {batch['id'][index]}"
    for column in MODALITIES.get(modality, ()):
        if column not in batch:
            raise DataError(
                f"input modality {modality!r} needs the prepared {column!r} column ({source} has "
                f"{sorted(batch)}): train it on a dataset with depth (nyud)"
            )
    if modality == "hha":
        return decode_image(batch["hha"][index], f"{source} hha")
    rgb = decode_image(batch["image"][index], source)
    if modality == "rgb-hha":
        return np.concatenate([rgb, decode_image(batch["hha"][index], f"{source} hha")], -1)
    if modality == "rgbd":
        depth = decode_uint16(batch["depth"][index], f"{source} depth").astype(np.float32)
        return np.concatenate([rgb.astype(np.float32), depth[..., None]], -1)
    return rgb


def decode_target(batch: dict, index: int, extra_labels: tuple[str, ...] = ()) -> np.ndarray:
    """Row ``index``'s class labels: HxW uint8, or HxWx(1+k) with the extra heads' columns."""
    source = f"row {batch['id'][index]}"
    label = decode_label(batch["label"][index], source)
    if not extra_labels:
        return label
    planes = [label]
    for column in extra_labels:
        if column not in batch:
            raise DataError(
                f"the model's {column!r} head needs the prepared {column!r} column ({source} has "
                f"{sorted(batch)})"
            )
        planes.append(decode_label(batch[column][index], f"{source} {column}"))
    return np.stack(planes, axis=-1)


def decode_normals(batch: dict, index: int) -> np.ndarray:
    """Row ``index``'s ``normals`` column as HxWx3 float32 (NaN: no normal)."""
    source = f"row {batch['id'][index]}"
    if "normals" not in batch:
        raise DataError(
            f"task normals needs the prepared 'normals' column ({source} has {sorted(batch)}); "
            "prepare the dataset with options.normals: true"
        )
    return png_to_normals(batch["normals"][index], int(batch["height"][index]), source)


def rescale_normals(
    image: np.ndarray, normals: np.ndarray, scale: float
) -> tuple[np.ndarray, np.ndarray]:
    """Resize (image, normals) by ``scale``: bilinear image, nearest-neighbour normals (at the
    pixel centres PIL's NEAREST picks, so both stay aligned; no normal is averaged)."""
    from PIL import Image

    h, w = normals.shape[:2]
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    image = np.asarray(Image.fromarray(image).resize(size, Image.BILINEAR))
    rows = np.minimum(((np.arange(size[1]) + 0.5) * h / size[1]).astype(int), h - 1)
    cols = np.minimum(((np.arange(size[0]) + 0.5) * w / size[0]).astype(int), w - 1)
    return image, normals[rows][:, cols]


def decode_rows(
    batch: dict,
    augment: Augment | None = None,
    rng=None,
    task: str = "segmentation",
    spec: InputSpec | None = None,
) -> list:
    """Decode a numpy batch of prepared rows to (input, target) pairs: the input as
    :func:`decode_input` gives it for ``spec.modality``, the target the label (uint8 HxW, HxWxK
    with ``spec.extra_labels``), or for ``task="normals"`` the normals (float32 HxWx3, NaN)."""
    spec = spec or InputSpec()
    pairs = []
    normals = task == "normals"
    scale = 1.0
    if augment is not None and rng is not None and augment.scales:
        scale = float(augment.scales[int(rng.integers(len(augment.scales)))])
    for i in range(len(batch["id"])):
        image = decode_input(batch, i, spec.modality)
        if normals:
            label = decode_normals(batch, i)
        else:
            label = decode_target(batch, i, spec.extra_labels)
        if scale != 1.0:
            if normals:
                image, label = rescale_normals(image, label, scale)
            else:
                image, label = rescale(image, label, scale, augment.edge_labels)
        if augment is not None and rng is not None:
            if augment.mirror and rng.random() < 0.5:
                image, label = image[:, ::-1], label[:, ::-1]
                if normals:
                    label = label * MIRROR_NORMALS
            if augment.jitter:
                dy, dx = rng.integers(-augment.jitter, augment.jitter + 1, 2)
                fill = np.nan if normals else VOID
                image, label = _shift(image, dy, dx, 0), _shift(label, dy, dx, fill)
        pairs.append((np.ascontiguousarray(image), np.ascontiguousarray(label)))
    return pairs


def collate(pairs: list, spec: InputSpec) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad a list of (image, label) to the largest size (input 0 after normalising, label void).

    Normals targets (float HxWx3) are padded with NaN and returned as B x 3 x H x W float32.
    """
    h = max(p[0].shape[0] for p in pairs)
    w = max(p[0].shape[1] for p in pairs)
    x = spec.normalise(np.stack([_pad(img, h, w, 0) for img, _ in pairs]))
    pad_value = 0.0
    for i, (img, _) in enumerate(pairs):  # padded pixels carry mean colour, i.e. 0 after norm
        x[i, :, img.shape[0] :, :] = pad_value
        x[i, :, :, img.shape[1] :] = pad_value
    if pairs[0][1].dtype.kind == "f":  # normals
        if spec.mask != "none":
            raise ValueError(f"input mask {spec.mask!r} needs class labels, not normals")
        y = np.stack([_pad(n, h, w, np.nan) for _, n in pairs]).astype(np.float32)
        return torch.from_numpy(x), torch.from_numpy(np.ascontiguousarray(y.transpose(0, 3, 1, 2)))
    y = np.stack([_pad(lab, h, w, VOID) for _, lab in pairs]).astype(np.int64)
    if spec.mask != "none":
        fg = [_pad((lab[..., 0] if lab.ndim == 3 else lab) != 0, h, w, False) for _, lab in pairs]
        x = mask_input(x, np.stack(fg), spec.mask)
    if y.ndim == 4:  # main + extra heads' labels: N x (1 + k) x H x W
        y = np.ascontiguousarray(y.transpose(0, 3, 1, 2))
    return torch.from_numpy(x), torch.from_numpy(y)


def mask_input(x: np.ndarray, foreground: np.ndarray, mask: str) -> np.ndarray:
    """FCN Table 8 input masking of a normalised batch (Nx3xHxW) given its foreground (NxHxW).

    Foreground = every label other than background, void included (VOC's void band is the
    object outline: keeping it would leak the object's appearance into a masked-foreground
    input). Padding is background.
    """
    fg = foreground[:, None].repeat(x.shape[1], axis=1)
    x = x.copy()
    if mask == "fg":
        x[fg] = 0.0
    elif mask == "bg":
        x[~fg] = 0.0
    elif mask == "shape":
        x[:] = 0.0
        x[fg] = SHAPE_VALUE
    return x


def _pad(array: np.ndarray, h: int, w: int, fill) -> np.ndarray:
    if array.shape[:2] == (h, w):
        return array
    out = np.full((h, w, *array.shape[2:]), fill, dtype=array.dtype)
    out[: array.shape[0], : array.shape[1]] = array
    return out


def batch_to_tensors(
    batch: dict,
    spec: InputSpec,
    augment: Augment | None = None,
    rng=None,
    task: str = "segmentation",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Prepared rows -> (Nx3xHxW float input, NxHxW int64 labels); for ``task="normals"`` the
    target is Nx3xHxW float32 normals (NaN: none)."""
    return collate(decode_rows(batch, augment, rng, task, spec), spec)


def iter_rows(table) -> Iterator[dict]:
    """Prepared rows one at a time as 1-row numpy batches (the loader's input format)."""
    columns = table.column_names
    for batch in table.to_batches(max_chunksize=1):
        data = batch.to_pydict()
        yield {c: np.asarray(data[c], dtype=object) for c in columns}
