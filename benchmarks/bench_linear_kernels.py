"""fp32 linear-layer kernels side by side: oneDNN vs torch's matmul (MKL on x86), GFLOP/s.

Why ``pipeline.models.fastlinear`` exists: on AMD CPUs MKL's sgemm runs its AVX2 code, so a
PixelNet MLP layer as ``nn.Linear`` ran at half the speed of the same layer as a 1x1 convolution
(oneDNN). Each product of a linear layer is timed on its own (forward ``x W^T``, input gradient
``gy W``, weight gradient ``gy^T x``), then a whole ``OneDNNLinear`` forward + backward with each
kernel; shapes are PixelNet's (samples x features).

    .venv/bin/python benchmarks/bench_linear_kernels.py
    .venv/bin/python benchmarks/bench_linear_kernels.py --shapes 10000x1472x4096 --repeats 3
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import torch

from pipeline.models.fastlinear import OneDNNLinear, _mm, onednn_available


def _seconds(fn, repeats: int) -> float:
    fn()  # warm-up (oneDNN builds its kernel for the shape)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def compare(spec: str, repeats: int) -> None:
    """Print one shape's rows: each product alone, then a whole layer forward + backward."""
    n, k, m = (int(v) for v in spec.lower().split("x"))
    torch.manual_seed(0)
    x, w, gy = torch.randn(n, k), torch.randn(m, k), torch.randn(n, m)
    flop = 2.0 * n * k * m

    def products(kernel: str) -> dict:
        """The three products of a linear layer, as ``fastlinear`` computes them per kernel."""
        return {
            "forward x W^T": lambda: _mm(x, w, None, kernel),
            "input grad gy W": lambda: _mm(gy, w.t(), None, kernel),
            "weight grad gy^T x": lambda: _mm(gy.t(), x.t(), None, kernel),
        }

    pairs = {n: (f, products("torch")[n]) for n, f in products("onednn").items()}
    for name, (onednn, mkl) in pairs.items():
        a, b = flop / _seconds(onednn, repeats), flop / _seconds(mkl, repeats)
        print(f"{spec:>16} {name:>18} {a / 1e9:8.0f} {b / 1e9:8.0f} {a / b:5.2f}x")
    rates = {}
    for kernel in ("onednn", "torch"):
        layer = OneDNNLinear(k, m)
        layer.kernel = kernel
        xi = x.clone().requires_grad_()
        rates[kernel] = 3 * flop / _seconds(lambda l=layer, i=xi: l(i).backward(gy), repeats)
    ratio = rates["onednn"] / rates["torch"]
    print(
        f"{spec:>16} {'OneDNNLinear f+b':>18} {rates['onednn'] / 1e9:8.0f} "
        f"{rates['torch'] / 1e9:8.0f} {ratio:5.2f}x"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--shapes",
        nargs="+",
        default=["2000x4096x4096", "2000x832x4096", "10000x184x512"],
        help="N x K x M: samples, input features, output features",
    )
    ap.add_argument("--repeats", type=int, default=5, help="timed runs per product (best kept)")
    args = ap.parse_args()
    if not onednn_available():
        raise SystemExit("this torch build has no oneDNN linear op: nothing to compare")
    print(
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
        f"{torch.get_num_threads()} torch threads; GFLOP/s, best of {args.repeats}"
    )
    print(f"{'N x K x M':>16} {'product':>18} {'oneDNN':>8} {'torch':>8} {'ratio':>6}")
    for spec in args.shapes:
        compare(spec, args.repeats)


if __name__ == "__main__":
    main()
