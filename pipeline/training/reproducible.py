"""Bit-identical reruns: one call seeds torch and picks its deterministic kernels.

Seeding alone is not enough. With two or more threads, torch's CPU backward of advanced
indexing (``index_put_`` with accumulate: PixelNet's hypercolumn gather, ``sample_features``)
adds into the gradient with atomic float adds once it has 32k+ elements, so the sum's order
depends on which thread gets there first, and any other busy thread in the process (Ray Data's
prefetch) changes it: two runs of ``train@pixelnet-seg`` parted in the 7th digit of the loss
at step 94 or 190, and by 0.6 mean IU at the end. ``torch.use_deterministic_algorithms`` makes
that kernel serial (about 3% of a tiny PixelNet step, measured) and, on CUDA, picks the
deterministic cuDNN/cuBLAS paths. An op that has no deterministic CUDA kernel warns instead of
failing (``warn_only``): such a run is reproducible up to that op, and says which one it is.
"""

from __future__ import annotations

import os

import torch


def make_reproducible(seed: int) -> None:
    """Seed torch's global generator (dropout, initialisation) and use deterministic kernels."""
    # cuBLAS reads this when it creates its handle; it must be set before the first CUDA matmul
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.benchmark = False
    torch.manual_seed(seed)
