"""``plan.md``: what a reviewer reads and approves — the target and the model's revision, a stage table with
memory bars and verdicts (the rows ``ftplan check`` prints, from ``view_model``), per training stage its
hyperparameters, optimizer steps and estimated run time against the Slurm time limit, the largest memory terms per
stage, warnings, input hashes and the commands that launch the plan."""

from __future__ import annotations

from typing import TYPE_CHECKING, cast

from ..describe import headline, job_container, job_cpus, job_gpus, job_lines, job_memory
from ..units import size
from ..view_model import (STAGE_COLUMNS, STATUS_MEANINGS, StageRow, peak_text, revision_text, run_lines, run_note,
                          stage_row, training_settings)
from .commands import launch_command
from .plan_json import diagnostic_path
from .shell import comment, shq

if TYPE_CHECKING:  # pragma: no cover
    from ..plan import Plan, PlanStage
    from ..schemas.stages import TrainStage

TOP_TERMS = 5
"""Largest memory terms listed per stage."""


def md(text: object) -> str:
    """User text safe inside a Markdown table cell: one line, pipes escaped."""
    return comment(text).replace("|", "\\|")


def code(text: object) -> str:
    """An inline code span holding ``text`` verbatim (fenced with more backticks than it contains)."""
    s = comment(text).replace("|", "\\|")
    run = longest = 0
    for ch in s:
        run = run + 1 if ch == "`" else 0
        longest = max(longest, run)
    fence = "`" * (longest + 1)
    pad = " " if s.startswith("`") or s.endswith("`") else ""
    return f"{fence}{pad}{s}{pad}{fence}"


def stage_rows(plan: "Plan") -> list[StageRow]:
    """The stage table's rows (``view_model.stage_row``): the cells ``ftplan check`` prints for the same
    pipeline."""
    return [stage_row(s.facts, s.method, s.estimate, s.status) for s in plan.stages]


def _stage_table(plan: "Plan", rows: list[StageRow]) -> list[str]:
    lines = ["| # | " + " | ".join(STAGE_COLUMNS) + " |",
             "|---|" + "".join("---:|" if c in ("batch", "tokens/step") else "---|" for c in STAGE_COLUMNS)]
    for s, row in zip(plan.stages, rows):
        cells = [md(c) for c in row.cells]
        if row.memory_is_bar:
            cells[STAGE_COLUMNS.index("peak memory")] = f"`{row.memory}`"
        lines.append(f"| {s.index:02d} | " + " | ".join(cells) + " |")
    shown = dict.fromkeys(row.status for row in rows)
    lines += ["", "Verdicts: " + "; ".join(f"{status}: {STATUS_MEANINGS[status]}" for status in shown) + "."]
    return lines


def _jobs_table(plan: "Plan") -> list[str]:
    """One row per sbatch job: what it books, so a change's cost shows in the diff."""
    lines = ["| # | stage | partition | GPUs | CPUs | memory | time limit | whole nodes | container | GPU hours at the "
             "limit |", "|---|---|---|---|---|---|---|---|---|---:|"]
    total = 0.0
    for s in plan.stages:
        job = s.job
        if job is None:
            continue
        total += job.gpu_hours
        lines.append(f"| {s.index:02d} | {s.id} | {job.partition or '(default)'} | {job_gpus(job)} | "
                     f"{job_cpus(job)} | {job_memory(job)} | {job.time} | {'yes' if job.exclusive else 'no'} | "
                     f"{md(job_container(job))} | {f'{job.gpu_hours:,.1f}' if job.gpus_per_node else '—'} |")
    if total:
        lines += ["", f"At most {total:,.1f} GPU hours in all, if every job ran to its time limit."]
    return lines


def _launch(plan: "Plan", s: "PlanStage") -> str:
    """The stage's launch command, as run from the project root (``commands.launch_command``)."""
    return launch_command(plan.plan_dir, s.dir, s.launcher, s.resources.nodes, plan.hardware.main_process_port,
                          plan.hardware.rendezvous_timeout_s)


def _stage_details(plan: "Plan", s: "PlanStage", row: StageRow) -> list[str]:
    out = ["", f"### {s.index:02d} {s.id} ({s.kind})", "", f"- method: {md(s.method)}",
           f"- launch: {code(_launch(plan, s))}"]
    if s.launcher == "accelerate" and s.resources.nodes > 1:
        sbatch = code(plan.path("slurm", f"{s.name}.sbatch"))
        out.append(f"- on each of the {s.resources.nodes} nodes, started by {sbatch}: `HEAD_NODE` is the "
                   "allocation's first node, `SLURM_NODEID` the node's rank")
    src = s.args.source
    if src is not None:
        out.append(f"- starts from: {code(src.weights)}" + (f" at revision {code(src.revision)}" if src.revision else ""))
        if src.merge:
            out.append("- merges first: " + ", ".join(f"{a.stage} ({a.type}, {code(a.path)})" for a in src.merge))
        if src.continue_adapter:
            a = src.continue_adapter
            out.append(f"- continues the adapter of {a.stage} ({a.type}, {code(a.path)})")
    if s.args.data_dir:
        out.append(f"- data: {code(s.args.data_dir)}")
    out.append(f"- output: {code(s.output_dir)}")
    r = s.resources
    if r.device == "cuda":
        where = (f"{r.nodes} node{'s' if r.nodes > 1 else ''} × {r.gpus_per_node} GPU"
                 f"{'s' if r.gpus_per_node > 1 else ''}")
    else:
        where = "CPU only"
    out.append(f"- runs on: {where}")
    if s.facts.train is not None:  # a training stage
        written = cast("TrainStage", s.args.stage)
        out += [f"- {name}: {md(text)}" for name, text in training_settings(written, s.facts, r, s.job, s.estimate)]
    if s.job is not None:
        out += [f"- Slurm {md(line)}" for line in job_lines(s.job)]
        out.append(f"- Slurm logs: {code(s.job.output)} (stdout), {code(s.job.error)} (stderr)")
    est = s.estimate
    if est is not None:
        peak = peak_text(s.facts, est, row.status)
        if peak is not None and peak.endswith(f"({row.status})"):
            step = f"; about {est.step_time_s:.2f} s per step" if est.step_time_s else ""
            out.append(f"- peak VRAM: {peak}{step}")
        if est.host_bytes:
            out.append(f"- host memory: {size(est.host_bytes)}")
        for note in est.notes:
            out.append(f"- note: {md(note)}")
        if est.terms:
            out += ["", "| largest terms | size | how |", "|---|---:|---|"]
            for t in sorted(est.terms, key=lambda t: -t.bytes)[:TOP_TERMS]:
                out.append(f"| {md(t.name)} | {size(t.bytes)} | {md(t.detail)} |")
    return out


def _diagnostics(plan: "Plan") -> list[str]:
    if not plan.diagnostics:
        return ["", "No warnings."]
    out = []
    for d in plan.diagnostics:
        where = f" (line {d.span.line}:{d.span.col})" if d.span else ""
        line = f"- {d.severity.value} {d.code} {code(diagnostic_path(plan, d.path))}{where}: {md(d.message)}"
        if d.hint:
            line += f" — {md(d.hint)}"
        out.append(line)
        out += [f"  - {md(n)}" for n in d.notes]
    return [""] + out


def render_plan_md(plan: "Plan") -> str:
    """The text of ``plan.md``."""
    prov = plan.provenance
    regen = f"ftplan compile {shq(prov.pipeline_file)} -o {shq(plan.plan_dir)}"
    rows = stage_rows(plan)
    out = [
        f"# Plan: {plan.name}", "", md(headline(plan.name, plan.target)), "",
        f"Compiled by ftplan {prov.ftplan_version} from {code(prov.pipeline_file)} (sha256 "
        f"`{prov.pipeline_sha256}`). Generated: do not edit; regenerate with {code(regen)} from the project folder.",
        "", f"Model: {code(plan.target.model)}, {md(revision_text(plan.target))}.",
        "", "## Stages", "", *_stage_table(plan, rows),
        *(["", "## Slurm jobs", "", *_jobs_table(plan)] if plan.slurm is not None else []),
        "", "## Stage details", *[line for s, row in zip(plan.stages, rows) for line in _stage_details(plan, s, row)],
        "", "## Warnings and notes", *_diagnostics(plan),
        "", "## Inputs", "",
    ]
    if prov.inputs:
        out += ["| file | sha256 | bytes |", "|---|---|---:|"]
        out += [f"| {code(f.path)} | `{f.sha256}` | {f.size:,} |" for f in prov.inputs]
    else:
        out.append("No local input files (models and datasets come from the hub).")
    note = run_note(plan.nodes)
    commands = run_lines(plan.plan_dir, slurm=plan.slurm is not None, nodes=plan.nodes)
    out += ["", "## Runtime versions", "", " · ".join(f"{k} {v}" for k, v in prov.versions), "",
            "## How to run", "", "From the project folder:", "", "```bash", *commands, "```",
            *(["", f"{md(note)}."] if note else []), ""]
    return "\n".join(out)
