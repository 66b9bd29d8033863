#!/usr/bin/env bash
# Wheels of the packages the GPU checks need and the lent H200 image lacks, for its Python
# 3.12, at the versions pinned in this checkout's .venv. Run here (PyPI reachable); the
# device cannot download. They land in .whl/ (git-ignored, about 40 MB) for
# benchmarks/gpu_check.sh, which the device tool runs with carry [".whl"].
set -euo pipefail
cd "$(dirname "$0")/.."
PKGS="openslide-python openslide-bin zarr numcodecs donfig google-crc32c imagecodecs pydicom"
mkdir -p .whl
for name in $PKGS; do
  version=$(.venv/bin/python -c "import importlib.metadata as m; print(m.version('$name'))")
  python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    --platform manylinux1_x86_64 -d .whl "$name==$version"
done
ls -la .whl
