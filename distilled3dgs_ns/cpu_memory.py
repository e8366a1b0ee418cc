"""Keep freed memory in the process on Linux, so that a training step's large tensors do not fault in fresh pages.

A CPU training step allocates and frees the same multi-MB tensors every step (SH colours, their gradients, Adam's
moments). glibc hands freed blocks at the top of its heap back to the kernel once they exceed a small, adaptive
threshold, and the next step's allocation then faults every page in again, zero-filled by the kernel: a multiply
of such tensors then costs several times its arithmetic (docs/performance.md). Raising the trim threshold (and fixing
the mmap threshold at its maximum) keeps those pages; the cost is that the process's resident size stays at its peak.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import sys

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters
KEEP_BYTES = 1 << 30  # freed memory kept at the heap's top before glibc returns it
MMAP_ABOVE = 1 << 25  # glibc's largest mmap threshold on 64-bit: blocks up to 32 MB come from the heap


@functools.cache
def keep_freed_memory() -> bool:
    """Tell glibc to keep freed memory (once per process); False where the C library is not glibc."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and other C libraries have no mallopt
        return False
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_ABOVE)) and bool(mallopt(M_TRIM_THRESHOLD, KEEP_BYTES))
