#!/usr/bin/env bash
# The README's speed table, measured: every arm of the LoRA/QLoRA step benchmark and the DPO benchmark in one
# session on one card, into $OUT (default bench/results/<date>-<card>/), then the table from those lines.
#
# Before the run, on the launching machine (from the repo root), as bench/gpu/arms.sh says: the wheel folders
# .whl-gpu and .whl-unsloth and .gpu-tools (baseline_lora.py for the HF+PEFT arm and the random-init model).
# On the GPU machine: `bash bench/gpu/speed.sh` (about 8 minutes on an H100), carrying those three folders.
# Then here: python3 bench/speed_table.py "$OUT" --readme README.md
# The *-es arm runs ftplan with PyTorch's expandable segments (PYTORCH_ALLOC_CONF), as Unsloth sets them.
set -uo pipefail
card=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1 | grep -o 'H[0-9]*' | tr 'H' 'h')
dest=${OUT:-bench/results/$(date +%F)-${card:-gpu}}
mkdir -p "$dest"
exec > >(tee -a "$dest/speed.log") 2>&1
source bench/gpu/env.sh
M=/tmp/m8b
[ -e $M/config.json ] || python3 .gpu-tools/baseline_lora.py prep --arch llama3-8b --dir $M 2>&1 | grep '^{'

S="2048x2 8192x1 16384x1:1 32768x1:1"
arm qlora-ftplan-offload 150 python3 bench/runtime_step_probe.py --dir $M --mode qlora --ftplan --offload --shapes $S --warmup 3 --steps 5 --profile
PYTORCH_ALLOC_CONF=expandable_segments:True arm qlora-ftplan-offload-es 150 python3 bench/runtime_step_probe.py --dir $M --mode qlora --ftplan --offload --shapes $S --warmup 3 --steps 5
arm qlora-unsloth 200 "${UNSLOTH[@]}" python3 bench/unsloth_shapes.py --dir $M --mode qlora --shapes $S --warmup 3 --steps 5
arm qlora-ftplan 150 python3 bench/runtime_step_probe.py --dir $M --mode qlora --ftplan --shapes $S --warmup 3 --steps 5
arm qlora-hf-peft 60 python3 .gpu-tools/baseline_lora.py run --dir $M --mode qlora --seq 2048 --batch 2 --warmup 3 --steps 5
arm lora-ftplan 90 python3 bench/runtime_step_probe.py --dir $M --mode lora --ftplan --shapes 2048x2 --warmup 3 --steps 5 --profile
arm lora-unsloth 150 "${UNSLOTH[@]}" python3 bench/unsloth_shapes.py --dir $M --mode lora --shapes 2048x2 --warmup 3 --steps 5
arm lora-hf-peft 60 python3 .gpu-tools/baseline_lora.py run --dir $M --mode lora --seq 2048 --batch 2 --warmup 3 --steps 5

echo "=== $(date +%T) dpo"
[ -e /tmp/dpo8b/config.json ] || python3 bench/dpo_speed.py prep --dir /tmp/dpo8b 2>&1 | grep '^{'
python3 bench/dpo_speed.py all --dir /tmp/dpo8b --arms ftplan trl --steps 5 --warmup 2 --timeout 200 \
  --out "$dest/dpo-speed.jsonl" > "$dest/dpo.log" 2>&1 || tail -30 "$dest/dpo.log"
python3 bench/speed_table.py "$dest"
