"""Spatial geometry derived from the layer graph: coordinate maps, crop offsets, receptive fields.

The FCN skip nets only work if every crop lines the streams up exactly.  Caffe computes the
offsets from the net definition (``coord_map.py``); this module does the same from the modules, so
no offset, stride or receptive field is ever typed in.  A layer's coordinate map says where its
output units sit in its input coordinates: ``y = scale * x + shift`` with, for a convolution or a
pooling, ``scale = 1/stride`` and ``shift = (pad - (k - 1)/2) / stride`` (``k`` dilated), and for a
transposed convolution ``scale = stride`` and ``shift = (k - 1)/2 - pad``.  Fractions keep it exact.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from fractions import Fraction
from math import ceil
from types import ModuleType

from torch import nn

__all__ = [
    "CoordMap",
    "Geometry",
    "crop_offset",
    "describe",
    "register_pointwise",
    "register_handler",
    "trace",
]


@dataclass(frozen=True)
class CoordMap:
    """``y = scale * x + shift``: where a layer's units sit in an earlier layer's coordinates."""

    scale: Fraction = Fraction(1)
    shift: Fraction = Fraction(0)

    def then(self, other: CoordMap) -> CoordMap:
        """Apply ``self`` first, then ``other``."""
        return CoordMap(self.scale * other.scale, other.scale * self.shift + other.shift)

    def inverse(self) -> CoordMap:
        return CoordMap(1 / self.scale, -self.shift / self.scale)


@dataclass(frozen=True)
class Geometry:
    """What is known about a layer's output relative to the network input.

    ``coord``: input pixel -> unit coordinates; ``rf``: receptive field in input pixels;
    ``stride``: input pixels between neighbouring units; ``max_stride``: the coarsest stride seen
    on the way; ``depth``: convolution layers on the longest path (the papers' "layers").
    """

    coord: CoordMap = CoordMap()
    rf: int = 1
    stride: Fraction = Fraction(1)
    max_stride: Fraction = Fraction(1)
    depth: int = 0


Handler = Callable[[nn.Module, Geometry], Geometry]
_HANDLERS: dict[type, Handler] = {}


def register_handler(cls: type) -> Callable[[Handler], Handler]:
    """Teach :func:`trace` a module type (looked up along the MRO)."""

    def deco(fn: Handler) -> Handler:
        _HANDLERS[cls] = fn
        return fn

    return deco


def register_pointwise(*classes: type) -> None:
    """Module types that change no geometry (activations, normalisation, scaling, dropout)."""
    for cls in classes:
        _HANDLERS[cls] = lambda _m, g: g


def _pair(v: int | tuple[int, ...]) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))


def _square(module: nn.Module, name: str, value: int | tuple[int, ...]) -> int:
    a, b = _pair(value)
    if a != b:
        raise TypeError(f"{type(module).__name__}: non-square {name} {value} is not supported")
    return a


def _window(module: nn.Module, geom: Geometry, *, params: bool) -> Geometry:
    """A sliding window (convolution or pooling): kernel, stride, padding, dilation."""
    k = _square(module, "kernel_size", module.kernel_size)
    s = _square(module, "stride", module.stride)
    p = _square(module, "padding", module.padding)
    d = _square(module, "dilation", getattr(module, "dilation", 1))
    k_eff = (k - 1) * d + 1
    layer = CoordMap(Fraction(1, s), Fraction(2 * p - (k_eff - 1), 2 * s))
    stride = geom.stride * s
    return Geometry(
        coord=geom.coord.then(layer),
        rf=geom.rf + int((k_eff - 1) * geom.stride),
        stride=stride,
        max_stride=max(geom.max_stride, stride),
        depth=geom.depth + (1 if params else 0),
    )


@register_handler(nn.Conv2d)
def _conv(m: nn.Module, g: Geometry) -> Geometry:
    if m.padding_mode != "zeros" or isinstance(m.padding, str):
        raise TypeError(f"Conv2d with padding={m.padding!r}/{m.padding_mode} is not supported")
    return _window(m, g, params=True)


@register_handler(nn.MaxPool2d)
@register_handler(nn.AvgPool2d)
def _pool(m: nn.Module, g: Geometry) -> Geometry:
    # ceil_mode changes how many units there are, never where they sit
    return _window(m, g, params=False)


@register_handler(nn.ConvTranspose2d)
def _deconv(m: nn.Module, g: Geometry) -> Geometry:
    k = _square(m, "kernel_size", m.kernel_size)
    s = _square(m, "stride", m.stride)
    p = _square(m, "padding", m.padding)
    d = _square(m, "dilation", m.dilation)
    k_eff = (k - 1) * d + 1
    layer = CoordMap(Fraction(s), Fraction(k_eff - 1, 2) - p)
    # an output unit mixes at most ceil(k/s) neighbouring input units
    return Geometry(
        coord=g.coord.then(layer),
        rf=g.rf + int((ceil(k_eff / s) - 1) * g.stride),
        stride=g.stride / s,
        max_stride=g.max_stride,
        depth=g.depth + 1,
    )


@register_handler(nn.Sequential)
def _sequential(m: nn.Module, g: Geometry) -> Geometry:
    for child in m:
        g = trace(child, g)
    return g


def parallel(branches: Iterable[nn.Module], g: Geometry) -> Geometry:
    """Branches that see the same input and are concatenated or summed: they must align."""
    outs = [trace(b, g) for b in branches]
    if not outs:
        return g
    first = outs[0]
    for o in outs[1:]:
        if o.coord != first.coord:
            raise ValueError(f"parallel branches are misaligned: {o.coord} vs {first.coord}")
    return Geometry(
        coord=first.coord,
        rf=max(o.rf for o in outs),
        stride=first.stride,
        max_stride=max(o.max_stride for o in outs),
        depth=max(o.depth for o in outs),
    )


register_pointwise(
    nn.ReLU,
    nn.LeakyReLU,
    nn.modules.dropout._DropoutNd,
    nn.modules.batchnorm._BatchNorm,
    nn.LocalResponseNorm,
    nn.Identity,
)


def _register_torchvision_googlenet(tv_googlenet: ModuleType) -> None:
    """torchvision's GoogLeNet blocks: conv+BN(+functional ReLU) and the four-branch Inception."""

    @register_handler(tv_googlenet.BasicConv2d)
    def _basic(m: nn.Module, g: Geometry) -> Geometry:
        return trace(m.bn, trace(m.conv, g))

    @register_handler(tv_googlenet.Inception)
    def _inception(m: nn.Module, g: Geometry) -> Geometry:
        return parallel([m.branch1, m.branch2, m.branch3, m.branch4], g)


#: handlers registered when a module of that package is first traced: importing torchvision
#: costs 1.6 s (it imports torch._dynamo), which the stages that never build GoogLeNet (all but
#: its own experiments) should not pay
_LAZY_HANDLERS = {"torchvision.models.googlenet": _register_torchvision_googlenet}


def _handler(module: nn.Module) -> Handler:
    for cls in type(module).__mro__:
        if cls in _HANDLERS:
            return _HANDLERS[cls]
    register = _LAZY_HANDLERS.pop(type(module).__module__, None)
    if register is not None:
        register(sys.modules[type(module).__module__])  # imported: here is one of its modules
        return _handler(module)
    raise TypeError(
        f"no geometry known for {type(module).__name__}: register it with "
        "pipeline.models.geometry.register_handler (or register_pointwise)"
    )


def trace(module: nn.Module, geom: Geometry | None = None, *, upto: str | None = None) -> Geometry:
    """The geometry after ``module`` (a Sequential stops after its child named ``upto``)."""
    geom = Geometry() if geom is None else geom
    if upto is None:
        return _handler(module)(module, geom)
    if not isinstance(module, nn.Sequential):
        raise TypeError(f"upto= needs an nn.Sequential, got {type(module).__name__}")
    for name, child in module.named_children():
        geom = trace(child, geom)
        if name == upto:
            return geom
    raise KeyError(f"no layer named {upto!r} in {[n for n, _ in module.named_children()]}")


def crop_offset(source: CoordMap, target: CoordMap) -> int:
    """Offset ``o`` such that ``source[o + i]`` lies exactly on ``target[i]`` (Caffe's ``crop``).

    Both maps are from the same ancestor (the input).  The two grids must have the same scale
    and the source must start at or before the target, a whole number of units earlier.
    """
    if source.scale != target.scale:
        raise ValueError(f"cannot crop between scales {source.scale} and {target.scale}")
    # unit i of the target sits at source unit i + (b_s - b_t)
    offset = source.shift - target.shift
    if offset.denominator != 1 or offset < 0:
        raise ValueError(f"crop offset {offset} is not a non-negative integer: grids misaligned")
    return int(offset)


def count_parameters(module: nn.Module, *, trainable_only: bool = False) -> int:
    """Number of parameter scalars (works on the ``meta`` device: no memory, no forward pass)."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


def describe(model: nn.Module) -> dict[str, int | float | str]:
    """Table-1 figures computed from the module graph: conv layers, parameters, rf, max stride.

    For an FCN the geometry is that of its coarse score layer (the prediction before the fixed
    upsampling), which is what the FCN paper reports; a plain Sequential is traced whole.
    """
    trunk = model.trunk() if hasattr(model, "trunk") else model
    geom = trace(trunk)
    ups = [m for m in model.modules() if isinstance(m, nn.ConvTranspose2d)]
    up_params = sum(p.numel() for m in ups for p in m.parameters())
    total = count_parameters(model)
    out: dict[str, int | float | str] = {
        "model": getattr(model, "name", type(model).__name__),
        "conv_layers": geom.depth,
        "parameters": total,
        "parameters_excluding_upsampling": total - up_params,
        "trainable_parameters": count_parameters(model, trainable_only=True),
        "rf_size": geom.rf,
        "max_stride": _num(geom.max_stride),
        "output_stride": _num(geom.stride),
    }
    extra = getattr(model, "describe_extra", None)  # model-specific columns (DeepLab's Table 2)
    if callable(extra):
        out.update(extra())
    return out


def _num(x: Fraction) -> int | float:
    return int(x) if x.denominator == 1 else float(x)
