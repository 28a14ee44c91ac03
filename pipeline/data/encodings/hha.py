"""HHA depth encoding (Gupta et al., ECCV 2014), faithful to rcnn-depth's ``saveHHA.m``.

HHA turns one depth map into three 8-bit channels a colour-pretrained CNN can read:
horizontal disparity, height above the lowest point along the estimated gravity direction,
and the angle between each pixel's surface normal and gravity. The steps follow
``processDepthImage.m``: point cloud in centimetres, least-squares normals (R = 3 for the
angle, R = 10 for gravity, fits restricted to pixels with raw depth), gravity by alternating
hard assignments (``getYDir.m``), rotation, then ``uint8`` rounding and saturation. The PNG
channel order is MATLAB's ``imwrite`` order: R = disparity, G = height, B = angle.

Raw depth, and the choice of default. ``saveHHA(imName, C, outDir, D, RD)`` fits normals only
on pixels with ``RD ~= 0`` (``missingMask``). The MATLAB golden frame (Depth2HHA's
``matlab_hha.png``, our fixture ``NYUDv2/hha-golden``) was not made that way: its MATLAB driver
passes the filled depth as ``RD`` ("RD is the same as D, because there is some problem about NYU
Depth V2 raw-depth-images"), and the golden equals that repo's ``hha_complete.png`` (port run on
D, D) byte for byte. Measured on that frame, per channel (disparity, height, angle) MAD against
``matlab_hha.png``:

* default, every pixel in the fits (``mask_missing=False``): 0 / 0 / 0, identical;
* ``mask_missing=True`` (saveHHA's missingMask from the raw depth): 0 / 0.185 / 20.47: the
  angle channel differs wherever a fit window meets a hole (24 % of this frame's raw pixels are
  missing), which fails the golden's 6.8 limit; it matches the Python port's ``hha.png`` run with
  the same mask.

So ``depth_to_hha(depth, raw_depth)`` reproduces the published golden, and the raw-depth mask
is an explicit option (``mask_missing=True``; for NYUD, ``options.hha_mask_missing``) for
those who want saveHHA's behaviour on real raw depth. Time per 640x480 frame
(``benchmarks/bench_hha.py``, a shared 2-core machine): 0.28 s CPU default, 0.32 s masked (best
wall 0.62 / 0.52 s under load). NYUD's prepare runs it inside the Ray Data map, so frames are
encoded in parallel.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

from pipeline.data.encodings.normals import (
    NYU_CAMERA,
    CameraIntrinsics,
    depth_to_normals_multi,
    point_cloud,
)
from pipeline.errors import DataError

__all__ = [
    "CameraIntrinsics",
    "NYU_CAMERA",
    "depth_to_hha",
    "estimate_gravity",
    "hha_to_png",
    "read_depth_png",
]

GRAVITY_THRESHOLDS_DEG = (45.0, 15.0)
GRAVITY_ITERATIONS = (5, 5)
ANGLE_RADIUS = 3
GRAVITY_RADIUS = 10


def estimate_gravity(
    normals: np.ndarray,
    y0: np.ndarray | None = None,
    thresholds_deg: tuple[float, ...] = GRAVITY_THRESHOLDS_DEG,
    iterations: tuple[int, ...] = GRAVITY_ITERATIONS,
) -> np.ndarray:
    """Gravity direction in the camera frame (unit 3-vector, roughly +y = image down).

    ``getYDir.m``: normals within the threshold of the current estimate should be parallel to
    gravity, those within it of perpendicular should be orthogonal; the new estimate is the
    eigenvector of ``Nw Nw^T - Nf Nf^T`` with the smallest eigenvalue, its sign kept.
    """
    flat = normals.reshape(-1, 3)
    n = flat[~np.isnan(flat[:, 0])].T  # 3xN
    # the six distinct entries of every n n^T, so that each update is one matrix-vector product
    outer = np.stack([n[0] * n[0], n[0] * n[1], n[0] * n[2], n[1] * n[1], n[1] * n[2], n[2] * n[2]])
    n = np.ascontiguousarray(n)
    y = np.array([0.0, 1.0, 0.0]) if y0 is None else np.asarray(y0, dtype=np.float64)
    for thresh, n_iter in zip(thresholds_deg, iterations, strict=True):
        cos_t, sin_t = np.cos(np.deg2rad(thresh)), np.sin(np.deg2rad(thresh))
        for _ in range(n_iter):
            sim = np.abs(y[0] * n[0] + y[1] * n[1] + y[2] * n[2])
            # Nw Nw^T - Nf Nf^T: +1 for normals near-perpendicular to gravity (walls), -1 for
            # near-parallel ones (floors), 0 otherwise
            weight = (sim < sin_t).astype(np.float64)
            weight -= sim > cos_t
            a11, a12, a13, a22, a23, a33 = outer @ weight
            if not (a11 or a12 or a13 or a22 or a23 or a33):  # both sets empty: keep y
                break
            a = np.array([[a11, a12, a13], [a12, a22, a23], [a13, a23, a33]])
            _, vecs = np.linalg.eigh(a)
            new = vecs[:, 0]
            y = -new if y @ new < 0 else new
    return y


def _matlab_uint8(x: np.ndarray) -> np.ndarray:
    """MATLAB ``uint8()``: round half away from zero, saturate to [0, 255], NaN -> 0."""
    r = np.sign(x) * np.floor(np.abs(x) + 0.5)
    r = np.nan_to_num(r, nan=0.0)
    return np.clip(r, 0, 255).astype(np.uint8)


def depth_to_hha(
    depth_m: np.ndarray,
    raw_depth_m: np.ndarray | None,
    camera: CameraIntrinsics | None = None,
    *,
    mask_missing: bool = False,
    source: str = "depth",
) -> np.ndarray:
    """HHA image (HxWx3 uint8: disparity, height, angle) from filled and raw depth in metres.

    ``depth_m`` is the in-painted depth that gives the geometry. By default every pixel enters
    the normal fits, which reproduces the published MATLAB golden frame exactly (see the module
    docstring); ``raw_depth_m`` is then only checked for shape. ``mask_missing=True`` is
    ``saveHHA.m``'s ``missingMask``: only pixels the raw depth measured (> 0 and finite) enter
    the fits; ``None`` then treats every pixel as measured. ``camera`` defaults to the NYU
    colour camera for the full 640x480 frame; ``source`` names the file in error messages.
    """
    depth = np.asarray(depth_m, dtype=np.float64)
    raw = depth if raw_depth_m is None else np.asarray(raw_depth_m, dtype=np.float64)
    if not mask_missing:
        if depth.ndim == 2 and raw.shape == depth.shape:
            raw = depth
    if depth.ndim != 2 or raw.shape != depth.shape:
        raise DataError(
            f"{source}: depth {depth.shape} and raw depth {raw.shape} must be HxW maps of the "
            "same size"
        )
    if not np.isfinite(depth).all() or (depth <= 0).any():
        raise DataError(f"{source}: filled depth must be finite and positive everywhere")
    valid = np.isfinite(raw) & (raw > 0)
    if not valid.any():
        raise DataError(f"{source}: raw depth has no valid pixel, so no normals or gravity")
    cam = camera or NYU_CAMERA

    z_cm = depth * 100.0
    pc = point_cloud(z_cm, cam)
    n_angle, n_gravity = depth_to_normals_multi(depth, valid, cam, (ANGLE_RADIUS, GRAVITY_RADIUS))
    if np.isnan(n_gravity[..., 0]).all():
        raise DataError(f"{source}: too few valid raw depth pixels to fit any surface normal")
    y_dir = estimate_gravity(n_gravity)

    # rotatePC(pc, R') with R taking [0 1 0] to yDir: the rotated y is yDir . p (identity when
    # getRMatrix's angle is below 0.1 degree)
    y0 = np.array([0.0, 1.0, 0.0])
    if np.degrees(np.arccos(np.clip(y0 @ y_dir, -1.0, 1.0))) > 0.1:
        height = -(pc[..., 0] * y_dir[0] + pc[..., 1] * y_dir[1] + pc[..., 2] * y_dir[2])
    else:
        height = -pc[..., 1]
    y_min = height.min()
    if y_min > -90.0:
        y_min = -130.0
    height = height - y_min

    cos = n_angle[..., 0] * y_dir[0] + n_angle[..., 1] * y_dir[1] + n_angle[..., 2] * y_dir[2]
    # MATLAB's min(1, max(-1, NaN)) is -1 (max ignores NaN): pixels without a normal get 180 deg
    cos = np.where(np.isnan(cos), -1.0, np.clip(cos, -1.0, 1.0))
    angle = np.degrees(np.arccos(cos))
    disparity = 31000.0 / np.maximum(z_cm, 100.0)
    return _matlab_uint8(np.stack([disparity, height, angle + 128.0 - 90.0], axis=-1))


def hha_to_png(hha: np.ndarray, path: Path | None = None) -> bytes:
    """Encode an HHA array as an RGB PNG (R = disparity, G = height, B = angle), like ``imwrite``.

    Writes the bytes to ``path`` as well when given.
    """
    if hha.ndim != 3 or hha.shape[2] != 3 or hha.dtype != np.uint8:
        raise DataError(f"HHA must be HxWx3 uint8, got {hha.shape} {hha.dtype}")
    buf = io.BytesIO()
    Image.fromarray(hha).save(buf, format="PNG")
    data = buf.getvalue()
    if path is not None:
        Path(path).write_bytes(data)
    return data


def read_depth_png(path: Path, scale: float = 1e4) -> np.ndarray:
    """Read a 16-bit depth PNG as metres (``value / scale``; NYU toolbox dumps use 1e4).

    A missing or non-16-bit file is a DataError naming it.
    """
    try:
        with Image.open(path) as im:
            a = np.asarray(im)
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot read depth PNG {path}: {exc}") from exc
    if a.ndim != 2 or a.dtype not in (np.uint16, np.int32, np.uint8):
        raise DataError(f"depth PNG {path} is not a single-channel 16-bit image")
    return a.astype(np.float64) / scale
