"""A whole dataset judged row by row: what ``check`` reports and what the runtime's data stage acts on.

``Scanner`` takes the rows of one dataset in order (from ``reading.read_rows``, or from the runtime's Parquet
and ``datasets`` readers), judges each with ``rows.convert_row`` and keeps the tally: every problem up to
``MAX_KEPT`` with its position, a count per code of all of them, the rows refused, the columns no format field
reads, and what the rows need from the chat template. ``scan_file`` runs it over a local file for ``check``,
over the first rows or all of them.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .reading import FileProblem, RawRow, count_rows, read_rows, row_unit
from .rows import Converted, RowProblem, Unpaired, convert_row, tool_features, used_columns

__all__ = ["DatasetScan", "Finding", "MAX_KEPT", "Scanner", "scan_file"]

MAX_KEPT = 1000
"""Problems kept with their position per dataset; the rest are counted."""


@dataclass(frozen=True)
class Finding:
    """A problem of one row, with where the row is."""

    where: str
    """``line 7``, ``item 3 (line 40)``, ``row 3 (line 4)``."""
    number: int
    """The row number (what ``where`` counts)."""
    problem: RowProblem
    """What is wrong."""


@dataclass(frozen=True)
class DatasetScan:
    """What reading a dataset's rows found (all of them, or the first ``rows_read``)."""

    path: str
    """The dataset path, relative to the project root."""
    checked: bool = True
    """False when the rows are read only at run time (Parquet, dataset folders, hub datasets)."""
    rows_read: int = 0
    """Rows judged."""
    complete: bool = True
    """True when every row of the file was read."""
    rows_total: int | None = None
    """Rows in the file, when known (always when ``complete``)."""
    file_problem: str | None = None
    """A problem that stopped reading the file (with its line), or why it cannot be read at all."""
    findings: tuple[Finding, ...] = ()
    """Row problems in file order, at most ``MAX_KEPT``."""
    counts: tuple[tuple[str, int], ...] = ()
    """(code, number of rows) for every problem code found, sorted by code."""
    bad_rows: int = 0
    """Rows refused by an error."""
    unused_columns: tuple[str, ...] = ()
    """Columns of the file that no field of the format reads, in the order first seen."""
    tool_features: frozenset[str] = frozenset()
    """What the rows need from the chat template beyond plain turns: ``tools``, ``tool_calls``."""
    unit: str = "line"
    """What row numbers count: ``line``, ``item`` or ``row``."""
    desirable: int = 0
    """KTO rows read whose answer is labelled desirable."""
    undesirable: int = 0
    """KTO rows read whose answer is labelled undesirable."""

    @property
    def errors(self) -> int:
        """Number of rows refused."""
        return self.bad_rows

    def count(self, code: str) -> int:
        """Rows with a problem of this code."""
        return dict(self.counts).get(code, 0)


@dataclass
class Scanner:
    """Judges the rows of one dataset in order and keeps the tally."""

    spec: Any
    """The dataset entry (a ``DatasetSpec``)."""
    path: str
    """The dataset path, for the result."""
    unit: str = "line"
    """What row numbers count."""
    max_kept: int = MAX_KEPT
    rows_read: int = 0
    bad_rows: int = 0
    findings: list[Finding] = field(default_factory=list)
    counts: Counter[str] = field(default_factory=Counter)
    unused: dict[str, None] = field(default_factory=dict)
    features: set[str] = field(default_factory=set)
    file_problem: str | None = None
    labels: Counter[bool] = field(default_factory=Counter)

    def __post_init__(self) -> None:
        self._used = used_columns(self.spec)

    def row(self, raw: RawRow) -> Converted:
        """Judge one row: its record or its problems (also recorded in the tally)."""
        self.rows_read += 1
        if raw.problem is not None:
            converted = Converted(None, (RowProblem("FT502", "error", f"cannot be read: {raw.problem}",
                                                    "fix the row (each JSON Lines line must be one JSON object), "
                                                    "or set `on_bad_row: drop` to skip unreadable rows"),))
        else:
            converted = convert_row(self.spec, raw.value)
            if isinstance(raw.value, dict):
                for key in raw.value:
                    if key not in self._used and key not in self.unused:
                        self.unused[str(key)] = None
        if converted.record is None:
            self.bad_rows += 1
        else:
            self.features |= tool_features(converted.record)
            if isinstance(converted.record, Unpaired):
                self.labels[converted.record.label] += 1
        for problem in converted.problems:
            self.counts[problem.code] += 1
            if len(self.findings) < self.max_kept:
                self.findings.append(Finding(raw.where, raw.number, problem))
        return converted

    def stop(self, problem: str) -> None:
        """Record a problem that stopped reading the file."""
        self.file_problem = problem

    def result(self, *, complete: bool = True, rows_total: int | None = None) -> DatasetScan:
        """The tally so far; ``complete`` when every row was read."""
        return DatasetScan(
            path=self.path, rows_read=self.rows_read, complete=complete,
            rows_total=self.rows_read if complete else rows_total, file_problem=self.file_problem,
            findings=tuple(self.findings), counts=tuple(sorted(self.counts.items())), bad_rows=self.bad_rows,
            unused_columns=tuple(self.unused), tool_features=frozenset(self.features), unit=self.unit,
            desirable=self.labels[True], undesirable=self.labels[False])


def scan_file(spec: Any, full: Path, rel: str, *, max_rows: int | None = None) -> DatasetScan:
    """Judge the rows of a local file: all of them, or the first ``max_rows`` (the dataset's own ``max_rows``
    caps both). Raises ``OSError`` when the file cannot be opened."""
    limit = min(x for x in (max_rows, spec.max_rows) if x is not None) if (max_rows or spec.max_rows) else None
    scanner = Scanner(spec, rel, unit=row_unit(full))
    rows = read_rows(full)
    try:
        for raw in rows:
            if limit is not None and scanner.rows_read >= limit:
                stopped_by_spec = spec.max_rows is not None and limit == spec.max_rows
                total = None if stopped_by_spec else count_rows(full)
                return scanner.result(complete=stopped_by_spec, rows_total=total)
            scanner.row(raw)
    except FileProblem as exc:
        scanner.stop(str(exc))
    return scanner.result(complete=True)
