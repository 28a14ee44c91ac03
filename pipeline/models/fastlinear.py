"""fp32 CPU matrix products through oneDNN: the same ``nn.Linear``, at the CPU's full vector width.

PyTorch's fp32 ``matmul`` on x86 CPUs is MKL's ``sgemm``, which on AMD CPUs runs its AVX2 code:
on a 2-core AVX-512 AMD EPYC a 2000x4096 @ 4096x4096 product runs at about 200 GFLOP/s (the AVX2
peak), while oneDNN (the library behind PyTorch's CPU convolutions, which uses AVX-512 there)
runs it at about 400 (``benchmarks/bench_linear_kernels.py``). A 1x1
convolution is already oneDNN, so a dense MLP-as-1x1-convs ran twice as fast per pixel as the
same MLP as ``nn.Linear``. :class:`OneDNNLinear` runs the forward product and the input gradient
through oneDNN's inner product; the weight gradient (a sum over pixels, whose operands oneDNN
would first copy) stays torch's matmul. PixelNet's sampled and dense paths use these same layers.

The function is unchanged (float32 rounding differs: relative error ~1e-6, ``tests/
test_fastlinear.py``); anything other than a CPU float32 input outside autocast (CUDA, bf16
autocast, which is oneDNN already, float64) takes ``F.linear``, as does a build without the op
and a trace (``densepipe export``: a graph holds ``F.linear``, never a Python autograd function).
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable

__all__ = ["KERNELS", "OneDNNLinear", "onednn_available", "onednn_linear"]


@functools.cache
def onednn_available() -> bool:
    """True where this torch build has oneDNN's dense-tensor linear op and it runs."""
    try:
        op = torch.ops.mkldnn._linear_pointwise
        if not torch.backends.mkldnn.is_available():
            return False
        out = op(torch.ones(2, 3), torch.ones(4, 3), torch.zeros(4), "none", [], "")
        return bool(torch.equal(out, torch.full((2, 4), 3.0)))
    except (AttributeError, RuntimeError):
        return False


KERNELS = ("onednn", "torch")


def _mm(a: torch.Tensor, b_t: torch.Tensor, bias: torch.Tensor | None, kernel: str) -> torch.Tensor:
    """``a @ b_t.T (+ bias)``: oneDNN's inner product (it reads a transposed ``b_t`` in place) or,
    for ``torch``, torch's own fp32 matmul (MKL on x86), kept for side-by-side benchmarks."""
    if kernel == "onednn":
        return torch.ops.mkldnn._linear_pointwise(a, b_t, bias, "none", [], "")
    return a @ b_t.t() if bias is None else torch.addmm(bias, a, b_t.t())


class _OneDNNLinear(torch.autograd.Function):
    """y = x W^T + b over x's last dim, on the 2-D (pixels, features) view.

    The output is a fresh tensor, not a view of the 2-D product: an in-place ReLU on a view would
    make autograd keep a second, full-size copy of the gradient (``CopySlices``).
    """

    @staticmethod
    def forward(ctx, x, weight, bias, kernel: str):
        x2 = x.reshape(-1, x.shape[-1])
        ctx.save_for_backward(x2, weight)
        ctx.has_bias, ctx.x_shape, ctx.kernel = bias is not None, x.shape, kernel
        y = _mm(x2, weight, bias, kernel)
        return torch.ops.aten._unsafe_view(y, (*x.shape[:-1], weight.shape[0]))

    @staticmethod
    @once_differentiable
    def backward(ctx, gy):
        x, weight = ctx.saved_tensors
        gy = gy.reshape(-1, gy.shape[-1])
        gx = gw = gb = None
        if ctx.needs_input_grad[0]:
            gx = _mm(gy, weight.t(), None, ctx.kernel).reshape(ctx.x_shape)  # (N,M) @ (M,K)
        if ctx.needs_input_grad[1]:
            # (M, N) @ (N, K), a sum over pixels: both operands are pixel-major, which oneDNN's
            # inner product would first copy (one activation: 32 MB for 2000 x 4096); torch's
            # matmul reads them transposed in place
            gw = gy.t() @ x
        if ctx.has_bias and ctx.needs_input_grad[2]:
            gb = gy.sum(0)
        return gx, gw, gb, None


def _fast_input(x: torch.Tensor, weight: torch.Tensor, kernel: str) -> bool:
    return (
        x.device.type == "cpu"
        and x.dtype == torch.float32
        and weight.dtype == torch.float32
        and x.numel() > 0
        and not torch.is_autocast_enabled("cpu")
        and not torch.jit.is_tracing()  # an exported graph holds F.linear, not a Python op
        and (kernel != "onednn" or onednn_available())
    )


def onednn_linear(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, kernel: str = "onednn"
) -> torch.Tensor:
    """``F.linear(x, weight, bias)``, by oneDNN for CPU float32 (any leading dims)."""
    if kernel not in KERNELS:
        raise ValueError(f"kernel must be one of {KERNELS}, got {kernel!r}")
    if not _fast_input(x, weight, kernel):
        return F.linear(x, weight, bias)
    return _OneDNNLinear.apply(x, weight, bias, kernel)


class OneDNNLinear(nn.Linear):
    """An ``nn.Linear`` (same parameters and state-dict keys) computed by :func:`onednn_linear`.

    ``kernel = "torch"`` (on the instance) keeps everything but runs the products with torch's
    own matmul: the benchmarks' like-for-like comparison of the two kernels.
    """

    kernel = "onednn"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return onednn_linear(x, self.weight, self.bias, self.kernel)
