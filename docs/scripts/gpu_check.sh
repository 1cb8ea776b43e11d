#!/bin/bash
# The GPU checks of the cuda target, as one script for a lent GPU machine
# (`device` tool): the GPU tests of tests/test_cuda.py, then the CUDA
# benchmarks (blocks at batch 1 and 8, then models at batch 1). Logs and
# JSON go to $OUT (default: ./gpu-check-out). About 6 minutes in all.
#   bash docs/scripts/gpu_check.sh [TEST_SECONDS] [BLOCKS_SECONDS] [MODELS_SECONDS]
OUT=${OUT:-gpu-check-out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TORCHINDUCTOR_COMPILE_THREADS=16
{
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  nvcc --version | tail -1
  python3 -c "import sys, torch, transformers; print(sys.version.split()[0], torch.__version__, transformers.__version__)"
  python3 -m pip install -q --no-deps --no-build-isolation -e . 2>&1 | grep -v WARNING
} 2>&1 | tee "$OUT/env.txt"
timeout "${1:-150}" python3 -m pytest -q -n 4 --timeout 140 tests/test_cuda.py -k "gpu or never_touched" -p no:cacheprovider \
  2>&1 | tee "$OUT/tests.txt" | tail -40
timeout "${2:-180}" python3 -m fusecc.bench --cuda --batch 1 8 --rounds 10 --calls 20 --json "$OUT/cuda-blocks.json" \
  --blocks "inverted_residual 24-144-24 @56" "convnext 96 @56" "basic 64 @56" "bottleneck 256-64-256 @56" \
  2>&1 | tee "$OUT/bench.txt" | grep -v Warning
timeout "${3:-150}" python3 -m fusecc.bench --cuda --batch 1 --rounds 10 --calls 10 --json "$OUT/cuda-models.json" \
  --blocks --models resnet50 mobilenet_v2 bert_base 2>&1 | tee "$OUT/bench-models.txt" | grep -v Warning
