#!/usr/bin/env bash
# On a GPU machine (from the repo root): install the carried wheels, build the inputs, compile the pipeline
# with ftplan and run the generated run.sh; copy each stage's metrics.json to $OUT (or bench/results/).
# Make the wheels first on the machine that launches the run: bash bench/gpu/wheels.sh (carry .whl-gpu).
set -euo pipefail
# Log every step with a timestamp to $OUT/run.log as it goes, so a run stopped at its time limit still shows
# how far it got:  bash bench/gpu/run.sh   (remotely: `set -o pipefail; bash bench/gpu/run.sh`)
dest=${OUT:-bench/results}
mkdir -p "$dest"
exec > >(while IFS= read -r line; do printf '%(%H:%M:%S)T %s\n' -1 "$line"; done | grep --line-buffered -v 'it/s\]\|s/it\]\|examples/s\]' | tee -a "$dest/run.log") 2>&1
source bench/gpu/env.sh
python3 -c "import torch, transformers, trl, peft, accelerate, bitsandbytes; print('torch', torch.__version__, 'transformers', transformers.__version__, 'trl', trl.__version__, 'peft', peft.__version__, 'accelerate', accelerate.__version__, 'bitsandbytes', bitsandbytes.__version__)"
python3 bench/gpu/make_inputs.py work
python3 -m ftplan compile bench/gpu/llama8b-qlora-sft-dpo.yaml -o work/plan
bash work/plan/run.sh
for s in data sft dpo; do cp "bench/gpu/outputs/$s/metrics.json" "$dest/llama8b-qlora-$s-metrics.json" 2>/dev/null || true; done
cp work/plan/plan.json "$dest/llama8b-qlora-plan.json"
