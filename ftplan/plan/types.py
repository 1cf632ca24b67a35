"""The compiled plan as frozen data: what every rendered file and every view of a compiled pipeline reads.

A ``Plan`` holds the provenance, the target and one ``PlanStage`` per stage; each ``PlanStage`` carries its
``ResolvedStage`` (the derived facts, ``resolved_stage.py``) next to what ``build_plan`` made from it: configs,
arguments, resources and the Slurm job. Renderers only print these values.
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass
from typing import Any, Literal

from ..context import LocalFile
from ..diagnostics import Diagnostic
from ..estimate.types import StageEstimate
from ..jobs import Resources, SlurmJob
from ..resolved_stage import Batch, ResolvedStage, Strategy, most_nodes
from ..schemas import HardwareSpec, Pipeline, SlurmSpec
from ..schemas.runtime_args import RuntimeArgs
from ..view_model import Status

PLAN_FORMAT = 1
"""Version of the compiled plan's layout and ``plan.json``; bumped on incompatible changes."""


@dataclass(frozen=True)
class PlanStage:
    """One stage, resolved."""

    index: int
    """1-based position in the run order (shown in plan.md and the scripts' comments)."""
    id: str
    """Stage id from the pipeline file."""
    kind: str
    """Stage kind."""
    dir: str
    """Compiled folder relative to the plan folder: ``stages/<id>``."""
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
    facts: ResolvedStage
    """The stage's derived facts (strategy, batch, adapter, reference, placement)."""
    status: Status
    """Its verdict (``view_model.stage_status``), the word ``ftplan check``, plan.md and plan.json show."""

    @property
    def name(self) -> str:
        """The stage's folder and job-file name: its id (stable when stages are inserted or moved)."""
        return self.id

    @property
    def strategy(self) -> Strategy | None:
        """Resolved distributed strategy of a training stage."""
        return self.facts.train.strategy if self.facts.train is not None else None

    @property
    def batch(self) -> Batch | None:
        """Batch arithmetic of a training stage."""
        return self.facts.train.batch if self.facts.train is not None else None


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
    revision: str | None
    """``model.revision``: the hub commit, branch or tag the weights are read at (None: the hub's latest)."""
    model_local: bool
    """``model.base`` is a local folder (nothing to pin: its files are hashed into the inputs)."""
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

    @property
    def nodes(self) -> int:
        """The most nodes any stage spans (``run.sh`` runs a plan on one machine only)."""
        return most_nodes(s.facts for s in self.stages)

    def path(self, *parts: str) -> str:
        """A path inside the plan folder, relative to the project root."""
        return posixpath.normpath(posixpath.join(self.plan_dir, *parts))
