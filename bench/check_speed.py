"""Wall time of `ftplan check` and `ftplan compile` on the five-stage example, as a user runs them.

Each run is a fresh `python -m ftplan` process (interpreter start and imports included). Prints the median
and spread of N runs per command and compares them with the targets (check <= 0.3 s, compile <= 0.5 s on a
2-core machine). Bytecode is compiled first and used, as for an installed package (pip compiles it at
install time); an environment with PYTHONDONTWRITEBYTECODE set would otherwise recompile every module on
every run.

    python bench/check_speed.py [--runs 21] [--pipeline examples/llama3-8b-qlora-24gb.yaml]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TARGETS_S = {"check": 0.3, "compile": 0.5}


ENV = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}


def time_command(cmd: list[str], runs: int) -> list[float]:
    """Wall seconds of ``runs`` executions of ``cmd`` (after one warm-up run that fills the OS caches)."""
    subprocess.run(cmd, cwd=ROOT, capture_output=True, check=False, env=ENV)
    out = []
    for _ in range(runs):
        t0 = time.perf_counter()
        subprocess.run(cmd, cwd=ROOT, capture_output=True, check=False, env=ENV)
        out.append(time.perf_counter() - t0)
    return out


def main(argv: list[str] | None = None) -> int:
    """Measure both commands; exit 1 when a median misses its target."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=21)
    ap.add_argument("--pipeline", default="examples/llama3-8b-qlora-24gb.yaml")
    args = ap.parse_args(argv)
    py = [sys.executable, "-m", "ftplan"]
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(ROOT / "ftplan")], check=True, env=ENV)
    with tempfile.TemporaryDirectory() as tmp:
        cmds = {"check": py + ["check", args.pipeline],
                "compile": py + ["compile", args.pipeline, "-o", os.path.join(tmp, "plan")]}
        report = {"pipeline": args.pipeline, "runs": args.runs, "cpus": os.cpu_count(), "python": sys.version.split()[0]}
        ok = True
        for name, cmd in cmds.items():
            times = sorted(time_command(cmd, args.runs))
            median = statistics.median(times)
            ok &= median <= TARGETS_S[name]
            report[name] = {"median_s": round(median, 3), "min_s": round(times[0], 3), "max_s": round(times[-1], 3),
                            "target_s": TARGETS_S[name], "meets_target": median <= TARGETS_S[name]}
    print(json.dumps(report, indent=2))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
