"""``plan.json``: the machine-readable plan (format 1) for review tools and ``compile --check``.

It holds the resolved pipeline, every stage's configs, arguments and estimate (with its terms, verdict and
tokens per step), the input hashes, the pinned runtime versions and the ftplan version — and nothing that
changes between two compiles of the same input (no timestamps, host names or absolute paths ftplan chose).
"""

from __future__ import annotations

from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from ..diagnostics import Diagnostic, KeyPath
from ..estimate.types import StageEstimate
from ..sourcemap import key_path_text
from ..units import gib_value
from .serialize import to_json

if TYPE_CHECKING:  # pragma: no cover
    from ..jobs import SlurmJob
    from ..plan import Plan, PlanStage


def diagnostic_path(plan: "Plan", path: KeyPath) -> str:
    """``stages[sft].learning_rate`` for ``("stages", 1, "learning_rate")`` (stages named by id), ``(file)`` for
    the whole file."""
    return key_path_text(path, [s.id for s in plan.pipeline.stages]) or "(file)"


def estimate_json(est: StageEstimate | None) -> dict[str, Any] | None:
    """An estimate with its terms, as JSON data."""
    if est is None:
        return None
    return {
        "capacity_bytes": est.capacity_bytes, "capacity_gib": gib_value(est.capacity_bytes),
        "host_bytes": est.host_bytes, "notes": list(est.notes), "peak_bytes": est.peak_bytes,
        "peak_gib": gib_value(est.peak_bytes), "step_time_s": est.step_time_s, "tokens_per_step": est.tokens_per_step,
        "verdict": est.verdict,
        "terms": [{"bytes": t.bytes, "detail": t.detail, "gib": gib_value(t.bytes), "name": t.name} for t in est.terms],
        "suggestions": [{"change": s.change, "peak_bytes": s.peak_bytes, "peak_gib": gib_value(s.peak_bytes)}
                        for s in est.suggestions],
    }


def diagnostic_json(plan: "Plan", d: Diagnostic) -> dict[str, Any]:
    """A warning or note, located by key path and line/column (never by absolute file path)."""
    return {
        "code": d.code, "severity": d.severity.value, "path": diagnostic_path(plan, d.path), "message": d.message,
        "hint": d.hint, "notes": list(d.notes), "line": d.span.line if d.span else None,
        "col": d.span.col if d.span else None,
    }


def _stage_json(plan: "Plan", s: "PlanStage", sha: str) -> dict[str, Any]:
    return {
        "index": s.index, "id": s.id, "kind": s.kind, "dir": s.dir, "output_dir": s.output_dir,
        "launcher": s.launcher, "depends_on": s.depends_on, "method": s.method, "strategy": s.strategy,
        "verdict": s.status,
        "resources": asdict(s.resources), "batch": asdict(s.batch) if s.batch else None,
        "args_sha256": sha, "args": s.args.model_dump(mode="json"),
        "accelerate": s.accelerate, "deepspeed": s.deepspeed, "estimate": estimate_json(s.estimate),
        "slurm_job": f"slurm/{s.name}.sbatch" if plan.slurm else None,
        "slurm": job_json(s.job) if s.job else None,
    }


def job_json(job: SlurmJob) -> dict[str, Any]:
    """A stage's Slurm job shape, as its sbatch script asks for it."""
    data = asdict(job)
    data["container"] = job.container.model_dump(mode="json") if job.container else None
    data["gpu_option"] = list(job.gpu_option) if job.gpu_option else None
    data["extra"] = dict(job.extra)
    data["sbatch"] = [f"--{k}={v}" if v is not None else f"--{k}" for k, v in job.directives]
    data["gpu_hours"] = round(job.gpu_hours, 2)
    return data


def resolved_pipeline(plan: "Plan") -> dict[str, Any]:
    """The pipeline with defaults filled in and every stage as resolved for the runtime (no ``auto``)."""
    data = plan.pipeline.model_dump(mode="json")
    data["stages"] = [s.args.stage.model_dump(mode="json") for s in plan.stages]
    return data


def render_plan_json(plan: "Plan", shas: dict[str, str]) -> str:
    """The text of ``plan.json``."""
    prov = plan.provenance
    data = {
        "format_version": plan.format_version,
        "ftplan_version": prov.ftplan_version,
        "pipeline": {"name": plan.name, "file": prov.pipeline_file, "sha256": prov.pipeline_sha256,
                     "resolved": resolved_pipeline(plan)},
        "inputs": [{"path": f.path, "sha256": f.sha256, "size": f.size} for f in prov.inputs],
        "versions": dict(prov.versions),
        "target": asdict(plan.target),
        "plan_dir": plan.plan_dir,
        "root_from_plan_dir": plan.root_from_plan_dir,
        "stages": [_stage_json(plan, s, shas[s.id]) for s in plan.stages],
        "diagnostics": [diagnostic_json(plan, d) for d in plan.diagnostics],
    }
    return to_json(data)
