"""``ftplan report PLAN_DIR``: a compiled plan's HTML page (``plan.html``), rebuilt from its ``plan.json``.

Load (``read_plan_document``) -> render (``render.plan_html``) -> write (``write.write_plan_file`` into the plan
folder, or ``write.write_file`` for ``-o FILE``). The page written here is byte for byte the one ``ftplan
compile`` writes from the same ``plan.json``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .plan.types import PLAN_FORMAT
from .render.plan_html import render_plan_html
from .write import WriteError, write_file, write_plan_file

PLAN_JSON = "plan.json"
"""The file the page is rendered from, at the top of the plan folder."""

REPORT_FILE = "plan.html"
"""The page's name in the plan folder (``ftplan compile`` writes it too)."""


class ReportError(Exception):
    """The page cannot be made or written; the message says what is wrong, where, and what to do.

    ``usage`` is true for a folder that is not a compiled plan or a place that cannot be written (exit code 2),
    false for a ``plan.json`` this ftplan cannot read (exit code 1)."""

    def __init__(self, message: str, *, usage: bool):
        super().__init__(message)
        self.usage = usage


@dataclass(frozen=True)
class ReportResult:
    """What ``write_report`` did."""

    path: Path
    """The page written (or already up to date)."""
    changed: bool
    """False when the file already held exactly this page."""


def read_plan_document(plan_dir: Path) -> dict[str, Any]:
    """The ``plan.json`` document of a compiled plan folder; ``ReportError`` when there is none this ftplan reads."""
    plan_dir = Path(plan_dir)
    path = plan_dir / PLAN_JSON
    if not plan_dir.is_dir():
        what = "does not exist" if not plan_dir.exists() else "is not a folder"
        raise ReportError(f"{plan_dir} {what}; pass the plan folder that `ftplan compile PIPELINE -o DIR` wrote",
                          usage=True)
    if not path.is_file():
        raise ReportError(f"{plan_dir} holds no {PLAN_JSON}, so it is not a compiled plan; compile one with "
                          f"`ftplan compile PIPELINE -o {plan_dir}`", usage=True)
    fix = f"compile the plan again (`ftplan compile PIPELINE -o {plan_dir}`)"
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise ReportError(f"{path} is not UTF-8 text (byte {exc.start}); {fix}", usage=False) from None
    except json.JSONDecodeError as exc:
        raise ReportError(f"{path}:{exc.lineno}:{exc.colno}: not valid JSON ({exc.msg}); {fix}", usage=False) from None
    version = doc.get("format_version") if isinstance(doc, dict) else None
    if not isinstance(doc, dict) or version != PLAN_FORMAT:
        raise ReportError(f"{path} has format_version {version!r}, but this ftplan reads format {PLAN_FORMAT}; "
                          f"{fix} with this ftplan", usage=False)
    return doc


def report_html(plan_dir: Path) -> str:
    """The text of the plan folder's ``plan.html``, rendered from its ``plan.json``."""
    doc = read_plan_document(plan_dir)
    try:
        return render_plan_html(doc)
    except (KeyError, IndexError, TypeError, ValueError, AttributeError) as exc:
        what = (f"lacks the key {exc.args[0]!r}" if isinstance(exc, KeyError)
                else f"holds a value of the wrong type ({exc})")
        raise ReportError(f"{Path(plan_dir) / PLAN_JSON} {what}: it was edited, or written by another ftplan; "
                          f"compile the plan again (`ftplan compile PIPELINE -o {plan_dir}`)", usage=False) from None


def write_report(plan_dir: Path, out_file: Path | None = None) -> ReportResult:
    """Write the plan folder's page: into the folder as ``plan.html`` (ftplan's file, listed in its marker), or
    to ``out_file``."""
    plan_dir = Path(plan_dir)
    text = report_html(plan_dir)
    target = Path(out_file) if out_file is not None else plan_dir / REPORT_FILE
    try:
        if out_file is None:
            changed = write_plan_file(plan_dir, REPORT_FILE, text)
        else:
            changed = write_file(target, text)
    except WriteError as exc:
        raise ReportError(f"cannot write {target}: {exc}", usage=True) from None
    except OSError as exc:
        where = f" ({exc.filename})" if exc.filename else ""
        raise ReportError(f"cannot write {target}: {exc.strerror or exc}{where}; choose another file with -o",
                          usage=True) from None
    return ReportResult(target, changed)
