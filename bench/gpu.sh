#!/usr/bin/env bash
# The GPU paths in one go, on a machine with CUDA: the CUDA tests (skipped elsewhere), the engine's
# ceiling with torch at fp32, fp16 and bf16, and the service at fp16 and fp32 under load.
#   bash bench/gpu.sh [LOG_DIR]      (from a checkout whose Python has the server's dependencies)
# Each step has its own time limit, so one that hangs does not take the others' figures with it.
set -uo pipefail
cd "$(dirname "$0")/.."
log=${1:-bench/results/raw}
mkdir -p "$log"
py=${PYTHON:-python3}
export PYTHONUNBUFFERED=1 YOLO_OFFLINE=1 YOLO_VERBOSE=False
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>&1 | tee "$log/gpu.txt"
"$py" -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name(0))" 2>&1 | tee -a "$log/gpu.txt"
timeout 180 "$py" -m pytest -q -p no:cacheprovider tests/engine/test_cuda.py tests/service/test_cuda.py \
    2>&1 | tee "$log/gpu_tests.log"
timeout 150 "$py" -m bench engine --device cuda --backends torch --batches 1 8 32 --seconds 2 \
    2>&1 | tee "$log/gpu_engine.log"
for p in fp16 fp32; do
    timeout 150 "$py" -m bench served --device cuda --backend torch --precision "$p" --max-batch-size 32 \
        --windows 5 --no-naive --seconds 4 --open-seconds 4 2>&1 | tee "$log/gpu_served_$p.log"
done
