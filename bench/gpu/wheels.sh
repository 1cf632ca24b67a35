#!/usr/bin/env bash
# Wheels the GPU machine lacks for bench/gpu/run.sh, into .whl-gpu/ (git-ignored): the set from
# ../shared/tools/gpu-wheels.sh without liger-kernel (not used) and without its peft (the machine has one).
set -euo pipefail
cd "$(dirname "$0")/../.."
bash ../shared/tools/gpu-wheels.sh >/dev/null
rm -rf .whl-gpu && mkdir .whl-gpu
cp .whl/*.whl .whl-gpu/
rm -f .whl-gpu/liger_kernel-* .whl-gpu/peft-*
grep -qx "/.whl-gpu/" .git/info/exclude 2>/dev/null || echo "/.whl-gpu/" >> .git/info/exclude
du -sh .whl-gpu
