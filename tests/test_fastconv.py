"""Fast convolutions (Winograd via NNPACK, GEMM): same function, gradients, state dict."""

from __future__ import annotations

import copy

import pytest
import torch
from tests_helpers import assert_same_layer, rel_err
from torch import nn

from pipeline.models import build_model, describe
from pipeline.models.fastconv import (
    GemmConv2d,
    WinogradConv2d,
    use_fast_convs,
    winograd_available,
)

needs_nnpack = pytest.mark.skipif(not winograd_available(), reason="NNPACK not available")


def _check(ref: nn.Conv2d, fast: nn.Conv2d, x: torch.Tensor, bias: bool) -> None:
    assert (ref.bias is not None) == bias
    yf = assert_same_layer(ref, fast, x)
    assert "Convolution" not in yf.grad_fn.name()  # the fast path was taken


@needs_nnpack
@pytest.mark.parametrize("pad", [0, 1, 2])
@pytest.mark.parametrize("bias", [True, False])
def test_winograd_matches_conv2d_forward_and_backward(pad, bias):
    torch.manual_seed(0)
    ref = nn.Conv2d(5, 7, 3, padding=pad, bias=bias)
    fast = copy.deepcopy(ref)
    assert use_fast_convs(fast) == {"winograd": 1, "gemm": 0} and type(fast) is WinogradConv2d
    _check(ref, fast, torch.randn(2, 5, 13, 11), bias)


@pytest.mark.parametrize(
    "kernel,pad,dilation,batch,bias",
    [(7, 0, 1, 1, True), (1, 0, 1, 1, True), (3, 12, 12, 2, False), (4, 1, 2, 1, True)],
)
def test_gemm_matches_conv2d_forward_and_backward(kernel, pad, dilation, batch, bias):
    torch.manual_seed(0)
    ref = nn.Conv2d(6, 128, kernel, padding=pad, dilation=dilation, bias=bias)
    fast = copy.deepcopy(ref)
    use_fast_convs(fast)
    assert type(fast) is GemmConv2d
    _check(ref, fast, torch.randn(batch, 6, 7, 8), bias)  # <= 128 output positions: GEMM path


@pytest.mark.parametrize("weight_format", [torch.contiguous_format, torch.channels_last])
def test_gemm_serves_bf16_autocast_and_channels_last(weight_format):
    """fc6-like layer under bf16 autocast: the GEMM path, bf16 output, close to oneDNN's bf16."""
    torch.manual_seed(0)
    ref = nn.Conv2d(16, 64, 7).to(memory_format=weight_format)
    fast = copy.deepcopy(ref)
    use_fast_convs(fast)
    x = torch.randn(1, 16, 9, 10).contiguous(memory_format=torch.channels_last)
    xr, xf = x.clone().requires_grad_(), x.clone().requires_grad_()
    with torch.autocast("cpu", torch.bfloat16):
        yr, yf = ref(xr), fast(xf)
    assert yf.dtype == torch.bfloat16 and yf.shape == yr.shape
    assert "Convolution" not in yf.grad_fn.name()  # the GEMM path was taken
    assert rel_err(yf.float(), yr.float()) < 2e-2  # both round to bf16
    g = torch.randn_like(yr)
    yr.backward(g)
    yf.backward(g)
    assert fast.weight.grad.dtype == torch.float32  # the master weights stay fp32
    assert fast.weight.grad.is_contiguous(memory_format=weight_format)
    assert rel_err(fast.weight.grad, ref.weight.grad) < 2e-2
    assert rel_err(xf.grad, xr.grad) < 2e-2


@needs_nnpack
def test_falls_back_where_it_does_not_apply():
    torch.manual_seed(0)
    ref = nn.Conv2d(4, 4, 3, padding=1)
    fast = copy.deepcopy(ref)
    use_fast_convs(fast)
    x = torch.randn(1, 4, 9, 9)
    cl = x.contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(fast(cl), ref(cl))
    torch.testing.assert_close(fast.double()(x.double()), ref.double()(x.double()))
    with torch.autocast("cpu", torch.bfloat16):
        assert fast.float()(x).dtype == torch.bfloat16


@needs_nnpack
def test_fcn8s_converts_in_place_keeping_names_and_geometry():
    model = build_model("fcn8s", 21, width=1 / 16)
    keys = list(model.state_dict())
    before = describe(model)
    # Winograd: conv1_2 .. conv5_3; GEMM: conv1_1 (pad 100), fc6, fc7 and the three score layers
    assert use_fast_convs(model) == {"winograd": 12, "gemm": 6}
    assert list(model.state_dict()) == keys
    assert describe(model) == before
    assert type(model.backbone.conv5_3) is WinogradConv2d
    assert type(model.head.fc6) is GemmConv2d


@needs_nnpack
def test_fcn8s_training_step_matches():
    torch.manual_seed(0)
    ref = build_model("fcn8s", 21, width=1 / 16, dropout=0.0)
    # non-zero biases and score layers: with the zero init, ReLU sees exact zeros in the pad-100
    # margin, where float rounding (either algorithm) decides the mask; that is not what we test
    for m in ref.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.normal_(m.bias, 0.0, 0.01)
    for name in ("score_fr", "score_pool4", "score_pool3"):
        nn.init.normal_(getattr(ref, name).weight, 0.0, 0.01)
    fast = copy.deepcopy(ref)
    use_fast_convs(fast)
    x = torch.randn(1, 3, 60, 70)
    y = torch.randint(0, 21, (1, 60, 70))
    losses = []
    for m in (ref, fast):
        loss = nn.functional.cross_entropy(m(x), y, ignore_index=255)
        loss.backward()
        losses.append(loss.item())
    assert losses[1] == pytest.approx(losses[0], rel=1e-5)
    for (name, pr), pf in zip(ref.named_parameters(), fast.parameters()):
        if pr.grad is not None:
            assert rel_err(pf.grad, pr.grad) < 1e-4, name
