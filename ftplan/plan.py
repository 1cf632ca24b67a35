"""PLAN: the checked pipeline and its estimates resolved into everything a launch needs, as frozen data.

``build_plan`` decides, for every stage: its compiled folder (``stages/NN-<id>``; ``NN`` is the only thing taken
from the list position), its output folder, how it launches (``accelerate launch`` for training stages,
``python -m ftplan_runtime`` otherwise), its accelerate and DeepSpeed configs, its fully resolved
``RuntimeArgs``, what it needs (``jobs.Resources``: nodes, GPUs, host memory, run time) and, with
``hardware.slurm``, the shape of its sbatch job (``jobs.SlurmJob``: partition, GPUs, CPUs, memory, time, whole
nodes, container). ``jobs.py`` says how those are derived.

Rendering (``ftplan.render``) turns a ``Plan`` into file texts; nothing here touches the disk.
"""

from __future__ import annotations

import os
import posixpath
from dataclasses import dataclass
from typing import Any, Iterable, Literal

from .catalog import param_counts
from .context import Context, LocalFile
from .diagnostics import Diagnostic, Severity, sort_key
from .estimate.types import StageEstimate
from .jobs import Resources, SlurmJob, slurm_job, stage_resources
from .render.accelerate import accelerate_config
from .render.args import resolve_distributed, runtime_args, stage_output_dir
from .describe import method as describe_method
from .render.deepspeed import deepspeed_config, zero_stage
from .schemas import DataStage, DpoStage, HardwareSpec, Pipeline, SftStage, SlurmSpec
from .schemas.runtime_args import RuntimeArgs
from .versions import PINNED_VERSIONS

PLAN_FORMAT = 1
"""Version of the compiled plan's layout and ``plan.json``; bumped on incompatible changes."""


@dataclass(frozen=True)
class BatchMath:
    """The batch arithmetic of a training stage."""

    micro_batch: int
    """Sequences per GPU per forward pass (a DPO pair counts as one)."""
    grad_accum: int
    """Micro-batches per optimizer step."""
    world_size: int
    """Data-parallel processes."""
    effective_batch: int
    """Sequences per optimizer step: micro_batch × grad_accum × world_size."""
    seq_len: int | None
    """The data stage's ``max_seq_len``."""
    tokens_per_step: int | None
    """Tokens per optimizer step over all processes (the estimator's figure when it has one)."""


@dataclass(frozen=True)
class PlanStage:
    """One stage, resolved."""

    index: int
    """1-based position; only used for the ``NN`` ordering prefix."""
    id: str
    """Stage id from the pipeline file."""
    kind: str
    """Stage kind."""
    dir: str
    """Compiled folder relative to the plan folder: ``stages/NN-<id>``."""
    output_dir: str
    """Where the stage writes, relative to the project root."""
    launcher: Literal["accelerate", "python"]
    """``accelerate launch`` (training) or ``python -m ftplan_runtime``."""
    accelerate: dict[str, Any] | None
    """``accelerate.yaml`` contents (training stages)."""
    deepspeed: dict[str, Any] | None
    """``deepspeed.json`` contents (ZeRO stages)."""
    args: RuntimeArgs
    """``args.json`` contents."""
    estimate: StageEstimate | None
    """The estimator's result for this stage."""
    resources: Resources
    """What the stage needs: device, nodes, GPUs, host memory, run time."""
    job: SlurmJob | None
    """Its Slurm job (with ``hardware.slurm``): the one place its job shape is decided."""
    depends_on: str | None
    """The previous stage's id (stages run in file order)."""
    method: str
    """One-line description for reviewers, e.g. ``QLoRA r16 α32``."""
    strategy: str | None
    """Resolved distributed strategy of a training stage."""
    batch: BatchMath | None
    """Batch arithmetic of a training stage."""

    @property
    def name(self) -> str:
        """``NN-<id>``: the stage's folder and job-file name."""
        return f"{self.index:02d}-{self.id}"


@dataclass(frozen=True)
class Provenance:
    """What the plan was compiled from."""

    pipeline_file: str
    """The pipeline file, relative to the project root."""
    pipeline_sha256: str
    """Its sha256."""
    inputs: tuple[LocalFile, ...]
    """Local files the pipeline references, with hashes, sorted by path."""
    versions: tuple[tuple[str, str], ...]
    """Pinned runtime package versions (name, version), sorted."""
    ftplan_version: str
    """Version of ftplan that compiled the plan."""


@dataclass(frozen=True)
class Target:
    """The model and hardware the plan was checked against (the plan's header line)."""

    model: str
    """``model.base``."""
    architecture: str | None
    """Where the shape came from (catalog key or ``config.json``)."""
    params: int | None
    """Parameter count of the base model."""
    device: Literal["cuda", "cpu"]
    """Device type."""
    gpu_name: str | None
    """Display name of the GPU."""
    gpu_memory_gib: float | None
    """Its memory."""
    gpu_arch: str | None
    """``sm89`` for NVIDIA, the architecture name for others."""
    nodes: int
    """Nodes."""
    gpus_per_node: int
    """GPUs per node."""


@dataclass(frozen=True)
class Plan:
    """A compiled pipeline: provenance, target, and the resolved stages, in order."""

    format_version: int
    """``PLAN_FORMAT``."""
    name: str
    """Pipeline name."""
    pipeline: Pipeline
    """The validated pipeline (defaults filled)."""
    provenance: Provenance
    """Inputs, hashes and versions."""
    target: Target
    """Model and hardware."""
    stages: tuple[PlanStage, ...]
    """Stages in run order."""
    plan_dir: str
    """The plan folder relative to the project root (POSIX), e.g. ``plans/support-bot``."""
    root_from_plan_dir: str
    """The project root relative to the plan folder, e.g. ``../..``."""
    hardware: HardwareSpec
    """Hardware section: environment, modules, venv, setup lines, port."""
    slurm: SlurmSpec | None
    """Slurm settings, when the plan has Slurm jobs."""
    diagnostics: tuple[Diagnostic, ...]
    """Warnings and notes shown in ``plan.md``, in file order."""

    def path(self, *parts: str) -> str:
        """A path inside the plan folder, relative to the project root."""
        return posixpath.normpath(posixpath.join(self.plan_dir, *parts))


def root_from(plan_dir_from_root: str, project_root: str | None = None) -> str:
    """The way back from the plan folder to the project root, e.g. ``../..`` for ``plans/x``.

    A plan folder outside the project (``../plans/x``) needs the project root's own path (absolute, POSIX) to
    name the folders climbed out of: ``../../examples`` for the project ``/work/examples``."""
    norm = posixpath.normpath(plan_dir_from_root)
    if posixpath.isabs(norm):
        raise ValueError(f"the plan folder {plan_dir_from_root!r} must be given relative to the project folder")
    parts = [] if norm == "." else norm.split("/")
    ups = 0
    while ups < len(parts) and parts[ups] == "..":
        ups += 1
    if ups == 0:
        return "/".join([".."] * len(parts)) or "."
    root_parts = [p for p in (project_root or "").split("/") if p]
    if not project_root or not posixpath.isabs(project_root) or len(root_parts) < ups:
        raise ValueError(f"the plan folder {plan_dir_from_root!r} lies outside the project folder; the project "
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
    args_paths = {stage.id: posixpath.normpath(posixpath.join(plan_dir, stage_dir(i, stage.id), "args.json"))
                  for i, stage in enumerate(pipeline.stages, start=1)}
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
        target=_target(ctx), stages=tuple(stages), plan_dir=plan_dir,
        root_from_plan_dir=root_from_plan_dir if root_from_plan_dir is not None else root_from(
            plan_dir, _project_root(ctx.pipeline_path)),
        hardware=pipeline.hardware, slurm=pipeline.hardware.slurm, diagnostics=diags,
    )


def _project_root(pipeline_path: str) -> str:
    """The absolute POSIX path of the pipeline file's folder (only its last names are ever used)."""
    return posixpath.dirname(os.path.abspath(pipeline_path).replace(os.sep, "/"))


def _target(ctx: Context) -> Target:
    hw, gpu, shape = ctx.pipeline.hardware, ctx.gpu, ctx.shape
    arch = None
    if gpu is not None:
        arch = f"sm{gpu.compute_capability[0]}{gpu.compute_capability[1]}" if gpu.compute_capability else gpu.arch
    on_gpu = hw.device == "cuda"
    return Target(
        model=ctx.pipeline.model.base, architecture=ctx.shape_source or None,
        params=param_counts(shape).total if shape is not None else None, device=hw.device,
        gpu_name=gpu.name if on_gpu and gpu else None,
        gpu_memory_gib=round(gpu.memory_gib, 1) if on_gpu and gpu else None,
        gpu_arch=arch if on_gpu else None, nodes=hw.nodes if on_gpu else 1,
        gpus_per_node=hw.gpus_per_node if on_gpu else 0,
    )


def stage_dir(index: int, stage_id: str) -> str:
    """A stage's compiled folder relative to the plan folder: ``stages/NN-<id>``."""
    return f"stages/{index:02d}-{stage_id}"


def _plan_stage(ctx: Context, index: int, stage, estimate: StageEstimate | None, plan_dir: str,
                previous: str | None, args_paths: dict[str, str]) -> PlanStage:
    pipeline, hw = ctx.pipeline, ctx.pipeline.hardware
    link = ctx.links[stage.id]
    folder = stage_dir(index, stage.id)
    args = runtime_args(pipeline, stage, link, ctx.gpu, estimate, args_paths)
    accelerate = deepspeed = None
    strategy = batch = None
    if isinstance(stage, (SftStage, DpoStage)):
        spec = resolve_distributed(stage, hw)
        strategy = spec.strategy
        shape = ctx.shape
        if zero_stage(spec) is not None:
            deepspeed = deepspeed_config(stage, spec, hw.world_size, shape.hidden_size if shape else None)
        qlora = getattr(stage.adapter, "type", None) == "qlora"
        accelerate = accelerate_config(
            spec=spec, precision=stage.precision, device=hw.device, world_size=hw.world_size,
            num_machines=hw.nodes if hw.device == "cuda" else 1, main_process_port=hw.main_process_port,
            deepspeed_file=posixpath.join(plan_dir, folder, "deepspeed.json") if deepspeed else None,
            zero3_init=zero_stage(spec) == 3 and not qlora, family=shape.family if shape else None)
        batch = _batch(pipeline, stage, hw.world_size, estimate)
        launcher: Literal["accelerate", "python"] = "accelerate"
    else:
        launcher = "python"
    resources = stage_resources(ctx, stage, estimate)
    return PlanStage(
        index=index, id=stage.id, kind=stage.kind, dir=folder, output_dir=stage_output_dir(pipeline, stage.id),
        launcher=launcher, accelerate=accelerate, deepspeed=deepspeed, args=args, estimate=estimate,
        resources=resources, job=slurm_job(ctx, index, stage, resources), depends_on=previous, method=describe_method(stage, link, strategy), strategy=strategy,
        batch=batch,
    )


def _batch(pipeline: Pipeline, stage: SftStage | DpoStage, world: int, estimate: StageEstimate | None) -> BatchMath:
    data = pipeline.stage(stage.data)
    seq = data.max_seq_len if isinstance(data, DataStage) else None
    effective = stage.micro_batch * stage.grad_accum * world
    tokens = estimate.tokens_per_step if estimate is not None else None
    if tokens is None and seq is not None:
        tokens = effective * seq * (2 if isinstance(stage, DpoStage) else 1)
    return BatchMath(stage.micro_batch, stage.grad_accum, world, effective, seq, tokens)
