#!/usr/bin/env bash
# The single-configuration arms of the LoRA/QLoRA step benchmark, one process per arm and configuration, all in
# one session on one card: HF+PEFT (the reference loop, ../shared/tools/baseline_lora.py), Unsloth
# (../shared/tools/unsloth_arm.py, its own wheel set), HF+PEFT under bf16 autocast (bench/runtime_step_probe.py,
# QLoRA through prepare_model_for_kbit_training), ftplan (the runtime's model with `kernels: ftplan`),
# ftplan-offload (the same with `gradient_checkpointing: offload`) and ftplan-nolora (the kernels but PEFT's LoRA
# layers: what the fused LoRA op adds). ftplan-profile is the ftplan arm followed by one profiled step
# (profiles.jsonl), ftplan-host the same with a profile of the host issuing a step (host-profiles.jsonl);
# ftplan-cudnn runs it with PyTorch's cuDNN attention for the whole step. Random-init
# Llama-3.1-8B shapes. The README's table comes from bench/gpu/speed.sh, which measures several shapes per loaded
# model; this script keeps the diagnostic arms.
#
# Before the run, on the launching machine (from the repo root):
#   bash bench/gpu/wheels.sh && bash ../shared/tools/gpu-wheels.sh unsloth
#   rm -rf .gpu-tools && mkdir .gpu-tools && cp ../shared/tools/{baseline_lora,unsloth_arm}.py .gpu-tools/
#   grep -qx /.gpu-tools/ .git/info/exclude || echo /.gpu-tools/ >> .git/info/exclude
# then run `bash bench/gpu/arms.sh [CONFIG...]` on the GPU machine, carrying .whl-gpu, .whl-unsloth and
# .gpu-tools. A CONFIG is "MODE SEQ BATCH" (default: "lora 2048 2" "qlora 2048 2" "qlora 8192 1"). ARMS picks the
# arms and their order (default: hf-peft hf-peft-autocast ftplan-nolora ftplan unsloth); STEPS and WARMUP (if set)
# go to every arm. Results: JSON lines tagged "MODE-ARM" in $OUT/steps.jsonl, each arm's output in $OUT/MODE-ARM.log.
set -uo pipefail
dest=${OUT:-bench/results}
mkdir -p "$dest"
exec > >(while IFS= read -r line; do printf '%(%H:%M:%S)T %s\n' -1 "$line"; done | tee -a "$dest/arms.log") 2>&1
source bench/gpu/env.sh
M=/tmp/m8b
[ -e $M/config.json ] || python3 .gpu-tools/baseline_lora.py prep --arch llama3-8b --dir $M | grep '^{'
[ $# -gt 0 ] || set -- "lora 2048 2" "qlora 2048 2" "qlora 8192 1"
steps=(${STEPS:+--steps $STEPS} ${WARMUP:+--warmup $WARMUP})
probe=(python3 bench/runtime_step_probe.py --dir $M)
for cfg in "$@"; do
  set -- $cfg
  shape=(--mode $1 --seq $2 --batch $3 "${steps[@]}")
  for name in ${ARMS:-hf-peft hf-peft-autocast ftplan-nolora ftplan unsloth}; do
    case $name in
      hf-peft) arm $1-$name 200 python3 .gpu-tools/baseline_lora.py run --dir $M "${shape[@]}" ;;
      hf-peft-autocast) arm $1-$name 200 "${probe[@]}" "${shape[@]}" --kbit-upcast ;;
      ftplan) arm $1-$name 200 "${probe[@]}" "${shape[@]}" --ftplan ;;
      ftplan-offload) arm $1-$name 200 "${probe[@]}" "${shape[@]}" --ftplan --offload ;;
      ftplan-profile) arm $1-ftplan 200 "${probe[@]}" "${shape[@]}" --ftplan --profile ;;
      ftplan-host) arm $1-ftplan 200 "${probe[@]}" "${shape[@]}" --ftplan --host-profile ;;
      ftplan-cudnn) arm $1-$name 200 "${probe[@]}" "${shape[@]}" --ftplan --sdpa cudnn ;;
      ftplan-nolora) arm $1-$name 200 "${probe[@]}" "${shape[@]}" --ftplan --no-lora-op ;;
      unsloth) arm $1-$name 200 "${UNSLOTH[@]}" python3 .gpu-tools/unsloth_arm.py --dir $M "${shape[@]}" ;;
      *) echo "unknown arm: $name" >&2; exit 2 ;;
    esac
  done
done
