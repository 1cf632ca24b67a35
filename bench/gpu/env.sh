# Sourced (from the repo root) by every script that runs on a GPU machine: the carried wheels installed once per
# machine (.whl-gpu into /tmp/site; .whl-unsloth, when carried, into /tmp/site-unsloth), the runtime importable as
# ftplan_runtime, `python` on PATH for the generated run.sh, the environment, the card's name, and `arm` for the
# benchmark drivers. Make the wheel folders on the launching machine first: bash bench/gpu/wheels.sh (and
# bash ../shared/tools/gpu-wheels.sh unsloth for the Unsloth arms).
install_wheels() {  # install_wheels FOLDER TARGET MARKER: pip-install FOLDER's wheels into TARGET unless MARKER exists
  [ -e "$2/$3" ] || python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target "$2" "$1"/*.whl
}
install_wheels .whl-gpu /tmp/site trl
[ -d .whl-unsloth ] && install_wheels .whl-unsloth /tmp/site-unsloth unsloth
mkdir -p /tmp/shim && ln -sfn "$PWD/runtime" /tmp/shim/ftplan_runtime
printf '#!/bin/sh\nexec %s "$@"\n' "$(command -v python3)" > /tmp/shim/python && chmod +x /tmp/shim/python
export PYTHONPATH=/tmp/site:/tmp/shim:$PWD PATH=/tmp/shim:$PATH HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
UNSLOTH=(env PYTHONPATH=/tmp/site-unsloth:$PWD/bench HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1)  # Unsloth's own set
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader

arm() {  # arm NAME SECONDS COMMAND...: one benchmark arm; its output appended to $dest/NAME.log, its JSON lines
  # tagged "arm": NAME (and "call": $SPEED_CALL when set: which run of the benchmark measured them) appended to
  # $dest/steps.jsonl (profile lines to $dest/profiles.jsonl, host profiles to $dest/host-profiles.jsonl) and the
  # steps' lines printed
  local name=$1 t=$2 out
  shift 2
  out=$(mktemp)
  echo "=== $(date +%T) $name"
  timeout "$t" "$@" > "$out" 2>&1 || { echo "arm $name failed ($?):"; grep -v 'it/s\]\|s/it\]' "$out" | tail -25; }
  cat "$out" >> "$dest/$name.log"
  grep '^{' "$out" | python3 -c "
import json, os, sys
call = os.environ.get('SPEED_CALL')
for line in sys.stdin:
    row = {**json.loads(line), 'arm': '$name', **({'call': call} if call else {})}
    kind = 'profiles' if 'profile' in row else 'host-profiles' if 'host_profile' in row else 'steps'
    with open('$dest/' + kind + '.jsonl', 'a') as f:
        f.write(json.dumps(row) + '\\n')
    if kind == 'steps':
        print(json.dumps(row))"
  rm -f "$out"
}
