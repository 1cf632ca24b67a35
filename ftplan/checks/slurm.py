"""Slurm job rules: what each stage's sbatch job asks for against what the stage needs.

``check(ctx)`` judges the settings as written; ``check_jobs(ctx, estimates)`` runs after the estimate and judges
each stage's job as ``jobs.slurm_job`` shapes it (the same object the sbatch script and ``plan.md`` print):

* a declared memory size below the estimator's host-memory figure is an error (FT330): the job would be killed
  when the stage reaches it, after waiting in the queue and after every stage before it; below what the stage's
  processes need on top of it (the runtime, weights loaded through host memory) a warning (FT331);
* a declared time limit below the estimated run time (steps × estimated step time) is a warning (FT332): the
  stage is stopped at its limit (and, with ``requeue``, resumes from its last checkpoint in a new job);
* ``mem: 0`` (all of a node's memory) on a job that shares its node holds memory the other jobs there cannot
  get (FT335).
"""

from __future__ import annotations

import re
from dataclasses import replace
from typing import TYPE_CHECKING, Callable

from ftplan.context import Context
from ftplan.diagnostics import Diagnostic, KeyPath, error, warning
from ftplan.estimate.types import StageEstimate
from ftplan.schemas.hardware import SlurmSpec, StageSlurmSpec
from ftplan.schemas.stages import Stage

if TYPE_CHECKING:  # pragma: no cover
    from ftplan.jobs import Resources, SlurmJob

from ..units import format_duration, size

CODES = {
    "FT330": "a declared Slurm memory size below the stage's host-memory estimate",
    "FT331": "a declared Slurm memory size below what the stage's processes need",
    "FT332": "a stage's estimated run time exceeds its Slurm time limit",
    "FT333": "a stage's `slurm` block without `hardware.slurm`",
    "FT334": "`mem` and `mem_per_gpu` together, or `mem_per_gpu` on a stage without GPUs",
    "FT335": "`mem: 0` (all of a node's memory) on a job that shares its node",
    "FT336": "a `container` without `hardware.slurm`",
    "FT337": "a Slurm time limit no longer than `signal_lead_s`",
}


def check(ctx: Context) -> list[Diagnostic]:
    """Rules on the Slurm settings as written."""
    hw = ctx.pipeline.hardware
    diags: list[Diagnostic] = []
    if hw.slurm is None:
        for i, stage in enumerate(ctx.pipeline.stages):
            if stage.slurm is not None:
                diags.append(warning("FT333", ("stages", i, "slurm"), f"stage '{stage.id}' has a `slurm` block but "
                                     "the pipeline has no `hardware.slurm`: no sbatch job is written, so it is "
                                     "ignored", hint="add `slurm:` under `hardware` (partition, ...), or remove the "
                                     "stage's `slurm` block"))
        if hw.container is not None:
            diags.append(warning("FT336", ("hardware", "container"), "`container` applies to the Slurm jobs, and "
                                 "this pipeline has no `hardware.slurm`: run.sh runs the stages on this machine, "
                                 "outside the container", hint="add `slurm:` under `hardware`, or remove "
                                 "`container` (and start run.sh inside the container yourself)"))
        return diags
    levels: list[tuple[KeyPath, SlurmSpec | StageSlurmSpec]] = [(("hardware", "slurm"), hw.slurm)]
    levels += [(("stages", i, "slurm"), s.slurm) for i, s in enumerate(ctx.pipeline.stages) if s.slurm is not None]
    for path, spec in levels:
        if spec.mem is not None and spec.mem_per_gpu is not None:
            diags.append(error("FT334", path + ("mem_per_gpu",), f"both `mem: {spec.mem}` and `mem_per_gpu: "
                               f"{spec.mem_per_gpu}` are set; sbatch takes one of them",
                               hint="keep `mem` (per node) or `mem_per_gpu` (per GPU), not both"))
    return diags


def check_jobs(ctx: Context, estimates: dict[str, StageEstimate], *,
               memory_explained: frozenset[int] = frozenset()) -> list[Diagnostic]:
    """Rules on each stage's Slurm job as it will be submitted (needs the estimates). The stages at
    ``memory_explained`` get no memory finding here: another rule reports theirs at its cause (FT339)."""
    from ftplan.jobs import slurm_job, stage_resources

    if ctx.pipeline.hardware.slurm is None:
        return []
    ids = [s.id for s in ctx.pipeline.stages]
    diags: list[Diagnostic] = []
    for i, stage in enumerate(ctx.pipeline.stages):
        if ctx.links.get(stage.id) is None or ids.count(stage.id) > 1:
            continue  # a broken or ambiguous stage graph is reported by the graph checks
        res = stage_resources(ctx, i, estimates.get(stage.id))
        if stage.slurm is not None and stage.slurm.mem_per_gpu is not None and not res.gpus_per_node:
            diags.append(error("FT334", ("stages", i, "slurm", "mem_per_gpu"), f"stage '{stage.id}' uses no GPU, "
                               f"so `mem_per_gpu: {stage.slurm.mem_per_gpu}` asks for no memory",
                               hint=f"write `mem: {stage.slurm.mem_per_gpu}` (memory per node) instead"))
            continue
        job = slurm_job(ctx, i, res)
        if job is not None:
            diags += ([] if i in memory_explained else _memory(ctx, i, stage, res, job)) + _time(i, stage, res, job)
    return _one_per_key(diags)


def _one_per_key(diags: list[Diagnostic]) -> list[Diagnostic]:
    """One FT335 or FT337 for a ``hardware.slurm`` key naming every stage it concerns, not one per stage."""
    out: list[Diagnostic] = []
    groups: dict[tuple[str, KeyPath], list[Diagnostic]] = {}
    for d in diags:
        if d.code in _SHARED and d.path[0] == "hardware":
            if (d.code, d.path) not in groups:
                out.append(d)  # the group's place
            groups.setdefault((d.code, d.path), []).append(d)
        else:
            out.append(d)
    for (code, path), group in groups.items():
        if len(group) > 1:
            names = [m.group(1) for d in group if (m := re.search(r"stage '(\w+)'", d.message)) is not None]
            who = "stages " + ", ".join(names[:-1]) + " and " + names[-1]
            merged = replace(group[0], message=_SHARED[code](who, group[0]))
            out[out.index(group[0])] = merged
    return out


_SHARED: dict[str, Callable[[str, Diagnostic], str]] = {
    "FT335": lambda who, d: f"`mem: 0` gives {who} all of their node's memory, but their jobs share their nodes: the "
                            "nodes' other CPUs and GPUs are left without memory for other jobs",
    "FT337": lambda who, d: re.sub(r"^stage '\w+' has", f"{who} have", d.message),
}
"""Rules whose ``hardware.slurm`` findings are merged over stages: the message for several stages."""


def _key(i: int, level: str | None, key: str) -> KeyPath:
    return ("stages", i, "slurm", key) if level == "stage" else ("hardware", "slurm", key)


def _memory(ctx: Context, i: int, stage: Stage, res: Resources, job: SlurmJob) -> list[Diagnostic]:
    from ftplan.jobs import derived_mem, need_text

    if job.mem_set_in is None:
        return []
    key = "mem_per_gpu" if job.mem_per_gpu else "mem"
    declared = job.mem_per_gpu or job.mem
    path = _key(i, job.mem_set_in, key)
    derived = derived_mem(job.mem_need_bytes or 0)

    def fix(why: str) -> str:
        if job.mem_set_in == "stage":
            return f"set `mem: {derived}`{why} in the `slurm` block of stage '{stage.id}', or remove `{key}` there " \
                   "to let ftplan derive it"
        return f"give stage '{stage.id}' its own `slurm: {{mem: {derived}}}`{why}, or remove `{key}` from " \
               "`hardware.slurm` to let ftplan derive each stage's"

    if job.mem_bytes is None:  # mem: 0, all of a node's memory
        if job.exclusive:
            return []
        advice = ("remove `mem: 0` from `hardware.slurm`: jobs on whole nodes get all of their memory anyway, and "
                  "the others ask for their estimate" if job.mem_set_in == "hardware" else
                  f"remove `mem: 0` from stage '{stage.id}' (ftplan then asks for {derived})")
        return [warning("FT335", path, f"`mem: 0` gives stage '{stage.id}' all of its node's memory, but its job "
                        f"shares the node ({job.exclusive_reason}): the node's other CPUs and GPUs are left without "
                        "memory for other jobs", hint=advice)]
    if res.host_bytes and job.mem_bytes < res.host_bytes:
        return [error("FT330", path, f"stage '{stage.id}' needs about {size(res.host_bytes)} of host memory "
                      f"(estimate), but its job asks for {size(job.mem_bytes)} (`{key}: {declared}`): Slurm kills "
                      "the job when the stage goes over, after every stage before it has run",
                      hint=fix(" (the estimate plus the runtime, with headroom)"))]
    if job.mem_need_bytes and job.mem_bytes < job.mem_need_bytes:
        return [warning("FT331", path, f"stage '{stage.id}' asks for {size(job.mem_bytes)} per node "
                        f"(`{key}: {declared}`), less than the up to {size(job.mem_need_bytes)} its processes may need "
                        f"({need_text(ctx, i, res)})",
                        hint=fix(""))]
    return []


def _time(i: int, stage: Stage, res: Resources, job: SlurmJob) -> list[Diagnostic]:
    if job.time_s is None or job.time_set_in is None:
        return []
    path = _key(i, job.time_set_in, "time")
    where = f"in the `slurm` block of stage '{stage.id}'" if job.time_set_in == "stage" else "in `hardware.slurm`"
    diags = []
    if res.run_time_s is not None and res.steps and res.run_time_s > job.time_s:
        bound = "at most " if res.steps_at_most else ""
        then = ("; it then resumes from its last checkpoint in a requeued job" if job.requeue else
                ", and the stages after it are cancelled")
        diags.append(warning("FT332", path, f"stage '{stage.id}' is estimated to run {bound}"
                             f"{format_duration(res.run_time_s)} ({res.steps:,} steps × "
                             f"{res.run_time_s / res.steps:.2f} s), longer than its time limit {job.time}: Slurm "
                             f"stops it at the limit{then}",
                             hint=f"raise `time` {where} as far as the partition allows, or remove it to let ftplan "
                                  "derive the limit from the estimate"))
    if job.requeue and job.time_s <= job.signal_lead_s:
        diags.append(warning("FT337", path, f"stage '{stage.id}' has a time limit of {job.time}, and its checkpoint "
                             f"signal comes {job.signal_lead_s} s before the end: as soon as it starts",
                             hint=f"raise `time` {where}, or lower `hardware.slurm.signal_lead_s`"))
    return diags
