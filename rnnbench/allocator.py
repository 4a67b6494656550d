"""Allocator settings for training processes."""

from __future__ import annotations

_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4  # mallopt parameters (malloc.h)


def retain_freed_memory() -> bool:
    """Make glibc keep freed memory for reuse instead of returning it to the kernel; returns whether it applied.

    A training step allocates and frees tens of MB (oneDNN's LSTM workspace: 65 MB at hidden 32, T=1000; a
    seed-parallel step's K x T x B x gates buffers). glibc serves blocks above 32 MB with a fresh ``mmap`` and
    unmaps them on free, so every step page-faults all of its memory in again: fused LSTM steps at T=1000 took
    2.3-3x longer and an 8-seed step 2x longer (``benchmarks/``). With mmap off and no trimming,
    freed blocks stay in the heap and the next step reuses them. The process keeps its peak memory; settings are
    process-wide and persist (they are harmless for the rest of a training process). No-op off glibc.
    """
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
        return bool(libc.mallopt(_M_MMAP_MAX, 0)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, 2**31 - 1))
    except (OSError, AttributeError):
        return False
