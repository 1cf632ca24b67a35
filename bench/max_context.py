"""The longest sequence that fits at micro-batch 1, per arm, from steps measured at several lengths on one card.

Each arm (ftplan with checkpoints on the GPU, ftplan with `gradient_checkpointing: offload`, Unsloth) trains a few
lengths with one loaded model (`runtime_step_probe.py --shapes`, `unsloth_shapes.py`); with memory-efficient attention
and a chunked loss a step's memory grows linearly with the sequence, so a least-squares line through the measured
device use (CUDA context, weights, allocator cache and all: free memory before loading minus free memory after the
steps) gives the length at which it reaches the memory that was free before loading. Every arm goes through the same
fit; the line's largest residual over the measured lengths is printed beside it, and a length that ran out of memory
caps the answer.

    python3 bench/max_context.py bench/results/2026-12-07-h100/steps.jsonl

bench/speed_table.py puts the same figures in the README's table.

A direct search (train at the predicted length, then one step further) costs minutes per try at 8B shapes and
hundreds of thousands of tokens; this fit is what a session's GPU time allows, and it says so in its output.
"""
from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path


def arm_name(line: dict) -> str:
    """ftplan, ftplan-offload or unsloth (the arm field when the line names one)."""
    if "arm" in line:
        return str(line["arm"])
    return "ftplan-offload" if line.get("offload") else "ftplan"


def fit(points: list[tuple[float, float]]) -> tuple[float, float]:
    """(intercept, slope) of the least-squares line through (x, y) points; needs two distinct x."""
    n = len(points)
    mx = sum(x for x, _ in points) / n
    my = sum(y for _, y in points) / n
    sxx = sum((x - mx) ** 2 for x, _ in points)
    if sxx == 0:
        raise ValueError("needs two distinct lengths")
    slope = sum((x - mx) * (y - my) for x, y in points) / sxx
    return my - slope * mx, slope


def longest(lines: list[dict]) -> dict:
    """One arm's answer: the fitted line, the predicted longest length (rounded down to 1,024), what capped it."""
    ok = [ln for ln in lines if not ln.get("oom")]
    oom = min((ln["seq"] for ln in lines if ln.get("oom")), default=None)
    if len({ln["seq"] for ln in ok}) < 2:
        return {"measured": sorted(ln["seq"] for ln in ok), "oom_at": oom, "predicted": None}
    points = [(float(ln["seq"]), float(ln["device_used_gib"])) for ln in ok]
    a, b = fit(points)
    free = min(float(ln["free_before_gib"]) for ln in ok)
    predicted = int((free - a) / b) // 1024 * 1024 if b > 0 else None
    if oom is not None and predicted is not None:
        predicted = min(predicted, oom - 1024)
    return {"measured": sorted(int(x) for x, _ in points), "oom_at": oom, "free_gib": round(free, 2),
            "gib_at_0": round(a, 3), "mib_per_1k_tokens": round(b * 1024 * 1024, 2),
            "max_residual_gib": round(max(abs(y - (a + b * x)) for x, y in points), 3),
            "predicted": predicted, "tok_per_s": {int(ln["seq"]): ln["tok_per_s"] for ln in ok},
            "gpu": ok[0].get("gpu")}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("jsonl", type=Path, help="the JSON lines of every arm")
    a = p.parse_args(argv)
    by_arm: dict[str, list[dict]] = defaultdict(list)
    for raw in a.jsonl.read_text().splitlines():
        if raw.startswith("{"):
            line = json.loads(raw)
            if "seq" in line and line.get("batch", 1) == 1:
                by_arm[arm_name(line)].append(line)
    result = {arm: longest(lines) for arm, lines in sorted(by_arm.items())}
    print(json.dumps({"max_context": result, "method": "linear fit of measured device use; not a direct search"},
                     indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
