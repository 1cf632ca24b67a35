#!/usr/bin/env bash
# Create .venv with ftplan, its runtime and the test tools. Idempotent: a second run only checks.
#  - torch first: the CPU build where no NVIDIA GPU is present (a bare `torch` requirement would pull a
#    multi-GB CUDA build), the default build otherwise;
#  - DeepSpeed from source with its ops left to JIT (DS_BUILD_OPS=0);
#  - llama-cpp-python built with portable CPU flags (a native build can use instructions, e.g. AMX, that a
#    VM does not allow); pip caches the built wheel, so only the first run pays the ~5 min build.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
stamp=.venv/.ftplan-setup
want=$(cat pyproject.toml constraints.txt constraints-oldest.txt scripts/setup.sh | sha256sum | cut -c1-16)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then exit 0; fi

[ -x .venv/bin/python ] || "$PY" -m venv .venv
pip=(.venv/bin/python -m pip install --disable-pip-version-check -q)
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    "${pip[@]}" "torch>=2.11"
  else
    "${pip[@]}" torch==2.13.0          # CPU build
  fi
fi
DS_BUILD_OPS=0 CMAKE_BUILD_PARALLEL_LEVEL=$(nproc) \
CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON -DLLAVA_BUILD=OFF" \
  "${pip[@]}" -c constraints.txt -e '.[runtime,gpu,dev]' llama-cpp-python
# The oldest supported transformers/peft, as an overlay the lower-bound test puts first on PYTHONPATH.
rm -rf .venv/oldest
"${pip[@]}" --no-deps --target .venv/oldest -r constraints-oldest.txt
echo "$want" > "$stamp"
