"""Write a pipeline document as block YAML with a comment beside chosen keys.

``render(doc, comments)`` lays out nested dicts and lists in block style (lists of plain values in flow style,
``[q_proj, v_proj]``), each scalar written the way ftplan's YAML 1.2 loader reads it back unchanged, and puts
``comments[path]`` beside the key at ``path`` (``("stages", 1, "micro_batch")``; a list entry's comment goes on its
first line). Keys keep their insertion order, so the same document always renders to the same text.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import yaml

COMMENT_COLUMN = 44
"""Column where a comment beside a key starts (later for a longer line)."""

Path = tuple[str | int, ...]


def scalar(value: Any, *, flow: bool = False) -> str:
    """One scalar as YAML text: quoted where a bare word would read back as another type or break the line (or,
    with ``flow``, the ``[...]`` list it stands in)."""
    if isinstance(value, bool) or value is None:
        return {True: "true", False: "false", None: "null"}[value]
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        return f"{value:.1f}"
    if isinstance(value, (int, float)):
        return repr(value)
    text = yaml.safe_dump(str(value), default_flow_style=True, width=1_000_000, allow_unicode=True).rstrip("\n")
    if text.endswith("\n..."):
        text = text[: -len("\n...")]
    if text == value and (_reads_as_other(text) or (flow and any(c in text for c in ",[]{}"))):
        text = "'" + text.replace("'", "''") + "'"
    return text


def _reads_as_other(text: str) -> bool:
    """A bare word that a YAML 1.2 loader would not read as a string (``1e-5``, ``true``, ``null``, ``0x1f``)."""
    low = text.lower()
    if low in ("true", "false", "null", "~", ""):
        return True
    try:
        float(text.replace("_", "x"))  # 1_000 stays a string in YAML 1.2; float() would accept it
        return True
    except ValueError:
        return text.startswith(("0x", "0o"))


def _flow(values: Sequence[Any]) -> str:
    return "[" + ", ".join(scalar(v, flow=True) for v in values) + "]"


def _is_plain(value: Any) -> bool:
    return not isinstance(value, (Mapping, list, tuple))


def _line(text: str, comment: str | None) -> str:
    if not comment:
        return text
    note = " ".join(comment.split())
    return f"{text.ljust(COMMENT_COLUMN - 1)} # {note}" if len(text) < COMMENT_COLUMN - 1 else f"{text}  # {note}"


def _mapping(value: Mapping[str, Any], path: Path, indent: int, comments: Mapping[Path, str],
             first_prefix: str | None = None) -> list[str]:
    """The lines of a mapping; ``first_prefix`` replaces the indentation of its first key (a list entry's ``- ``)."""
    lines: list[str] = []
    pad = " " * indent
    for n, (key, item) in enumerate(value.items()):
        lead = first_prefix if (n == 0 and first_prefix is not None) else pad
        here = path + (key,)
        comment = comments.get(here)
        if _is_plain(item) or (isinstance(item, (list, tuple)) and all(_is_plain(v) for v in item)):
            text = scalar(item) if _is_plain(item) else _flow(item)
            lines.append(_line(f"{lead}{key}: {text}", comment))
        elif isinstance(item, Mapping):
            if not item:
                lines.append(_line(f"{lead}{key}: {{}}", comment))
                continue
            lines.append(_line(f"{lead}{key}:", comment))
            lines += _mapping(item, here, indent + 2, comments)
        else:
            lines.append(_line(f"{lead}{key}:", comment))
            lines += _sequence(item, here, indent + 2, comments)
    return lines


def _sequence(items: Sequence[Any], path: Path, indent: int, comments: Mapping[Path, str]) -> list[str]:
    lines: list[str] = []
    pad = " " * indent
    for i, item in enumerate(items):
        here = path + (i,)
        if isinstance(item, Mapping) and item:
            first = next(iter(item))
            merged = dict(comments)
            if comments.get(here):  # the entry's comment goes on its first line
                merged[here + (first,)] = "; ".join(c for c in (comments[here], comments.get(here + (first,))) if c)
            lines += _mapping(item, here, indent + 2, merged, first_prefix=f"{pad}- ")
        else:
            lines.append(_line(f"{pad}- {scalar(item) if _is_plain(item) else _flow(item)}", comments.get(here)))
    return lines


def render(doc: Mapping[str, Any], comments: Mapping[Path, str], *, header: Sequence[str] = (),
           footer: Sequence[str] = ()) -> str:
    """``doc`` as YAML, ``comments`` beside their keys, ``header`` and ``footer`` as whole comment lines."""
    lines = [f"# {h}" if h else "#" for h in header]
    lines += _mapping(doc, (), 0, comments)
    if footer:
        lines.append("")
        lines += [f"# {f}" if f else "#" for f in footer]
    return "\n".join(lines) + "\n"
