"""Keep freed host memory for reuse, so a CPU training step does not fault its pages in again.

A training step allocates and frees the same activation sizes every step. glibc's malloc serves
blocks above a (self-adjusting) threshold with fresh `mmap`s and hands freed memory at the top of
the heap back to the OS, so depending on the process's history a CPU step can spend several percent
of its time in page faults, zero-filling memory it just gave back. Raising the mmap and trim
thresholds keeps that memory in the heap, as jemalloc or tcmalloc would, at the cost of a process
that returns less memory to the OS while it runs. A no-op off glibc (macOS, Windows, musl).
"""
from __future__ import annotations

import ctypes
import ctypes.util
import functools
import sys

# mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_BYTES = 256 << 20  # blocks below this come from the heap and are reused
TRIM_THRESHOLD_BYTES = 1 << 30  # free memory kept at the top of the heap before it is returned


@functools.cache
def keep_freed_memory() -> bool:
    """Set glibc's mmap and trim thresholds for a steady training loop; True when they were set."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)) and bool(
        mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES))
