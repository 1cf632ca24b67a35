#!/usr/bin/env bash
# On a GPU machine, from the repo root: install the carried wheels, then measure one shard of the calibration
# matrix (bench/vram/points.py) into $OUT (default bench/results/vram):
#   bash bench/vram/run.sh llama-small        # make the wheels first: bash bench/gpu/wheels.sh (carry .whl-gpu)
set -euo pipefail
shard=$1
dest=${OUT:-bench/results/vram}
mkdir -p "$dest"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl-gpu/*.whl
mkdir -p /tmp/shim && ln -sfn "$PWD/runtime" /tmp/shim/ftplan_runtime
printf '#!/bin/sh\nexec %s "$@"\n' "$(command -v python3)" > /tmp/shim/python && chmod +x /tmp/shim/python
export PYTHONPATH=/tmp/site:/tmp/shim:$PWD PATH=/tmp/shim:$PATH HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 bench/vram/calibrate.py --shard "$shard" --out "$dest" --budget-s "${BUDGET:-520}" "${@:2}" 2>&1 \
  | grep --line-buffered -v 'it/s\]\|s/it\]\|examples/s\]\|Writing model shards' | tee "$dest/log.txt"
