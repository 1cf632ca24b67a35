"""Quoting for the generated bash: every user-controlled string reaches a script through ``shq`` (a word) or
``comment`` (text inside a ``#`` comment)."""

from __future__ import annotations

import shlex

_ESCAPES = {"\\": "\\\\", "'": "\\'", "\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _is_control(ch: str) -> bool:
    return ord(ch) < 32 or ord(ch) == 127


def shq(value: object) -> str:
    """One shell word that bash reads back as exactly ``value``.

    Plain strings get ``shlex.quote`` (single quotes). Strings with control characters (line breaks, carriage
    returns) get bash's ANSI-C quoting ``$'...'`` instead, so every command stays on one line and no raw
    carriage return lands in a script."""
    text = str(value)
    if not any(_is_control(ch) for ch in text):
        return shlex.quote(text)
    out = []
    for ch in text:
        if ch in _ESCAPES:
            out.append(_ESCAPES[ch])
        elif _is_control(ch):
            out.append(f"\\x{ord(ch):02x}")
        else:
            out.append(ch)
    return "$'" + "".join(out) + "'"


def comment(value: object) -> str:
    """Text safe inside a ``#`` comment line: control characters are shown escaped, so a line break in a user
    string cannot end the comment and start a command."""
    return "".join(_ESCAPES.get(ch, f"\\x{ord(ch):02x}") if _is_control(ch) else ch for ch in str(value))
