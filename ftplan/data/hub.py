"""The form of a hub dataset id, judged offline the same way by ``check`` and by the runtime's data stage.

A dataset ``path`` that names no local file or folder is read with ``datasets.load_dataset`` at run time. Nothing
about it can be checked offline but its form: ``name`` or ``owner/name``, each part letters, digits, ``-``, ``_``
and ``.``, starting with a letter or digit, no ``--`` or ``..``, at most 96 characters (the hub's own rules for repo
ids). A value of another form is a typo or a missing local path, and is refused before anything runs.
"""

from __future__ import annotations

import re

__all__ = ["MAX_PART", "hub_id_problem"]

MAX_PART = 96
"""Longest owner or dataset name."""

_PART = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def hub_id_problem(value: str) -> str | None:
    """Why ``value`` cannot be a hub dataset id (``owner/name``), or None when its form is right."""
    parts = value.split("/")
    if len(parts) > 2:
        return f"'{value}' has {len(parts) - 1} slashes; a hub dataset id is `owner/name`"
    for part in parts:
        if not part:
            return f"'{value}' has an empty part; a hub dataset id is `owner/name`"
        if len(part) > MAX_PART:
            return f"'{part[:20]}...' is longer than the hub's {MAX_PART} characters"
        bad = next((c for c in part if not (c.isascii() and (c.isalnum() or c in "._-"))), None)
        if bad is not None:
            return f"'{value}' contains {bad!r}; a hub dataset id is letters, digits, '-', '_' and '.'"
        if not _PART.match(part):
            return f"'{part}' starts with {part[0]!r}; each part of a hub dataset id starts with a letter or digit"
        if "--" in part or ".." in part:
            return f"'{value}' contains '--' or '..', which hub ids do not"
    return None
