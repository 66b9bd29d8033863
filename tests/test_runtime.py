"""Thread limits reach torch, OpenCV and the BLAS environment; freed memory is reused."""

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


def test_keep_freed_host_memory_reuses_large_tensors_without_page_faults():
    """Large tensors allocated and freed as a training step does (overlapping lifetimes)
    touch no new pages once glibc keeps freed memory; by default each is mapped afresh.

    The kept heap needs a few steps to hold free blocks that fit every request, as in
    training: 3 to 6 here, varying from run to run (with 4 warm-up steps this test failed
    about one run in three), so it warms up for 8.
    """
    code = (
        "import resource, sys, torch\n"
        "from unipipe.runtime import keep_freed_host_memory\n"
        "if sys.argv[1] == 'keep':\n"
        "    assert keep_freed_host_memory()\n"
        "n = 16 * 2**20\n"  # 64 MB of float32, above glibc's largest mmap threshold
        "def step():\n"
        "    a = torch.empty(n).fill_(1.0)\n"
        "    b = torch.empty(n // 2).fill_(1.0)\n"
        "    del a\n"
        "    c = torch.empty(n).fill_(1.0)\n"
        "for _ in range(8):\n"
        "    step()\n"
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt\n"
        "for _ in range(5):\n"
        "    step()\n"
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)\n"
    )
    faults = {}
    for mode in ("keep", "default"):
        out = subprocess.run(
            [sys.executable, "-c", code, mode], capture_output=True, text=True, check=True
        )
        faults[mode] = int(out.stdout)
    pages = 5 * (160 * 2**20) // 4096  # 160 MB touched per step
    assert faults["default"] > pages // 2  # the kernel maps and zeroes them every step
    assert faults["keep"] < pages // 50
