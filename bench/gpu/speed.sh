#!/usr/bin/env bash
# The README's speed table, measured: every arm of the LoRA/QLoRA step benchmark and the DPO benchmark on one card,
# into $OUT (default bench/results/<date>-<card>/), then the table from those lines.
#
#   bash bench/gpu/speed.sh            # everything in one run (more than 10 minutes on an H100)
#   bash bench/gpu/speed.sh qlora      # the QLoRA arms only          } two runs that each fit a 10-minute window;
#   bash bench/gpu/speed.sh lora-dpo   # the LoRA arms and DPO only   } every table row compares arms of one run
#
# Every line is tagged "call": "<part> <UTC time>" (SPEED_CALL), so the table says which run measured which rows;
# put both parts' files in one folder (concatenate the .jsonl files) before making the table.
# Before the run, on the launching machine (from the repo root), as bench/gpu/arms.sh says: the wheel folders
# .whl-gpu and .whl-unsloth and .gpu-tools (baseline_lora.py for the HF+PEFT arm and the random-init model).
# Then here: python3 bench/speed_table.py "$OUT" --readme README.md
# The *-es arm runs ftplan with PyTorch's expandable segments (PYTORCH_ALLOC_CONF), as Unsloth sets them.
set -uo pipefail
part=${1:-all}
case $part in all|qlora|lora-dpo) ;; *) echo "usage: bash bench/gpu/speed.sh [all|qlora|lora-dpo]" >&2; exit 2 ;; esac
export SPEED_CALL="$part $(date -u +%FT%H:%MZ)"
card=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1 | grep -o 'H[0-9]*' | tr 'H' 'h')
dest=${OUT:-bench/results/$(date +%F)-${card:-gpu}}
mkdir -p "$dest"
exec > >(tee -a "$dest/speed.log") 2>&1
source bench/gpu/env.sh
M=/tmp/m8b
[ -e $M/config.json ] || python3 .gpu-tools/baseline_lora.py prep --arch llama3-8b --dir $M 2>&1 | grep '^{'

if [ "$part" != lora-dpo ]; then
  S="2048x2 8192x1 16384x1:1 32768x1:1"
  arm qlora-ftplan-offload 150 python3 bench/runtime_step_probe.py --dir $M --mode qlora --ftplan --offload --shapes $S --warmup 3 --steps 5 --profile
  PYTORCH_ALLOC_CONF=expandable_segments:True arm qlora-ftplan-offload-es 150 python3 bench/runtime_step_probe.py --dir $M --mode qlora --ftplan --offload --shapes $S --warmup 3 --steps 5
  arm qlora-unsloth 200 "${UNSLOTH[@]}" python3 bench/unsloth_shapes.py --dir $M --mode qlora --shapes $S --warmup 3 --steps 5
  arm qlora-ftplan 150 python3 bench/runtime_step_probe.py --dir $M --mode qlora --ftplan --shapes $S --warmup 3 --steps 5
  arm qlora-hf-peft 60 python3 .gpu-tools/baseline_lora.py run --dir $M --mode qlora --seq 2048 --batch 2 --warmup 3 --steps 5
fi
if [ "$part" != qlora ]; then
  arm lora-ftplan 90 python3 bench/runtime_step_probe.py --dir $M --mode lora --ftplan --shapes 2048x2 --warmup 3 --steps 5 --profile
  arm lora-unsloth 150 "${UNSLOTH[@]}" python3 bench/unsloth_shapes.py --dir $M --mode lora --shapes 2048x2 --warmup 3 --steps 5
  arm lora-hf-peft 60 python3 .gpu-tools/baseline_lora.py run --dir $M --mode lora --seq 2048 --batch 2 --warmup 3 --steps 5

  echo "=== $(date +%T) dpo"
  [ -e /tmp/dpo8b/config.json ] || python3 bench/dpo_speed.py prep --dir /tmp/dpo8b 2>&1 | grep '^{'
  python3 bench/dpo_speed.py all --dir /tmp/dpo8b --arms ftplan trl --steps 5 --warmup 2 --timeout 200 \
    --out "$dest/dpo-speed.jsonl" > "$dest/dpo.log" 2>&1 || tail -30 "$dest/dpo.log"
fi
python3 bench/speed_table.py "$dest"
