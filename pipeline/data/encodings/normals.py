"""Least-squares surface normals from a depth map, as in Gupta et al.'s rcnn-depth code.

Ports ``computeNormalsSquareSupport.m`` (with ``filterItChopOff`` and ``invertIt``): at every
pixel a plane ``n . p = 1`` is fitted to the back-projected points of a (2R+1)^2 window, each
equation divided by its depth (rows ``[X/Z, Y/Z, 1]``, right-hand side ``1/Z``), which weights
far, noisier points less. The window sums are box filters over integral images with zero padding
(MATLAB's ``imfilter`` default), so the whole map costs a few array passes, not a per-pixel loop.
Shared by the HHA encoder and by PixelNet's surface-normal ground truth.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from pipeline.data.datasets.base import encode_png
from pipeline.errors import DataError


@dataclass(frozen=True)
class CameraIntrinsics:
    """Pinhole intrinsics in MATLAB's 1-based pixel convention (the reference code's ``C``).

    Defaults are the NYU Depth v2 colour camera for the full 640x480 frame; use :meth:`crop`
    for images cropped from it (e.g. the 561x427 ``45:471, 41:601`` crop of rcnn-depth).
    """

    fx: float = 5.1885790117450188e02
    fy: float = 5.1946961112127485e02
    cx: float = 3.2558244941119034e02
    cy: float = 2.5373616633400465e02

    def crop(self, top: int, left: int) -> CameraIntrinsics:
        """Intrinsics of the image cropped starting ``top`` rows / ``left`` columns in."""
        return replace(self, cx=self.cx - left, cy=self.cy - top)

    def resize(self, scale_y: float, scale_x: float) -> CameraIntrinsics:
        """Intrinsics of the same field of view resampled by ``scale_y`` x ``scale_x``.

        Pixel edges stay edges: 1-based centre ``u`` of the original is at ``s*(u-0.5)+0.5``
        in the resampled image, so ``c' = s*(c-0.5)+0.5`` and ``f' = s*f``.
        """
        return replace(
            self,
            fx=self.fx * scale_x,
            fy=self.fy * scale_y,
            cx=scale_x * (self.cx - 0.5) + 0.5,
            cy=scale_y * (self.cy - 0.5) + 0.5,
        )


NYU_CAMERA = CameraIntrinsics()

# windows whose valid pixels are this close to collinear give no normal (see depth_to_normals)
DEGENERATE_TOL = 1e-6


def point_cloud(depth: np.ndarray, camera: CameraIntrinsics) -> np.ndarray:
    """Back-project a depth map to HxWx3 camera-frame points (same unit as ``depth``).

    Pixel (row i, column j) sits at 1-based coordinates (j + 1, i + 1), as in
    ``getPointCloudFromZ.m``'s ``meshgrid(1:w, 1:h)``.
    """
    h, w = depth.shape
    xx = (np.arange(1, w + 1, dtype=np.float64) - camera.cx) / camera.fx
    yy = (np.arange(1, h + 1, dtype=np.float64) - camera.cy) / camera.fy
    z = depth.astype(np.float64, copy=False)
    return np.stack([xx[None, :] * z, yy[:, None] * z, z], axis=-1)


def box_sums(f: np.ndarray, radii: tuple[int, ...]) -> list[np.ndarray]:
    """Sums of ``f`` over (2r+1)^2 windows of its last two axes, zeros outside, for each r.

    MATLAB ``imfilter(f, ones(2r+1))`` as used by ``filterItChopOff.m``; one integral image
    (cumulative sums) serves every radius, and the cost does not depend on the radii.
    """
    h, w = f.shape[-2:]
    p = max(radii) + 1
    c = np.pad(f, [(0, 0)] * (f.ndim - 2) + [(p, p - 1), (p, p - 1)])
    np.cumsum(c, axis=-1, out=c)
    np.cumsum(c, axis=-2, out=c)
    sums = []
    for r in radii:
        hi, lo = slice(p + r, p + r + h), slice(p - r - 1, p - r - 1 + h)
        hj, lj = slice(p + r, p + r + w), slice(p - r - 1, p - r - 1 + w)
        out = c[..., hi, hj] - c[..., lo, hj]
        out -= c[..., hi, lj]
        out += c[..., lo, lj]
        sums.append(out)
    return sums


def box_sum(f: np.ndarray, radius: int) -> np.ndarray:
    """Sum of ``f`` over (2r+1)^2 windows of its last two axes, zeros outside the image."""
    return box_sums(f, (radius,))[0]


def _check(depth_m: np.ndarray, mask: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    depth = np.asarray(depth_m, dtype=np.float64)
    if depth.ndim != 2:
        raise DataError(f"depth map must be HxW, got shape {depth.shape}")
    valid = np.isfinite(depth) & (depth > 0)
    if mask is not None:
        if mask.shape != depth.shape:
            raise DataError(f"mask shape {mask.shape} does not match depth shape {depth.shape}")
        valid &= np.asarray(mask, dtype=bool)
    return depth, valid


def _plane_moments(depth: np.ndarray, valid: np.ndarray, camera: CameraIntrinsics) -> np.ndarray:
    """Per-pixel terms of AtA and Atb (9xHxW), zero where the pixel is not valid.

    Rows of A are ``[X/Z, Y/Z, 1] = [u, v, 1]`` (u, v: normalised image coordinates) and the
    right-hand side is ``1/Z`` with Z in centimetres, as in ``computeNormalsSquareSupport.m``.
    """
    h, w = depth.shape
    u = ((np.arange(1, w + 1, dtype=np.float64) - camera.cx) / camera.fx)[None, :]
    v = ((np.arange(1, h + 1, dtype=np.float64) - camera.cy) / camera.fy)[:, None]
    m = valid.astype(np.float64)
    inv_z = np.divide(m, depth * 100.0, out=np.zeros_like(m), where=valid)
    mu, mv = m * u, m * v
    return np.stack([mu * u, mu * v, mu, mv * v, mv, m, inv_z * u, inv_z * v, inv_z])


def _solve_planes(s: np.ndarray) -> np.ndarray:
    """Unit normals (HxWx3) from window sums of the plane moments (9xHxW)."""
    a11, a12, a13, a22, a23, a33, b1, b2, b3 = s
    # adjugate of the symmetric AtA (invertIt.m); det(AtA) >= 0 is a positive scale that the
    # normalisation drops, so n keeps the fit's orientation n . p = 1 > 0 (away from camera)
    c11 = a22 * a33 - a23 * a23
    c12 = a13 * a23 - a12 * a33
    c13 = a12 * a23 - a13 * a22
    c22 = a11 * a33 - a13 * a13
    c23 = a12 * a13 - a11 * a23
    c33 = a11 * a22 - a12 * a12
    n = np.stack(
        [
            c11 * b1 + c12 * b2 + c13 * b3,
            c12 * b1 + c22 * b2 + c23 * b3,
            c13 * b1 + c23 * b2 + c33 * b3,
        ],
        axis=-1,
    )
    with np.errstate(invalid="ignore", divide="ignore"):
        n /= np.sqrt(np.einsum("...i,...i->...", n, n))[..., None]
        # det(AtA) = count * det(centred scatter of (u, v)): with fewer than 3 points, or only
        # (nearly) collinear ones, the plane is undetermined; exact arithmetic gives 0/0 there
        # (NaN, as in MATLAB), floating point an arbitrary direction, so mark them NaN.
        cuu = a11 - a13 * a13 / a33
        cvv = a22 - a23 * a23 / a33
        cuv = a12 - a13 * a23 / a33
        flat = (cuu * cvv - cuv * cuv) / (cuu + cvv) ** 2
        n[~((a33 > 2.5) & (flat > DEGENERATE_TOL))] = np.nan
    return n


def depth_to_normals_multi(
    depth_m: np.ndarray,
    mask: np.ndarray | None,
    camera: CameraIntrinsics | None,
    radii: tuple[int, ...],
) -> list[np.ndarray]:
    """:func:`depth_to_normals` for several window radii, sharing the per-pixel terms."""
    depth, valid = _check(depth_m, mask)
    moments = _plane_moments(depth, valid, camera or NYU_CAMERA)
    return [_solve_planes(s) for s in box_sums(moments, radii)]


def depth_to_normals(
    depth_m: np.ndarray,
    mask: np.ndarray | None = None,
    camera: CameraIntrinsics | None = None,
    radius: int = 3,
) -> np.ndarray:
    """Unit surface normals (HxWx3, camera frame: x right, y down, z forward) from depth in metres.

    Each pixel's normal is the least-squares plane through the valid pixels of its
    (2*radius+1)^2 window. ``mask`` is True where the depth is a real measurement (default:
    finite and positive); only those pixels enter the fits, as the reference's
    ``missingMask = rawDepth == 0``. Normals point away from the camera (``n . p > 0``), the
    orientation the fit ``n . p = 1`` gives. Pixels whose window holds fewer than 3 valid
    pixels, or only collinear ones, are NaN.
    """
    return depth_to_normals_multi(depth_m, mask, camera, (radius,))[0]


# 16-bit code of a normal component: 1 + round((n + 1) * NORMAL_CODE_SCALE) in [1, 65535];
# 0 marks a pixel without a normal. Step 1/32767 per component (well under 0.01 degree).
NORMAL_CODE_SCALE = 32767.0


def normals_to_png(normals: np.ndarray) -> bytes:
    """HxWx3 unit normals (NaN: none) -> a lossless 16-bit grey PNG of the 3 components
    stacked vertically (3H x W: x, then y, then z), each mapped from [-1, 1] to [1, 65535].

    Pixels with any non-finite component are stored as 0 in all three planes (invalid).
    """
    n = np.asarray(normals, dtype=np.float64)
    if n.ndim != 3 or n.shape[2] != 3:
        raise DataError(f"normals must be HxWx3, got shape {n.shape}")
    valid = np.isfinite(n).all(axis=2)
    code = np.round((np.clip(np.nan_to_num(n), -1.0, 1.0) + 1.0) * NORMAL_CODE_SCALE) + 1.0
    code = np.where(valid[..., None], code, 0.0).astype(np.uint16)
    h, w = valid.shape
    return encode_png(np.ascontiguousarray(code.transpose(2, 0, 1).reshape(3 * h, w)))


def png_to_normals(data: bytes, height: int, source: str = "normals") -> np.ndarray:
    """Inverse of :func:`normals_to_png`: HxWx3 float32, NaN where the pixel has no normal."""
    import io

    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as im:
            code = np.asarray(im)
    except Exception as exc:  # PIL raises many types for corrupt data
        raise DataError(f"cannot decode normals PNG {source}: {exc}") from exc
    if code.ndim != 2 or code.dtype != np.uint16 or code.shape[0] != 3 * int(height):
        raise DataError(
            f"normals PNG {source} is {code.dtype} {code.shape}, expected 16-bit 3*{height} x W"
        )
    code = code.reshape(3, int(height), code.shape[1]).transpose(1, 2, 0)
    n = (code.astype(np.float32) - 1.0) / np.float32(NORMAL_CODE_SCALE) - 1.0
    n[(code == 0).any(axis=2)] = np.nan
    return n
