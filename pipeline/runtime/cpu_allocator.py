"""Keep freed memory in the process (glibc ``mallopt``): no page faults on every training step.

A full-width VGG training step allocates and frees gigabytes of large tensors (activations, their
gradients, bf16 copies of the weights). glibc serves each large block with a fresh ``mmap`` and
unmaps it when freed, so the next step faults every page in again: on a 500x375 FCN-8s step that
is about 480,000 page faults and 0.75 s of kernel time per step (``benchmarks/
bench_fcn8s_torchfcn.py``). Serving every block from the heap and never trimming it reuses the
same pages instead. The numbers computed are unchanged; the process keeps its peak memory.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools

# glibc's mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_MAX = -1, -2, -4


@functools.cache
def keep_freed_memory() -> bool:
    """Switch this process's allocator to keep freed memory; False where glibc is not in use."""
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        mallopt = ctypes.CDLL(name).mallopt
    except (OSError, AttributeError):
        return False  # not glibc (musl, macOS): leave the allocator alone
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    ok = mallopt(_M_MMAP_MAX, 0)  # every block from the heap, none mmapped
    ok &= mallopt(_M_TRIM_THRESHOLD, 2**31 - 1)  # never give the heap's top back
    ok &= mallopt(_M_TOP_PAD, 256 << 20)  # grow the heap in large steps
    return bool(ok)
