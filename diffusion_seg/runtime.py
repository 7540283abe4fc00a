"""Process-wide settings that train, eval, predict and the benchmarks apply before they build
anything.

glibc's malloc serves every allocation above its mmap threshold (128 KiB, rising to at most
32 MiB as large blocks are freed) with a fresh ``mmap`` and returns it to the kernel on
``free``. PyTorch's CPU allocator does not cache, so every large activation of every step is
a new mapping whose pages the kernel must fault in and zero on first touch: with d = 256 on a
41×41 grid one PDN gate tensor is 21 MB, and the page faults cost more than the arithmetic
(Eq. 1 of one layer, 2 threads: 48–54 ms per forward with fresh mappings, 15.6 ms with
reused memory; the DeepLab-v2 network's forward + backward 3238 → 3002 ms; see
``diffusion_seg/models/pdn.py`` and README "Speed"). PyTorch's CPU tuning guide answers this
with jemalloc or tcmalloc through ``LD_PRELOAD``; :func:`keep_freed_memory` gets the same
effect from glibc itself, with no extra library and no launcher: large blocks come from the
heap, and freed memory stays with the process for the next step (the process keeps its peak
resident size, as PyTorch's CUDA caching allocator does on a GPU).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

# mallopt parameters (glibc's malloc.h)
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
KEEP_UP_TO = 2**31 - 1  # bytes of free memory at the heap's top kept (mallopt takes a C int)


def keep_freed_memory() -> bool:
    """Make glibc's malloc reuse freed memory instead of returning it to the kernel: no mmap
    for large blocks (``M_MMAP_MAX = 0``), no trimming of the heap's top below 2 GiB of free
    memory. Applies to later allocations of this process and of processes it forks
    (DataLoader workers). Returns False where it does not apply (not Linux/glibc)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and others: no mallopt
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    return bool(mallopt(M_MMAP_MAX, 0)) and bool(mallopt(M_TRIM_THRESHOLD, KEEP_UP_TO))
