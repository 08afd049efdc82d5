#!/usr/bin/env bash
# Run HERE (not on the GPU machine): the wheels the GPU machine needs for the benchmarks.
#
# The GPU machine has Python 3.12 with torch, torchvision, timm, numpy, pillow and
# matplotlib, and no network. This downloads, at the versions in this checkout's .venv,
# the rest of what the benchmarks import (uncompressed data only: no JPEG plugins), into .whl/ (git-ignored), for the
# device tool's `carry`. Usage: make .venv/.installed && bash benchmarks/device/wheels.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
NEEDED="effdet omegaconf pycocotools pydicom"
rm -rf .whl && mkdir .whl
pins=$(.venv/bin/python -m pip freeze | python3 -c '
import sys
wanted = {n.lower().replace("_", "-") for n in sys.argv[1:]}
for line in sys.stdin:
    name = line.split("==")[0].lower().replace("_", "-")
    if name in wanted and "==" in line:
        print(line.strip())' $NEEDED)
[ "$(echo "$pins" | wc -l)" -eq "$(echo $NEEDED | wc -w)" ] || {
  echo "not all of $NEEDED are in .venv: $pins" >&2; exit 1; }
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
  --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 -d .whl $pins
ls -la .whl
