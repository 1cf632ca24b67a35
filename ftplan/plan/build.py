"""``build_plan``: a checked pipeline, its resolved stages and its estimates turned into a ``Plan``.

For every stage it puts together, from the stage's ``ResolvedStage`` (``resolved_stage.py``, where each derived
fact is computed): its compiled folder (``stages/<id>``), how it launches (``accelerate launch`` for training
stages, ``python -m ftplan_runtime`` otherwise), its accelerate and DeepSpeed configs (``accelerate.py``,
``deepspeed.py``), its ``RuntimeArgs`` (``args.py``), what it needs (``jobs.Resources``) and, with
``hardware.slurm``, the shape of its sbatch job (``jobs.SlurmJob``). Nothing here touches the disk.
"""

from __future__ import annotations

import os
import posixpath
from typing import Iterable, Literal

from ..catalog import param_counts
from ..context import Context
from ..describe import method as describe_method
from ..diagnostics import Diagnostic, Severity, sort_key
from ..estimate.types import StageEstimate
from ..jobs import slurm_job, stage_resources
from ..schemas import TRAIN_STAGE_TYPES
from ..schemas.stages import Stage
from ..versions import PINNED_VERSIONS
from ..view_model import stage_status
from .accelerate import accelerate_config
from .args import runtime_args
from .deepspeed import deepspeed_config
from .types import PLAN_FORMAT, Plan, PlanStage, Provenance, Target


class PlanFolderError(ValueError):
    """The plan folder cannot be placed relative to the project folder; the message says why."""


def root_from(plan_dir_from_root: str, project_root: str | None = None) -> str:
    """The way back from the plan folder to the project root, e.g. ``../..`` for ``plans/x``.

    A plan folder outside the project (``../plans/x``) needs the project root's own path (absolute, POSIX) to
    name the folders climbed out of: ``../../examples`` for the project ``/work/examples``."""
    norm = posixpath.normpath(plan_dir_from_root)
    if posixpath.isabs(norm):
        raise PlanFolderError(f"the plan folder {plan_dir_from_root!r} must be given relative to the project folder")
    parts = [] if norm == "." else norm.split("/")
    ups = 0
    while ups < len(parts) and parts[ups] == "..":
        ups += 1
    if ups == 0:
        return "/".join([".."] * len(parts)) or "."
    root_parts = [p for p in (project_root or "").split("/") if p]
    if not project_root or not posixpath.isabs(project_root) or len(root_parts) < ups:
        raise PlanFolderError(f"the plan folder {plan_dir_from_root!r} lies outside the project folder; the project "
                         "folder's absolute path is needed to find the way back")
    down = root_parts[len(root_parts) - ups:]
    return "/".join([".."] * (len(parts) - ups) + down) or "."


def build_plan(ctx: Context, estimates: dict[str, StageEstimate], diagnostics: Iterable[Diagnostic], *,
               plan_dir_from_root: str, ftplan_version: str, root_from_plan_dir: str | None = None) -> Plan:
    """Resolve a checked pipeline (no error diagnostics) into a ``Plan``.

    ``plan_dir_from_root`` is the output folder relative to the project root (the pipeline file's folder) as a
    POSIX path; ``root_from_plan_dir`` the way back, derived from it unless given (for a plan folder outside
    the project, from the names of the project folder's last parents). Error diagnostics are not accepted:
    compile only a checked pipeline."""
    diags = tuple(sorted(diagnostics, key=sort_key))
    if any(d.severity is Severity.ERROR for d in diags):
        raise ValueError("build_plan needs a pipeline without errors; run the checks first")
    pipeline = ctx.pipeline
    plan_dir = posixpath.normpath(plan_dir_from_root)
    args_paths = {stage.id: posixpath.normpath(posixpath.join(plan_dir, stage_dir(stage.id), "args.json"))
                  for stage in pipeline.stages}
    stages: list[PlanStage] = []
    for i, stage in enumerate(pipeline.stages, start=1):
        stages.append(_plan_stage(ctx, i, stage, estimates.get(stage.id), plan_dir,
                                  stages[-1].id if stages else None, args_paths))
    return Plan(
        format_version=PLAN_FORMAT, name=pipeline.name, pipeline=pipeline,
        provenance=Provenance(
            pipeline_file=posixpath.basename(ctx.pipeline_path.replace("\\", "/")),
            pipeline_sha256=ctx.pipeline_sha256,
            inputs=tuple(sorted(ctx.inputs.files, key=lambda f: f.path)),
            versions=tuple(sorted(PINNED_VERSIONS.items())), ftplan_version=ftplan_version),
        target=target_of(ctx), stages=tuple(stages), plan_dir=plan_dir,
        root_from_plan_dir=root_from_plan_dir if root_from_plan_dir is not None else root_from(
            plan_dir, _project_root(ctx.pipeline_path)),
        hardware=pipeline.hardware, slurm=pipeline.hardware.slurm, diagnostics=diags,
    )


def _project_root(pipeline_path: str) -> str:
    """The absolute POSIX path of the pipeline file's folder (only its last names are ever used)."""
    return posixpath.dirname(os.path.abspath(pipeline_path).replace(os.sep, "/"))


def target_of(ctx: Context) -> Target:
    """The model and hardware a pipeline is checked against (the headline of ``check`` and ``plan.md``). A GPU the
    catalog does not know is named as declared."""
    hw, gpu, shape = ctx.pipeline.hardware, ctx.gpu, ctx.shape
    arch = None
    if gpu is not None:
        arch = f"sm{gpu.compute_capability[0]}{gpu.compute_capability[1]}" if gpu.compute_capability else gpu.arch
    on_gpu = hw.device == "cuda"
    return Target(
        model=ctx.pipeline.model.base, revision=ctx.pipeline.model.revision,
        model_local=ctx.inputs.base_is_local, architecture=ctx.shape_source or None,
        params=param_counts(shape).total if shape is not None else None, device=hw.device,
        gpu_name=(gpu.name if gpu else hw.gpu) if on_gpu else None,
        gpu_memory_gib=round(gpu.memory_gib, 1) if on_gpu and gpu else None,
        gpu_arch=arch if on_gpu else None, nodes=hw.nodes if on_gpu else 1,
        gpus_per_node=hw.gpus_per_node if on_gpu else 0,
    )


def stage_dir(stage_id: str) -> str:
    """A stage's compiled folder relative to the plan folder: ``stages/<id>``.

    Named by id, not by position: inserting or moving a stage leaves every other stage's folder, its args.json
    path (which the stages built on it record as ``upstream``) and its completion stamp as they were."""
    return f"stages/{stage_id}"


def _plan_stage(ctx: Context, index: int, stage: Stage, estimate: StageEstimate | None, plan_dir: str,
                previous: str | None, args_paths: dict[str, str]) -> PlanStage:
    pipeline, hw = ctx.pipeline, ctx.pipeline.hardware
    link = ctx.links[stage.id]
    facts = ctx.stages[index - 1]
    folder = stage_dir(stage.id)
    args = runtime_args(pipeline, stage, facts, link, ctx.gpu, estimate, args_paths)
    accelerate = deepspeed = None
    launcher: Literal["accelerate", "python"] = "python"
    if isinstance(stage, TRAIN_STAGE_TYPES) and facts.train is not None:
        shape = ctx.shape
        if facts.train.zero_stage is not None:
            deepspeed = deepspeed_config(stage, facts.train, shape.hidden_size if shape else None)
        accelerate = accelerate_config(
            facts, precision=stage.precision, main_process_port=hw.main_process_port,
            deepspeed_file=posixpath.join(plan_dir, folder, "deepspeed.json") if deepspeed else None,
            family=shape.family if shape else None)
        launcher = "accelerate"
    resources = stage_resources(ctx, index - 1, estimate)
    return PlanStage(
        index=index, id=stage.id, kind=stage.kind, dir=folder, output_dir=facts.output_dir, launcher=launcher,
        accelerate=accelerate, deepspeed=deepspeed, args=args, estimate=estimate, resources=resources,
        job=slurm_job(ctx, index - 1, resources), depends_on=previous, method=describe_method(stage, facts, link),
        facts=facts, status=stage_status(facts, estimate, has_error=False),
    )
