"""The estimator against every measured calibration point (``bench/results/vram/*.jsonl``, ``bench/vram``).

Each point is a compiled plan that ran through its ``run.sh`` on one H100 or H200 (random-init weights of a
catalog shape, the real data stage and runtime, three optimizer steps). Here each point's pipeline is rebuilt from
its recorded settings and estimated by the current code; the estimate must stay within the targets of the
measured device-used peak (CUDA context included, as the estimate includes it), and a boundary probe's fitting
side must be estimated to fit and its next step up to not fit. A change that makes any point worse than the
targets fails CI.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from ftplan.api import check_text

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench" / "vram"))  # the harness's modules, as summarize.py imports them

import points as P  # noqa: E402
import results as R  # noqa: E402
import summarize  # noqa: E402

MAX_ERROR_PCT = 7.0
"""Target: largest |estimate - measured| / measured of any point."""
MEAN_ERROR_PCT = 3.0
"""Target: mean |error| over the points within ``MAX_ERROR_PCT``."""
MEAN_ERROR_NOW_PCT = 2.95
"""The mean the estimator reaches today over those points (2.94 % over 36 points on an H100 and an H200; 3.14 % over
all 37 with the known miss). Two changes, each checked tensor by tensor on the CPU before it was compared with these
points, brought it here from 3.08 % over 35: the q and k parts a fused ``qkv_proj`` keeps alive
(``activations._fused_qkv_storage``; Phi-3.5 without checkpointing from -9.2 % to -3.8 %), and what the recompute
of PEFT's LoRA layers holds beside ``down_proj``'s fp32 cast (its base output and the backward's first two
gradients, ``activations._forward_transient``; the allocated error of the 13 checkpointed points through PEFT's
LoRA layers from -3.6 … +0.2 % to -2.2 … +1.2 %). The test holds this line so that no change makes the estimate
worse; lower it as the estimate improves."""

KNOWN_MISSES: dict[str, tuple[float, str]] = {
    "l1-qlora-s2048-b4": (11.0, "fragmentation: 0.20 GiB measured against 0.47 estimated, on a 3.6 GiB peak"),
}
"""Points still outside ``MAX_ERROR_PCT``: (the error they must not exceed, in the direction they miss, and why).
A known miss that gets worse fails; one that comes within the target fails too, so that it leaves this list."""
GIB = 1 << 30


ROWS = R.current()
MEASURED = R.measured(ROWS)


estimate = summarize.estimate
"""The current estimate of a recorded point (peak bytes and verdict)."""
_error = summarize.error_pct
"""A point's error in percent of the measured device-used peak."""


def test_there_are_measured_points():
    assert len(MEASURED) >= 8, "bench/results/vram holds no calibration points"


def test_each_runtime_change_supersedes_recorded_rows():
    """A supersession names runs that exist and rows it applies to, so a typo cannot keep a stale row counted or
    drop a current one silently; the rows it leaves out are reported."""
    every = R.rows()
    runs = {r["run"] for r in every}
    for s in R.SUPERSEDED:
        assert set(s.runs) <= runs, s.runs
        stale = [r["point"]["name"] for r in every if R.superseded(r) == s.change]
        assert stale, f"{s.change}: supersedes no recorded row"
        print(f"superseded by {s.change}: {', '.join(stale)}")
    assert len(ROWS) < len(every)


@pytest.mark.parametrize("row", MEASURED, ids=[f"{r['point']['name']}-{r['card'].split()[1]}" for r in MEASURED])
def test_each_point_within_the_target(row, tmp_path):
    name, error = row["point"]["name"], _error(row, tmp_path)
    if name in KNOWN_MISSES:
        bound, why = KNOWN_MISSES[name]
        assert abs(error) > MAX_ERROR_PCT, f"{name} is now within the target ({error:+.1f} %): drop it from KNOWN_MISSES"
        assert abs(error) <= abs(bound) and error * bound > 0, f"{name}: {error:+.1f} %, worse than {bound} % ({why})"
    else:
        assert abs(error) <= MAX_ERROR_PCT, f"{name}: {error:+.1f} %"


def test_mean_error(tmp_path):
    """The mean over the points within the target must not exceed today's (``MEAN_ERROR_NOW_PCT``, on the way to
    ``MEAN_ERROR_PCT``); over all points it is reported."""
    errors = {r["point"]["name"]: abs(_error(r, tmp_path)) for r in MEASURED}
    inside = [e for name, e in errors.items() if name not in KNOWN_MISSES]
    print(f"mean |error| {sum(errors.values()) / len(errors):.2f} % over {len(errors)} points, "
          f"{sum(inside) / len(inside):.2f} % without the {len(KNOWN_MISSES)} known misses")
    assert sum(inside) / len(inside) <= MEAN_ERROR_NOW_PCT


PROBE_RUNS = [json.loads(line) for line in (ROOT / "bench/results/2026-12-07-h100/steps.jsonl").read_text().splitlines()
              if '"arm": "qlora-ftplan' in line and '"oom"' not in line]
"""The speed benchmark's QLoRA 8B arms with the runtime's kernels, checkpoints on the GPU and offloaded (the runtime's
model and loop without the Trainer, one H100): where ``OFFLOAD_CACHED_INPUTS`` was measured."""


@pytest.mark.parametrize("line", PROBE_RUNS, ids=[f"{ln['arm']}-{ln['seq']}x{ln['batch']}" for ln in PROBE_RUNS])
def test_the_speed_benchmark_runs_are_estimated_within_the_target(line, tmp_path):
    """The pipeline the probe stands for (QLoRA r16 on all linears, ``kernels: ftplan``, checkpoints on the GPU or
    offloaded) against the probe's device memory, to which the CUDA context it leaves out is added back."""
    p = P.Point(name="probe", model="llama-3.1-8b", adapter="qlora", seq=line["seq"], micro_batch=line["batch"],
                kernels="ftplan")
    doc = json.loads(P.pipeline_yaml(p, "h100-sxm-80gb"))
    doc["stages"][-1]["gradient_checkpointing"] = "offload" if line["offload"] else True
    est = check_text(json.dumps(doc), "probe.yaml", tmp_path).estimates[p.stage_id]
    context = next(t.bytes for t in est.terms if t.name == "CUDA context") / GIB
    measured = line["device_used_gib"] + context
    error = 100 * (est.peak_bytes / GIB - measured) / measured
    assert abs(error) <= MAX_ERROR_PCT, f"{est.peak_bytes / GIB:.2f} vs {measured:.2f} GiB ({error:+.1f} %)"


def test_a_boundary_probe_is_done_when_both_sides_finished():
    def row(name, probe, outcome):
        return {"point": {"name": name}, "probe": probe, "outcome": outcome}

    rows = [row("a", "fits", "ok"), row("a", "oom", "oom"), row("b", "fits", "failed (exit 124)"),
            row("b", "oom", "oom"), row("c", "fits", R.TIME_LIMIT), {"point": {"name": "d"}, "outcome": "ok"}]
    assert R.probed(rows) == {"a"}  # b's fitting side was cut off by the time budget; c has one side; d is a point


def test_the_readme_states_the_current_accuracy(tmp_path):
    """The README's accuracy sentence gives the point count, the mean over every point and the mean over the points
    within the target as the current estimator makes them (edit the sentence when this fails)."""
    errors = {r["point"]["name"]: abs(_error(r, tmp_path)) for r in MEASURED}
    inside = [e for name, e in errors.items() if name not in KNOWN_MISSES]
    text = " ".join((ROOT / "README.md").read_text().split())
    assert f"over {len(errors)} compiled plans measured" in text
    assert (f"the mean error is {sum(errors.values()) / len(errors):.1f} %, {sum(inside) / len(inside):.1f} % on the "
            f"{len(inside)} points within {MAX_ERROR_PCT:.0f} %; the {_words(len(KNOWN_MISSES))} "
            f"{'miss' if len(KNOWN_MISSES) == 1 else 'misses'}") in text


def _words(n: int) -> str:
    return ("no", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")[n] if n < 10 else str(n)


PROBES = R.probes(ROWS)
"""Boundary runs that finished; one the harness stopped for lack of time measured nothing (``R.stopped``)."""


@pytest.mark.parametrize("row", PROBES, ids=[f"{r['point']['name']}-mb{r['point']['micro_batch']}-{r['probe']}"
                                             for r in PROBES])
def test_boundary_probes_fall_on_the_side_check_says(row, tmp_path):
    verdict = estimate(row, tmp_path).verdict
    if row["probe"] == "fits":
        assert row["outcome"] == "ok" and verdict in ("fits", "tight")
    else:
        assert row["outcome"] == "oom" and verdict == "oom"


def test_no_point_that_check_says_fits_ran_out_of_memory(tmp_path):
    for row in ROWS:
        if row.get("outcome") == "oom" and row.get("probe") != "oom":
            raise AssertionError(f"{row['point']['name']} ran out of memory")
        if row.get("outcome") == "oom":
            assert estimate(row, tmp_path).verdict == "oom", row["point"]["name"]


def test_the_accuracy_table_check_prints_is_up_to_date():
    """``ftplan/estimate/measured.py`` holds the current estimator's error on every point: regenerate it with
    ``python bench/vram/summarize.py`` after a change to the estimator or the results."""
    assert summarize.main(["--check"]) == 0


def test_a_stage_says_how_far_its_estimate_is_measured():
    from ftplan.estimate.accuracy import accuracy_of
    from ftplan.estimate.measured import POINTS

    family, method, kind, seq = POINTS[0][:4]
    like = [p for p in POINTS if p[:3] == (family, method, kind)]
    a = accuracy_of(family, method, kind, seq, 1)
    assert a.extrapolated is None and a.points == len(like)
    assert a.max_error_pct == round(max(abs(p[6]) for p in like), 1)
    assert "measured run" in a.text()
    assert "no multi-GPU point" in accuracy_of(family, method, kind, seq, 8).text()
    assert "no gemma3 LoRA DPO point" in accuracy_of("gemma3", "lora", "dpo", 2048, 1).text()
    longest = max(p[3] for p in like)
    assert f"measured up to {longest:,} tokens" in accuracy_of(family, method, kind, 2 * longest, 1).text()
