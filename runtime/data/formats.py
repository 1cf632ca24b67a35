"""Each dataset format's rows turned into canonical records, with the ``columns`` and ``roles`` mappings.

Records are plain conversations (a list of ``{"role", "content"}`` turns with canonical roles), raw text,
preference pairs and KTO examples. Anything malformed raises ``BadRow`` with the row number and a reason
that says which field is wrong and how to fix the mapping.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ftplan.schemas.datasets import PREFERENCE_FORMATS, SFT_FORMATS

from .errors import BadRow

Turn = dict[str, str]
"""One canonical turn: ``{"role": system|user|assistant|tool, "content": str}``."""

CANONICAL_ROLES = ("system", "user", "assistant", "tool")
"""Roles every chat template understands."""

_IDENTITY_ROLES = {r: r for r in CANONICAL_ROLES}


@dataclass(frozen=True)
class Conversation:
    """A chat example; assistant turns at index ``train_from`` or later are the trained completion."""

    turns: list[Turn]
    """The turns in order."""
    train_from: int = 0
    """Index of the first turn of the completion (``prompt_completion``: the number of prompt turns)."""


@dataclass(frozen=True)
class Text:
    """A raw-text example: no template, every token trained."""

    text: str
    """The text."""


@dataclass(frozen=True)
class Pair:
    """A preference pair: a shared prompt, a preferred and a dispreferred answer."""

    prompt: list[Turn]
    """Prompt turns."""
    chosen: list[Turn]
    """Preferred answer turns."""
    rejected: list[Turn]
    """Dispreferred answer turns."""


@dataclass(frozen=True)
class Unpaired:
    """A KTO example: a prompt, one answer and whether the answer is desirable."""

    prompt: list[Turn]
    """Prompt turns."""
    completion: list[Turn]
    """Answer turns."""
    label: bool
    """True when the answer is desirable."""


Record = Conversation | Text | Pair | Unpaired
"""Any canonical record."""


def group_of(fmt: str) -> str:
    """Output group of a dataset format: ``sft``, ``preference`` or ``kto``."""
    if fmt in SFT_FORMATS:
        return "sft"
    if fmt in PREFERENCE_FORMATS:
        return "preference"
    if fmt == "kto":
        return "kto"
    raise ValueError(f"unknown dataset format {fmt!r}")


def to_record(spec: Any, row: dict[str, Any], n: int) -> Record:
    """Convert row number ``n`` (1-based) of a dataset described by ``spec`` into its canonical record."""
    fmt = spec.format
    c = spec.columns
    if fmt == "alpaca":
        return _alpaca(c, row, n)
    if fmt in ("sharegpt", "messages"):
        turns = _turns(_get(row, c.messages, "messages", n), n, c.messages, c.role, c.content, spec.roles, "")
        return Conversation(turns)
    if fmt == "prompt_completion":
        prompt = _side(row, c.prompt, "prompt", n, "user", _IDENTITY_ROLES)
        completion = _side(row, c.completion, "completion", n, "assistant", _IDENTITY_ROLES)
        return Conversation(prompt + completion, train_from=len(prompt))
    if fmt == "text":
        text = _text(_get(row, c.text, "text", n), f"field {c.text!r}", n)
        if not text:
            raise BadRow(n, f"field {c.text!r} is empty")
        return Text(text)
    if fmt == "preference":
        return Pair(_side(row, c.prompt, "prompt", n, "user", spec.roles),
                    _side(row, c.chosen, "chosen", n, "assistant", spec.roles),
                    _side(row, c.rejected, "rejected", n, "assistant", spec.roles))
    if fmt == "kto":
        return Unpaired(_side(row, c.prompt, "prompt", n, "user", _IDENTITY_ROLES),
                        _side(row, c.completion, "completion", n, "assistant", _IDENTITY_ROLES),
                        _label(_get(row, c.label, "label", n), c.label, n))
    raise ValueError(f"unknown dataset format {fmt!r}")


def _get(row: dict[str, Any], key: str, canonical: str, n: int) -> Any:
    if key not in row:
        raise BadRow(n, f"missing field {key!r} (columns.{canonical}); the row has fields "
                        f"{', '.join(repr(k) for k in sorted(row)) or '(none)'}")
    value = row[key]
    if value is None:
        raise BadRow(n, f"field {key!r} (columns.{canonical}) is null")
    return value


def _text(value: Any, where: str, n: int) -> str:
    if not isinstance(value, str):
        raise BadRow(n, f"{where} is a {_kind(value)}, expected text")
    return value


def _kind(value: Any) -> str:
    return {dict: "object", list: "list", str: "text", bool: "boolean", int: "number", float: "number",
            type(None): "null"}.get(type(value), type(value).__name__)


def _alpaca(c: Any, row: dict[str, Any], n: int) -> Conversation:
    instruction = _text(_get(row, c.instruction, "instruction", n), f"field {c.instruction!r}", n)
    output = _text(_get(row, c.output, "output", n), f"field {c.output!r}", n)
    extra = row.get(c.input)
    system = row.get(c.system)
    turns: list[Turn] = []
    if system not in (None, ""):
        turns.append({"role": "system", "content": _text(system, f"field {c.system!r}", n)})
    user = instruction
    if extra not in (None, ""):
        user = instruction + "\n\n" + _text(extra, f"field {c.input!r}", n)
    turns.append({"role": "user", "content": user})
    turns.append({"role": "assistant", "content": output})
    return Conversation(turns)


def _side(row: dict[str, Any], key: str, canonical: str, n: int, string_role: str,
          roles: dict[str, str]) -> list[Turn]:
    """A prompt or answer field: a string becomes one turn of ``string_role``, a list is a list of turns."""
    value = _get(row, key, canonical, n)
    if isinstance(value, str):
        return [{"role": string_role, "content": value}]
    if isinstance(value, list):
        return _turns(value, n, key, "role", "content", roles, f"{key!r} ")
    raise BadRow(n, f"field {key!r} (columns.{canonical}) is a {_kind(value)}; expected text or a list of "
                    "turns")


def _turns(value: Any, n: int, key: str, role_key: str, content_key: str, roles: dict[str, str],
           prefix: str) -> list[Turn]:
    if not isinstance(value, list):
        raise BadRow(n, f"field {key!r} is a {_kind(value)}; expected a list of turns")
    if not value:
        raise BadRow(n, f"field {key!r} is an empty list of turns")
    turns: list[Turn] = []
    for i, turn in enumerate(value, start=1):
        where = f"{prefix}turn {i}"
        if not isinstance(turn, dict):
            raise BadRow(n, f"{where} is a {_kind(turn)}; expected an object with {role_key!r} and "
                            f"{content_key!r}")
        for k, what in ((role_key, "role"), (content_key, "content")):
            if k not in turn:
                raise BadRow(n, f"{where} has no {k!r} field (columns.{what}); it has "
                                f"{', '.join(repr(x) for x in sorted(turn)) or 'no fields'}")
        role = turn[role_key]
        if not isinstance(role, str) or role not in roles:
            raise BadRow(n, _role_problem(where, role, roles))
        content = turn[content_key]
        if not isinstance(content, str):
            raise BadRow(n, f"{where} content is a {_kind(content)}; only plain-text content is supported")
        turns.append({"role": roles[role], "content": content})
    return turns


def _role_problem(where: str, role: Any, roles: dict[str, str]) -> str:
    if roles is _IDENTITY_ROLES:
        return f"{where} has role {role!r}, which is not one of {', '.join(CANONICAL_ROLES)}"
    if not isinstance(role, str):
        return f"{where} has a {_kind(role)} as its role; expected a role name"
    return (f"{where} has role {role!r}, which has no mapping in roles "
            f"(add roles: {{{role}: {_guess_role(role)}}})")


def _guess_role(role: str) -> str:
    low = role.lower()
    for hint, target in (("sys", "system"), ("user", "user"), ("human", "user"), ("tool", "tool"),
                         ("func", "tool")):
        if hint in low:
            return target
    return "assistant"


def _label(value: Any, key: str, n: int) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in ("true", "false", "1", "0"):
        return value.strip().lower() in ("true", "1")
    raise BadRow(n, f"field {key!r} (columns.label) is {value!r}; expected true or false")
