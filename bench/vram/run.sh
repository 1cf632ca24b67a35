#!/usr/bin/env bash
# On a GPU machine, from the repo root: install the carried wheels, then measure one shard of the calibration
# matrix (bench/vram/points.py) into $OUT (default bench/results/vram):
#   bash bench/vram/run.sh llama-small        # make the wheels first: bash bench/gpu/wheels.sh (carry .whl-gpu)
set -euo pipefail
shard=$1
dest=${OUT:-bench/results/vram}
mkdir -p "$dest"
source bench/gpu/env.sh
python3 bench/vram/calibrate.py --shard "$shard" --out "$dest" --budget-s "${BUDGET:-520}" "${@:2}" 2>&1 \
  | grep --line-buffered -v 'it/s\]\|s/it\]\|examples/s\]\|Writing model shards' | tee "$dest/log.txt"
