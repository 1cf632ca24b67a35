#!/usr/bin/env bash
# The runtime's GPU tests on a GPU machine (about 2 minutes on an H100): the Triton kernels compiled (not
# interpreted), offloaded checkpoints over real CUDA streams, the preflight against the real card, and the compiled
# tiny data -> SFT -> DPO plan with `kernels: ftplan` in bf16. Carry .whl-gpu (bash bench/gpu/wheels.sh).
# Output: $OUT/gpu-tests.txt (default bench/results/gpu-tests.txt); exit status pytest's.
set -uo pipefail
dest=${OUT:-bench/results}
mkdir -p "$dest"
[ -e /tmp/site/trl ] || python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl-gpu/*.whl
mkdir -p /tmp/shim && ln -sfn "$PWD/runtime" /tmp/shim/ftplan_runtime
printf '#!/bin/sh\nexec %s "$@"\n' "$(command -v python3)" > /tmp/shim/python && chmod +x /tmp/shim/python
export PYTHONPATH=/tmp/site:/tmp/shim:$PWD PATH=/tmp/shim:$PATH HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$dest/gpu-tests.txt"
python3 -m pytest -q -p no:cacheprovider -n 8 -rfE tests/runtime/kernels tests/runtime/test_offload.py \
  tests/runtime/test_dpo_kernels_plan.py tests/runtime/test_entry.py::test_gpu_bf16_chain_with_ftplan_kernels \
  tests/runtime/test_preflight.py tests/runtime/test_bnb_cpu.py \
  --deselect "tests/runtime/test_dpo_kernels_plan.py::test_sft_then_dpo_with_kernels_compile_and_run[cpu]" \
  >> "$dest/gpu-tests.txt" 2>&1
status=$?
grep -E "^(FAILED|ERROR)|passed|failed" "$dest/gpu-tests.txt" | tail -40
exit $status
