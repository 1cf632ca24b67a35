"""The text view of a ``ReviewDiff`` (``ftplan diff``, ``compile --check``): plain lines, Terraform's markers.

::

    --- plans/support-bot (plan support-bot)
    +++ examples/llama3-8b-qlora-24gb.yaml (pipeline support-bot)

    ~ sft  QLoRA r16 α32
        ~ micro batch           2 → 4
        ~ tokens per step       32,768 → 65,536
        ~ peak memory per GPU   8.9 → 12.4 GiB of 24.0 (fits)

    Stages: 0 to add, 1 to change, 0 to remove.

A section (``pipeline`` for the pipeline-wide facts, then each stage) starts with ``+`` added, ``-`` removed or
``~`` changed, and every fact line inside it with its own marker; an added or removed stage lists its headline
facts. The last line is the one-line summary. Colour is the console's business (by the marker); these lines are
plain. Values are the words ``ftplan.review`` read from plan.json; here they are only put side by side.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .review import Change, Fact, ReviewDiff, StageDiff, peak_text
from .units import gib_number

if TYPE_CHECKING:  # pragma: no cover
    from .review_sources import SideError

LABEL_WIDTH = 22
"""Labels are padded to this width, then two spaces (a longer label just gets the two spaces)."""


def diff_lines(diff: ReviewDiff) -> list[str]:
    """The whole text view: the two sides, each section that changed, then the one-line summary."""
    lines = [f"--- {diff.old.source} ({diff.old.kind} {diff.old.pipeline})",
             f"+++ {diff.new.source} ({diff.new.kind} {diff.new.pipeline})"]
    if diff.pipeline:
        lines += ["", "~ pipeline", *(_change_line(c) for c in diff.pipeline)]
    for stage in diff.stages:
        if stage.symbol != "=":
            lines += ["", *stage_lines(stage)]
    return lines + ["", diff.summary_line()]


def stage_lines(stage: StageDiff) -> list[str]:
    """One stage's section: its header, then a line per fact (only the headline facts of an added or removed
    stage)."""
    if stage.symbol == "~" and stage.old_method != stage.new_method:
        method = f"{stage.old_method} → {stage.new_method}"
    else:
        method = str(stage.new_method if stage.new_method is not None else stage.old_method)
    head = f"{stage.symbol} {stage.id}  {method}"
    if stage.symbol == "~":
        whole = {c.key for c in stage.changes if c.old is None or c.new is None}  # facts added or removed whole
        return [head, *(_change_line(c) for c in stage.changes if _fact(c).parent not in whole)]
    return [head, *(_change_line(c) for c in stage.changes if _fact(c).headline)]


def _fact(c: Change) -> Fact:
    """The fact a change is about (its new side, or its old side when removed)."""
    fact = c.new or c.old
    assert fact is not None
    return fact


def _change_line(c: Change) -> str:
    if c.old is None:
        marker, text = "+", c.new.text if c.new else ""
    elif c.new is None:
        marker, text = "-", c.old.text
    else:
        marker, text = "~", change_text(c)
    return f"    {marker} {c.label:<{LABEL_WIDTH}}  {text}".rstrip()


def change_text(c: Change) -> str:
    """``before → after`` of a changed fact, sharing what both sides share: ``2,048 → 4,096 tokens``,
    ``8.9 → 12.4 GiB of 24.0 (fits → tight)``; the raw values when their words are the same."""
    assert c.old is not None and c.new is not None
    if c.key == "peak" and isinstance(c.old.value, dict) and isinstance(c.new.value, dict):
        return _peak_change(c.old.value, c.new.value)
    a, b = c.old.text, c.new.text
    if a == b:
        if c.old.exact is not None and c.new.exact is not None and c.old.exact != c.new.exact:
            a, b = c.old.exact, c.new.exact
        else:
            return f"{_raw(c.old.value)} → {_raw(c.new.value)}"
    head_a, _, tail_a = a.partition(" ")
    head_b, _, tail_b = b.partition(" ")
    if tail_a and tail_a == tail_b and _is_number(head_a) and _is_number(head_b):
        return f"{head_a} → {head_b} {tail_a}"
    return f"{a} → {b}"


def _peak_change(old: dict[str, Any], new: dict[str, Any]) -> str:
    verdict = (f"{old.get('verdict')} → {new.get('verdict')}" if old.get("verdict") != new.get("verdict")
               else str(new.get("verdict")))
    if old.get("capacity_bytes") != new.get("capacity_bytes"):
        return f"{peak_text(old).rsplit(' (', 1)[0]} → {peak_text(new).rsplit(' (', 1)[0]} ({verdict})"
    a, b = old.get("peak_bytes"), new.get("peak_bytes")
    digits = 1 if gib_number(a) != gib_number(b) else 2
    card = gib_number(new.get("capacity_bytes"))
    return f"{gib_number(a, digits)} → {gib_number(b, digits)} GiB of {card} ({verdict})"


def _raw(value: Any) -> str:
    return "null" if value is None else str(value) if not isinstance(value, str) else repr(value)


def _is_number(text: str) -> bool:
    return text.replace(",", "").replace(".", "", 1).isdigit()


def side_error_lines(exc: "SideError") -> list[str]:
    """Why a side could not be diffed: which side and why, its check errors (with their notes and hints), and
    what to do."""
    from .console import diagnostic_lines
    from .diagnostics import Severity

    lines = [f"error: cannot diff the {exc.side or 'given'} side: {exc.message}"]
    if exc.check is not None:
        for d in exc.check.diagnostics:
            if d.severity is Severity.ERROR:
                lines += ["  " + line for line in diagnostic_lines(d, exc.check)]
    return lines + [f"hint: {exc.hint}"]
