"""The data contract, checked on the first rows of every local dataset file before any job starts.

For each row: the columns its format reads exist (after the ``columns`` mapping), conversations are lists of
turns with the mapped role and content keys, every role maps to a canonical role, preference pairs are
well-formed and KTO labels are booleans. Only the first few problems of a dataset are reported.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from ftplan.context import Context
from ftplan.diagnostics import Diagnostic, Severity, error
from ftplan.schemas.datasets import Role

from ._common import data_stages, did_you_mean

CODES = {
    "FT501": "a local dataset file does not exist",
    "FT502": "a dataset row cannot be read",
    "FT503": "a row lacks a column its format needs",
    "FT504": "a value has the wrong type or a conversation is malformed",
    "FT505": "a role in the data has no mapping in `roles`",
    "FT506": "a supervised conversation does not end with an assistant turn",
    "FT507": "a preference pair's chosen/rejected is empty or of different kinds",
    "FT508": "a preference pair's chosen equals its rejected",
    "FT509": "a KTO label is not a boolean",
    "FT510": "a dataset file has no rows",
}

MAX_REPORTED = 5
"""Problems reported per dataset; the last one carries a note with the total."""

CANONICAL_ROLES: tuple[str, ...] = ("system", "user", "assistant", "tool")
_ROLE_GUESS = {"human": "user", "usr": "user", "prompter": "user", "customer": "user", "bot": "assistant",
               "gpt": "assistant", "model": "assistant", "ai": "assistant", "chatbot": "assistant",
               "function": "tool", "observation": "tool", "ipython": "tool", "sys": "system"}


@dataclass(frozen=True)
class _Problem:
    code: str
    severity: Severity
    text: str
    hint: str | None
    key: tuple


def check(ctx: Context) -> list[Diagnostic]:
    """Check every dataset of every data stage against its file's first rows."""
    diags: list[Diagnostic] = []
    missing = {tuple(path[:4]): rel for path, rel in ctx.inputs.missing
               if len(path) >= 4 and path[0] == "stages" and path[2] == "datasets"}
    for i, stage in data_stages(ctx):
        for j, d in enumerate(stage.datasets):
            base = ("stages", i, "datasets", j)
            if base in missing:
                diags.append(error("FT501", base + ("path",), f"dataset file '{missing[base]}' does not exist",
                                   hint="check the path (relative to the pipeline file); hub dataset ids are "
                                   "written `org/name`"))
                continue
            head = ctx.inputs.datasets.get((stage.id, j))
            if head is None or not head.checked:
                continue
            diags += _dataset(d, base, head)
    return diags


def _dataset(d, base: tuple, head) -> list[Diagnostic]:
    diags: list[Diagnostic] = []
    if head.error is not None:
        # the snapshot's messages usually name the line/item already ("line 7 is not valid JSON ...")
        named = head.error_row is None or re.search(rf"\b{head.error_row}\b", head.error)
        where = "" if named else f"row {head.error_row}: "
        diags.append(error("FT502", base + ("path",), f"{d.path}: {where}{head.error}",
                           hint="fix the row (each JSONL line must be one JSON object)"))
    elif not head.rows:
        diags.append(error("FT510", base + ("path",), f"{d.path}: the file has no rows",
                           hint="point `path` at a file with data, or remove this dataset"))
    problems: list[tuple[int, _Problem]] = []
    for n, row in enumerate(head.rows, start=1):
        problems += [(n, p) for p in row_problems(d, row)]
    for k, (n, p) in enumerate(problems[:MAX_REPORTED]):
        notes = ()
        if k == MAX_REPORTED - 1 and len(problems) > MAX_REPORTED:
            notes = (f"{len(problems)} problems in the first {len(head.rows)} rows of {d.path}; "
                     f"only the first {MAX_REPORTED} are shown",)
        diags.append(Diagnostic(p.code, p.severity, base + p.key, f"{d.path}: row {n}: {p.text}", p.hint,
                                None, notes))
    return diags


def row_problems(d, row: Any) -> list[_Problem]:
    """Contract problems of one row of dataset ``d`` (keys relative to the dataset entry)."""
    if not isinstance(row, dict):
        return [_Problem("FT504", Severity.ERROR, f"is a {_kind(row)}, not an object", "each row must be a JSON "
                         "object with the format's columns", ("path",))]
    check_row = _FORMATS[d.format]
    return check_row(d, row)


# ------------------------------------------------------------------------------------------------ formats

def _alpaca(d, row) -> list[_Problem]:
    c = d.columns
    out = _require(d, row, ("instruction", "output"))
    for name in ("instruction", "output"):
        col = getattr(c, name)
        if col in row and not isinstance(row[col], str):
            out.append(_type(d, name, col, row[col], "a string"))
    for name in ("input", "system"):
        col = getattr(c, name)
        if row.get(col) is not None and not isinstance(row[col], str):
            out.append(_type(d, name, col, row[col], "a string or null"))
    return out


def _chat(d, row) -> list[_Problem]:
    c = d.columns
    out = _require(d, row, ("messages",))
    if out:
        return out
    roles, turn_out = _turns(d, row[c.messages], c.messages, c.role, c.content, d.roles)
    out += turn_out
    if roles and not turn_out:
        if "assistant" not in roles:
            out.append(_Problem("FT506", Severity.WARNING, "the conversation has no assistant turn, so it trains "
                                "nothing", "drop the row, or check the role mapping in `roles`", _key(d, "path")))
        elif roles[-1] != "assistant":
            out.append(_Problem("FT506", Severity.WARNING, f"the conversation ends with a {roles[-1]} turn, which "
                                "is never a training target", "end each conversation with the assistant's answer",
                                _key(d, "path")))
    return out


def _prompt_completion(d, row) -> list[_Problem]:
    c = d.columns
    out = _require(d, row, ("prompt", "completion"))
    if out:
        return out
    prompt, completion = row[c.prompt], row[c.completion]
    if isinstance(prompt, str) and isinstance(completion, str):
        return out
    if isinstance(prompt, list) and isinstance(completion, list):
        for name, col, value in (("prompt", c.prompt, prompt), ("completion", c.completion, completion)):
            out += _turns(d, value, col, "role", "content", None)[1]
        return out
    return out + [_Problem("FT504", Severity.ERROR, f"'{c.prompt}' is a {_kind(prompt)} and '{c.completion}' a "
                           f"{_kind(completion)}; both must be strings or both lists of turns",
                           "write both as strings, or both as lists of {role, content} turns",
                           _key(d, "path"))]


def _text(d, row) -> list[_Problem]:
    out = _require(d, row, ("text",))
    col = d.columns.text
    if not out and not isinstance(row[col], str):
        out.append(_type(d, "text", col, row[col], "a string"))
    return out


def _preference(d, row) -> list[_Problem]:
    c = d.columns
    out = _require(d, row, ("prompt", "chosen", "rejected"))
    if out:
        return out
    prompt, chosen, rejected = row[c.prompt], row[c.chosen], row[c.rejected]
    if isinstance(prompt, list):
        out += _turns(d, prompt, c.prompt, "role", "content", d.roles)[1]
    elif not isinstance(prompt, str):
        out.append(_type(d, "prompt", c.prompt, prompt, "a string or a list of turns"))
    for name, col, value in (("chosen", c.chosen, chosen), ("rejected", c.rejected, rejected)):
        if value in ("", [], None):
            out.append(_Problem("FT507", Severity.ERROR, f"'{col}' is empty", "every pair needs a non-empty "
                                "chosen and rejected answer", _key(d, "path")))
    if out:
        return out
    if isinstance(chosen, list) and isinstance(rejected, list):
        for col, value in ((c.chosen, chosen), (c.rejected, rejected)):
            out += _turns(d, value, col, "role", "content", d.roles)[1]
    elif not (isinstance(chosen, str) and isinstance(rejected, str)):
        out.append(_Problem("FT507", Severity.ERROR, f"'{c.chosen}' is a {_kind(chosen)} and '{c.rejected}' a "
                            f"{_kind(rejected)}; both must be strings or both lists of turns",
                            "write both as strings, or both as lists of {role, content} turns", _key(d, "path")))
    if not out and chosen == rejected:
        out.append(_Problem("FT508", Severity.WARNING, "chosen and rejected are identical, so the pair carries no "
                            "preference", "drop the row", _key(d, "path")))
    return out


def _kto(d, row) -> list[_Problem]:
    c = d.columns
    out = _require(d, row, ("prompt", "completion", "label"))
    if not out and not isinstance(row[c.label], bool):
        value = row[c.label]
        out.append(_Problem("FT509", Severity.ERROR, f"label '{c.label}' is {value!r} ({_kind(value)}), not a "
                            "boolean", "write `true` for a desirable answer and `false` for an undesirable one",
                            _key(d, "columns", "label")))
    return out


_FORMATS = {"alpaca": _alpaca, "sharegpt": _chat, "messages": _chat, "prompt_completion": _prompt_completion,
            "text": _text, "preference": _preference, "kto": _kto}


# ------------------------------------------------------------------------------------------------ helpers

def _key(d, field: str, *rest) -> tuple:
    """Key path under the dataset entry: the field when the user wrote it, else the dataset's ``path``."""
    return (field, *rest) if field in d.model_fields_set or field == "path" else ("path",)


def _require(d, row: dict, names: tuple[str, ...]) -> list[_Problem]:
    out = []
    for name in names:
        col = getattr(d.columns, name)
        if col in row:
            continue
        keys = [k for k in row if isinstance(k, str)]
        close = did_you_mean(col, keys)
        mapping = f"`columns: {{{name}: <column>}}`"
        if close:
            first = close.split("'")[1]
            hint = f"{close} map it with `columns: {{{name}: {first}}}`"
        else:
            hint = f"map it with {mapping} (the row has: {', '.join(keys[:8]) or 'no keys'})"
        out.append(_Problem("FT503", Severity.ERROR, f"missing column '{col}' (format {d.format})", hint,
                            _key(d, "columns", name)))
    return out


def _type(d, name: str, col: str, value: Any, want: str) -> _Problem:
    return _Problem("FT504", Severity.ERROR, f"'{col}' is a {_kind(value)}, not {want}",
                    f"make '{col}' {want} in every row", _key(d, "path"))


def _turns(d, value: Any, col: str, role_key: str, content_key: str,
           roles: dict[str, Role] | None) -> tuple[list[str], list[_Problem]]:
    """Check a list of turns; return the canonical roles in order and the problems (first one only)."""
    if not isinstance(value, list) or not value:
        what = "an empty list" if value == [] else f"a {_kind(value)}"
        return [], [_Problem("FT504", Severity.ERROR, f"'{col}' is {what}, not a non-empty list of turns",
                             f"'{col}' must be a list of {{{role_key}, {content_key}}} objects", _key(d, "path"))]
    mapped = []
    for k, turn in enumerate(value, start=1):
        if not isinstance(turn, dict):
            return [], [_Problem("FT504", Severity.ERROR, f"turn {k} of '{col}' is a {_kind(turn)}, not an "
                                 f"object with '{role_key}' and '{content_key}'",
                                 f"write each turn as {{{role_key}: ..., {content_key}: ...}}", _key(d, "path"))]
        for name, key in (("role", role_key), ("content", content_key)):
            if key not in turn:
                keys = [x for x in turn if isinstance(x, str)]
                close = did_you_mean(key, keys)
                hint = (f"{close} map it with `columns: {{{name}: {close.split(chr(39))[1]}}}`" if close else
                        f"map it with `columns: {{{name}: <key>}}` (the turn has: {', '.join(keys) or 'no keys'})")
                if not hasattr(d.columns, name):
                    hint = f"write each turn as {{{role_key}: ..., {content_key}: ...}}"
                where = _key(d, "columns", name) if hasattr(d.columns, name) else ("path",)
                return [], [_Problem("FT504", Severity.ERROR, f"turn {k} of '{col}' has no '{key}' key", hint,
                                     where)]
        content = turn[content_key]
        if not isinstance(content, (str, list)) and content is not None:
            return [], [_Problem("FT504", Severity.ERROR, f"turn {k} of '{col}': '{content_key}' is a "
                                 f"{_kind(content)}, not a string", "write the turn's text as a string",
                                 _key(d, "path"))]
        role = turn[role_key]
        table = roles if roles is not None else {r: r for r in CANONICAL_ROLES}
        if not isinstance(role, str) or role not in table:
            guess = _ROLE_GUESS.get(str(role).lower(), "assistant" if roles is not None else "user")
            if roles is None:
                hint = f"use one of {', '.join(CANONICAL_ROLES)}"
            elif "roles" in d.model_fields_set:
                hint = f"add `{role}: {guess}` to the dataset's `roles`"
            else:
                hint = (f"set `roles: {{{role}: {guess}, ...}}` on the dataset, listing every role the file uses "
                        "(a `roles` block replaces the default mapping)")
            return [], [_Problem("FT505", Severity.ERROR, f"role '{role}' has no mapping in roles (turn {k} of "
                                 f"'{col}')", hint, _key(d, "roles"))]
        mapped.append(table[role])
    return mapped, []


def _kind(value: Any) -> str:
    """JSON name of a value's type."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "list"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__
