"""``plan.md``: what a reviewer reads — the target, a stage table with memory bars, the largest memory terms per
stage, warnings, input hashes and how to run the plan."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..describe import bar, job_container, job_cpus, job_gpus, job_lines, job_memory
from ..units import format_duration, gib_text, params_text, size
from .commands import launch_command, run_commands
from .plan_json import key_path_text
from .shell import comment, shq

if TYPE_CHECKING:  # pragma: no cover
    from ..plan import Plan, PlanStage

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


def header_line(plan: "Plan") -> str:
    """``support-bot · meta-llama/Llama-3.1-8B-Instruct (8.03 B) · 1 × RTX 4090 (24.0 GiB, sm89)``."""
    t = plan.target
    if t.device == "cpu":
        hardware = "CPU"
    else:
        count = f"{t.nodes} nodes × {t.gpus_per_node}" if t.nodes > 1 else f"{t.gpus_per_node}"
        detail = ", ".join(x for x in (f"{t.gpu_memory_gib:.1f} GiB" if t.gpu_memory_gib else None, t.gpu_arch) if x)
        hardware = f"{count} × {t.gpu_name or 'GPU'}" + (f" ({detail})" if detail else "")
    return f"{plan.name} · {md(t.model)} ({params_text(t.params)}) · {hardware}"


def _memory_cell(s: "PlanStage") -> str:
    est = s.estimate
    if est is None:
        return "—"
    if s.resources.device == "cuda" and est.capacity_bytes and est.peak_bytes > 0:
        return f"`{bar(est.peak_bytes, est.capacity_bytes)}`"
    if est.host_bytes:
        return f"host RAM {size(est.host_bytes)}"
    return "—"


def _batch_cells(s: "PlanStage") -> tuple[str, str]:
    b = s.batch
    if b is None:
        return "—", "—"
    effective = f"{b.effective_batch} ({b.micro_batch} × {b.grad_accum} × {b.world_size})"
    return effective, f"{b.tokens_per_step:,}" if b.tokens_per_step else "—"


def _stage_table(plan: "Plan") -> list[str]:
    lines = ["| # | stage | kind | method | effective batch | tokens/step | peak VRAM per GPU | verdict |",
             "|---|---|---|---|---:|---:|---|---|"]
    for s in plan.stages:
        effective, tokens = _batch_cells(s)
        verdict = s.estimate.verdict if s.estimate else "—"
        lines.append(f"| {s.index:02d} | {s.id} | {s.kind} | {md(s.method)} | {effective} | {tokens} | "
                     f"{_memory_cell(s)} | {verdict} |")
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
    return launch_command(plan.plan_dir, s.dir, s.launcher, s.resources.nodes, plan.hardware.main_process_port)


def _stage_details(plan: "Plan", s: "PlanStage") -> list[str]:
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
    est = s.estimate
    r = s.resources
    where = f"{r.nodes} node(s) × {r.gpus_per_node} GPU" if r.device == "cuda" else "CPU only"
    out.append(f"- runs on: {where}")
    if r.run_time_s is not None and est is not None and est.step_time_s:
        bound = "at most " if r.steps_at_most else ""
        out.append(f"- estimated run time: {bound}{r.steps:,} steps × {est.step_time_s:.2f} s ≈ "
                   f"{format_duration(r.run_time_s)}" + (" (examples counted before packing)" if r.steps_at_most
                                                          else ""))
    if s.job is not None:
        out += [f"- Slurm {md(line)}" for line in job_lines(s.job)]
        out.append(f"- Slurm logs: {code(s.job.output)} (stdout), {code(s.job.error)} (stderr)")
    b = s.batch
    if b is not None:
        seq = f" × {b.seq_len:,} tokens" if b.seq_len else ""
        tokens = f" = {b.tokens_per_step:,} tokens/step" if b.tokens_per_step else ""
        out.append(f"- batch: {b.micro_batch} micro × {b.grad_accum} accum × {b.world_size} processes = "
                   f"{b.effective_batch} sequences{seq}{tokens}")
    if est is not None:
        if est.capacity_bytes and est.peak_bytes > 0:
            step = f"; about {est.step_time_s:.2f} s per step" if est.step_time_s else ""
            out.append(f"- peak VRAM per GPU: {gib_text(est.peak_bytes, unit=False)} / {gib_text(est.capacity_bytes)} "
                       f"({est.verdict}){step}")
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
        line = f"- {d.severity.value} {d.code} {code(key_path_text(plan, d.path))}{where}: {md(d.message)}"
        if d.hint:
            line += f" — {md(d.hint)}"
        out.append(line)
        out += [f"  - {md(n)}" for n in d.notes]
    return [""] + out


def render_plan_md(plan: "Plan") -> str:
    """The text of ``plan.md``."""
    prov = plan.provenance
    regen = f"ftplan compile {shq(prov.pipeline_file)} -o {shq(plan.plan_dir)}"
    out = [
        f"# Plan: {plan.name}", "", header_line(plan), "",
        f"Compiled by ftplan {prov.ftplan_version} from {code(prov.pipeline_file)} (sha256 "
        f"`{prov.pipeline_sha256}`). Generated: do not edit; regenerate with {code(regen)} from the project folder.",
        "", "## Stages", "", *_stage_table(plan),
        *(["", "## Slurm jobs", "", *_jobs_table(plan)] if plan.slurm is not None else []),
        "", "## Stage details", *[line for s in plan.stages for line in _stage_details(plan, s)],
        "", "## Warnings and notes", *_diagnostics(plan),
        "", "## Inputs", "",
    ]
    if prov.inputs:
        out += ["| file | sha256 | bytes |", "|---|---|---:|"]
        out += [f"| {code(f.path)} | `{f.sha256}` | {f.size:,} |" for f in prov.inputs]
    else:
        out.append("No local input files (models and datasets come from the hub).")
    out += ["", "## Runtime versions", "", " · ".join(f"{k} {v}" for k, v in prov.versions), "",
            "## How to run", "", "From the project folder:", "", "```bash",
            *(f"{command}    # {what}" for command, what in run_commands(plan.plan_dir, plan.slurm is not None)),
            "```", ""]
    return "\n".join(out)
