"""FCN-8s (full-width VGG16) on one 500x375 image on this CPU: ours beside torchfcn, in one run.

The peer is ``torchfcn.FCN8s`` (wkentaro/pytorch-fcn, the reference PyTorch port), in fp32 eager
NCHW as it ships. Ours is ``build_model("fcn8s", 21)`` under several settings (``--configs``):

* ``torchfcn``: the peer as it ships, fp32, default allocator (the baseline of the ratios);
* ``torchfcn-keep``: the peer with our allocator setting (below), for an apples-to-apples ratio;
* ``fp32``: ours with the peer's settings (fp32, NCHW, eager): same work, so about the same speed;
* ``ours``: our CPU training recipe, ``precision: bf16``, ``channels_last: true``,
  ``fast_convs: true`` in params.yaml: bf16 autocast + channels_last (oneDNN's AVX512-BF16
  kernels), fc6 (7x7) and fc7 (1x1) as one matrix product each over unfolded patches
  (``pipeline.models.fastconv``), and the allocator kept from returning freed memory to the
  kernel (``pipeline.runtime.cpu_allocator``: without it a step page-faults ~2 GB back in, 0.75 s of
  kernel time);
* ``fast`` (not in the defaults): ours, fp32, NNPACK Winograd 3x3 (forward, input gradient) +
  GEMM fc6/fc7: the best setting on AVX2-only CPUs (1.45x there);
* ``cl``, ``bf16`` (not in the defaults): ours, fp32 channels_last; bf16 autocast +
  channels_last alone. Without AVX512-BF16/AMX oneDNN emulates bf16: a step takes minutes.

The allocator setting is process-wide, so configs run in two worker processes, one per allocator
setting, taking turns (never at once): the peer "as it ships" gets the default allocator.

"Same architecture" is checked, not assumed: equal parameter counts (total and trainable: the
peer's final ``upscore8`` is frozen like ours, the paper's fixed bilinear upsampling), our weights
are copied into the peer and both give the same scores on one input (eval mode, atol printed).

A training step is forward, per-pixel softmax cross-entropy (``ignore_index=255``, mean over valid
pixels), backward and ``torch.optim.SGD(momentum=0.99)``, identical on both sides (batch 1, train
mode, dropout on: the peer's ``Dropout2d`` drops channels where ours drops units, same cost).
Inference is an eval-mode forward under ``torch.inference_mode`` on both sides. Each config is
warmed up, then the configs take turns, one training step and one inference each per round, in a
rotating order, so background load hits them alike; the table reports the median. The loss
check: on a fixed batch (eval mode, no dropout) each config's loss and gradient are compared with
ours in plain fp32 (tolerances printed: loss 1e-4 relative and gradient 1e-3 relative L2 for the
fp32 configs, 2e-2 and 0.1 for bf16).

The peer is installed without its dependencies (they would pull another torch build); its
package ``__init__`` imports its trainer and datasets, and its model files import the ``fcn``
package for pretrained downloads only, so this script loads just ``torchfcn/models/*.py``, with an
empty ``fcn`` stub in ``sys.modules`` if ``fcn`` is absent (in this process only).

    .venv/bin/pip install --no-deps torchfcn          # once (``make bench`` does it)
    .venv/bin/python benchmarks/bench_fcn8s_torchfcn.py
    .venv/bin/python benchmarks/bench_fcn8s_torchfcn.py --steps 5 --configs torchfcn,fast,cl

Goal: ours >= 3x the peer's training images/s at the same architecture and input. Timings on a
shared machine move with its load (printed at start, per round and at end); the ratios are what
the interleaving protects. About 4-8 minutes with the defaults on 2 cores.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import importlib
import importlib.util
import multiprocessing
import os
import platform
import statistics
import sys
import time
import types
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.models import build_model
from pipeline.models.fastconv import use_fast_convs, winograd_available
from pipeline.runtime.cpu_allocator import keep_freed_memory

HEIGHT, WIDTH, CLASSES, VOID = 375, 500, 21, 255
LR, MOMENTUM = 1e-10, 0.99
GOAL = 3.0


@dataclass(frozen=True)
class Config:
    name: str
    help: str
    peer: bool = False
    channels_last: bool = False
    bf16: bool = False
    winograd: bool = False  # NNPACK 3x3 (fp32 only)
    gemm: bool = False  # fc6/fc7 as one matrix product
    keep_memory: bool = False  # pipeline.runtime.cpu_allocator.keep_freed_memory (process-wide)
    loss_tol: float = 1e-4  # relative, against ours in fp32 eager
    grad_tol: float = 1e-3  # relative L2 norm of the gradient difference


_BF16_TOL = {"loss_tol": 2e-2, "grad_tol": 0.1}
CONFIGS = {
    c.name: c
    for c in (
        Config("torchfcn", "torchfcn.FCN8s as it ships: fp32 NCHW eager (baseline)", peer=True),
        Config(
            "torchfcn-keep", "torchfcn.FCN8s, fp32, our allocator setting", True, keep_memory=True
        ),
        Config("fp32", "ours, fp32 NCHW eager (the peer's settings)"),
        Config(
            "ours",
            "ours: bf16 autocast + channels_last + GEMM fc6/fc7 + allocator kept",
            channels_last=True,
            bf16=True,
            gemm=True,
            keep_memory=True,
            **_BF16_TOL,
        ),
        Config("cl", "ours, fp32 channels_last", channels_last=True),
        Config("fast", "ours, fp32, Winograd 3x3 + GEMM fc6/fc7", winograd=True, gemm=True),
        Config("bf16", "ours, bf16 autocast + channels_last", True, bf16=True, **_BF16_TOL),
    )
}
DEFAULT_CONFIGS = "torchfcn,torchfcn-keep,fp32,ours"


def torchfcn_fcn8s() -> type[nn.Module]:
    """``torchfcn.models.fcn8s.FCN8s`` without importing the rest of torchfcn (see docstring)."""
    spec = importlib.util.find_spec("torchfcn")
    if spec is None or spec.origin is None:
        raise SystemExit("torchfcn is not installed: .venv/bin/pip install --no-deps torchfcn")
    if importlib.util.find_spec("fcn") is None:
        sys.modules.setdefault("fcn", types.ModuleType("fcn"))  # used by download() only
    pkg = types.ModuleType("_torchfcn_models")
    pkg.__path__ = [str(Path(spec.origin).parent / "models")]
    sys.modules[pkg.__name__] = pkg
    return importlib.import_module("_torchfcn_models.fcn8s").FCN8s


def our_model(seed: int) -> nn.Module:
    """``build_model("fcn8s", 21)`` with non-zero biases and score layers (seeded).

    The zero init of biases and score layers would make the loss constant (log 21) and the
    backbone's gradient exactly zero, which is no test of anything.
    """
    torch.manual_seed(seed)
    model = build_model("fcn8s", CLASSES)
    with torch.no_grad():
        for name, m in model.named_modules():
            if isinstance(m, nn.Conv2d):  # not the (bias-free) deconvolutions
                if m.bias is not None:
                    m.bias.normal_(0.0, 0.01)
                if name.startswith("score"):
                    m.weight.normal_(0.0, 0.01)
    return model


def canonical(name: str) -> str:
    """A parameter name in the peer's spelling: ours without ``backbone.``/``head.``."""
    return name.removeprefix("backbone.").removeprefix("head.")


def peer_from(ours: nn.Module, peer_cls: type[nn.Module]) -> nn.Module:
    """A torchfcn FCN8s holding our weights (names map by dropping ``backbone.``/``head.``)."""
    peer = peer_cls(n_class=CLASSES)
    state = {canonical(k): v for k, v in ours.state_dict().items()}
    peer.load_state_dict(state, strict=True)
    # the paper's (and ours') final 8x upsampling is fixed bilinear; torchfcn's trainer leaves
    # every deconvolution out of its optimizer, but computes their gradients: freeze it to match
    peer.upscore8.weight.requires_grad_(False)
    return peer


def counts(model: nn.Module) -> tuple[int, int]:
    params = list(model.parameters())
    return sum(p.numel() for p in params), sum(p.numel() for p in params if p.requires_grad)


def fixed_batch(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(1, 3, HEIGHT, WIDTH, generator=g)
    y = torch.randint(0, CLASSES, (1, HEIGHT, WIDTH), generator=g)
    y[torch.rand(y.shape, generator=g) < 0.05] = VOID  # object boundaries are void in VOC
    y[:, :8], y[:, :, :8] = VOID, VOID
    return x, y


class Runner:
    """One config: its model, optimizer, input layout and the two timed operations."""

    def __init__(self, cfg: Config, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> None:
        self.cfg = cfg
        fmt = torch.channels_last if cfg.channels_last else torch.contiguous_format
        self.model = model.to(memory_format=fmt)
        converted = use_fast_convs(self.model, winograd=cfg.winograd, gemm=cfg.gemm)
        if cfg.winograd and converted["winograd"] == 0:
            raise SystemExit(f"{cfg.name}: NNPACK (Winograd) is not available in this torch build")
        self.x = x.contiguous(memory_format=fmt)
        self.y = y
        trainable = [p for p in self.model.parameters() if p.requires_grad]
        self.opt = torch.optim.SGD(trainable, lr=LR, momentum=MOMENTUM)
        self.train_s: list[float] = []
        self.infer_s: list[float] = []

    def autocast(self):
        if self.cfg.bf16:
            return torch.autocast("cpu", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def loss(self) -> torch.Tensor:
        with self.autocast():
            out = self.model(self.x)
        return F.cross_entropy(out.float(), self.y, ignore_index=VOID)

    def train_step(self) -> float:
        self.model.train()
        t0 = time.perf_counter()
        loss = self.loss()
        loss.backward()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        return time.perf_counter() - t0

    def infer(self) -> float:
        self.model.eval()
        t0 = time.perf_counter()
        with torch.inference_mode(), self.autocast():
            self.model(self.x)
        return time.perf_counter() - t0

    def loss_and_grad(self) -> tuple[float, torch.Tensor]:
        """Eval-mode (no dropout) loss and gradient on the fixed batch; no update.

        The gradient is flattened in the order of our parameter names (the peer's map to them).
        """
        self.model.eval()
        self.opt.zero_grad(set_to_none=True)
        loss = self.loss()
        loss.backward()
        named = sorted((canonical(n), p) for n, p in self.model.named_parameters())
        grad = torch.cat(
            [
                p.grad.float().reshape(-1) if p.grad is not None else torch.zeros(p.numel())
                for _, p in named
            ]
        )
        self.opt.zero_grad(set_to_none=True)
        return loss.item(), grad


def load() -> str:
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


def worker(conn, names: list[str], seed: int, threads: int, keep_memory: bool) -> None:
    """One process's configs (one allocator setting): checks first, then timed steps on demand."""
    if keep_memory:
        keep_freed_memory()
    if threads:
        torch.set_num_threads(threads)
    winograd_available()  # initialises NNPACK (a no-op for the other configs)
    peer_cls = torchfcn_fcn8s()
    base = our_model(seed)
    x, y = fixed_batch(seed)
    lines = []
    same = True
    if not keep_memory:  # same architecture: parameter counts, then the same scores
        peer0 = peer_from(base, peer_cls)
        (ours_total, ours_train), (peer_total, peer_train) = counts(base), counts(peer0)
        equal = (ours_total, ours_train) == (peer_total, peer_train)
        lines.append(
            f"parameters: ours {ours_total:,} ({ours_train:,} trainable), "
            f"torchfcn {peer_total:,} ({peer_train:,} trainable) -> "
            f"{'equal' if equal else 'DIFFERENT'}"
        )
        base.eval()
        peer0.eval()
        with torch.inference_mode():
            a, b = base(x), peer0(x)
        diff, scale = (a - b).abs().max().item(), a.abs().max().item()
        atol = 1e-5 * max(scale, 1.0)
        same = equal and a.shape == b.shape and diff <= atol
        lines.append(
            f"same output with our weights copied into torchfcn.FCN8s: shape {tuple(a.shape)}, "
            f"max |ours - torchfcn| = {diff:.2e} (max |score| {scale:.2f}, atol {atol:.1e}) -> "
            f"{'OK' if same else 'MISMATCH'}"
        )
        del peer0, a, b
    # loss match on the fixed batch, before any update: the reference is ours in fp32 eager
    ref_value, ref_grad = Runner(CONFIGS["fp32"], copy.deepcopy(base), x, y).loss_and_grad()
    runners = {}
    for n in names:
        cfg = CONFIGS[n]
        model = peer_from(base, peer_cls) if cfg.peer else copy.deepcopy(base)
        runners[n] = Runner(cfg, model, x, y)
    del base
    loss_ok = True
    for r in runners.values():
        value, grad = r.loss_and_grad()
        rel = abs(value - ref_value) / abs(ref_value)
        grad_err = ((grad - ref_grad).norm() / ref_grad.norm()).item()
        ok = rel <= r.cfg.loss_tol and grad_err <= r.cfg.grad_tol
        loss_ok &= ok
        lines.append(
            f"  {r.cfg.name:13s} loss {value:.7f} (fp32 {ref_value:.7f}), rel diff {rel:.1e} "
            f"[tol {r.cfg.loss_tol:.0e}]; gradient rel L2 diff {grad_err:.1e} "
            f"[tol {r.cfg.grad_tol:.0e}] -> {'OK' if ok else 'FAIL'}"
        )
    del ref_grad
    conn.send((lines, same, loss_ok, torch.get_num_threads()))
    while (msg := conn.recv()) is not None:
        r = runners[msg]
        conn.send((r.train_step(), r.infer()))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--steps", type=int, default=3, help="timed rounds (train step + inference)")
    ap.add_argument("--warmup", type=int, default=1, help="untimed rounds per config first")
    ap.add_argument(
        "--configs",
        default=DEFAULT_CONFIGS,
        help=f"comma-separated, from {list(CONFIGS)} (default {DEFAULT_CONFIGS}); "
        "'torchfcn' is always added",
    )
    ap.add_argument("--threads", type=int, default=0, help="torch threads, both sides (0: default)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    names = [n.strip() for n in args.configs.split(",") if n.strip()]
    unknown = sorted(set(names) - set(CONFIGS))
    if unknown:
        ap.error(f"unknown config(s) {unknown}; known: {list(CONFIGS)}")
    if args.steps < 1 or args.warmup < 0:
        ap.error("--steps must be >= 1 and --warmup >= 0")
    names = ["torchfcn", *[n for n in names if n != "torchfcn"]]
    torchfcn_fcn8s()  # fail early when the peer is not installed

    start_load = load()
    ctx = multiprocessing.get_context("spawn")
    procs, conns, threads = {}, {}, 0
    lines, same, loss_ok = [], True, True
    for keep in (False, True):  # the default-allocator process also runs the architecture check
        group = [n for n in names if CONFIGS[n].keep_memory == keep]
        if not group:
            continue
        parent, child = ctx.Pipe()
        procs[keep] = ctx.Process(target=worker, args=(child, group, args.seed, args.threads, keep))
        procs[keep].start()
        got_lines, got_same, got_ok, threads = parent.recv()
        lines += got_lines
        same &= got_same
        loss_ok &= got_ok
        for n in group:
            conns[n] = parent
    print(
        f"FCN-8s, {WIDTH}x{HEIGHT}, batch 1, {CLASSES} classes | torch {torch.__version__}, "
        f"{threads} threads, {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} CPUs | load average at start: {start_load}"
    )
    print(lines[0], lines[1], sep="\n")
    print("loss and gradient on the fixed batch (eval mode), each config vs ours in fp32 eager:")
    print(*lines[2:], sep="\n")

    def run(name: str) -> tuple[float, float]:
        conns[name].send(name)
        return conns[name].recv()

    for n in names:
        for _ in range(args.warmup):
            run(n)
    train_s: dict[str, list[float]] = {n: [] for n in names}
    infer_s: dict[str, list[float]] = {n: [] for n in names}
    for i in range(args.steps):
        k = i % len(names)
        for n in names[k:] + names[:k]:
            t, f = run(n)
            train_s[n].append(t)
            infer_s[n].append(f)
        print(
            f"  round {i + 1}/{args.steps}: "
            + ", ".join(f"{n} {train_s[n][-1]:.2f}/{infer_s[n][-1]:.2f}s" for n in names)
            + f" (train/infer) | load {load()}",
            flush=True,
        )
    end_load = load()
    for conn in set(conns.values()):
        conn.send(None)
    for proc in procs.values():
        proc.join()

    def rate(times: list[float]) -> float:
        return 1 / statistics.median(times)

    print()
    head = (
        f"{'config':13s} | {'train s/step':>12s} | {'train img/s':>11s} | {'x torchfcn':>10s} | "
        f"{'infer s/img':>11s} | {'infer img/s':>11s} | {'x torchfcn':>10s} | settings"
    )
    print(head)
    print("-" * len(head))
    for n in names:
        ts, fs = statistics.median(train_s[n]), statistics.median(infer_s[n])
        ratio_t = rate(train_s[n]) / rate(train_s["torchfcn"])
        ratio_i = rate(infer_s[n]) / rate(infer_s["torchfcn"])
        print(
            f"{n:13s} | {ts:12.2f} | {1 / ts:11.4f} | {ratio_t:9.2f}x | "
            f"{fs:11.2f} | {1 / fs:11.4f} | {ratio_i:9.2f}x | {CONFIGS[n].help}"
        )
    print(
        f"(median of {args.steps} rounds; each config warmed up {args.warmup}x; "
        f"load average at start {start_load}, at end {end_load})"
    )
    print(f"loss match: {'all OK' if loss_ok else 'FAILED'} (tolerances above)")
    ours = [n for n in names if not CONFIGS[n].peer]
    if ours:
        best = max(ours, key=lambda n: rate(train_s[n]))
        ratio = rate(train_s[best]) / rate(train_s["torchfcn"])
        print(
            f"goal: >= {GOAL:.0f}x torchfcn (as it ships) training images/s: best ours ({best}) "
            f"{ratio:.2f}x -> {'MET' if ratio >= GOAL else 'NOT MET'}"
        )
        if "torchfcn-keep" in names:
            keep_ratio = rate(train_s[best]) / rate(train_s["torchfcn-keep"])
            print(f"  against torchfcn with our allocator setting: {keep_ratio:.2f}x")
    return 0 if (loss_ok and same) else 1


if __name__ == "__main__":
    sys.exit(main())
