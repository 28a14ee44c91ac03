"""DeepLab's fully connected CRF inference: one image (pydensecrf or torch), or a Ray dataset.

The model is Krähenbühl & Koltun's dense CRF as DeepLab v1 uses it (Eq. 2 of the paper):
unary ``-log P(x_i)`` from the DCNN's softmax, a Potts pairwise term with an appearance
(bilateral) kernel ``w1 exp(-|p_i-p_j|²/2σα² - |I_i-I_j|²/2σβ²)`` and a smoothness kernel
``w2 exp(-|p_i-p_j|²/2σγ²)``, 10 mean-field iterations. Inference is pydensecrf, called the way
DeepLab's release calls densecrf; ``backend="torch"`` runs ``pipeline.crf.lattice`` instead.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import pydensecrf.densecrf as dcrf
import ray
from pydensecrf.utils import unary_from_softmax

from pipeline.crf.lattice import refine_torch_batch
from pipeline.crf.params import BACKENDS, CRFParams, check_inputs
from pipeline.crf.transport import decode_probs, image_array, num_classes_of
from pipeline.data.datasets.base import encode_png
from pipeline.errors import ParamsError


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
    check_inputs(image_rgb, probs)
    if backend == "torch":
        return refine_torch_batch([image_rgb], [probs], params)[0]
    if backend != "pydensecrf":
        raise ParamsError(f"crf.backend must be one of {BACKENDS}, got {backend!r}")
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


def _refine_batch(
    batch: dict[str, np.ndarray],
    params: dict[str, float],
    backend: str,
    drop_probs: bool,
    timing: bool,
) -> dict[str, np.ndarray]:
    """map_batches UDF: decode image + probs, run the CRF, add ``crf_label`` (PNG bytes)."""
    crf_params = CRFParams(**params)
    out, wall, cpu, images, scores = [], [], [], [], []
    for i in range(len(batch["id"])):
        t0, c0 = time.perf_counter(), time.process_time()
        h, w = int(batch["height"][i]), int(batch["width"][i])
        source = f"example {batch['id'][i]}"
        data = bytes(batch["probs"][i])
        probs = decode_probs(data, (num_classes_of(data, h), h, w), source)
        image = image_array(batch["image"][i], source)
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
