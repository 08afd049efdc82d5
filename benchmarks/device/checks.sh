#!/usr/bin/env bash
# Issue 18's device check: one command, one JSON line per check on stdout.
#
# On a fresh H100/H200 machine (about 6 minutes; the steps' limits add up to 7.5):
#   bash benchmarks/device/wheels.sh          # here, once: what that machine lacks -> .whl/
#   run(command="bash benchmarks/device/checks.sh", carry=[".whl"], timeout_s=540)
# Here, on the CPU, the same script at tiny sizes (about a minute):
#   bash benchmarks/device/checks.sh --dry-run
#
# Lines, in order (docs/gpu.md says how to read them):
#   card       the GPU, driver, torch and CUDA, and the model the node runs
#   inference  d0 at 1024 px: ours compiled (target >= 1000 images/s), ours eager, from
#              uint16 pixels (the node's whole device path), stock effdet fp32 batch 1
#   training   d0 at 512 px: ours on one GPU (target >= 500 images/s), a plain effdet loop
#   latency    `cxr-node serve` on the GPU: SR at the PACS after each single-image study,
#              p50/p95 (target: p95 <= 1 s after study completion)
#   summary    each target met or not, the steps that failed, the seconds it all took
# A step that fails or outlasts its limit prints {"check": <step>, "error": ...} with the
# end of its log instead; every log is in $OUT/<step>.log, the lines in $OUT/checks.jsonl.
# The latency node compiles for batches of 1 only (its studies are single images); with
# default settings a node also compiles for images_per_batch at start: start-up time, not
# latency.
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-/tmp/cxr-node-checks}
mkdir -p "$OUT"
: > "$OUT/checks.jsonl"
started=$(date +%s)
if [ "${1:-}" = "--dry-run" ]; then
  PY=${PYTHON:-.venv/bin/python}
  [ -x "$PY" ] || PY=python3
  export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
  DEVICE=cpu
  # inductor compiles d0 in minutes on a CPU: the dry run traces with dynamo and runs eager.
  INFERENCE="--size 128 --batches 1,2 --compile-batch 2 --compile-backend eager
             --pixels 256 --images 2 --seconds 0.3"
  TRAINING="--size 128 --batches 2 --plain-batch 2 --seconds 0.3"
  LATENCY="--count 2 --interval 1 --min-size 256 --max-size 320 --warm-up-timeout 100"
  LIMITS=(30 150 90 150)
elif [ $# -gt 0 ]; then
  echo "usage: $0 [--dry-run]" >&2
  exit 2
else
  PY=python3
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site
  DEVICE=cuda
  INFERENCE="--size 1024 --batches 32,64,128 --compile-batch 64 --pixels 2048 --images 4
             --seconds 2"
  TRAINING="--size 512 --batches 32,64,128 --plain-batch 8 --seconds 4"
  LATENCY="--count 16 --interval 2.5 --images-per-batch 1 --warm-up-timeout 110"
  LIMITS=(30 180 80 160)
fi
export PYTHONUNBUFFERED=1

step() {  # step NAME LIMIT SCRIPT [ARGS...]: the step's JSON line, or an error line
  local name=$1 limit=$2 status line
  shift 2
  timeout "$limit" "$PY" "$@" > "$OUT/$name.log" 2>&1
  status=$?
  line=$(grep "^{\"check\": \"$name\"" "$OUT/$name.log" | tail -n 1)
  if [ "$status" != 0 ] || [ -z "$line" ]; then
    line=$("$PY" benchmarks/device/report.py error "$name" "$status" "$limit" "$OUT/$name.log")
  fi
  echo "$line" | tee -a "$OUT/checks.jsonl"
}

# shellcheck disable=SC2086 # the argument lists are meant to split
{
  step card "${LIMITS[0]}" benchmarks/device/report.py card
  step inference "${LIMITS[1]}" benchmarks/inference.py --device "$DEVICE" $INFERENCE
  step training "${LIMITS[2]}" benchmarks/train_throughput.py --device "$DEVICE" $TRAINING
  step latency "${LIMITS[3]}" benchmarks/latency.py --device "$DEVICE" --sender pynetdicom \
    $LATENCY
}
"$PY" benchmarks/device/report.py summary "$OUT/checks.jsonl" --started "$started" \
  | tee -a "$OUT/checks.jsonl"
