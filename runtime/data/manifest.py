"""The data stage's ``manifest.json``: what went in, what came out, what was dropped, and the fingerprint.

The fingerprint is a sha256 over everything the output depends on: the data files' bytes, the tokenizer's
files, the resolved chat template text, the stage's settings, the tokens added to the vocabulary and the
versions of the tokenizing libraries. It is information for readers: whether the stage runs again is decided
by its completion stamp (``ftplan_runtime.stamps``).
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

MANIFEST_FORMAT = 3
"""Version of the manifest and output layout; part of the fingerprint, so a layout change redoes the work."""

MANIFEST_NAME = "manifest.json"
"""File name of the manifest in the stage's output folder."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)


class DroppedRow(_Model):
    """A row that is not in the output, and why."""

    dataset: str
    """Dataset path as written in the pipeline."""
    row: int
    """1-based row number in that dataset (the line number for JSONL)."""
    reason: str
    """What was wrong with it."""


class TruncatedRow(_Model):
    """A row cut to ``max_seq_len`` (``truncation: truncate``)."""

    dataset: str
    """Dataset path as written in the pipeline."""
    row: int
    """1-based row number in that dataset (the line number for JSONL)."""
    tokens: int
    """Its length before truncation (preference: prompt + the longer answer)."""
    kept: int
    """Its length after."""


class RowWarning(_Model):
    """A row kept with a warning (an empty answer, a conversation ending with a user turn, ...)."""

    dataset: str
    """Dataset path as written in the pipeline."""
    row: int
    """1-based row number in that dataset (the line number for JSONL)."""
    code: str
    """The warning's code, as ``ftplan check`` reports it (``FT512``)."""
    message: str
    """What is odd about the row."""


class DatasetReport(_Model):
    """Counts for one source dataset."""

    path: str
    """Dataset path as written in the pipeline."""
    format: str
    """Its format."""
    group: str
    """Output group it feeds: ``sft``, ``preference`` or ``kto``."""
    sha256: str
    """Digest of its content (file bytes, or the hub dataset's fingerprint)."""
    weight: float = 1.0
    """Its ``weight`` in the mix of the training split (its training examples are taken that many times)."""
    rows_in: int
    """Rows read (after ``max_rows``)."""
    rows_out: int
    """Rows that became examples."""
    dropped: int
    """Rows dropped (malformed, too long, or nothing to train)."""
    truncated: int
    """Rows cut to ``max_seq_len``."""
    warnings: int
    """Row warnings (listed in the manifest's ``warnings``, up to 1,000 per dataset)."""
    unused_columns: list[str]
    """Columns of the file that the format does not read (ignored)."""
    split: int = 0
    """Raw-text documents longer than ``max_seq_len``, split into pieces (raw text is never truncated)."""
    pieces: int = 0
    """Examples the raw-text documents became (one per document, more for the split ones)."""


class TokenStats(_Model):
    """Token counts of a split's examples (before packing)."""

    examples: int
    """Number of examples."""
    total: int
    """Tokens in all examples (preference: prompt + chosen + rejected)."""
    trained: int
    """Tokens that carry loss (preference: chosen + rejected; KTO: completion)."""
    min: int
    """Shortest example (preference: prompt + longer answer)."""
    mean: float
    """Mean example length."""
    p50: int
    """Median length (nearest rank)."""
    p95: int
    """95th percentile length (nearest rank)."""
    max: int
    """Longest example."""


class PackingStats(_Model):
    """How well examples filled the packed rows."""

    sequences: int
    """Examples packed."""
    rows: int
    """Packed rows written."""
    capacity: int
    """Row capacity (``max_seq_len``)."""
    fill_ratio: float
    """Tokens / (rows x capacity)."""


class SplitReport(_Model):
    """One written split (``train`` or ``validation``) of one group."""

    rows: int
    """Rows in the saved dataset (packed rows when packing)."""
    tokens: TokenStats
    """Token statistics of its examples."""
    packing: PackingStats | None = None
    """Packing statistics (packed supervised groups only)."""


class GroupReport(_Model):
    """One output group (``sft``, ``preference`` or ``kto``)."""

    columns: list[str]
    """Columns of its saved datasets."""
    splits: dict[str, SplitReport]
    """Saved splits by name."""


class TemplateReport(_Model):
    """The chat template used."""

    source: str
    """``tokenizer``, a built-in name or the ``.jinja`` path."""
    sha256: str
    """Digest of the resolved template text."""
    masking: str
    """How completion masks were computed: ``generation`` markers or ``prefix-diff``."""


class Manifest(_Model):
    """Everything a reader of the data stage's output needs to know about it."""

    format: int = MANIFEST_FORMAT
    """Manifest format version."""
    stage: str
    """Data stage id."""
    fingerprint: str
    """sha256 over the inputs and settings (see ``inputs``)."""
    inputs: dict[str, Any]
    """What the fingerprint covers: settings, data digests, tokenizer file digests, template digest, versions."""
    chat_template: TemplateReport
    """The chat template used."""
    datasets: list[DatasetReport]
    """Per source dataset counts, in pipeline order."""
    dropped: list[DroppedRow]
    """Every dropped row with its reason."""
    truncated: int
    """Rows cut to ``max_seq_len`` in all datasets."""
    truncated_rows: list[TruncatedRow]
    """Every truncated row with its length before and after."""
    warnings: list[RowWarning]
    """Rows kept with a warning (up to 1,000 per dataset; ``datasets[].warnings`` counts all)."""
    groups: dict[str, GroupReport]
    """Written output groups."""

    def write(self, folder: Path) -> Path:
        """Write ``manifest.json`` (sorted keys) into ``folder`` and return its path."""
        path = Path(folder) / MANIFEST_NAME
        path.write_text(json.dumps(self.model_dump(mode="json"), sort_keys=True, indent=2) + "\n",
                        encoding="utf-8")
        return path

    @classmethod
    def read(cls, folder: Path) -> Manifest | None:
        """The manifest in ``folder``, or None when it is missing or unreadable."""
        path = Path(folder) / MANIFEST_NAME
        try:
            return cls.model_validate_json(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None


def fingerprint(inputs: dict[str, Any]) -> str:
    """sha256 of the canonical JSON of the fingerprint inputs."""
    blob = json.dumps(inputs, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def token_stats(lengths: list[int], trained: int, total: int) -> TokenStats:
    """Statistics of example ``lengths`` with the given trained and total token counts."""
    if not lengths:
        return TokenStats(examples=0, total=0, trained=0, min=0, mean=0.0, p50=0, p95=0, max=0)
    s = sorted(lengths)

    def rank(p: float) -> int:
        return s[max(0, math.ceil(p * len(s)) - 1)]

    return TokenStats(examples=len(s), total=total, trained=trained, min=s[0], mean=round(sum(s) / len(s), 3),
                      p50=rank(0.5), p95=rank(0.95), max=s[-1])
