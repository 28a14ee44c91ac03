"""Faster fp32 CPU convolutions for the VGG nets: same weights, same function, other algorithms.

:func:`use_fast_convs` changes the class (only) of a model's eligible ``nn.Conv2d`` layers:

* 3x3, stride 1, dilation 1, groups 1, zero padding 0..2 -> :class:`WinogradConv2d`: the forward
  pass and the input gradient run through NNPACK's Winograd F(6x6, 3x3) convolution (about 5x
  fewer multiplications than oneDNN's direct convolution on AVX2 CPUs); the weight gradient stays
  oneDNN's. Relative error ~1e-5 (float32 rounding; ``tests/test_fastconv.py``).
* every other ungrouped convolution -> :class:`GemmConv2d`, which runs as one matrix product over
  unfolded patches when the layer is weight-dominated (output positions <= output channels: FCN's
  fc6 7x7 and fc7 1x1 on a 500x375 image), where the BLAS matrix product beats oneDNN's direct
  convolution, backward included (autograd through ``unfold`` + ``addmm``); elsewhere the usual
  forward. It also serves bf16 autocast and channels_last inputs (``addmm`` autocasts): with
  AVX512-BF16, fc6's forward + backward take 0.36 s instead of 0.77 s on a 500x375 image.

Parameters, buffers, state-dict keys, hooks and geometry are unchanged. The Winograd path is taken
only for a CPU float32 NCHW-contiguous input without autocast (and NNPACK available), the GEMM
path for any CPU float input; anything else (CUDA, float64) runs the ordinary ``nn.Conv2d``
forward, so a converted model stays usable everywhere.

    >>> model = build_model("fcn8s", 21)
    >>> use_fast_convs(model)  # conv1_2 .. conv5_3; the rest (conv1_1: pad 100, fc6, fc7, scores)
    {'winograd': 12, 'gemm': 6}
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable

__all__ = ["GemmConv2d", "WinogradConv2d", "use_fast_convs", "winograd_available"]


@functools.cache
def winograd_available() -> bool:
    """True where NNPACK is built in and initialises (this call is what initialises it)."""
    try:
        return bool(torch._nnpack_available())
    except (AttributeError, RuntimeError):
        return False


def _eligible(m: nn.Conv2d) -> bool:
    k, pad = m.kernel_size, m.padding
    return (
        k == (3, 3)
        and m.stride == (1, 1)
        and m.dilation == (1, 1)
        and m.groups == 1
        and m.padding_mode == "zeros"
        and not isinstance(pad, str)
        and pad[0] == pad[1]
        and 0 <= pad[0] <= 2
    )


class _WinogradConv(torch.autograd.Function):
    """y = conv2d(x, w, b, padding=p) with NNPACK for y and dx, oneDNN for dw."""

    @staticmethod
    def forward(ctx, x, weight, bias, pad: int):
        ctx.save_for_backward(x, weight)
        ctx.pad = pad
        ctx.has_bias = bias is not None
        return torch._nnpack_spatial_convolution(x, weight, bias, [pad, pad], [1, 1])

    @staticmethod
    @once_differentiable
    def backward(ctx, gy):
        x, weight = ctx.saved_tensors
        pad = ctx.pad
        gy = gy.contiguous()
        gx = gw = gb = None
        if ctx.needs_input_grad[0]:
            # stride 1: dx is the full correlation of dy with the flipped, transposed kernel
            flipped = weight.transpose(0, 1).flip(2, 3).contiguous()
            q = weight.shape[-1] - 1 - pad
            gx = torch._nnpack_spatial_convolution(gy, flipped, None, [q, q], [1, 1])
        if ctx.needs_input_grad[1]:
            mask = [False, True, False]
            gw = torch.ops.aten.convolution_backward(
                gy, x, weight, None, [1, 1], [pad, pad], [1, 1], False, [0, 0], 1, mask
            )[1]
        if ctx.has_bias and ctx.needs_input_grad[2]:
            gb = gy.sum((0, 2, 3))
        return gx, gw, gb, None


class WinogradConv2d(nn.Conv2d):
    """An ``nn.Conv2d`` whose CPU float32 forward and input gradient use Winograd (NNPACK)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if _fast_input(x, self.weight) and winograd_available():
            return _WinogradConv.apply(x, self.weight.contiguous(), self.bias, self.padding[0])
        return super().forward(x)


def _fast_input(x: torch.Tensor, weight: torch.Tensor) -> bool:
    return (
        x.device.type == "cpu"
        and x.dtype == torch.float32
        and x.dim() == 4
        and x.is_contiguous()
        and weight.dtype == torch.float32
        and not torch.is_autocast_enabled("cpu")
    )


def _gemm_input(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """A CPU fp32/bf16 batch in any memory format, in the weight's dtype or under autocast."""
    return (
        x.device.type == "cpu"
        and x.dim() == 4
        and x.dtype in (torch.float32, torch.bfloat16)
        and (x.dtype == weight.dtype or torch.is_autocast_enabled("cpu"))
    )


class GemmConv2d(nn.Conv2d):
    """An ``nn.Conv2d`` run as ``weight @ unfold(x)`` where that is one large matrix product."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not _gemm_input(x, self.weight):
            return super().forward(x)
        n, _, h, w = x.shape
        (kh, kw), (ph, pw), (dh, dw), (sh, sw) = (
            self.kernel_size,
            self.padding,
            self.dilation,
            self.stride,
        )
        oh = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1
        ow = (w + 2 * pw - dw * (kw - 1) - 1) // sw + 1
        if n * oh * ow > self.out_channels or oh < 1 or ow < 1:
            return super().forward(x)  # activation-dominated: oneDNN's direct convolution
        if (kh, kw, ph, pw, sh, sw) == (1, 1, 0, 0, 1, 1):
            cols = x.reshape(n, x.shape[1], h * w)
        else:
            cols = F.unfold(x, self.kernel_size, self.dilation, self.padding, self.stride)
        weight = self.weight
        if not weight.is_contiguous() and weight.is_contiguous(memory_format=torch.channels_last):
            # a channels_last model: read the weight as (out, kh, kw, in) without copying it (a
            # 102M-element permuting copy per step for fc6) and put the patches in that order
            weight = weight.permute(0, 2, 3, 1)
            c = x.shape[1]
            cols = cols.reshape(n, c, kh * kw, -1).transpose(1, 2).reshape(n, kh * kw * c, -1)
        weight = weight.reshape(self.out_channels, -1)
        if n == 1:
            bias = self.bias.unsqueeze(1) if self.bias is not None else None
            y = torch.addmm(bias, weight, cols[0]) if bias is not None else weight @ cols[0]
        else:
            y = torch.matmul(weight, cols)
            if self.bias is not None:
                y = y + self.bias.unsqueeze(1)
        return y.reshape(n, self.out_channels, oh, ow)


def use_fast_convs(model: nn.Module, *, winograd: bool = True, gemm: bool = True) -> dict:
    """Convert ``model``'s eligible convolutions in place; returns how many of each kind.

    Only the module class changes, so checkpoints, optimizers built before or after, DDP
    wrapping and ``geometry.describe`` are unaffected. Winograd layers need NNPACK (where it is
    missing those layers stay ``nn.Conv2d`` and the count is 0).
    """
    counts = {"winograd": 0, "gemm": 0}
    wino = winograd and winograd_available()
    for m in model.modules():
        if type(m) is not nn.Conv2d or m.groups != 1 or m.padding_mode != "zeros":
            continue
        if isinstance(m.padding, str):
            continue
        if _eligible(m):
            if wino:
                m.__class__ = WinogradConv2d
                counts["winograd"] += 1
        elif gemm:
            m.__class__ = GemmConv2d
            counts["gemm"] += 1
    return counts
