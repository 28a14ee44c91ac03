"""Small helpers shared by tests (importable because pytest puts tests/ on sys.path)."""

from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

REPO = Path(__file__).resolve().parents[1]


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """Relative L2 difference of ``a`` from ``b``."""
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


def assert_same_layer(
    ref: nn.Module,
    fast: nn.Module,
    x: torch.Tensor,
    then: Callable[[torch.Tensor], torch.Tensor] = lambda y: y,
    tol: float = 1e-5,
) -> torch.Tensor:
    """``fast`` computes ``ref``'s function: output, input gradient and parameter gradients agree
    within ``tol`` (``then`` is applied to both outputs first). Returns ``fast``'s output."""
    xr, xf = x.clone().requires_grad_(), x.clone().requires_grad_()
    yr, yf = then(ref(xr)), then(fast(xf))
    assert yf.shape == yr.shape
    assert rel_err(yf, yr) < tol
    g = torch.randn_like(yr)
    yr.backward(g)
    yf.backward(g)
    assert rel_err(xf.grad, xr.grad) < tol
    for (name, pf), pr in zip(fast.named_parameters(), ref.parameters(), strict=True):
        assert rel_err(pf.grad, pr.grad) < tol, name
    return yf
