"""Keeping a job's compute libraries inside the cores the scheduler gave it, and its memory
allocator from handing large buffers back to the kernel between training steps."""

from __future__ import annotations

import ctypes
import logging
import os
import sys

__all__ = ["keep_freed_host_memory", "limit_threads"]

logger = logging.getLogger(__name__)

_THREAD_ENV = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def limit_threads(n_threads: int) -> None:
    """Cap torch, OpenCV and BLAS thread pools at ``n_threads`` (a rule's ``threads:``).

    Oversubscribed pools are the largest slowdown seen on small nodes: two jobs of two
    threads each on two cores run far slower than their sum once every library also starts
    one thread per core.
    """
    n_threads = max(1, int(n_threads))
    for name in _THREAD_ENV:
        os.environ[name] = str(n_threads)
    try:
        import cv2

        cv2.setNumThreads(n_threads)
    except ImportError:  # pragma: no cover - OpenCV is a dependency
        pass
    # torch reads OMP_NUM_THREADS when first imported; curation jobs never import it, so
    # it is only told directly when it is already loaded.
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(n_threads)
    logger.info("compute threads limited to %d", n_threads)


# glibc mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_TRIM_NEVER = 2**31 - 1  # bytes; the largest value mallopt's int takes


def keep_freed_host_memory() -> bool:
    """Make glibc keep freed memory for reuse instead of unmapping it; False if not glibc.

    glibc serves every allocation above its mmap threshold (at most 32 MB) with a fresh
    mapping and unmaps it on free, so a CPU training step pays page faults and kernel
    zeroing again for each large tensor: the 65,536-prototype logits and weights of the
    DINOv2 heads are 60-70 MB each, about 1 GB of first touches per ViT-S step, 0.4-0.5
    CPU-s of kernel time (benchmarks/README.md). With mmap off and trimming off, freed
    blocks stay in the heap and the next step reuses them. The cost: the process keeps
    its peak heap until it exits, which a training run reaches every step anyway.
    """
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to tune
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    done = mallopt(_M_MMAP_MAX, 0) == 1 and mallopt(_M_TRIM_THRESHOLD, _TRIM_NEVER) == 1
    if done:
        logger.info("freed host memory is kept for reuse (glibc: no mmap, no trim)")
    return done
