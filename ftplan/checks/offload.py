"""Activation checkpoints offloaded to host memory (``gradient_checkpointing: offload``).

``check(ctx)`` judges the setting as written: on ``device: cpu`` there is no GPU memory to free, and the stage runs
as with ``true`` (FT338, ``runtime_args.checkpoint_mode``). ``check_jobs(ctx, estimates)`` runs after the estimate:

* FT340 (a note) says what offloading costs and buys: the pinned host memory per node (the estimator's
  ``host.offloaded_checkpoints``, also in the stage's host-memory figure, its ``--mem`` and ``plan.md``) and the
  stage's peak per GPU with the checkpoints kept on the GPU instead, with a hint when the stage fits that way too;
* FT339 (an error) when the pinned checkpoints are what takes the stage's host memory over the memory its Slurm
  job declares (``mem``/``mem_per_gpu``): the job would be killed once the first step fills the buffers. It
  stands in for FT330 on that stage, at the setting that causes it.
"""

from __future__ import annotations

from dataclasses import replace

from ftplan.context import Context
from ftplan.diagnostics import Diagnostic, error, info, warning
from ftplan.estimate.types import StageEstimate

from ..units import gib_text, size
from ._common import train_stages

CODES = {
    "FT338": "`gradient_checkpointing: offload` on the CPU, where there is no GPU memory to free",
    "FT339": "a Slurm job's declared memory below the host memory of the activation checkpoints a stage offloads",
    "FT340": "the host memory of the activation checkpoints a stage offloads, and its peak without offloading",
}


def check(ctx: Context) -> list[Diagnostic]:
    """FT338: offload on a CPU device."""
    diags = []
    for i, stage, facts in train_stages(ctx):
        if stage.gradient_checkpointing == "offload" and facts.checkpointing != "offload":
            diags.append(warning("FT338", ("stages", i, "gradient_checkpointing"), f"stage '{stage.id}' trains on the "
                                 "CPU, where its activation checkpoints already are in host memory: "
                                 "`gradient_checkpointing: offload` runs as `true` there",
                                 hint="write `gradient_checkpointing: true`, or keep `offload` for the GPU target and "
                                 "ignore this on CPU rehearsals"))
    return diags


def pinned_bytes(estimate: StageEstimate | None) -> int:
    """Pinned host memory per node the stage's offloaded activation checkpoints take (0 without)."""
    from ftplan.estimate.host import PINNED_CHECKPOINTS

    if estimate is None:
        return 0
    return sum(t.bytes for t in estimate.host_terms if t.name == PINNED_CHECKPOINTS)


def check_jobs(ctx: Context, estimates: dict[str, StageEstimate]) -> list[Diagnostic]:
    """FT340 for every stage that offloads; FT339 where its Slurm job's declared memory does not cover it."""
    from ftplan.estimate.pipeline import stage_setup
    from ftplan.estimate.stage import estimate_resolved

    diags: list[Diagnostic] = []
    for i, stage, facts in train_stages(ctx):
        estimate = estimates.get(stage.id)
        pinned = pinned_bytes(estimate)
        if facts.checkpointing != "offload" or estimate is None or not pinned:
            continue
        path = ("stages", i, "gradient_checkpointing")
        setup = stage_setup(ctx, i)
        kept = None
        if setup is not None and ctx.gpu is not None:
            kept = estimate_resolved(replace(setup, offload_checkpoints=False), ctx.gpu, stage_id=stage.id)
        processes = ctx.stages[i].processes_per_node
        per_gpu = f" ({processes} GPUs × {size(pinned // processes)})" if processes > 1 else ""
        where = (f"; kept on the GPU instead, the stage's peak would be {gib_text(kept.peak_bytes)} of "
                 f"{gib_text(kept.capacity_bytes or 0)} ({kept.verdict})" if kept is not None else "")
        diags.append(info("FT340", path, f"stage '{stage.id}' offloads its activation checkpoints: {size(pinned)} of "
                          f"pinned host memory per node{per_gpu}, {gib_text(estimate.peak_bytes)} peak per GPU{where}",
                          hint="the stage also fits with `gradient_checkpointing: true`, which keeps the checkpoints "
                          "on the GPU and copies nothing" if kept is not None and kept.verdict == "fits" else None))
        diags += _job_memory(ctx, i, estimate, pinned, kept)
    return diags


def _job_memory(ctx: Context, i: int, estimate: StageEstimate, pinned: int,
                kept: StageEstimate | None) -> list[Diagnostic]:
    """FT339: the pinned checkpoints take the stage over the memory its Slurm job declares."""
    from ftplan.jobs import derived_mem, memory_need, slurm_job, stage_resources

    if ctx.pipeline.hardware.slurm is None:
        return []
    stage = ctx.pipeline.stages[i]
    res = stage_resources(ctx, i, estimate)
    job = slurm_job(ctx, i, res)
    host = res.host_bytes or 0
    if job is None or job.mem_set_in is None or job.mem_bytes is None or host <= job.mem_bytes:
        return []
    if host - pinned > job.mem_bytes:
        return []  # over even without the checkpoints: FT330 says so
    key = "mem_per_gpu" if job.mem_per_gpu else "mem"
    declared = job.mem_per_gpu or job.mem
    mem_path = ("stages", i, "slurm", key) if job.mem_set_in == "stage" else ("hardware", "slurm", key)
    keep = ""
    if kept is None or kept.verdict != "oom":  # keeping them on the GPU is a way out only where that fits
        keep = ", or use `gradient_checkpointing: true`" + (
            f" (peak {gib_text(kept.peak_bytes)} of {gib_text(kept.capacity_bytes or 0)} per GPU)" if kept else "")
    where = "the stage's `slurm` block" if job.mem_set_in == "stage" else "`hardware.slurm`"
    total = f", which takes its host-memory estimate to {size(host)}" if host > pinned else ""
    return [error("FT339", ("stages", i, "gradient_checkpointing"),
                  f"stage '{stage.id}' offloads its activation checkpoints to {size(pinned)} of pinned host memory per "
                  f"node{total}, more than the {size(job.mem_bytes)} its Slurm job asks for (`{key}: {declared}`): the "
                  "job is killed once the first step fills the buffers",
                  hint=f"raise `{key}` in {where} (ftplan derives `mem: {derived_mem(memory_need(ctx, i, res))}` "
                       f"when it is not set){keep}",
                  related=[(mem_path, f"`{key}: {declared}`")])]
