"""Data parallelism on two CPU processes (gloo), through the compiled plan: ``run.sh`` starts the training stage
with ``accelerate launch`` and the generated accelerate.yaml (``hardware: {device: cpu, cpu_processes: 2}``).

The two-process run trains on the same rows per optimizer step as a one-process run with the same effective batch
(micro-batch 2 × 2 processes against micro-batch 2 × 2 accumulation steps), so its loss at every step is the
one-process loss: equal within ``LOSS_TOLERANCE``. Its metrics.json holds both processes' own memory figures.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("accelerate")

_spec = importlib.util.spec_from_file_location("ftplan_multiprocess_plans", Path(__file__).with_name(
    "multiprocess_plans.py"))
mp = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(mp)

LOSS_TOLERANCE = 1e-4
"""Largest difference allowed between the two runs' loss at a step (fp32; the gradients are summed in another
order: measured differences are below 1e-6)."""

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def ddp_runs(tmp_path_factory, tiny_base):
    """One project, two plans run through run.sh: 2 CPU processes × micro-batch 2 (``ddp``), then 1 process ×
    micro-batch 2 × grad_accum 2 (``single``, whose run finds the data stage complete)."""
    root = mp.make_project(tmp_path_factory.mktemp("ddp") / "project", tiny_base)
    two = mp.compile_plan(root, mp.pipeline(root, "two.yaml", stage="ddp", hardware={"cpu_processes": 2}),
                          "plans/two")
    one = mp.compile_plan(root, mp.pipeline(root, "one.yaml", stage="single", hardware={}, grad_accum=2),
                          "plans/one")
    runs = {"two": mp.run_plan(root, two), "one": mp.run_plan(root, one)}
    return root, two, one, runs


def test_the_compiled_plan_launches_two_gloo_processes(ddp_runs):
    root, two, one, runs = ddp_runs
    import yaml

    acc = yaml.safe_load((two / "stages/ddp/accelerate.yaml").read_text())
    assert (acc["distributed_type"], acc["num_processes"], acc["num_machines"], acc["use_cpu"]) == (
        "MULTI_GPU", 2, 1, True)
    assert "accelerate launch --config_file" in (two / "run.sh").read_text()
    assert "ftplan: stage data is complete; skipping" in runs["one"].stdout  # shared with the first plan
    m = mp.metrics(root, "ddp")
    assert m["world_size"] == 2 and m["steps"] == 3 and m["zero_stage"] is None


def test_two_processes_train_the_loss_of_one_process_with_the_same_effective_batch(ddp_runs):
    root = ddp_runs[0]
    two, one = mp.metrics(root, "ddp"), mp.metrics(root, "single")
    assert [s for s, _ in two["loss_steps"]] == [s for s, _ in one["loss_steps"]] == [1, 2, 3]
    for (step, a), (_, b) in zip(two["loss_steps"], one["loss_steps"]):
        assert abs(a - b) <= LOSS_TOLERANCE, (step, a, b)
    assert two["loss_steps"][-1][1] < two["loss_steps"][0][1]  # it trains
    # the same rows: every token counted once over both processes
    assert two["tokens_seen"] == one["tokens_seen"] and two["tokens_trained"] == one["tokens_trained"]


def test_metrics_hold_every_process_not_rank_0_only(ddp_runs):
    root = ddp_runs[0]
    m = mp.metrics(root, "ddp")
    ranks = m["ranks"]
    assert [(r["rank"], r["local_rank"]) for r in ranks] == [(0, 0), (1, 1)]
    assert all(r["peak_rss_gib"] > 0.1 and r["host"] for r in ranks)
    # each process measured itself: two processes, two figures, and the top level holds the larger
    assert m["peak_rss_gib"] == max(r["peak_rss_gib"] for r in ranks)
    assert m["peak_rank"] == max(ranks, key=lambda r: r["peak_rss_gib"])["rank"]
    assert all(r["device_used_peak_gib"] is None for r in ranks)  # CPU: no GPU figures
    single = mp.metrics(root, "single")
    assert [r["rank"] for r in single["ranks"]] == [0]


def test_the_top_level_peaks_are_the_largest_process_s_and_set_against_the_estimate():
    """A stage on two GPUs whose rank 1 peaked higher: metrics.json's per-GPU peak (and its ratio to the per-GPU
    estimate) is rank 1's, with both ranks listed."""
    from ftplan.schemas.runtime_args import RuntimeArgs
    from ftplan_runtime.metrics import StageRecorder

    args = RuntimeArgs.model_validate({
        "pipeline": "t", "model": {"base": "base"}, "output_dir": "out/prep", "estimate_peak_gib": 10.0,
        "promise": {"device": "cpu", "world_size": 1, "num_machines": 1, "distributed_type": "NO",
                    "precision": "fp32", "attention": "sdpa", "kernels": "none"},
        "stage": {"id": "prep", "kind": "data", "max_seq_len": 64,
                  "datasets": [{"path": "d.jsonl", "format": "text"}]}})
    recorder = StageRecorder(args)
    gpu = {"torch_peak_allocated_gib": 7.0, "torch_peak_reserved_gib": 8.0, "device_used_delta_gib": 8.5,
           "gpu_name": "GPU", "gpu_total_gib": 80.0}
    recorder.ranks = [{"rank": 0, "local_rank": 0, "host": "a", "peak_rss_gib": 3.0, "device_used_peak_gib": 9.0,
                       **gpu},
                      {"rank": 1, "local_rank": 1, "host": "a", "peak_rss_gib": 2.5, "device_used_peak_gib": 11.0,
                       **gpu, "torch_peak_allocated_gib": 9.5}]
    mem = recorder.memory()
    assert mem["device_used_peak_gib"] == 11.0 and mem["peak_rank"] == 1
    assert mem["peak_vs_estimate"] == pytest.approx(1.1)
    assert mem["torch_peak_allocated_gib"] == 9.5 and mem["peak_rss_gib"] == 3.0  # each figure's own largest
