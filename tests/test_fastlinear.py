"""oneDNN linear layers: the same function, gradients and state dict as ``nn.Linear``."""

from __future__ import annotations

import copy

import pytest
import torch
from tests_helpers import assert_same_layer, rel_err
from torch import nn

from pipeline.models import build_model
from pipeline.models.fastlinear import KERNELS, OneDNNLinear, onednn_available, onednn_linear

needs_onednn = pytest.mark.skipif(not onednn_available(), reason="torch built without oneDNN")


def _pair(bias: bool) -> tuple[nn.Linear, OneDNNLinear]:
    torch.manual_seed(0)
    ref = nn.Linear(96, 130, bias=bias)
    fast = OneDNNLinear(96, 130, bias=bias)
    fast.load_state_dict(ref.state_dict())
    return ref, fast


@needs_onednn
@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("shape", [(37, 96), (2, 5, 7, 96)])
@pytest.mark.parametrize("bias", [True, False])
def test_matches_linear_forward_and_backward(kernel, shape, bias):
    ref, fast = _pair(bias)
    fast.kernel = kernel
    # an in-place ReLU on the output, as in the PixelNet MLP
    y = assert_same_layer(ref, fast, torch.randn(shape), then=torch.relu_)
    assert y.shape == (*shape[:-1], 130)


@needs_onednn
def test_fast_path_is_taken_and_output_is_not_a_view():
    """The custom function runs (not F.linear), and an N-D output is a fresh tensor, so an
    in-place ReLU on it does not make autograd keep a second gradient copy (CopySlices)."""
    _, fast = _pair(True)
    y = fast(torch.randn(2, 3, 4, 96, requires_grad=True))
    assert y.grad_fn.name() == "_OneDNNLinearBackward"
    assert not y._is_view()
    torch.relu_(y)
    assert y.grad_fn.name() == "ReluBackward0"


def test_other_inputs_take_f_linear():
    """bf16 autocast (oneDNN already), float64 and a bad kernel name."""
    ref, fast = _pair(True)
    x = torch.randn(4, 96)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = fast(x)
        assert y.dtype == torch.bfloat16
        assert "_OneDNN" not in y.grad_fn.name()
        assert rel_err(y.float(), ref(x).float()) < 2e-2
    y64 = fast.double()(x.double())
    assert y64.dtype == torch.float64
    with pytest.raises(ValueError, match="'mkl'"):
        onednn_linear(x, ref.weight, ref.bias, kernel="mkl")


def test_state_dict_and_pixelnet_mlp_layers():
    ref, fast = _pair(True)
    assert list(fast.state_dict()) == list(ref.state_dict()) == ["weight", "bias"]
    model = build_model("pixelnet", 5, width=0.125, layers=["conv1_2"], mlp=[16])
    linears = [m for m in model.mlp if isinstance(m, nn.Linear)]
    assert len(linears) == 2 and all(type(m) is OneDNNLinear for m in linears)
    copy.deepcopy(model)  # still an ordinary module
