#!/usr/bin/env bash
# All arms of the LoRA/QLoRA step benchmark in ONE session on one card, so every ratio compares numbers
# measured together: HF+PEFT (the reference loop, ../shared/tools/baseline_lora.py), Unsloth
# (../shared/tools/unsloth_arm.py, its own wheel set), HF+PEFT under bf16 autocast (bench/runtime_step_probe.py,
# QLoRA through prepare_model_for_kbit_training), ftplan (the same probe as the runtime runs it, with
# `kernels: ftplan`, fused LoRA and NF4 dequantisation included) and ftplan-nolora (the same kernels but the LoRA
# layers left to PEFT). Random-init Llama-3.1-8B shapes. One configuration per process. The op-level arms of the
# fused LoRA blocks are bench/lora_speed.py.
#
# Before the run, on the launching machine (from the repo root):
#   bash bench/gpu/wheels.sh && bash ../shared/tools/gpu-wheels.sh unsloth
#   rm -rf .gpu-tools && mkdir .gpu-tools && cp ../shared/tools/{baseline_lora,unsloth_arm}.py .gpu-tools/
#   grep -qx /.gpu-tools/ .git/info/exclude || echo /.gpu-tools/ >> .git/info/exclude
# then run `bash bench/gpu/arms.sh [CONFIG...]` on the GPU machine, carrying .whl-gpu, .whl-unsloth and
# .gpu-tools. A CONFIG is "MODE SEQ BATCH" (default: "lora 2048 2" "qlora 2048 2" "qlora 8192 1"); pass a
# subset to fit a session's time limit. Every arm of a config runs in the same session. ARMS="ftplan unsloth ..."
# picks the arms and their order (default: hf-peft hf-peft-autocast ftplan-nolora ftplan unsloth); ftplan-offload is
# the ftplan arm with `gradient_checkpointing: offload`. STEPS and WARMUP (if set) go to every arm.
# Results: one JSON line per arm in $OUT/arms.jsonl (and a timestamped $OUT/arms.log).
set -uo pipefail
dest=${OUT:-bench/results}
mkdir -p "$dest"
exec > >(while IFS= read -r line; do printf '%(%H:%M:%S)T %s\n' -1 "$line"; done | tee -a "$dest/arms.log") 2>&1
[ -e /tmp/site/trl ] || python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl-gpu/*.whl
[ -e /tmp/site-unsloth/unsloth ] || python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site-unsloth .whl-unsloth/*.whl
mkdir -p /tmp/shim && ln -sfn "$PWD/runtime" /tmp/shim/ftplan_runtime
base=(env PYTHONPATH=/tmp/site:/tmp/shim:$PWD HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1)
unsl=(env PYTHONPATH=/tmp/site-unsloth HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1)
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
M=/tmp/m8b
"${base[@]}" python3 .gpu-tools/baseline_lora.py prep --arch llama3-8b --dir $M | grep '^{'
arm() {  # arm NAME COMMAND...: run one arm, keep its JSON line tagged with the arm's name (its output: NAME-CONFIG.log)
  local name=$1; shift
  local out="$dest/$name-${cfg// /-}.log"
  timeout 200 "$@" > "$out" 2>&1 || { echo "arm $name failed:"; grep -v 'it/s\]\|s/it\]' "$out" | tail -15; }
  grep '^{' "$out" | tail -1 | python3 -c "import json,sys; [print(json.dumps({'arm': '$name', **json.loads(l)})) for l in sys.stdin]" | tee -a "$dest/arms.jsonl"
}
[ $# -gt 0 ] || set -- "lora 2048 2" "qlora 2048 2" "qlora 8192 1"
steps=(${STEPS:+--steps $STEPS} ${WARMUP:+--warmup $WARMUP})
for cfg in "$@"; do
  set -- $cfg
  for name in ${ARMS:-hf-peft hf-peft-autocast ftplan-nolora ftplan unsloth}; do  # ARMS: which arms, in which order
    case $name in
      hf-peft) arm $name "${base[@]}" python3 .gpu-tools/baseline_lora.py run --dir $M --mode $1 --seq $2 --batch $3 "${steps[@]}" ;;
      hf-peft-autocast) arm $name "${base[@]}" python3 bench/runtime_step_probe.py --dir $M --mode $1 --seq $2 --batch $3 --kbit-upcast "${steps[@]}" ;;
      ftplan) arm $name "${base[@]}" python3 bench/runtime_step_probe.py --dir $M --mode $1 --seq $2 --batch $3 --ftplan "${steps[@]}" ;;
      ftplan-offload) arm $name "${base[@]}" python3 bench/runtime_step_probe.py --dir $M --mode $1 --seq $2 --batch $3 --ftplan --offload "${steps[@]}" ;;
      ftplan-nolora) arm $name "${base[@]}" python3 bench/runtime_step_probe.py --dir $M --mode $1 --seq $2 --batch $3 --ftplan --no-lora-op "${steps[@]}" ;;
      unsloth) arm $name "${unsl[@]}" python3 .gpu-tools/unsloth_arm.py --dir $M --mode $1 --seq $2 --batch $3 "${steps[@]}" ;;
      *) echo "unknown arm: $name" >&2; exit 2 ;;
    esac
  done
done
