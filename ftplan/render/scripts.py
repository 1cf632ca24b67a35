"""The bash launch scripts: ``run.sh`` (every stage on this machine) and the Slurm chain (``slurm/<id>.sbatch``
and ``slurm/submit.sh``), rendered from ``ftplan/templates/*.j2``.

Every user-controlled string reaches a script through the ``shq`` filter (one shell word) or the ``comment``
filter (inside ``#`` lines); ``hardware.setup`` lines are the one exception, verbatim code by design.
``#SBATCH`` lines hold literal values only: Slurm reads them without a shell, and the schema restricts their
values to characters that need no quoting.

What every script does before a stage:

* it checks that this Python can import the runtime (``python -c 'import ftplan_runtime'``, whose failure is
  one line with the install command, never a traceback) and the packages the stages need
  (``python -m ftplan_runtime.installed ARGS...``, which derives them from the args files);
* it asks ``python -m ftplan_runtime.stamps check ARGS`` whether the stage is complete (exit 0), must run
  (exit 1, the reason printed with the stage's name) or cannot be judged (any other exit stops the script).
  ``run.sh`` skips complete stages, each sbatch job exits at its start with "nothing to do", and ``submit.sh``
  submits only the stages that must run, all decided before any job starts.
"""

from __future__ import annotations

import posixpath
from functools import lru_cache
from typing import TYPE_CHECKING, Any

import jinja2

from ..schemas import DataStage, GgufStage, MergeStage
from ..schemas.runtime_args import COMPLETE_MARKER, REQUEUE_EXIT_CODE, RUNTIME_INSTALL
from ..describe import batch_arithmetic, job_lines, job_memory
from ..units import gib_text, size
from .commands import rendezvous_option
from .shell import comment, shq

if TYPE_CHECKING:  # pragma: no cover
    from ..plan import Plan, PlanStage


@lru_cache(maxsize=1)
def environment() -> jinja2.Environment:
    """The Jinja environment for scripts: templates shipped in the package, strict about undefined names."""
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("ftplan", "templates"), undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True, trim_blocks=True, lstrip_blocks=True, autoescape=False,
    )
    env.filters["shq"] = shq
    env.filters["comment"] = comment
    return env


def stage_comment(plan: "Plan", s: "PlanStage") -> list[str]:
    """The lines explaining a stage's numbers: processes, batch arithmetic, memory estimate, folders."""
    est, args, lines, b = s.estimate, s.args, [], s.batch
    if s.launcher == "accelerate" and b is not None:
        t = plan.target
        if s.resources.device == "cuda":
            gpu = t.gpu_name or "GPU"
            lines.append(f"{b.world_size} process(es): {s.resources.nodes} node(s) × {s.resources.gpus_per_node} "
                         f"{gpu}, strategy {s.strategy}")
        elif b.world_size == 1:
            lines.append(f"1 process on the CPU, strategy {s.strategy}")
        else:
            lines.append(f"{b.world_size} process(es) on the CPU: {s.resources.nodes} node(s) × "
                         f"{s.resources.processes_per_node} process(es) over gloo, strategy {s.strategy}")
        lines.append(f"effective batch {batch_arithmetic(b)}")
        if est is not None and est.capacity_bytes:
            lines.append(f"estimated peak {gib_text(est.peak_bytes, unit=False)} / {gib_text(est.capacity_bytes)} per GPU "
                         f"({est.verdict})")
        lines.append(f"reads {args.data_dir}; writes {s.output_dir}")
        return lines
    stage = plan.pipeline.stage(s.id)
    if isinstance(stage, DataStage):
        lines.append(f"CPU: formats and tokenizes {len(stage.datasets)} dataset(s) into rows of at most "
                     f"{stage.max_seq_len} tokens{' (packed)' if stage.packing else ''}; writes {s.output_dir}")
    elif isinstance(stage, MergeStage) and args.source is not None:
        chain = ", ".join(a.stage for a in args.source.merge)
        where = "on 1 GPU" if s.resources.device == "cuda" else "on the CPU"
        if est is not None and est.host_bytes and s.resources.device == "cpu":
            where += f" (about {size(est.host_bytes)} of host memory)"
        lines.append(f"merges the adapters of {chain} into {args.source.weights} as {stage.dtype}, {where}")
        lines.append(f"writes {s.output_dir}")
    elif isinstance(stage, GgufStage) and args.source is not None:
        lines.append(f"CPU: exports {args.source.weights} to GGUF {', '.join(stage.quant)}; writes {s.output_dir}")
    return lines


def _stage_view(plan: "Plan", s: "PlanStage") -> dict[str, Any]:
    return {
        "nn": f"{s.index:02d}", "id": s.id, "kind": s.kind, "name": s.name, "launcher": s.launcher,
        "output_dir": s.output_dir, "comment": stage_comment(plan, s),
        "args": plan.path(s.dir, "args.json"), "config": plan.path(s.dir, "accelerate.yaml"),
        "sbatch": plan.path("slurm", f"{s.name}.sbatch"),
        "nodes": s.resources.nodes, "gpus_per_node": s.resources.gpus_per_node,
        "processes_per_node": s.resources.processes_per_node,
    }


# A constant, not a user string: written inside a double-quoted echo, so it must need no escaping there.
assert not any(ch in RUNTIME_INSTALL for ch in '"$`\\!'), RUNTIME_INSTALL


def _common(plan: "Plan") -> dict[str, Any]:
    hw = plan.hardware
    return {
        "packages_here": True,
        "version": plan.provenance.ftplan_version, "pipeline_file": plan.provenance.pipeline_file,
        "plan_dir": plan.plan_dir, "name": plan.name, "marker": COMPLETE_MARKER, "install": RUNTIME_INSTALL,
        "check_args": [plan.path(s.dir, "args.json") for s in plan.stages],
        "env": sorted(hw.env.items()), "modules": list(hw.modules), "venv": hw.venv, "setup": list(hw.setup),
        "run_path": plan.path("run.sh"), "submit_path": plan.path("slurm", "submit.sh"),
    }


def render_run(plan: "Plan") -> str:
    """``run.sh``: every stage on this machine, in order, skipping complete ones (each stage's stamp says whether
    it is complete)."""
    return environment().get_template("run.sh.j2").render(
        **_common(plan), root=plan.root_from_plan_dir, nodes=plan.nodes,
        stages=[_stage_view(plan, s) for s in plan.stages])


def render_sbatch(plan: "Plan", s: "PlanStage") -> str:
    """``slurm/<id>.sbatch``: one stage as one Slurm job, which exits at its start when the stage is complete. Its
    ``#SBATCH`` lines are the stage's ``SlurmJob``."""
    job = s.job
    if job is None:
        raise AssertionError("the pipeline has no hardware.slurm section")
    srun_cpus = str(job.cpus_per_task) if job.cpus_per_task else '"$SLURM_CPUS_ON_NODE"'
    common = {**_common(plan), "check_args": [plan.path(s.dir, "args.json")],
              "packages_here": job.container is None}
    return environment().get_template("stage.sbatch.j2").render(
        **common, s=_stage_view(plan, s), job=job, job_lines=job_lines(job), container=job.container,
        mem_text=job_memory(job), srun_cpus=srun_cpus,
        mem_option=f"--mem-per-gpu={job.mem_per_gpu}" if job.mem_per_gpu else f"--mem={job.mem}", port=plan.hardware.main_process_port,
        rendezvous=rendezvous_option(s.resources.nodes, plan.hardware.rendezvous_timeout_s),
        requeue_code=REQUEUE_EXIT_CODE)


def render_submit(plan: "Plan") -> str:
    """``slurm/submit.sh``: the stages that must run, submitted in order as an ``afterok`` chain."""
    if plan.slurm is None:
        raise AssertionError("the pipeline has no hardware.slurm section")
    root = posixpath.normpath(posixpath.join("..", plan.root_from_plan_dir))
    log_dirs = sorted({posixpath.dirname(p) for s in plan.stages if s.job for p in (s.job.output, s.job.error)})
    common = {**_common(plan), "packages_here": plan.hardware.container is None}
    return environment().get_template("submit.sh.j2").render(
        **common, root=root, log_dirs=log_dirs, stages=[_stage_view(plan, s) for s in plan.stages])
