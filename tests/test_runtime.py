"""Thread limits reach torch, OpenCV and the BLAS environment."""

from __future__ import annotations

import os
import subprocess
import sys


def test_limit_threads_caps_torch_before_and_after_import():
    """torch imported after limit_threads runs on the given number of threads, and so does
    torch imported before it."""
    code = (
        "from unipipe.runtime import limit_threads; limit_threads(1); import torch, cv2, os; "
        "print(torch.get_num_threads(), cv2.getNumThreads(), os.environ['OMP_NUM_THREADS'])"
    )
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert out.stdout.split() == ["1", "1", "1"], out.stderr

    code = (
        "import torch; from unipipe.runtime import limit_threads; limit_threads(1); "
        "print(torch.get_num_threads())"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert out.stdout.strip() == "1", out.stderr
