"""DeepLab's fully connected CRF: refinement, compact score transport and parameter search.

The model is Krähenbühl & Koltun's dense CRF as DeepLab v1 uses it (Eq. 2 of the paper):
unary ``-log P(x_i)`` from the DCNN's softmax, a Potts pairwise term with an appearance
(bilateral) kernel ``w1 exp(-|p_i-p_j|²/2σα² - |I_i-I_j|²/2σβ²)`` and a smoothness kernel
``w2 exp(-|p_i-p_j|²/2σγ²)``, 10 mean-field iterations. Inference is pydensecrf, called the way
DeepLab's release calls densecrf. Defaults are the LargeFOV release settings (the paper states
only the search ranges): w1=4, σα=121, σβ=5, w2=3, σγ=3.

Search (paper §5): w2=3, σγ=3 fixed; coarse grid w1 ∈ 5..10, σα ∈ 50:10:100, σβ ∈ 3:1:10 on
(up to) 100 val images, then a finer grid around the best. Trials run as parallel Ray tasks over
examples put in the object store once; every trial is logged from the driver as a child run of
one MLflow parent (one writer, so a SQLite store never sees "database is locked").
"""

from __future__ import annotations

import io
import itertools
import json
import math
import os
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from pipeline.data.base import decode_image, decode_label, encode_png
from pipeline.errors import DataError, ParamsError
from pipeline.fsutil import write_text_atomic

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
BACKENDS = ("pydensecrf", "torch")
# Keys of the params.yaml ``crf`` section that configure the stage rather than the model.
SECTION_KEYS = frozenset({"backend", "search"})

# Paper §5 coarse grid (MATLAB ranges [5, 10], [50:10:100], [3:1:10]); w2 = σγ = 3 fixed.
COARSE_GRID: dict[str, list[float]] = {
    "w1": [5.0, 6.0, 7.0, 8.0, 9.0, 10.0],
    "sigma_alpha": [float(v) for v in range(50, 101, 10)],
    "sigma_beta": [float(v) for v in range(3, 11)],
}


def _validate(values: Mapping[str, Any], prefix: str) -> None:
    """Numbers only; weights >= 0, scales > 0, iterations an integer >= 1 (names the key)."""
    for name, value in values.items():
        key = f"{prefix}.{name}"
        if isinstance(value, bool) or not isinstance(value, int | float | np.number):
            raise ParamsError(f"{key} must be a number, got {value!r}")
        if not math.isfinite(float(value)):
            raise ParamsError(f"{key} must be finite, got {value!r}")
        if name in ("w1", "w2") and value < 0:
            raise ParamsError(f"{key} must be >= 0, got {value!r}")
        if name.startswith("sigma") and value <= 0:
            raise ParamsError(f"{key} must be > 0, got {value!r}")
        if name == "iterations" and (int(value) != value or value < 1):
            raise ParamsError(f"{key} must be an integer >= 1, got {value!r}")


@dataclass(frozen=True)
class CRFParams:
    """Dense-CRF parameters (names follow DeepLab Eq. 2); defaults = LargeFOV release."""

    w1: float = 4.0
    sigma_alpha: float = 121.0
    sigma_beta: float = 5.0
    w2: float = 3.0
    sigma_gamma: float = 3.0
    iterations: int = 10

    def __post_init__(self) -> None:
        _validate(asdict(self), "crf")

    @classmethod
    def from_params(
        cls,
        section: Mapping[str, Any] | None,
        prefix: str = "crf",
        ignore: Iterable[str] = SECTION_KEYS,
    ) -> CRFParams:
        """Build from the params.yaml ``crf`` section; missing keys take the release defaults.

        Unknown keys are errors naming ``<prefix>.<key>`` (a typo like ``sigma_alfa`` would
        otherwise be silently ignored), except the stage-level keys in ``ignore``.
        """
        section = dict(section or {})
        names = [f.name for f in fields(cls)]
        skip = set(ignore)
        for key in section:
            if key not in names and key not in skip:
                raise ParamsError(
                    f"{prefix}.{key} is not a CRF parameter (expected one of {names})"
                )
        values = {k: section[k] for k in names if k in section}
        _validate(values, prefix)
        if "iterations" in values:
            values["iterations"] = int(values["iterations"])
        return cls(**values)

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


def backend_from_params(section: Mapping[str, Any] | None, prefix: str = "crf") -> str:
    """The ``crf.backend`` value ('pydensecrf' unless set), validated."""
    backend = (section or {}).get("backend", "pydensecrf")
    if backend not in BACKENDS:
        raise ParamsError(f"{prefix}.backend must be one of {BACKENDS}, got {backend!r}")
    return backend


# ---------------------------------------------------------------------------------------------
# Inference


def _check_inputs(image_rgb: np.ndarray, probs: np.ndarray) -> None:
    if probs.ndim != 3:
        raise ValueError(f"probs must be CxHxW, got shape {probs.shape}")
    _, h, w = probs.shape
    if image_rgb.shape != (h, w, 3) or image_rgb.dtype != np.uint8:
        raise ValueError(
            f"image must be uint8 {h}x{w}x3 to match probs {probs.shape}, "
            f"got {image_rgb.dtype} {image_rgb.shape}"
        )


def refine(
    image_rgb: np.ndarray,
    probs: np.ndarray,
    params: CRFParams | None = None,
    backend: str = "pydensecrf",
) -> np.ndarray:
    """Mean-field inference of the dense CRF; returns HxW uint8 labels (argmax of Q).

    ``probs`` are softmax probabilities (CxHxW, already upsampled to the image size); values are
    clipped at 1e-5 before the log, as pydensecrf's ``unary_from_softmax`` does.
    """
    params = params or CRFParams()
    _check_inputs(image_rgb, probs)
    if backend == "torch":
        return refine_torch_batch([image_rgb], [probs], params)[0]
    if backend != "pydensecrf":
        raise ParamsError(f"crf.backend must be one of {BACKENDS}, got {backend!r}")
    import pydensecrf.densecrf as dcrf
    from pydensecrf.utils import unary_from_softmax

    c, h, w = probs.shape
    crf = dcrf.DenseCRF2D(w, h, c)
    crf.setUnaryEnergy(np.ascontiguousarray(unary_from_softmax(probs.astype(np.float32))))
    crf.addPairwiseGaussian(sxy=float(params.sigma_gamma), compat=float(params.w2))
    crf.addPairwiseBilateral(
        sxy=float(params.sigma_alpha),
        srgb=float(params.sigma_beta),
        # pydensecrf needs a writable buffer; arrays from Ray's object store are read-only
        rgbim=np.require(image_rgb, np.uint8, ["C_CONTIGUOUS", "WRITEABLE"]),
        compat=float(params.w1),
    )
    q = np.asarray(crf.inference(int(params.iterations)), dtype=np.float32).reshape(c, h, w)
    return q.argmax(axis=0).astype(np.uint8)


# ---------------------------------------------------------------------------------------------
# Torch backend: the same mean field, batched, CPU or GPU


class _TorchLattice:
    """Permutohedral lattice (Adams et al. 2010) exactly as densecrf builds it, in torch.

    Holds each pixel's d+1 enclosing vertices and barycentric weights, and each vertex's two
    neighbours along every lattice axis (the blur is ``v + (v[n1] + v[n2]) / 2`` per axis;
    slicing scales by densecrf's ``alpha = 1 / (1 + 2^-d)``). Keys are packed into int64 codes:
    one sort builds the table, neighbours are found by code arithmetic + ``searchsorted``.
    ``group`` (image index) goes into the codes' high bits, so a batch of images shares one
    lattice yet never exchanges messages.
    """

    def __init__(self, features: Any, group: Any = None):
        import torch

        n, d = features.shape
        d1 = d + 1
        dev = features.device
        # elevate onto the hyperplane (scaled so the blur approximates a unit Gaussian)
        inv_std = math.sqrt(2.0 / 3.0) * d1
        scale = torch.tensor([inv_std / math.sqrt((i + 1) * (i + 2)) for i in range(d)], device=dev)
        cf = features.float() * scale
        elev = torch.zeros(n, d1, device=dev)
        elev[:, :d] = cf.flip(1).cumsum(1).flip(1)
        elev[:, 1:] -= torch.arange(1, d1, device=dev, dtype=torch.float32) * cf
        # nearest remainder-0 point, then the simplex (rank of each coordinate's residual)
        v = elev / d1
        up, down = torch.ceil(v) * d1, torch.floor(v) * d1
        rem0 = torch.where(up - elev < elev - down, up, down)
        total = (rem0 / d1).round().sum(1, keepdim=True).long()
        resid = elev - rem0
        idx = torch.arange(d1, device=dev)
        # rank = position in descending order, ties to the earlier coordinate (as densecrf)
        order = torch.argsort(resid, dim=1, descending=True, stable=True)
        rank = torch.empty_like(order).scatter_(1, order, idx.expand(n, d1)) + total
        rem0 = rem0.long() + torch.where(rank < 0, d1, 0) - torch.where(rank > d, d1, 0)
        rank = rank.remainder(d1)
        # barycentric weights of the d+1 enclosing vertices
        vb = (elev - rem0.float()) / d1
        bary = torch.zeros(n, d1 + 1, device=dev)
        bary.scatter_add_(1, d - rank, vb)
        bary.scatter_add_(1, d - rank + 1, -vb)
        bary[:, 0] += 1.0 + bary[:, d1]
        bary = bary[:, :d1]
        # vertex r has key[i] = rem0[i] + r - d1 * [rank[i] > d - r] (first d coordinates),
        # packed into one int64 code; margins of 2 d1 keep neighbours' codes carry-free
        r0 = rem0[:, :d]
        lo = r0.amin(0) - 2 * d1
        span = (r0.amax(0) + 2 * d1 - lo + 1).tolist()
        bits = [max(1, int(x).bit_length()) for x in span]
        gbits = int(group.max()).bit_length() if group is not None and n else 0
        if sum(bits) + gbits > 62:
            raise ValueError(f"lattice keys need {sum(bits) + gbits} bits; features too spread")
        shifts = [0]
        for nb in bits[:-1]:
            shifts.append(shifts[-1] + nb)
        weight = torch.tensor([1 << sh for sh in shifts], device=dev, dtype=torch.long)
        base = ((r0 - lo) * weight).sum(1)
        if group is not None:
            base += group.long() << sum(bits)
        one_all = int(weight.sum())
        # sum_i [rank_i > d - r] w_i = the weights of the coordinates ranked d, d-1, .., d1-r
        order = torch.empty_like(rank).scatter_(1, rank, idx.expand(n, d1))
        ranked_w = torch.cat([weight, weight.new_zeros(1)])[order.flip(1)]
        codes = base[:, None] + idx * one_all
        codes[:, 1:] -= d1 * ranked_w[:, :d].cumsum(1)
        codes = codes.reshape(-1)
        sorted_codes, perm = torch.sort(codes)
        uniq, inv, counts = torch.unique_consecutive(
            sorted_codes, return_inverse=True, return_counts=True
        )
        m = uniq.numel()
        offset = torch.empty_like(inv)
        offset[perm] = inv
        self.n, self.m, self.d1 = n, m, d1
        self.alpha = 1.0 / (1.0 + 2.0 ** (-d))
        self.offset = offset.reshape(n, d1)  # lattice vertex of each (pixel, simplex corner)
        self.bary = bary.contiguous()
        self.crow = torch.zeros(m + 1, dtype=torch.long, device=dev)  # splat rows: vertices
        self.crow[1:] = counts.cumsum(0)
        self.perm = perm  # (pixel, corner) entries in vertex order
        # blur neighbours along each lattice axis j: key -1 everywhere but +d at j, and back;
        # a missing neighbour is -1
        self.blur = []
        for j in range(d1):
            step = one_all - (d1 * int(weight[j]) if j < d else 0)
            self.blur.append((self._find(uniq, uniq - step), self._find(uniq, uniq + step)))

    @staticmethod
    def _find(uniq: Any, codes: Any) -> Any:
        import torch

        pos = torch.searchsorted(uniq, codes).clamp_(max=uniq.numel() - 1)
        return torch.where(uniq[pos] == codes, pos, -1)

    def symmetric_norm(self) -> Any:
        """densecrf's NORMALIZE_SYMMETRIC factor ``1/sqrt(K 1)`` per pixel (one channel: no CSR)."""
        import torch

        v = torch.zeros(self.m + 1, device=self.bary.device)
        v.index_add_(0, self.offset.reshape(-1), self.bary.reshape(-1))
        for n1, n2 in self.blur:
            v[:-1] = v[:-1] + 0.5 * (v[n1] + v[n2])  # v[-1] == 0 stands in for a missing one
        out = (v[self.offset] * self.bary).sum(1) * self.alpha
        return out.add_(1e-20).rsqrt_()


def _csr(crow: Any, col: Any, val: Any, shape: tuple[int, int]) -> Any:
    import torch

    with warnings.catch_warnings():  # "sparse CSR support is in beta"
        warnings.simplefilter("ignore", UserWarning)
        return torch.sparse_csr_tensor(crow, col, val, shape, check_invariants=False)


class _LatticeFilter:
    """``sum_k out_k * K_k(in_k * x)`` over lattices on the same pixels: 2 spmm + d+1 blurs.

    The per-pixel scales (symmetric normalisation, kernel weight) are folded into the sparse
    splat / slice values and the lattices are stacked, so one mean-field step is one splat,
    one blur, one slice fused with the unary (``addmm``) and a softmax: no N x C temporaries.
    """

    def __init__(self, lattices: Sequence[_TorchLattice], in_scales: Any, out_scales: Any):
        import torch

        n = lattices[0].n
        dev = lattices[0].offset.device
        starts = [0]
        for lat in lattices:
            starts.append(starts[-1] + lat.m)
        total = starts[-1]
        crows, cols, vals, nnz = [torch.zeros(1, dtype=torch.long, device=dev)], [], [], 0
        for lat, scale in zip(lattices, in_scales):
            pixel = lat.perm // lat.d1
            crows.append(lat.crow[1:] + nnz)
            cols.append(pixel)
            vals.append(lat.bary.reshape(-1)[lat.perm] * scale[pixel])
            nnz += lat.perm.numel()
        self.splat = _csr(torch.cat(crows), torch.cat(cols), torch.cat(vals), (total, n))
        width = sum(lat.d1 for lat in lattices)
        col = torch.cat([lat.offset + st for lat, st in zip(lattices, starts)], 1)
        val = torch.cat(
            [lat.bary * (lat.alpha * scale)[:, None] for lat, scale in zip(lattices, out_scales)],
            1,
        )
        crow = torch.arange(0, width * n + 1, width, device=dev)
        self.slice = _csr(crow, col.reshape(-1), val.reshape(-1), (n, total))
        self.blur = []
        pad = torch.full((1,), total, dtype=torch.long, device=dev)
        for j in range(max(lat.d1 for lat in lattices)):
            pair = []
            for side in (0, 1):
                parts = []
                for lat, st in zip(lattices, starts):
                    if j < lat.d1:  # beyond its own axes a lattice's rows see only the pad (0)
                        nb = lat.blur[j][side]
                        parts.append(torch.where(nb < 0, total, nb + st))
                    else:
                        parts.append(pad.expand(lat.m))
                pair.append(torch.cat([*parts, pad]))
            self.blur.append(pair)

    def __call__(self, x: Any, add: Any = None) -> Any:
        """``add + sum_k out_k * K_k(in_k * x)`` for x of N x C."""
        import torch

        v = torch.cat([self.splat @ x, x.new_zeros(1, x.shape[1])])
        for n1, n2 in self.blur:
            v = torch.add(v, v.index_select(0, n1) + v.index_select(0, n2), alpha=0.5)
        if add is None:
            return self.slice @ v[:-1]
        return torch.addmm(add, self.slice, v[:-1])


def refine_torch_batch(
    images: Sequence[np.ndarray],
    probs: Sequence[np.ndarray],
    params: CRFParams | None = None,
    device: str | None = None,
) -> list[np.ndarray]:
    """The dense CRF of ``refine`` for a batch of images at once, in torch (CPU or CUDA).

    Same model and approximations as pydensecrf (permutohedral lattice, symmetric kernel
    normalisation, Potts compatibility as attraction, unary clipped at 1e-5): labels agree with
    pydensecrf on >= 99% of pixels (tests/test_crf.py). Images may differ in size; all must
    have the same number of classes. ``device`` None: CUDA when available.
    """
    import torch

    params = params or CRFParams()
    if len(images) != len(probs):
        raise ValueError(f"{len(images)} images but {len(probs)} score maps")
    if not images:
        return []
    for image, p in zip(images, probs):
        _check_inputs(image, p)
    classes = {p.shape[0] for p in probs}
    if len(classes) != 1:
        raise ValueError(f"score maps differ in class count: {sorted(classes)}")
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    sizes = [p.shape[1] * p.shape[2] for p in probs]
    pos, rgb, group = [], [], []
    for k, image in enumerate(images):
        h, w = image.shape[:2]
        yy, xx = torch.meshgrid(
            torch.arange(h, dtype=torch.float32, device=dev),
            torch.arange(w, dtype=torch.float32, device=dev),
            indexing="ij",
        )
        pos.append(torch.stack([xx, yy], -1).reshape(-1, 2))
        rgb.append(torch.as_tensor(np.array(image, np.float32), device=dev).reshape(-1, 3))
        group.append(torch.full((h * w,), k, dtype=torch.long, device=dev))
    pos_t, rgb_t, group_t = torch.cat(pos), torch.cat(rgb), torch.cat(group)
    logp = torch.cat(
        [torch.as_tensor(np.array(p, np.float32), device=dev).reshape(len(p), -1).T for p in probs]
    )
    logp = logp.clamp_(1e-5, 1.0).log_()
    kernels = []
    if params.w2 > 0:
        kernels.append((float(params.w2), pos_t / float(params.sigma_gamma)))
    if params.w1 > 0:
        feats = torch.cat([pos_t / float(params.sigma_alpha), rgb_t / float(params.sigma_beta)], 1)
        kernels.append((float(params.w1), feats))
    q = torch.softmax(logp, 1)
    if kernels:
        lattices, norms = [], []
        for _, feats in kernels:
            lattice = _TorchLattice(feats, group_t if len(images) > 1 else None)
            norms.append(lattice.symmetric_norm())
            lattices.append(lattice)
        # Potts compatibility as densecrf applies it: an attraction w * k * Q to the same label
        message = _LatticeFilter(lattices, norms, [w * nm for (w, _), nm in zip(kernels, norms)])
        for _ in range(int(params.iterations)):
            q = torch.softmax(message(q, add=logp), 1)
    labels = q.argmax(1).to(torch.uint8).cpu().numpy()
    out, start = [], 0
    for image, size in zip(images, sizes):
        out.append(labels[start : start + size].reshape(image.shape[:2]))
        start += size
    return out


# ---------------------------------------------------------------------------------------------
# Compact score transport


def encode_probs(probs: np.ndarray) -> bytes:
    """Probabilities (CxHxW floats in [0, 1]) -> PNG of uint8 ``round(255 p)``, CxH rows.

    Quantisation step 1/255 is far below what moves a CRF label; smooth DCNN scores compress
    well under PNG's row filters: about 130-330 KB for a 500x375x21 map (vs 15.8 MB float32,
    7.9 MB float16), and the refined labels agree on >= 99.99% of pixels (tests/test_crf.py).
    """
    probs = np.asarray(probs)
    if probs.ndim != 3:
        raise ValueError(f"probs must be CxHxW, got shape {probs.shape}")
    c, h, w = probs.shape
    q = np.rint(np.clip(probs, 0.0, 1.0) * 255.0).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(q.reshape(c * h, w)).save(buf, format="PNG", compress_level=6)
    return buf.getvalue()


def decode_probs(data: bytes, shape: Sequence[int], source: str = "probs") -> np.ndarray:
    """Inverse of ``encode_probs``: CxHxW float32 probabilities; bad data is a DataError."""
    c, h, w = (int(v) for v in shape)
    if not bytes(data[:8]) == PNG_SIGNATURE:
        raise DataError(f"{source}: not an encode_probs PNG")
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            q = np.asarray(im)
    except Exception as exc:  # PIL raises many types for corrupt data
        raise DataError(f"{source}: cannot decode probs: {exc}") from exc
    if q.shape != (c * h, w) or q.dtype != np.uint8:
        raise DataError(f"{source}: probs of shape {q.shape}, expected {(c * h, w)} for {shape}")
    return q.reshape(c, h, w).astype(np.float32) * np.float32(1.0 / 255.0)


def _decode_image(data: Any, source: str) -> np.ndarray:
    if isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim == 3:
        return data
    return decode_image(bytes(data), source)


def _decode_label(data: Any, source: str) -> np.ndarray:
    if isinstance(data, np.ndarray) and data.ndim == 2:
        return data
    return decode_label(bytes(data), source)


# ---------------------------------------------------------------------------------------------
# Ray Data


def _num_classes_of(data: bytes, height: int) -> int:
    """Classes in an encoded probs PNG: its row count over the image height."""
    with Image.open(io.BytesIO(data)) as im:
        rows = im.size[1]
    if rows % height:
        raise DataError(f"probs PNG has {rows} rows, not a multiple of height {height}")
    return rows // height


def _refine_batch(
    batch: dict[str, np.ndarray],
    params: dict[str, float],
    backend: str,
    drop_probs: bool,
    timing: bool,
) -> dict[str, np.ndarray]:
    """map_batches UDF: decode image + probs, run the CRF, add ``crf_label`` (PNG bytes)."""
    import time

    crf_params = CRFParams(**params)
    out, wall, cpu, images, scores = [], [], [], [], []
    for i in range(len(batch["id"])):
        t0, c0 = time.perf_counter(), time.process_time()
        h, w = int(batch["height"][i]), int(batch["width"][i])
        source = f"example {batch['id'][i]}"
        data = bytes(batch["probs"][i])
        probs = decode_probs(data, (_num_classes_of(data, h), h, w), source)
        image = _decode_image(batch["image"][i], source)
        if backend == "torch":  # the whole batch in one lattice, below
            images.append(image)
            scores.append(probs)
            continue
        out.append(encode_png(refine(image, probs, crf_params, backend)))
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    if backend == "torch":
        t0, c0 = time.perf_counter(), time.process_time()
        out = [encode_png(lab) for lab in refine_torch_batch(images, scores, crf_params)]
        n = max(len(out), 1)
        wall = [(time.perf_counter() - t0) / n] * len(out)
        cpu = [(time.process_time() - c0) / n] * len(out)
    result = dict(batch)
    if drop_probs:
        result.pop("probs")
    result["crf_label"] = np.array(out, dtype=object)
    if timing:
        result["crf_seconds"] = np.array(wall, dtype=np.float64)
        result["crf_cpu_seconds"] = np.array(cpu, dtype=np.float64)
    return result


def refine_dataset(
    ds: Any,
    params: CRFParams | None = None,
    *,
    backend: str = "pydensecrf",
    rows_per_task: int | None = 2,
    num_cpus: float = 1.0,
    concurrency: int | None = None,
    drop_probs: bool = False,
    timing: bool = False,
    num_gpus: float = 0.0,
) -> Any:
    """Add a ``crf_label`` column (PNG) to a Ray dataset of rows id, image, probs, height, width.

    One CRF is ~1-2 s of single-threaded C++, so each task takes ``num_cpus=1`` and works on
    ``rows_per_task`` rows: the dataset is re-blocked to that size first, because Ray Data
    schedules one task per block (a Parquet file read as one block would use one core only).
    ``concurrency=None`` lets Ray run as many tasks as the cluster has CPUs, on every node.
    The torch backend refines each task's rows as one batch (on a GPU when ``num_gpus`` > 0
    gives the task one; Ray sets ``OMP_NUM_THREADS`` = ``num_cpus`` for CPU tasks).
    ``timing=True`` adds ``crf_seconds`` / ``crf_cpu_seconds`` per row (benchmarks only: the
    values differ run to run, so a DVC output holding them would never be reproducible).
    """
    params = params or CRFParams()
    if backend not in BACKENDS:
        raise ParamsError(f"crf.backend must be one of {BACKENDS}, got {backend!r}")
    if rows_per_task is not None:
        ds = ds.repartition(target_num_rows_per_block=int(rows_per_task))
    # Ray Data reserves part of the CPUs per operator by default; on a small node that left one
    # of 2 CPUs idle (1.3x instead of 1.7x at 2 CPUs, benchmarks/bench_crf.py)
    import ray

    ray.data.DataContext.get_current().op_resource_reservation_enabled = False
    return ds.map_batches(
        _refine_batch,
        fn_kwargs={
            "params": params.to_dict(),
            "backend": backend,
            "drop_probs": drop_probs,
            "timing": timing,
        },
        batch_format="numpy",
        batch_size=1 if backend == "pydensecrf" else (rows_per_task or 4),
        num_cpus=num_cpus,
        num_gpus=num_gpus,
        concurrency=concurrency,
        zero_copy_batch=True,
    )


# ---------------------------------------------------------------------------------------------
# Parameter search


@dataclass(frozen=True)
class Example:
    """One search example, compact in the object store: RGB image, encoded probs, label."""

    image: np.ndarray  # HxWx3 uint8
    probs: bytes  # encode_probs output
    label: np.ndarray  # HxW uint8, 255 = void
    num_classes: int

    def decoded_probs(self) -> np.ndarray:
        h, w = self.label.shape
        return decode_probs(self.probs, (self.num_classes, h, w))


def make_example(image: Any, probs: Any, label: Any, source: str = "example") -> Example:
    """Normalise one example: images/labels decoded if bytes, probs encoded if an array."""
    image = _decode_image(image, source)
    label = _decode_label(label, source)
    h, w = label.shape
    if isinstance(probs, bytes | bytearray | memoryview):
        data = bytes(probs)
        c = _num_classes_of(data, h)
    else:
        probs = np.asarray(probs)
        c = probs.shape[0]
        data = encode_probs(probs)
    if image.shape[:2] != (h, w):
        raise DataError(f"{source}: image {image.shape[:2]} and label {(h, w)} differ in size")
    return Example(image=image, probs=data, label=label, num_classes=c)


def _as_example(item: Any, i: int) -> Example:
    if isinstance(item, Example):
        return item
    if isinstance(item, Mapping):
        source = str(item.get("id", f"example {i}"))
        return make_example(item["image"], item["probs"], item["label"], source)
    image, probs, label = item
    return make_example(image, probs, label, f"example {i}")


def expand_grid(
    grid: Mapping[str, Sequence[float]] | Iterable[CRFParams], base: CRFParams | None = None
) -> list[CRFParams]:
    """A grid as CRFParams: a list is kept, a dict of value lists is its Cartesian product.

    Keys absent from the dict take ``base``'s values (default: w2 = σγ = 3, 10 iterations).
    """
    base = base or CRFParams()
    if isinstance(grid, Mapping):
        names = {f.name for f in fields(CRFParams)}
        for key in grid:
            if key not in names:
                raise ParamsError(f"crf.search.grid.{key} is not a CRF parameter")
        keys = list(grid)
        return [
            replace(base, **dict(zip(keys, combo)))
            for combo in itertools.product(*(list(grid[k]) for k in keys))
        ]
    return list(grid)


def fine_grid(
    best: CRFParams,
    steps: Mapping[str, float] | None = None,
    radius: int = 2,
) -> dict[str, list[float]]:
    """The paper's refinement round: finer steps around the coarse round's best values.

    Default steps halve the coarse ones (w1 0.5, σα 5, σβ 0.5), ``radius`` steps either side;
    values that would not be valid (w1 < 0, σ <= 0) are dropped.
    """
    steps = dict(steps or {"w1": 0.5, "sigma_alpha": 5.0, "sigma_beta": 0.5})
    out: dict[str, list[float]] = {}
    for key, step in steps.items():
        centre = float(getattr(best, key))
        values = [centre + k * step for k in range(-radius, radius + 1)]
        low_ok = (lambda v: v >= 0) if key.startswith("w") else (lambda v: v > 0)
        out[key] = [round(v, 6) for v in values if low_ok(v)]
    return out


def _evaluate_chunk(
    examples: list[Example], indices: list[int], params: dict[str, float], backend: str
) -> np.ndarray:
    """Summed confusion matrix of one trial over some examples (runs as a Ray task)."""
    from pipeline.metrics.segmentation import confusion_matrix

    crf_params = CRFParams(**params)
    n = examples[indices[0]].num_classes
    hist = np.zeros((n, n), dtype=np.int64)
    for i in indices:
        ex = examples[i]
        pred = refine(ex.image, ex.decoded_probs(), crf_params, backend)
        hist += confusion_matrix(ex.label, pred, n)
    return hist


def evaluate(
    examples: Sequence[Any], params: CRFParams, num_classes: int, backend: str = "pydensecrf"
) -> dict[str, Any]:
    """One trial, in-process: segmentation scores of the refined examples (dataset-level IU)."""
    from pipeline.metrics.segmentation import segmentation_scores

    exs = _prepare(examples, num_classes)
    hist = _evaluate_chunk(exs, list(range(len(exs))), params.to_dict(), backend)
    return segmentation_scores(hist)


def _check_classes(examples: list[Example], num_classes: int) -> None:
    for i, ex in enumerate(examples):
        if ex.num_classes != num_classes:
            raise DataError(f"example {i} has {ex.num_classes} score channels, not {num_classes}")


def _chunks(n_items: int, n_trials: int, cpus: int) -> list[list[int]]:
    """Split examples so that trials x chunks gives every CPU work (at least 2 tasks per CPU)."""
    want = max(1, min(n_items, math.ceil(2 * cpus / max(n_trials, 1))))
    bounds = np.linspace(0, n_items, want + 1).round().astype(int)
    return [list(range(a, b)) for a, b in zip(bounds[:-1], bounds[1:]) if b > a]


class _TrialLogger:
    """Child runs under one parent, written from the driver only (one SQLite writer)."""

    def __init__(self, parent_run_id: str | None, tracking_uri: str | None, run_name: str):
        import mlflow

        self.client = mlflow.MlflowClient(tracking_uri=tracking_uri)
        self.own_parent = parent_run_id is None
        if parent_run_id is None:
            name = os.environ.get("MLFLOW_EXPERIMENT_NAME", "crf-search")
            exp = self.client.get_experiment_by_name(name)
            exp_id = exp.experiment_id if exp else self.client.create_experiment(name)
            parent_run_id = self.client.create_run(exp_id, run_name=run_name).info.run_id
        self.parent_id = parent_run_id
        self.experiment_id = self.client.get_run(parent_run_id).info.experiment_id

    @classmethod
    def maybe(
        cls, parent_run_id: str | None, tracking_uri: str | None, run_name: str
    ) -> _TrialLogger | None:
        if parent_run_id is None and tracking_uri is None:
            return None
        return cls(parent_run_id, tracking_uri, run_name)

    def log_trial(self, record: Mapping[str, Any]) -> str:
        from mlflow.entities import Metric, Param

        index = int(record["trial"])
        tags = {"mlflow.parentRunId": self.parent_id, "densepipe.crf_trial": str(index)}
        if "round" in record:
            tags["densepipe.crf_round"] = str(record["round"])
        run = self.client.create_run(
            self.experiment_id, run_name=f"crf-trial-{index:04d}", tags=tags
        )
        rid = run.info.run_id
        self.client.log_batch(
            rid,
            params=[Param(f.name, str(record[f.name])) for f in fields(CRFParams)],
            metrics=[
                Metric(k, float(record[k]), 0, 0)
                for k in ("mean_iu", "pixel_acc", "mean_acc")
                if record.get(k) is not None and math.isfinite(record[k])
            ],
        )
        self.client.set_terminated(rid)
        return rid

    def finish(self, best: CRFParams, best_score: float, n_trials: int) -> None:
        """Best values as parent tags (mutable, unlike params) + metric; close our own parent."""
        from mlflow.entities import Metric, RunTag

        tags = [RunTag(f"crf.best.{k}", str(v)) for k, v in best.to_dict().items()]
        metrics = [Metric("best_mean_iu", float(best_score), 0, n_trials)]
        self.client.log_batch(self.parent_id, metrics=metrics, tags=tags)
        if self.own_parent:
            self.client.set_terminated(self.parent_id)


def _run_trials(
    exs: list[Example],
    trials_params: list[CRFParams],
    backend: str,
    logger: _TrialLogger | None,
    first_index: int = 0,
    round_name: str | None = None,
) -> list[dict[str, Any]]:
    """All trials as Ray tasks (trial x chunk of examples), gathered as they finish."""
    import ray

    from pipeline.metrics.segmentation import segmentation_scores

    if not ray.is_initialized():
        ray.init(configure_logging=False, include_dashboard=False)
    cpus = max(1, int(ray.cluster_resources().get("CPU", 1)))
    examples_ref = ray.put(exs)  # once: every task reads the same object
    remote = ray.remote(num_cpus=1)(_evaluate_chunk)
    chunks = _chunks(len(exs), len(trials_params), cpus)
    pending: dict[Any, int] = {}
    for t, p in enumerate(trials_params):
        for chunk in chunks:
            pending[remote.remote(examples_ref, chunk, p.to_dict(), backend)] = t
    hists: dict[int, np.ndarray] = {}
    remaining = dict.fromkeys(range(len(trials_params)), len(chunks))
    records: list[dict[str, Any]] = [{} for _ in trials_params]
    refs = list(pending)
    while refs:
        done, refs = ray.wait(refs, num_returns=1)
        t = pending.pop(done[0])
        hist = ray.get(done[0])
        hists[t] = hists[t] + hist if t in hists else hist
        remaining[t] -= 1
        if remaining[t]:
            continue
        scores = segmentation_scores(hists.pop(t))
        record: dict[str, Any] = {
            **trials_params[t].to_dict(),
            "mean_iu": scores["mean_iu"],
            "pixel_acc": scores["pixel_acc"],
            "mean_acc": scores["mean_acc"],
            "trial": first_index + t,
        }
        if round_name is not None:
            record["round"] = round_name
        if logger is not None:
            record["run_id"] = logger.log_trial(record)
        records[t] = record
    return records


def _best(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Highest mean IU (NaN counts as worst); ties go to the earlier trial."""

    def key(r: dict[str, Any]) -> tuple[float, int]:
        score = r["mean_iu"] if math.isfinite(r["mean_iu"]) else -math.inf
        return (score, -r["trial"])

    return max(records, key=key)


def _prepare(examples: Sequence[Any], num_classes: int) -> list[Example]:
    exs = [_as_example(e, i) for i, e in enumerate(examples)]
    if not exs:
        raise DataError("CRF search needs at least one example")
    _check_classes(exs, num_classes)
    return exs


def search(
    examples: Sequence[Any],
    grid: Mapping[str, Sequence[float]] | Iterable[CRFParams],
    num_classes: int,
    mlflow_parent_run_id: str | None = None,
    tracking_uri: str | None = None,
    *,
    base: CRFParams | None = None,
    backend: str = "pydensecrf",
    run_name: str = "crf-search",
) -> tuple[CRFParams, list[dict[str, Any]]]:
    """Evaluate every grid point on the examples as parallel Ray tasks; return (best, trials).

    ``examples``: ``Example``s, ``(image, probs, label)`` tuples or dicts with those keys
    (arrays or encoded bytes; float probs are stored quantised with ``encode_probs``, the form
    the predict stage writes). They go into the object store once. Mean IU per trial is
    dataset-level (one confusion matrix summed over the examples; 255 ignored; nanmean over
    classes). Ties go to the earlier grid point. MLflow logging happens when a parent run id or
    a tracking URI is given: each trial is a child run (params + mean_iu, pixel_acc, mean_acc);
    without a parent id a parent run ``run_name`` is created (experiment
    ``$MLFLOW_EXPERIMENT_NAME`` or "crf-search"). Ray is initialised if it is not yet.
    """
    trials_params = expand_grid(grid, base)
    if not trials_params:
        raise ParamsError("crf.search.grid is empty")
    exs = _prepare(examples, num_classes)
    logger = _TrialLogger.maybe(mlflow_parent_run_id, tracking_uri, run_name)
    records = _run_trials(exs, trials_params, backend, logger)
    best = _best(records)
    if logger is not None:
        logger.finish(trials_params[best["trial"]], best["mean_iu"], len(records))
    return trials_params[best["trial"]], records


def coarse_to_fine_search(
    examples: Sequence[Any],
    num_classes: int,
    coarse: Mapping[str, Sequence[float]] | None = None,
    fine_steps: Mapping[str, float] | None = None,
    mlflow_parent_run_id: str | None = None,
    tracking_uri: str | None = None,
    *,
    base: CRFParams | None = None,
    backend: str = "pydensecrf",
    radius: int = 2,
    run_name: str = "crf-search",
) -> tuple[CRFParams, list[dict[str, Any]]]:
    """Paper §5: the coarse grid, then ``fine_grid`` around its best; (best, trials of both).

    Both rounds log under the same parent run; records carry ``round`` = coarse / fine.
    """
    exs = _prepare(examples, num_classes)
    logger = _TrialLogger.maybe(mlflow_parent_run_id, tracking_uri, run_name)
    coarse_params = expand_grid(coarse or COARSE_GRID, base)
    if not coarse_params:
        raise ParamsError("crf.search.grid is empty")
    records = _run_trials(exs, coarse_params, backend, logger, 0, "coarse")
    centre = coarse_params[_best(records)["trial"]]
    seen = {p for p in coarse_params}
    fine_params = [
        p for p in expand_grid(fine_grid(centre, fine_steps, radius), centre) if p not in seen
    ]
    if fine_params:
        records += _run_trials(exs, fine_params, backend, logger, len(records), "fine")
    all_params = coarse_params + fine_params
    best = _best(records)
    if logger is not None:
        logger.finish(all_params[best["trial"]], best["mean_iu"], len(records))
    return all_params[best["trial"]], records


def save_best(path: str | os.PathLike, params: CRFParams, **extra: Any) -> None:
    """Write the chosen parameters as JSON (atomically: it is a DVC output)."""
    payload = {**params.to_dict(), **extra}
    write_text_atomic(path, json.dumps(payload, indent=2, sort_keys=True) + "\n")


def load_best(path: str | os.PathLike) -> CRFParams:
    """Read ``save_best``'s file; a missing or malformed file is a DataError naming it."""
    path = Path(path)
    try:
        payload = json.loads(path.read_text())
    except FileNotFoundError:
        raise DataError(f"CRF parameters file not found: {path}") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise DataError(f"cannot read CRF parameters {path}: {exc}") from exc
    if not isinstance(payload, dict):
        raise DataError(f"{path}: expected a JSON object of CRF parameters")
    names = {f.name for f in fields(CRFParams)}
    missing = names - set(payload)
    if missing:
        raise DataError(f"{path}: missing CRF parameters {sorted(missing)}")
    try:
        return CRFParams.from_params({k: payload[k] for k in names})
    except ParamsError as exc:
        raise DataError(f"{path}: {exc}") from exc


# ---------------------------------------------------------------------------------------------
# Synthetic data (tests, benchmarks)


def _interp_matrix(n_out: int, n_in: int) -> np.ndarray:
    """Bilinear (half-pixel centres) resampling as an n_out x n_in matrix."""
    pos = np.clip((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0, n_in - 1)
    lo = np.floor(pos).astype(int)
    hi = np.minimum(lo + 1, n_in - 1)
    frac = (pos - lo).astype(np.float32)
    m = np.zeros((n_out, n_in), dtype=np.float32)
    m[np.arange(n_out), lo] += 1 - frac
    m[np.arange(n_out), hi] += frac
    return m


def _resize(x: np.ndarray, h: int, w: int) -> np.ndarray:
    """Bilinear resize of the last two axes (separable matmuls: much faster than ndimage.zoom)."""
    ry = _interp_matrix(h, x.shape[-2])
    rx = _interp_matrix(w, x.shape[-1])
    return ry @ x.astype(np.float32) @ rx.T


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, ...], scale: float) -> np.ndarray:
    """Unit-variance noise smooth over ~``scale`` px in the last two axes (made at low res)."""
    from scipy import ndimage

    *lead, h, w = shape
    f = max(1, int(scale // 2))
    small = rng.normal(size=(*lead, -(-h // f), -(-w // f)))
    sigma = (0,) * len(lead) + (scale / f, scale / f)
    small = ndimage.gaussian_filter(small, sigma, mode="wrap")
    small /= small.std() + 1e-12
    return _resize(small, h, w)


def synthetic_example(
    height: int = 375,
    width: int = 500,
    num_classes: int = 21,
    seed: int = 0,
    regions: int = 12,
    blur: float = 10.0,
    noise: float = 0.35,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A realistic (image, probs, label) triple for tests and benchmarks.

    The label is a warped Voronoi partition (irregular boundaries) of ``regions`` segments,
    ~40% background; the image gives each segment a colour plus smooth shading and fine texture;
    the scores imitate a stride-8 DCNN: the label sampled every 8 px, one-hot, bilinearly
    upsampled, blurred (``blur`` px), plus smooth noise (std ``noise`` in logits), softmax.
    Real score maps are smooth like these; white-noise scores make pydensecrf ~3x slower.
    """
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    h, w, c = height, width, num_classes
    ys, xs = rng.uniform(0, h, regions), rng.uniform(0, w, regions)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    warp = _smooth_noise(rng, (2, h, w), 12.0) * 6.0
    dist = (yy[None] + warp[0][None] - ys[:, None, None]) ** 2 + (
        xx[None] + warp[1][None] - xs[:, None, None]
    ) ** 2
    region = dist.argmin(0)
    cls = rng.integers(1, c, regions)
    cls[rng.random(regions) < 0.4] = 0
    label = cls[region].astype(np.uint8)
    colours = rng.integers(30, 226, (regions, 3)).astype(np.float32)
    img = colours[region]
    img += np.moveaxis(_smooth_noise(rng, (3, h, w), 20.0), 0, -1) * 3.0
    img += ndimage.gaussian_filter(rng.normal(size=(h, w, 3)), (1.5, 1.5, 0)) * 40
    image = np.clip(img, 0, 255).astype(np.uint8)
    probs = synthetic_scores(label, c, seed=seed, blur=blur, noise=noise)
    return image, probs, label


def synthetic_scores(
    label: np.ndarray, num_classes: int, seed: int = 0, blur: float = 10.0, noise: float = 0.35
) -> np.ndarray:
    """DCNN-like softmax scores for a label map (CxHxW float32), as in ``synthetic_example``.

    Void (255) pixels take their nearest labelled pixel's class (a DCNN predicts a class there).
    """
    from scipy import ndimage

    rng = np.random.default_rng(seed + 7919)
    h, w = label.shape
    void = label >= num_classes
    if void.all():
        raise ValueError("label has no valid pixel")
    if void.any():
        nearest = ndimage.distance_transform_edt(void, return_distances=False, return_indices=True)
        label = label[tuple(nearest)]
    coarse = label[4::8, 4::8]
    onehot = (coarse[None] == np.arange(num_classes)[:, None, None]).astype(np.float32)
    onehot = ndimage.gaussian_filter(onehot, (0, blur / 8, blur / 8), mode="nearest")
    logits = 5.0 * _resize(onehot, h, w)
    logits += _smooth_noise(rng, (num_classes, h, w), 20.0) * noise
    logits -= logits.max(0, keepdims=True)
    probs = np.exp(logits)
    probs /= probs.sum(0, keepdims=True)
    return probs.astype(np.float32)
