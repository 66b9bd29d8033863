"""Keeping a job's compute libraries inside the cores the scheduler gave it."""

from __future__ import annotations

import logging
import os
import sys

__all__ = ["limit_threads"]

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
