"""Diagnostics: every problem ftplan reports, with a stable code, a severity, a location and a hint.

A diagnostic points at a key path in the pipeline file (``("stages", 1, "learning_rate")``); the loader's
source map turns that into ``FILE:LINE:COL``. Nothing here prints: the CLI renders diagnostics.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from enum import Enum
from typing import Iterable

KeyPath = tuple[str | int, ...]


class Severity(str, Enum):
    """How bad a diagnostic is: errors make ``check`` and ``compile`` fail, warnings do not."""

    ERROR = "error"
    WARNING = "warning"
    INFO = "info"


@dataclass(frozen=True, order=True)
class Span:
    """A 1-based position in a file."""

    file: str
    line: int
    col: int

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.col}"


@dataclass(frozen=True)
class Diagnostic:
    """One problem found in a pipeline: what is wrong (``message``), where (``path``/``span``), what to do
    (``hint``), plus a stable ``code`` such as ``FT101`` that tests and CI filters can rely on."""

    code: str
    severity: Severity
    path: KeyPath
    message: str
    hint: str | None = None
    span: Span | None = None
    notes: tuple[str, ...] = field(default=())
    """Extra lines printed under the message (e.g. the largest memory terms, what would fit)."""
    related: tuple[tuple[KeyPath, str], ...] = field(default=())
    """Other places the problem involves, as (key path, what is there): the views print each one located,
    like ``pipeline.yaml:9:9: stage id 'sft' first used here``."""

    def located(self, span: Span | None) -> "Diagnostic":
        """The same diagnostic with its source position filled in."""
        return replace(self, span=span)


def error(code: str, path: KeyPath, message: str, hint: str | None = None, notes: Iterable[str] = (),
          related: Iterable[tuple[KeyPath, str]] = ()) -> Diagnostic:
    """An error diagnostic. Every error must say how to fix it: pass a ``hint`` that does (``hint`` keeps its
    default only for callers written before the rule; tests/test_hints.py fails on any error without one)."""
    return Diagnostic(code, Severity.ERROR, tuple(path), message, hint, None, tuple(notes),
                      tuple((tuple(p), text) for p, text in related))


def warning(code: str, path: KeyPath, message: str, hint: str | None = None, notes: Iterable[str] = ()) -> Diagnostic:
    """A warning diagnostic."""
    return Diagnostic(code, Severity.WARNING, tuple(path), message, hint, None, tuple(notes))


def info(code: str, path: KeyPath, message: str, hint: str | None = None, notes: Iterable[str] = ()) -> Diagnostic:
    """An informational diagnostic."""
    return Diagnostic(code, Severity.INFO, tuple(path), message, hint, None, tuple(notes))


def has_errors(diagnostics: Iterable[Diagnostic]) -> bool:
    """True when any diagnostic is an error."""
    return any(d.severity is Severity.ERROR for d in diagnostics)


LEADING_CODES: frozenset[str] = frozenset({"FT009"})
"""Codes that sum up the whole file (an Axolotl config pasted as a pipeline): printed before anything else at
the same position."""


def sort_key(d: Diagnostic) -> tuple[tuple[int, int], bool, str, str]:
    """Stable order for reports: by position in the file (file-wide summaries first), then code."""
    pos = (d.span.line, d.span.col) if d.span else (10**9, 0)
    return (pos, d.code not in LEADING_CODES, d.code, d.message)


class FtplanError(Exception):
    """A failure with diagnostics attached (invalid pipeline, unreadable file). The CLI prints them."""

    def __init__(self, diagnostics: list[Diagnostic]):
        super().__init__("; ".join(d.message for d in diagnostics))
        self.diagnostics = diagnostics
