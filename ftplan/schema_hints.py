"""Wording of schema errors, derived from the schema itself: what a pattern means (from the constrained type's
docstring), what a missing field is for, what a union accepts, and where a misplaced key belongs."""

from __future__ import annotations

import ast
import inspect
import re
from functools import cache
from typing import Any

from pydantic import BaseModel

from .diagnostics import KeyPath
from .schemas import Pipeline
from .sourcemap import Where, classify_type, quote
from .suggest import close_matches

__all__ = [
    "alternatives_hint", "choices_text", "describe_member", "elsewhere_hint", "field_hint", "other_variant_hint",
    "pattern_words", "show_number", "show_value", "suggest", "tag_noun", "value_at",
]


def show_number(x: Any) -> str:
    """A number as the user would write it (``16``, not ``16.0``)."""
    if isinstance(x, float) and x.is_integer() and abs(x) < 1e15:
        return str(int(x))
    return str(x)


def show_value(value: Any, raw: str | None) -> str:
    """How the offending value is shown: as written for numbers, quoted for text, by kind for containers."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        shown = raw if raw else show_number(value)
        return shown if len(shown) <= 40 else shown[:37] + "..."
    if isinstance(value, str):
        return quote(value)
    if value is None:
        return "null" if raw else "an empty value"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, (list, tuple)):
        return "a list"
    return quote(str(value))


def choices_text(values: list[Any]) -> str:
    """``one of 'a', 'b' or 'c'``: allowed values in words."""
    shown = [quote(v) if isinstance(v, str) else show_number(v) for v in values]
    return shown[0] if len(shown) == 1 else "one of " + ", ".join(shown)


def suggest(word: Any, choices: list[str]) -> tuple[str | None, list[str]]:
    """A did-you-mean hint for ``word`` among ``choices`` and the close matches it names."""
    close = close_matches(str(word), choices) if isinstance(word, (str, int, float)) else []
    if not close:
        return None, []
    return "did you mean " + " or ".join(f"'{c}'" for c in close) + "?", close


def value_at(data: Any, path: KeyPath) -> tuple[bool, Any]:
    """(found, value) at ``path`` in the parsed YAML."""
    node = data
    for part in path:
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
            node = node[part]
        else:
            return False, None
    return True, node


def _doc_words(doc: str) -> str:
    """First sentence (up to a '.' or '; ') of a docstring, RST backticks turned into quotes."""
    text = " ".join(doc.split()).replace("``", "'")
    cut = re.search(r"\.(\s|$)|; ", text)
    return (text[: cut.start()] if cut else text).strip()


_PATTERN_DETAILS = {"EnvName": "use letters, digits and '_', not starting with a digit",
                    "ShellLine": "write one list item per line"}
"""Details for constrained types whose docstring names them without saying what they allow."""


@cache
def _patterns() -> dict[str, tuple[str, str]]:
    """Regex -> (type name, docstring) of the constrained string types in ``ftplan/schemas/base.py``."""
    from .schemas import base

    try:
        tree = ast.parse(inspect.getsource(base))
    except (OSError, TypeError, SyntaxError):  # pragma: no cover - source not shipped
        return {}
    out: dict[str, tuple[str, str]] = {}
    for node, doc in zip(tree.body, tree.body[1:]):
        target = node.targets[0] if isinstance(node, ast.Assign) else getattr(node, "target", None)
        if not (isinstance(target, ast.Name) and isinstance(doc, ast.Expr)
                and isinstance(doc.value, ast.Constant) and isinstance(doc.value.value, str)):
            continue
        for meta in getattr(getattr(base, target.id, None), "__metadata__", ()):
            if getattr(meta, "pattern", None):
                out[meta.pattern] = (target.id, doc.value.value)
    return out


def pattern_words(pattern: str) -> tuple[str, str]:
    """What a pattern means, from its type's docstring: (``"a stage identifier"``, ``"use lowercase ..."``)."""
    name, doc = _patterns().get(pattern, ("", ""))
    if not doc:
        return f"text matching {pattern}", f"the pattern is {pattern}"
    noun, _, detail = _doc_words(doc).partition(": ")
    noun = noun[:1].lower() + noun[1:]
    if not detail:
        return noun, _PATTERN_DETAILS.get(name, f"the pattern is {pattern}")
    return noun, (f"it must contain {detail}" if detail.startswith("no ") else f"use {detail}")


def field_hint(owner: type[BaseModel] | None, name: Any) -> str:
    """``add 'learning_rate:' (peak learning rate)`` from the field's documentation."""
    from .schemas.docs import field_doc

    doc = field_doc(owner, name) if owner and isinstance(name, str) and name in owner.model_fields else None
    desc = _doc_words(doc) if doc else ""
    return f"add '{name}:' ({desc[:1].lower()}{desc[1:]})" if desc else f"add '{name}:'"


def purpose_hint(owner: type[BaseModel] | None, name: Any) -> str | None:
    """``learning_rate: peak learning rate``: what a field is for, from its documentation (the hint of a value
    that is out of range, so the user sees what the number means)."""
    from .schemas.docs import field_doc

    doc = field_doc(owner, name) if owner and isinstance(name, str) and name in owner.model_fields else None
    words = _first_sentence(doc) if doc else ""
    return f"{name}: {words[:1].lower()}{words[1:]}" if words else None


def _first_sentence(doc: str) -> str:
    """The docstring up to its first full stop outside parentheses, RST backticks turned into quotes."""
    text, depth = " ".join(doc.split()).replace("``", "'"), 0
    for i, ch in enumerate(text):
        depth += (ch == "(") - (ch == ")")
        if ch == "." and depth == 0 and (i + 1 == len(text) or text[i + 1] == " "):
            return text[:i]
    return text


def tag_noun(path: KeyPath, disc: str) -> str:
    """``stage kind``, ``dataset format``, ``adapter type``: the field holding the union plus its tag key."""
    owner = next((p for p in reversed(path) if isinstance(p, str)), "")
    return f"{owner[:-1] if owner.endswith('s') else owner} {disc}".strip()


def describe_member(member: Any) -> str:
    """A union member in words: ``one of 'auto', 'none'``, ``a mapping``, ``a list``, ``a number``."""
    kind, info = classify_type(member)
    if kind == "literal":
        return choices_text(list(info))
    if kind in ("model", "tagged", "dict"):
        return "a mapping"
    if kind == "list":
        return "a list"
    return {int: "an integer", float: "a number", bool: "true or false"}.get(info, "a string")


def alternatives_hint(w: Where, value: Any) -> str | None:
    """For a text value rejected by the literal branch of a union that also takes a list or mapping."""
    for prefix, _, members in w.unions:
        if prefix == w.path:
            others = [describe_member(m) for m in members if classify_type(m)[0] != "literal"]
            if "a list" in others and isinstance(value, str) and len(value) <= 40 and value.isprintable():
                return f"or write a list: [{value}]"
            if others:
                return "or write " + " or ".join(others)
    return None


def other_variant_hint(w: Where, key: str) -> str | None:
    """``'beta' is only valid when kind is 'dpo'`` for a key of another variant of the same union."""
    if not w.variants:
        return None
    disc, by_tag = w.variants
    tags = [t for t, model in by_tag.items() if model is not w.owner and key in model.model_fields]
    if not tags:
        return None
    return f"'{key}' is only valid when {disc} is " + " or ".join(f"'{t}'" for t in tags)


@cache
def _key_homes() -> dict[str, list[tuple[str, type[BaseModel]]]]:
    """Key name -> every (place, model) of the schema that takes it, e.g. ``nodes`` -> ``hardware``."""
    homes: dict[str, list[tuple[str, type[BaseModel]]]] = {}

    def visit(tp: Any, disc: str | None, where: str, seen: frozenset) -> None:
        kind, info = classify_type(tp, disc)
        if kind == "model" and info not in seen:
            for name, f in info.model_fields.items():
                homes.setdefault(name, []).append((where, info))
                sub = f"{where}.{name}" if where else name
                visit(f.annotation, f.discriminator if isinstance(f.discriminator, str) else None, sub,
                      seen | {info})
        elif kind == "tagged":
            for member in dict.fromkeys(info[1].values()):
                visit(member, None, where, seen)
        elif kind == "union":
            for member in info:
                visit(member, None, where, seen)
        elif kind == "list":
            visit(info, None, where + "[]", seen)

    visit(Pipeline, None, "", frozenset())
    return homes


def elsewhere_hint(w: Where, key: str) -> str | None:
    """``'nodes' is a key of hardware`` for a key written at the wrong level."""
    places = list(dict.fromkeys(where for where, model in _key_homes().get(key, []) if model is not w.owner))
    if not places or len(places) > 2:
        return None
    return f"'{key}' is a key of " + " and of ".join(p or "the top level" for p in places) + " (check the indentation)"
