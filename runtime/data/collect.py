"""Reading every dataset of a data stage into tokenized, fitted examples per output group.

Malformed rows either stop the stage (``on_bad_row: error``) with the dataset path, row number and reason, or are
dropped and listed; rows too long for ``truncation: drop`` and rows with nothing left to train are always dropped
and listed. No row disappears without an entry in the manifest.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .errors import BadRow
from .formats import group_of, to_record
from .manifest import DatasetReport, DroppedRow
from .readers import read_rows
from .tokenize import Encoder, Example, fit


@dataclass
class Collected:
    """What the datasets of a stage produced."""

    groups: dict[str, list[Example]] = field(default_factory=dict)
    """Examples by output group, in dataset then row order."""
    reports: list[DatasetReport] = field(default_factory=list)
    """Per dataset counts."""
    dropped: list[DroppedRow] = field(default_factory=list)
    """Every dropped row."""


def collect(stage: Any, encoder: Encoder, digests: list[str]) -> Collected:
    """Read, convert, tokenize and fit every dataset of ``stage`` (``digests``: their content digests)."""
    out = Collected()
    for spec, digest in zip(stage.datasets, digests):
        group = group_of(spec.format)
        examples = out.groups.setdefault(group, [])
        rows_in = rows_out = dropped = truncated = 0
        for n, row in read_rows(spec.path, spec.split, spec.max_rows):
            rows_in += 1
            try:
                if isinstance(row, BadRow):
                    raise row
                example = encoder.encode(to_record(spec, row, n), n)
            except BadRow as bad:
                if stage.on_bad_row == "error":
                    raise bad.in_dataset(spec.path) from None
                out.dropped.append(DroppedRow(dataset=spec.path, row=n, reason=bad.reason))
                dropped += 1
                continue
            fitted = fit(example, stage.max_seq_len, stage.truncation)
            if fitted.example is None:
                out.dropped.append(DroppedRow(dataset=spec.path, row=n, reason=fitted.reason or "dropped"))
                dropped += 1
                continue
            truncated += fitted.truncated
            rows_out += 1
            examples.append(fitted.example)
        out.reports.append(DatasetReport(path=spec.path, format=spec.format, group=group, sha256=digest,
                                         rows_in=rows_in, rows_out=rows_out, dropped=dropped,
                                         truncated=truncated))
    return out
