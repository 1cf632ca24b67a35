#!/usr/bin/env bash
# The runtime's GPU tests on a GPU machine (about 2 minutes on an H100): the Triton kernels compiled (not
# interpreted), offloaded checkpoints over real CUDA streams, the preflight against the real card, and the compiled
# tiny data -> SFT -> DPO plan with `kernels: ftplan` in bf16. Carry .whl-gpu (bash bench/gpu/wheels.sh).
# Output: $OUT/gpu-tests.txt (default bench/results/gpu-tests.txt); exit status pytest's.
set -uo pipefail
dest=${OUT:-bench/results}
mkdir -p "$dest"
source bench/gpu/env.sh > "$dest/gpu-tests.txt"
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)" >> "$dest/gpu-tests.txt"
python3 -m pytest -q -p no:cacheprovider -n 8 -rfE tests/runtime/kernels tests/runtime/test_offload.py \
  tests/runtime/test_dpo_kernels_plan.py tests/runtime/test_entry.py::test_gpu_bf16_chain_with_ftplan_kernels \
  tests/runtime/test_preflight.py tests/runtime/test_bnb_cpu.py \
  --deselect "tests/runtime/test_dpo_kernels_plan.py::test_sft_then_dpo_with_kernels_compile_and_run[cpu]" \
  >> "$dest/gpu-tests.txt" 2>&1
status=$?
grep -E "^(FAILED|ERROR)|passed|failed" "$dest/gpu-tests.txt" | tail -40
exit $status
