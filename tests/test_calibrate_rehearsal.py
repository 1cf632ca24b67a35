"""``bench/vram/calibrate.py --rehearse``: the calibration harness's whole flow (pipelines, ``check``'s estimate,
``ftplan compile``, the plan's ``run.sh`` with the real data stage and runtime) at toy size on the CPU, so that a
broken harness shows here and not in a GPU machine's scarce minutes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_a_rehearsal_runs_points_in_the_order_given_and_reuses_the_weights_digests(tmp_path):
    work, out = tmp_path / "work", tmp_path / "out"
    env = {**os.environ, "CALIB_WORK": str(work), "HF_HUB_OFFLINE": "1"}
    names = "l1-lora-s8192-b1,l1-lora-s512-b8"
    run = subprocess.run([sys.executable, str(ROOT / "bench/vram/calibrate.py"), "--shard", "llama-small", "--out",
                          str(out), "--rehearse", "--only", names, "--memory-history", "l1-lora-s512-b8"],
                         capture_output=True, text=True, timeout=600, env=env)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    rows = [json.loads(line) for line in (out / "vram-llama-small.jsonl").read_text().splitlines()]
    assert [r["point"]["name"] for r in rows] == names.split(",")  # the order given
    assert all(r["outcome"] == "ok" and r["card"] == "cpu" for r in rows), rows
    assert [bool(r.get("memory_history")) for r in rows] == [False, True]
    assert (out / "logs" / "l1-lora-s512-b8.memhist.txt").read_text().startswith("card: cpu\n")
    # the second point's run found, in its digest cache, the model files' digests the first one's stamp recorded
    # (a stage with a digest cache and no stamp reads as an interrupted run); the first had none to find
    first, second = ((out / "logs" / f"{n}.run.log").read_text() for n in names.split(","))
    assert "it has not run yet" in first and "its last run did not finish" in second
