"""Reading every dataset of a data stage into tokenized, fitted examples per output group.

Each row is judged by ``ftplan.data`` (``Scanner`` over ``convert_row``), exactly as ``ftplan check`` judges
it, then tokenized and fitted to ``max_seq_len``. Nothing changes silently:

* a refused row is dropped and listed (``on_bad_row: drop``), or collected (``on_bad_row: error``): the stage
  reads on, then fails naming the first ones, with every one of them (up to ``BAD_ROWS_LIMIT``) in
  ``bad-rows.jsonl`` in the output folder;
* a row too long for ``truncation: drop``, or with nothing left to train, is dropped and listed; a truncated
  row is listed with its length; raw text is never truncated or dropped for length: a document longer than
  ``max_seq_len`` is split into pieces of ``max_seq_len`` tokens (counted per dataset);
* row warnings (empty answers, conversations that end with a user turn, ...) and columns the format does not
  read are listed in the manifest and counted in the log.
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ftplan.data.rows import Text, group_of, missing_tool_support, tool_features
from ftplan.data.scan import Scanner

from .errors import BadRow, DataError
from .manifest import DatasetReport, DroppedRow, RowWarning, TruncatedRow
from .readers import is_hub_id, read_rows
from .tokenize import Encoder, Example, fit, length, split_document

BAD_ROWS_FILE = "bad-rows.jsonl"
"""Report of the rows that stopped an ``on_bad_row: error`` stage, in its output folder."""
BAD_ROWS_LIMIT = 10_000
"""Refused rows collected before an ``on_bad_row: error`` stage stops reading."""
WARNINGS_KEPT = 1_000
"""Row warnings listed in the manifest per dataset (all are counted)."""


@dataclass
class Collected:
    """What the datasets of a stage produced."""

    groups: dict[str, list[Example]] = field(default_factory=dict)
    """Examples by output group, in dataset then row order."""
    origins: dict[str, list[int]] = field(default_factory=dict)
    """For each example of a group, the position of its dataset in the stage (its ``weight`` applies to it)."""
    reports: list[DatasetReport] = field(default_factory=list)
    """Per dataset counts."""
    dropped: list[DroppedRow] = field(default_factory=list)
    """Every dropped row."""
    truncated: list[TruncatedRow] = field(default_factory=list)
    """Every truncated row."""
    warnings: list[RowWarning] = field(default_factory=list)
    """Row warnings (at most ``WARNINGS_KEPT`` per dataset)."""


@dataclass(frozen=True)
class _Refusal:
    dataset: str
    where: str
    row: int
    code: str
    message: str
    hint: str


def collect(stage: Any, encoder: Encoder, digests: list[str], report_dir: Path | None = None) -> Collected:
    """Read, judge, tokenize and fit every dataset of ``stage`` (``digests``: their content digests).

    With ``on_bad_row: error`` every refused row of every dataset is collected first; then ``DataError`` is
    raised, and the full list written to ``report_dir/bad-rows.jsonl`` when ``report_dir`` is given."""
    out = Collected()
    refused: list[_Refusal] = []
    for position, (spec, digest) in enumerate(zip(stage.datasets, digests)):
        if is_hub_id(spec.path):
            _log(f"data {stage.id}: {spec.path!r} is not a local file or folder; reading it as a hub dataset id")
        group = group_of(spec.format)
        before = len(out.groups.get(group, []))
        report = _dataset(stage, spec, digest, encoder, out, refused)
        out.origins.setdefault(group, []).extend([position] * (len(out.groups.get(group, [])) - before))
        out.reports.append(report)
        if len(refused) >= BAD_ROWS_LIMIT:
            break
    if refused:
        raise _refusal_error(stage, refused, report_dir)
    return out


def _dataset(stage: Any, spec: Any, digest: str, encoder: Encoder, out: Collected,
             refused: list[_Refusal]) -> DatasetReport:
    group = group_of(spec.format)
    examples = out.groups.setdefault(group, [])
    scanner = Scanner(spec, spec.path)
    rows_out = dropped = truncated = warned = split = pieces = 0
    warning_codes: Counter[str] = Counter()
    checked_features: set[frozenset[str]] = set()
    for raw in read_rows(spec.path, spec.split, spec.max_rows):
        converted = scanner.row(raw)
        for p in converted.problems:
            if not p.is_error:
                warned += 1
                warning_codes[p.code] += 1
                if warned <= WARNINGS_KEPT:
                    out.warnings.append(RowWarning(dataset=spec.path, row=raw.number, code=p.code,
                                                   message=p.message))
        record = converted.record
        if record is None:
            p = next(p for p in converted.problems if p.is_error)
            if stage.on_bad_row == "error":
                refused.append(_Refusal(spec.path, raw.where, raw.number, p.code, p.message, p.hint))
                if len(refused) >= BAD_ROWS_LIMIT:
                    break
                continue
            out.dropped.append(DroppedRow(dataset=spec.path, row=raw.number, reason=f"{p.code}: {p.message}"))
            dropped += 1
            continue
        features = tool_features(record)
        if features and features not in checked_features:
            checked_features.add(features)
            _require_tool_support(encoder, spec.path, features)
        if refused:  # already failing: judge the remaining rows, do not tokenize them
            continue
        try:
            example = encoder.encode(record, raw.number)
        except BadRow as bad:
            if stage.on_bad_row == "error":
                refused.append(_Refusal(spec.path, raw.where, raw.number, "template", bad.reason,
                                        "fix the row or the chat template"))
                continue
            out.dropped.append(DroppedRow(dataset=spec.path, row=raw.number, reason=bad.reason))
            dropped += 1
            continue
        if isinstance(record, Text):
            parts = split_document(example, stage.max_seq_len)  # type: ignore[arg-type]
            split += len(parts) > 1
            pieces += len(parts)
            rows_out += 1
            examples.extend(parts)
            continue
        tokens = length(example)
        fitted = fit(example, stage.max_seq_len, stage.truncation)
        if fitted.example is None:
            out.dropped.append(DroppedRow(dataset=spec.path, row=raw.number, reason=fitted.reason or "dropped"))
            dropped += 1
            continue
        if fitted.truncated:
            truncated += 1
            out.truncated.append(TruncatedRow(dataset=spec.path, row=raw.number, tokens=tokens,
                                              kept=length(fitted.example)))
        rows_out += 1
        examples.append(fitted.example)
    scan = scanner.result()
    if scan.unused_columns:
        _log(f"data {stage.id}: {spec.path}: column(s) {', '.join(map(repr, scan.unused_columns))} not read by format "
             f"{spec.format}; ignored")
    if warned:
        counts = ", ".join(f"{code} {n}" for code, n in sorted(warning_codes.items()))
        _log(f"data {stage.id}: {spec.path}: {warned} row warning(s) ({counts}); listed in the manifest")
    return DatasetReport(path=spec.path, format=spec.format, group=group, sha256=digest, weight=spec.weight,
                         rows_in=scan.rows_read,
                         rows_out=rows_out, dropped=dropped, truncated=truncated, warnings=warned,
                         unused_columns=list(scan.unused_columns), split=split, pieces=pieces)


def _require_tool_support(encoder: Encoder, path: str, features: frozenset[str]) -> None:
    """Data with tool calls needs a template that renders them; otherwise they would vanish from the text."""
    missing = missing_tool_support(encoder.template.text, features)
    if missing:
        raise DataError(f"{path} holds {' and '.join(sorted(features)).replace('_', ' ')}, but the chat template "
                        f"({encoder.template.source}) cannot render {' or '.join(missing)}: they would be dropped "
                        "from the training text. Use a chat template with tool support (the model family's own, "
                        "via chat_template: tokenizer or a .jinja file), or remove the tool turns from the data")


def _refusal_error(stage: Any, refused: list[_Refusal], report_dir: Path | None) -> DataError:
    """One message for every refused row: the first in full, how many more, and where all of them are listed."""
    first = refused[0]
    listed = ""
    if report_dir is not None:
        report_dir.mkdir(parents=True, exist_ok=True)
        path = report_dir / BAD_ROWS_FILE
        with open(path, "w", encoding="utf-8") as f:
            for r in refused:
                f.write(json.dumps({"dataset": r.dataset, "row": r.row, "where": r.where, "code": r.code,
                                    "problem": r.message, "hint": r.hint}, ensure_ascii=False) + "\n")
        listed = f"; listed in {path}"
    head = f"{first.dataset} {first.where}: {first.message} (fix: {first.hint})"
    if len(refused) == 1:
        return DataError(f"{head}{listed}. Fix the row, or set on_bad_row: drop to train without it")
    datasets = ", ".join(sorted({r.dataset for r in refused}))
    capped = f" (reading stopped at {BAD_ROWS_LIMIT:,})" if len(refused) >= BAD_ROWS_LIMIT else ""
    return DataError(f"{len(refused):,} bad rows in {datasets}{capped}; every one is{listed[1:] or ' counted'}. "
                     f"The first: {head}. Fix them, or set on_bad_row: drop to train without them")


def _log(line: str) -> None:
    print(line, file=sys.stderr, flush=True)
