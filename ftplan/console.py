"""Views of check/compile results: a rich terminal view (stage table, VRAM bars, diagnostics) and a JSON view.

Both take the same ``CheckResult``; the views decide layout only and compute nothing new. The headline, the stage
table's rows and verdicts, the memory breakdown and the launch commands are worded by ``view_model`` (and
``describe``), which plan.md reads too.
"""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from .api import CheckResult
from .describe import headline, method
from .diagnostics import Diagnostic, KeyPath, Severity, Span
from .resolved_stage import most_nodes
from .sourcemap import display_path
from .units import gib_value
from .view_model import STAGE_COLUMNS, StageRow, breakdown_lines, run_lines, run_note, stage_row, stage_status


_STYLE = {Severity.ERROR: "bold red", Severity.WARNING: "yellow", Severity.INFO: "cyan"}
_VERDICT_STYLE = {"fits": "green", "tight": "yellow", "oom": "bold red", "error": "bold red", "unknown": "yellow"}


def diagnostic_lines(d: Diagnostic, result: CheckResult) -> list[str]:
    """A diagnostic as plain lines: ``error[FT004] FILE:LINE:COL: path: message``, then the places it involves
    (``FILE:LINE:COL: what is there``), notes and the hint."""
    where = f"{d.span}: " if d.span else f"{result.path}: "
    path = _display_path(d, result)
    head = f"{d.severity.value}[{d.code}] {where}{path + ': ' if path else ''}{d.message}"
    related = [f"  {_where(p, result)}: {text}" for p, text in d.related]
    return [head, *related, *(f"  {n}" for n in d.notes), *([f"  hint: {d.hint}"] if d.hint else [])]


def print_diagnostics(result: CheckResult, console: Console, *, verbose: bool = False) -> None:
    """Print the diagnostics, colour-coded by severity (informational notes only when ``verbose``)."""
    for d in result.diagnostics:
        if d.severity is Severity.INFO and not verbose:
            continue
        lines = diagnostic_lines(d, result)
        console.print(Text(lines[0], style=_STYLE[d.severity]))
        for line in lines[1:]:
            console.print(Text(line))


def summary_line(result: CheckResult, *, verbose: bool = False) -> str:
    """``N errors, M warnings.`` plus how many notes ``-v`` would show."""
    e, w, i = (result.count(s) for s in (Severity.ERROR, Severity.WARNING, Severity.INFO))
    line = f"{e} error{'s' if e != 1 else ''}, {w} warning{'s' if w != 1 else ''}"
    if i and not verbose:
        line += f", {i} note{'s' if i != 1 else ''} (-v shows them)"
    return line + "."


def stage_rows(result: CheckResult) -> list[StageRow]:
    """The stage table's rows (``view_model.stage_row``), in file order; a stage has an error when an error
    diagnostic is located in it."""
    ctx = result.ctx
    if ctx is None:
        return []
    failing = {d.path[1] for d in result.diagnostics
               if d.severity is Severity.ERROR and len(d.path) >= 2 and d.path[0] == "stages"}
    rows = []
    for i, (stage, facts) in enumerate(zip(ctx.pipeline.stages, ctx.stages)):
        est = result.estimates.get(stage.id)
        status = stage_status(facts, est, has_error=i in failing)
        rows.append(stage_row(facts, method(stage, facts, ctx.links.get(stage.id)), est, status))
    return rows


def stage_table(result: CheckResult) -> Table | None:
    """The stage table: kind, method, effective batch, tokens/step, peak per GPU with a bar, verdict."""
    if result.ctx is None:
        return None
    table = Table(box=None, pad_edge=False, header_style="bold")
    for col in STAGE_COLUMNS:  # on a narrow terminal the method wraps; the figures never do
        table.add_column(col, justify="right" if col in ("batch", "tokens/step") else "left", no_wrap=col != "method")
    for row in stage_rows(result):
        *cells, status = row.cells
        table.add_row(*cells, Text(status, style=_VERDICT_STYLE.get(status, "")))
    return table


def breakdown(result: CheckResult) -> list[str]:
    """Every training stage's memory estimate, line item by line item (``check -v``)."""
    ctx = result.ctx
    if ctx is None:
        return []
    lines = []
    for facts, row in zip(ctx.stages, stage_rows(result)):
        lines += breakdown_lines(facts, result.estimates.get(facts.id), row.status)
    return lines


def dataset_rows(result: CheckResult) -> list[dict[str, Any]]:
    """How much of each dataset ``check`` read, in file order: stage, path, rows read and in all, and in words."""
    ctx = result.ctx
    if ctx is None:
        return []
    hub = {tuple(path[:4]) for path, _ in ctx.inputs.hub_datasets}
    out = []
    for i, stage in enumerate(ctx.pipeline.stages):
        for j, d in enumerate(getattr(stage, "datasets", None) or ()):
            scan = ctx.inputs.datasets.get((i, j))
            row: dict[str, Any] = {"stage": stage.id, "path": d.path, "rows_read": None, "rows_total": None,
                                   "complete": False}
            if scan is not None and scan.checked and scan.file_problem is None:
                row.update(rows_read=scan.rows_read, rows_total=scan.rows_total, complete=scan.complete)
                row["checked"] = _coverage_words(scan.rows_read, scan.rows_total, scan.complete)
            elif scan is not None and scan.file_problem is not None:
                row["checked"] = f"{scan.rows_read:,} rows read, then the file could not be read further"
            elif ("stages", i, "datasets", j) in hub:
                row["checked"] = "hub dataset: its rows are checked at run time"
            elif scan is not None:
                row["checked"] = "read only at run time (Parquet or a dataset folder)"
            else:
                row["checked"] = "missing"
            out.append(row)
    return out


def _coverage_words(read: int, total: int | None, complete: bool) -> str:
    if complete:
        return f"all {read:,} rows checked"
    of = f" of {total:,}" if total else ""
    return f"rows 1–{read:,}{of} checked (--full-data checks every row)"


def accuracy_lines(result: CheckResult) -> list[str]:
    """How far the GPU estimates can be trusted: the measured points overall, then each training stage's."""
    from .estimate.accuracy import overall

    ctx = result.ctx
    stages = [(s.id, acc) for s in (ctx.pipeline.stages if ctx else ())
              if s.id in result.estimates and (acc := result.estimates[s.id].accuracy) is not None]
    if not stages:
        return []
    lines = [f"estimate accuracy on compiled plans measured on one GPU: {overall().text()}"]
    lines += [f"  {sid}: {acc.text()}" for sid, acc in stages]
    return lines


def data_table(result: CheckResult) -> Table | None:
    """Per local dataset: how many of its rows ``check`` read and judged."""
    rows = dataset_rows(result)
    if not rows:
        return None
    table = Table(box=None, pad_edge=False, header_style="bold")
    for col in ("stage", "dataset", "rows"):
        table.add_column(col, no_wrap=col != "dataset")
    previous = None
    for r in rows:
        table.add_row(r["stage"] if r["stage"] != previous else "", r["path"], r["checked"])
        previous = r["stage"]
    return table


def print_check(result: CheckResult, out: Console, err: Console, *, verbose: bool = False) -> None:
    """The human view of ``ftplan check``: headline, stage table (with ``verbose``, every training stage's memory
    breakdown), data coverage and estimate accuracy on stdout, diagnostics on stderr."""
    from .plan.build import target_of

    if result.ctx is not None:
        out.print(Text(headline(result.ctx.pipeline.name, target_of(result.ctx)), style="bold"))
        out.print()
        out.print(stage_table(result))
        out.print()
        memory = breakdown(result) if verbose else []
        if memory:
            out.print(Text("\n".join(["memory per GPU of each training stage (host memory on the CPU):", *memory])))
            out.print()
        data = data_table(result)
        if data is not None:
            out.print(data)
            out.print()
        accuracy = accuracy_lines(result)
        if accuracy:
            out.print(Text("\n".join(accuracy)))
            out.print()
    print_diagnostics(result, err, verbose=verbose)
    if any(verbose or d.severity is not Severity.INFO for d in result.diagnostics):
        err.print()
    err.print(summary_line(result, verbose=verbose))


def print_run(result: CheckResult, folder: str, out: Console) -> None:
    """After ``compile``: the commands that launch the plan written to ``folder`` (as the user named it), in the
    words of plan.md's "How to run"."""
    ctx = result.ctx
    if ctx is None:
        return
    nodes = most_nodes(ctx.stages)
    note = run_note(nodes)
    lines = run_lines(folder, slurm=ctx.pipeline.hardware.slurm is not None, nodes=nodes)
    out.print(Text("\n".join(["run it:", *(f"  {line}" for line in lines), *([f"  ({note})"] if note else [])])))


def check_json(result: CheckResult) -> dict[str, Any]:
    """The machine view of ``ftplan check`` (for CI): diagnostics and per-stage estimates and verdicts."""
    stages = result.ctx.pipeline.stages if result.ctx else []
    return {
        "ok": result.ok,
        "file": result.path,
        "pipeline": result.ctx.pipeline.name if result.ctx else None,
        "diagnostics": [diagnostic_json(d, result) for d in result.diagnostics],
        "stages": [_stage_json(i, row, result) for i, row in enumerate(stage_rows(result))],
        "datasets": dataset_rows(result),
    }


def diagnostic_json(d: Diagnostic, result: CheckResult) -> dict[str, Any]:
    """One diagnostic as a JSON object; ``related`` lists the other places it involves."""
    return {
        "code": d.code, "severity": d.severity.value, "message": d.message, "hint": d.hint,
        "notes": list(d.notes), "path": _display_path(d, result),
        "file": d.span.file if d.span else result.path,
        "line": d.span.line if d.span else None, "col": d.span.col if d.span else None,
        "related": [_related_json(p, text, result) for p, text in d.related],
    }


def _stage_json(index: int, row: StageRow, result: CheckResult) -> dict[str, Any]:
    ctx = result.ctx
    assert ctx is not None
    stage = ctx.pipeline.stages[index]
    est = result.estimates.get(stage.id)
    out: dict[str, Any] = {"id": stage.id, "kind": stage.kind, "method": row.method, "verdict": row.status}
    if est is not None:
        out.update({
            "peak_gib": gib_value(est.peak_bytes),
            "capacity_gib": gib_value(est.capacity_bytes) if est.capacity_bytes else None,
            "host_gib": gib_value(est.host_bytes) if est.host_bytes else None,
            "tokens_per_step": est.tokens_per_step,
            "step_time_s": est.step_time_s,
            "terms": [{"name": t.name, "gib": gib_value(t.bytes, 3), "detail": t.detail} for t in est.terms],
        })
        if est.accuracy is not None:
            a = est.accuracy
            out["accuracy"] = {"points": a.points, "mean_error_pct": a.mean_error_pct,
                               "max_error_pct": a.max_error_pct, "cards": list(a.cards),
                               "extrapolated": a.extrapolated}
    return out


def _span(path: KeyPath, result: CheckResult) -> Span | None:
    """Where a key path is in the checked file (None without a source map)."""
    return result.source_map.span(path) if result.source_map is not None else None


def _where(path: KeyPath, result: CheckResult) -> str:
    """``FILE:LINE:COL`` of a key path, or its display form when the file has no source map."""
    span = _span(path, result)
    return str(span) if span else f"{result.path}: {display_path(path, result.data)}"


def _related_json(path: KeyPath, text: str, result: CheckResult) -> dict[str, Any]:
    span = _span(path, result)
    return {"message": text, "path": display_path(path, result.data), "file": span.file if span else result.path,
            "line": span.line if span else None, "col": span.col if span else None}


def _display_path(d: Diagnostic, result: CheckResult) -> str:
    """The diagnostic's key path with the stages named by their ids (``""`` for the whole file)."""
    return display_path(d.path, result.data)
