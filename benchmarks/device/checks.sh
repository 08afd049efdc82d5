#!/usr/bin/env bash
# Run ON the GPU machine, as one device call (about 5 minutes, well inside one call):
#   run(command="bash benchmarks/device/checks.sh", carry=[".whl"], timeout_s=540)
# after `bash benchmarks/device/wheels.sh` here. It prints the card, then the GPU figures
# of issue 3: detector inference at 1024 px (target >= 1000 images/s with
# post-processing) and training throughput at 512 px (target >= 500 images/s), each
# against stock effdet in the same run, and copies each JSON line to $OUT.
set -uo pipefail
cd "$(dirname "$0")/../.."
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
  --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch, timm, effdet; print('torch', torch.__version__, 'timm', timm.__version__)"
python3 benchmarks/inference.py --size 1024 --batches 8,32,64,128 2>&1 | tee "$OUT/inference.log"
python3 benchmarks/train_throughput.py --size 512 --batches 32,64,128 2>&1 | tee "$OUT/train.log"
