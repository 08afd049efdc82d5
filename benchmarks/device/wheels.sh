#!/usr/bin/env bash
# Run HERE (not on the GPU machine): the wheels the GPU machine needs for the device check.
#
# The GPU machine has Python 3.12 with torch, torchvision, timm, numpy, pillow, jinja2,
# pyyaml, requests, prometheus-client, anyio, h11 and click (KINDS.md of the device tool
# lists them), and no network. This downloads, at the versions in this checkout's .venv,
# the rest of what the benchmarks and `cxr-node serve` import (found by running the node
# under PYTHONPROFILEIMPORTTIME; uncompressed data only: no JPEG plugins), into .whl/
# (git-ignored; about 16 MB), for the device tool's `carry`.
# Usage: make .venv/.installed && bash benchmarks/device/wheels.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
# The detector; DICOM and the network; the database; settings; results; the scheduler;
# the web service and its logins. typing-extensions: pydantic needs a newer one than
# torch's image may hold.
NEEDED="effdet omegaconf pycocotools
        pydicom pynetdicom
        sqlalchemy alembic mako
        pydantic pydantic-core annotated-types typing-inspection typing-extensions
        highdicom pyjpegls
        apscheduler tzlocal
        starlette uvicorn python-multipart argon2-cffi argon2-cffi-bindings cffi"
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
# shellcheck disable=SC2086 # one pin per word
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
  --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  --platform manylinux1_x86_64 -d .whl $pins
ls -la .whl
du -sh .whl
