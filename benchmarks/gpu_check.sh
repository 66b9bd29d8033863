#!/usr/bin/env bash
# The GPU checks as one command on a lent H200 (about 8 minutes), from this checkout:
#   1. here: bash benchmarks/gpu_wheels.sh
#   2. device tool: run(command="bash benchmarks/gpu_check.sh", carry=[".whl"], timeout_s=580)
# Writes gpu.txt, pretrain_step.log (ViT-L/16 DINOv2 step: s, images/s, memory, MFU),
# embed.log (ViT-L/16 patches/s) and ssl_tests.log (tests/ssl with CUDA visible, so
# accelerator auto trains on the GPU) under $OUT; record the figures in benchmarks/README.md.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-/tmp/unipipe-gpu-check}
mkdir -p "$out"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
  --target /tmp/site .whl/*.whl || { echo "wheels missing: run benchmarks/gpu_wheels.sh"; exit 1; }
export PYTHONPATH=/tmp/site:$PWD/src PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"
python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())" \
  | tee -a "$out/gpu.txt"
timeout 200 python3 benchmarks/pretrain/bench_gpu_step.py --batch 64 --repeats 10 2>&1 \
  | tee "$out/pretrain_step.log"
timeout 150 python3 benchmarks/embed/bench_gpu_embed.py --batch 256 --workers 8 2>&1 \
  | tee "$out/embed.log"
# The 2-process DDP/FSDP tests use gloo on the CPU and are left to CI.
timeout 150 python3 -m pytest -q -x -p no:cacheprovider tests/ssl/test_train.py \
  tests/ssl/test_module.py 2>&1 | tee "$out/ssl_tests.log" | tail -5
