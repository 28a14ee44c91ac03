"""In-network upsampling: transposed convolutions initialised to the FCN bilinear kernel.

The reference nets upsample class scores with Caffe ``Deconvolution`` layers (no bias) whose
weights are ``upsample_filt(k)`` written only on the class diagonal, so class m never leaks into
class n.  Kernel ``2f`` (or ``2f - 1`` where alignment needs it, as in FCN-AlexNet) with stride
``f`` is linear interpolation between the coarse samples.
"""

from __future__ import annotations

import math

import torch
from torch import nn


def upsample_filt(size: int) -> torch.Tensor:
    """The 2-D ``size`` x ``size`` bilinear kernel, exactly as the Caffe FCN surgery code makes it.

    ``f = ceil(size/2)``; centre ``f - 1`` for odd sizes, ``f - 0.5`` for even ones.
    """
    if size < 1:
        raise ValueError(f"kernel size must be positive, got {size}")
    factor = math.ceil(size / 2)
    center = factor - 1 if size % 2 == 1 else factor - 0.5
    og = torch.arange(size, dtype=torch.float64)
    filt1d = 1 - (og - center).abs() / factor
    return (filt1d[:, None] * filt1d[None, :]).to(torch.float32)


def bilinear_weight(channels: int, size: int) -> torch.Tensor:
    """A ``(channels, channels, size, size)`` deconv weight: the kernel on the diagonal only."""
    weight = torch.zeros(channels, channels, size, size)
    filt = upsample_filt(size)
    for c in range(channels):
        weight[c, c] = filt
    return weight


class BilinearUpsample(nn.ConvTranspose2d):
    """Score upsampling by ``factor``: a bias-free deconvolution starting as bilinear interpolation.

    ``learnable=False`` keeps it fixed (``requires_grad`` False, like Caffe's ``lr_mult: 0``) but it
    stays a parameter, so it is counted and saved like the reference nets' deconvolutions.
    """

    def __init__(
        self, channels: int, factor: int, *, kernel_size: int | None = None, learnable: bool = True
    ) -> None:
        kernel_size = 2 * factor if kernel_size is None else kernel_size
        super().__init__(channels, channels, kernel_size, stride=factor, bias=False)
        self.factor = factor
        self.weight.requires_grad_(learnable)

    def reset_parameters(self) -> None:
        """Bilinear init (``nn.ConvTranspose2d.__init__`` calls this, so it is never random)."""
        with torch.no_grad():
            self.weight.copy_(bilinear_weight(self.in_channels, self.kernel_size[0]))

    @property
    def learnable(self) -> bool:
        return self.weight.requires_grad
