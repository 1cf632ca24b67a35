"""The data contract, checked on the rows of every local dataset file before any job starts.

The rows were read and judged at load time by ``ftplan.data`` (``inputs.read_inputs``), the same code the
runtime's data stage runs on every row; this module turns what it found into located diagnostics. One
diagnostic per dataset and problem code, at its first row, with a note that counts the other rows and names
them, so a file with thousands of bad rows reads as a few lines, and none is left out of the count.
"""

from __future__ import annotations

from pathlib import PurePosixPath
from typing import Any

from ftplan.context import Context
from ftplan.data.hub import hub_id_problem
from ftplan.data.rows import RowProblem, convert_row, group_of
from ftplan.data.scan import DatasetScan, Finding
from ftplan.diagnostics import Diagnostic, KeyPath, Severity, error, info, warning
from ftplan.schemas import DataStage
from ftplan.schemas.datasets import DatasetSpec

from ._common import data_stages

CODES = {
    "FT501": "a local dataset file does not exist",
    "FT502": "a dataset row or file cannot be read",
    "FT503": "a row lacks a column its format needs",
    "FT504": "a value has the wrong type or a conversation is malformed",
    "FT505": "a role in the data has no mapping in `roles`",
    "FT506": "a supervised conversation does not end with an assistant turn",
    "FT507": "a preference pair's chosen/rejected is empty or of different kinds",
    "FT508": "a preference pair's chosen equals its rejected",
    "FT509": "a KTO label is not a boolean",
    "FT510": "a dataset file has no rows",
    "FT511": "a dataset has columns its format does not read",
    "FT512": "an answer is empty",
    "FT513": "a turn has non-text content (images, audio, files)",
    "FT514": "a dataset path is neither a local file nor a folder, so it is taken as a hub dataset id",
    "FT515": "a KTO conversation has no labelled answer: it does not end with an assistant turn after a prompt",
    "FT516": "a dataset path is neither a local file or folder nor a well-formed hub dataset id",
    "FT517": "how weighted datasets mix into a data stage's training split",
}

ROWS_NAMED = 12
"""Row positions named in a note before it says "and N more"."""

__all__ = ["CODES", "ROWS_NAMED", "check", "row_problems"]


def check(ctx: Context) -> list[Diagnostic]:
    """Check every dataset of every data stage: missing files, hub ids, and what reading its rows found."""
    diags: list[Diagnostic] = []
    missing = {tuple(path[:4]): rel for path, rel in ctx.inputs.missing
               if len(path) >= 4 and path[0] == "stages" and path[2] == "datasets"}
    hub = {tuple(path[:4]): value for path, value in ctx.inputs.hub_datasets}
    for i, stage in data_stages(ctx):
        for j, d in enumerate(stage.datasets):
            base = ("stages", i, "datasets", j)
            if base in missing:
                diags.append(error("FT501", base + ("path",), f"dataset file '{missing[base]}' does not exist",
                                   hint="check the path (relative to the pipeline file); hub dataset ids are "
                                   "written `org/name`"))
            elif base in hub:
                diags.append(_hub(ctx, base, hub[base]))
            scan = ctx.inputs.datasets.get((i, j))
            if scan is not None and scan.checked:
                diags += _dataset(d, base, scan)
        diags += _mix(ctx, i, stage)
    return diags


def _mix(ctx: Context, i: int, stage: DataStage) -> list[Diagnostic]:
    """FT517: how weighted datasets mix into each output group's training split, by the rows read."""
    if all(d.weight == 1.0 for d in stage.datasets):
        return []
    diags = []
    for group in sorted({group_of(d.format) for d in stage.datasets}):
        members = [(j, d) for j, d in enumerate(stage.datasets) if group_of(d.format) == group]
        if all(d.weight == 1.0 for _, d in members):
            continue
        scans = {j: ctx.inputs.datasets.get((i, j)) for j, _ in members}
        counts = {j: s.rows_read - s.bad_rows for j, s in scans.items()
                  if s is not None and s.checked and s.complete and s.file_problem is None}
        if len(counts) == len(members) and sum(counts[j] * d.weight for j, d in members) > 0:
            total = sum(counts[j] * d.weight for j, d in members)
            parts = [f"{100 * counts[j] * d.weight / total:.0f} % {d.path} ({counts[j]:,} rows × {d.weight:g})"
                     for j, d in members]
        else:
            parts = [f"{d.path} × {d.weight:g}" for _, d in members]
        first = next((j for j, d in members if d.weight != 1.0), members[0][0])
        diags.append(info("FT517", ("stages", i, "datasets", first, "weight"), f"the {group} training split of "
                          f"'{stage.id}' mixes " + ", ".join(parts), hint="a weight repeats a dataset's training "
                          "examples (a fraction samples them); the validation split is not weighted"))
    return diags


def row_problems(d: DatasetSpec, row: Any) -> list[RowProblem]:
    """Contract problems of one row of dataset ``d`` (the same judgement the runtime makes)."""
    return list(convert_row(d, row).problems)


def _hub(ctx: Context, base: KeyPath, value: str) -> Diagnostic:
    """FT516 when the value cannot be a hub dataset id (its form; nothing else is checked offline); else FT514: a
    warning when the value looks like a local path that is missing, a note otherwise."""
    problem = hub_id_problem(value)
    if problem is not None:
        return error("FT516", base + ("path",), f"'{value}' is not a local file or folder, and not a hub dataset id: "
                     f"{problem}", hint="write the local file's path relative to the pipeline file, with its "
                     "extension (.jsonl, .json, .csv, .parquet), or the hub id as `owner/name`")
    files = sorted(f.path for f in ctx.inputs.files)
    stem = PurePosixPath(value).name
    near = [f for f in files if PurePosixPath(f).stem == stem or PurePosixPath(f).name.startswith(stem + ".")]
    head = value.split("/", 1)[0]
    looks_local = bool(near) or any(f.split("/", 1)[0] == head for f in files if "/" in f)
    message = (f"'{value}' is not a local file or folder, so it is taken as a hub dataset id (read with "
               "`datasets` at run time; its rows are not checked now)")
    if looks_local:
        hint = (f"write '{near[0]}' if you meant that local file" if near else
                f"write the file's extension (e.g. '{value}.jsonl') if you meant a local file")
        return warning("FT514", base + ("path",), message, hint=hint)
    return info("FT514", base + ("path",), message, hint="write a local file with its extension (.jsonl, .json, "
                ".csv, .parquet) if you meant one")


def _dataset(d: DatasetSpec, base: KeyPath, scan: DatasetScan) -> list[Diagnostic]:
    diags: list[Diagnostic] = []
    coverage = _coverage(scan)
    if scan.file_problem is not None:
        after = f" (after {scan.rows_read:,} rows)" if scan.rows_read else ""
        diags.append(error("FT502", base + ("path",), f"{d.path}: {scan.file_problem}{after}",
                           hint="fix the file there (a .json dataset is one list of row objects; JSON Lines has "
                           "one object per line); `on_bad_row: drop` cannot skip a broken file"))
    elif not scan.rows_read:
        diags.append(error("FT510", base + ("path",), f"{d.path}: the file has no rows",
                           hint="point `path` at a file with data, or remove this dataset"))
    by_code: dict[str, list[Finding]] = {}
    for f in scan.findings:
        by_code.setdefault(f.problem.code, []).append(f)
    for code, found in sorted(by_code.items(), key=lambda kv: (kv[1][0].number, kv[0])):
        first = found[0]
        p = first.problem
        notes = _others(scan, code, found, coverage)
        severity = Severity.ERROR if p.is_error else Severity.WARNING
        diags.append(Diagnostic(code, severity, base + p.key, f"{d.path}: {first.where}: {p.message}", p.hint,
                                None, notes))
    if scan.unused_columns:
        shown = ", ".join(f"'{c}'" for c in scan.unused_columns[:8])
        more = f" and {len(scan.unused_columns) - 8} more" if len(scan.unused_columns) > 8 else ""
        diags.append(warning("FT511", base + ("path",), f"{d.path}: column{'s' if len(scan.unused_columns) > 1 else ''}"
                             f" {shown}{more} {'are' if len(scan.unused_columns) > 1 else 'is'} not read by format "
                             f"{d.format} and will be ignored",
                             hint="map a column that holds data the format reads with `columns:`; otherwise "
                             "nothing is lost (drop the columns from the file to silence this)"))
    return diags


def _coverage(scan: DatasetScan) -> str:
    """``in all 240 rows`` or ``in the first 1,000 of 20,001 rows``."""
    if scan.complete:
        return f"in all {scan.rows_read:,} rows"
    total = f" of {scan.rows_total:,}" if scan.rows_total else ""
    return f"in the first {scan.rows_read:,}{total} rows (`ftplan check --full-data` reads every row)"


def _others(scan: DatasetScan, code: str, found: list[Finding], coverage: str) -> tuple[str, ...]:
    """The note under a dataset's first problem of a code: how many rows have it, and which."""
    total = scan.count(code)
    if total <= 1:
        return () if scan.complete else (f"checked {coverage[3:]}",)
    named = [f.where for f in found[1:ROWS_NAMED + 1]]
    rest = total - 1 - len(named)
    listed = ", ".join(named) + (f" and {rest:,} more" if rest > 0 else "")
    return (f"{total:,} rows with {code} {coverage}; also {listed}",)
