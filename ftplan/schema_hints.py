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
from .migration import value_hint
from .sourcemap import Where, classify_type, quote
from .suggest import close_matches

__all__ = [
    "all_field_names", "alternatives_hint", "bounds_hint", "choices_text", "describe_member", "elsewhere_hint",
    "example_value", "field_hint", "field_name", "filled_hint", "other_variant_hint", "pattern_words", "pick_hint",
    "purpose", "show_number", "show_value", "suggest", "tag_noun", "type_hint", "union_hint", "value_at",
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


def _choice(value: Any) -> str:
    """An allowed value as YAML takes it: ``true``, ``4``, or quoted text."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return quote(value) if isinstance(value, str) else show_number(value)


def choices_text(values: list[Any]) -> str:
    """``one of 'a', 'b' or 'c'``: allowed values in words."""
    shown = [_choice(v) for v in values]
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


def purpose(owner: type[BaseModel] | None, name: Any) -> str:
    """What a field is for, from the first sentence of its documentation (``""`` when undocumented)."""
    from .schemas.docs import field_doc

    doc = field_doc(owner, name) if owner and isinstance(name, str) and name in owner.model_fields else None
    words = _first_sentence(doc) if doc else ""
    return f"{words[:1].lower()}{words[1:]}"


_EXAMPLES = {"learning_rate": "2e-4", "max_seq_len": "2048", "epochs": "1", "max_steps": "1000",
             "warmup_ratio": "0.03", "warmup_steps": "100", "eval_steps": "100", "save_steps": "500",
             "max_rows": "1000", "val_fraction": "0.05", "cpus_per_task": "8", "quant": "[q8_0]",
             "datasets": "[{path: data/train.jsonl, format: messages}]", "stages": "[{id: data, kind: data, ...}]"}
"""Typical values of fields without a default, for hints that show how to write one."""


def _bounds(owner: type[BaseModel] | None, name: Any) -> dict[str, Any]:
    """The numeric bounds of a field: ``{"gt": 0, "le": 10}``."""
    info = owner.model_fields.get(name) if owner and isinstance(name, str) else None
    out: dict[str, Any] = {}
    for meta in getattr(info, "metadata", ()):
        for key in ("gt", "ge", "lt", "le"):
            if getattr(meta, key, None) is not None:
                out[key] = getattr(meta, key)
    return out


def _in_bounds(value: Any, bounds: dict[str, Any]) -> bool:
    checks = {"gt": lambda b: value > b, "ge": lambda b: value >= b, "lt": lambda b: value < b,
              "le": lambda b: value <= b}
    try:
        return all(checks[k](b) for k, b in bounds.items())
    except TypeError:
        return False


def example_value(owner: type[BaseModel] | None, name: Any) -> tuple[str | None, bool]:
    """A valid value of a field as the user would write it, and whether it is the field's default.

    A typical value (``learning_rate: 2e-4``; ``5e-6`` on a DPO stage), else the default when it is set and
    valid, else the nearest value the bounds allow; None when nothing sensible is known."""
    info = owner.model_fields.get(name) if owner is not None and isinstance(name, str) else None
    if owner is None or info is None:
        return None, False
    bounds = _bounds(owner, name)
    if name == "learning_rate" and owner.__name__ == "DpoStage":
        return "5e-6", False
    if name in _EXAMPLES:
        return _EXAMPLES[name], False
    default = info.default
    if isinstance(default, (int, float, str)) and not isinstance(default, bool) and (
            not isinstance(default, (int, float)) or _in_bounds(default, bounds)) and default != "":
        return (show_number(default) if isinstance(default, (int, float)) else str(default)), True
    if "ge" in bounds:
        return show_number(bounds["ge"]), False
    if "gt" in bounds:
        return show_number(bounds["gt"] + 1), False
    return None, False


def _range_words(bounds: dict[str, Any]) -> str:
    """``> 0 and at most 10``."""
    words = [("> " if k == "gt" else "at least " if k == "ge" else "< " if k == "lt" else "at most ")
             + show_number(bounds[k]) for k in ("gt", "ge", "lt", "le") if k in bounds]
    return " and ".join(words)


def bounds_hint(owner: type[BaseModel] | None, name: Any) -> str:
    """How to fix an out-of-range number: ``write a value > 0 and at most 10, e.g. `beta: 0.1` (the default);
    beta: strength of the KL penalty toward the reference policy``."""
    bounds = _bounds(owner, name)
    example, is_default = example_value(owner, name)
    head = f"write a value {_range_words(bounds)}" if bounds else "write a value in range"
    if example is not None:
        head += f", e.g. `{name}: {example}`" + (" (the default)" if is_default else "")
    what = purpose(owner, name)
    return head + (f"; {name}: {what}" if what else "")


def filled_hint(owner: type[BaseModel] | None, name: Any, items: int | None = None) -> str:
    """How to fill in an empty text or list: ``write a non-empty value (what it is)`` / ``add at least N items``."""
    if isinstance(name, int):
        return "write a value in the empty item, or remove it"
    what = purpose(owner, name)
    example, _ = example_value(owner, name)
    if items is not None:
        head = f"add at least {items} item{'s' if items != 1 else ''}"
    else:
        head = "write a non-empty value"
    if example is not None:
        head += f", e.g. `{name}: {example}`"
    return head + (f"; {name}: {what}" if what else "")


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

    def visit(tp: Any, disc: str | None, where: str, seen: frozenset[type[BaseModel]]) -> None:
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


def all_field_names() -> frozenset[str]:
    """Every key name the pipeline schema uses anywhere (``learning_rate``, ``base``, ``r``, ...)."""
    return frozenset(_key_homes())


def field_name(path: KeyPath) -> str:
    """The field a path ends in, list indices skipped (``report_to[0]`` -> ``report_to``)."""
    return next((str(p) for p in reversed(path) if isinstance(p, str)), "")


def pick_hint(path: KeyPath, allowed: list[Any]) -> str:
    """``write one of them, e.g. `precision: bf16``` for a value that is none of the allowed ones."""
    name = field_name(path)
    first = allowed[0] if allowed else "..."
    shown = first if isinstance(first, str) else _choice(first)
    return f"write one of them, e.g. `{name}: {shown}`" if name else f"write one of them, e.g. {shown}"


def union_hint(prefix: KeyPath, members: tuple[Any, ...]) -> str:
    """How to write each branch of a plain union: ``write `distributed: auto` or `distributed: {strategy: ...}```."""
    name = field_name(prefix)
    ways = []
    for member in members:
        kind, info = classify_type(member)
        if kind == "literal":
            ways.append(f"`{name}: {info[0]}`")
        elif kind == "model":
            ways.append(f"`{name}: {{{next(iter(info.model_fields))}: ...}}`")
        elif kind == "list":
            ways.append(f"`{name}: [...]`")
        else:
            ways.append(f"`{name}: {describe_member(member)}`")
    return "write " + " or ".join(dict.fromkeys(ways))


_MAIN_KEY = {"ModelSpec": "base", "HardwareSpec": "gpu", "SlurmSpec": "partition"}
"""The key a bare text most likely means where a mapping is expected (``model: Qwen/...`` -> ``{base: ...}``)."""

_YAML11_BOOLS = ("yes", "no", "on", "off", "y", "n")


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def type_hint(wanted: str, value: Any, raw: str | None, w: Where) -> str:
    """How to write a value of the wanted type (``a number``, ``a mapping``, ...) given what was written: a
    foreign value's ftplan name, quotes to add or remove, ``[x]`` for a single item, ``{base: x}`` for a model
    given as text, or the shape to write."""
    name = w.path[-1] if w.path else None
    foreign = value_hint(field_name(w.path), value) if isinstance(value, str) else None
    if foreign:
        return foreign
    shown = raw if raw else str(value)
    if wanted == "a string":
        if isinstance(value, (int, float, bool)):
            return f'quote it: "{raw if raw else show_value(value, None)}"'
        return "write one text value (quote it if it contains ': ' or starts with a special character)"
    if wanted == "a list":
        if isinstance(value, (str, int, float)) and not isinstance(value, bool) and len(shown) <= 40 \
                and shown.isprintable():
            return f"write [{shown}] for a single item"
        return "write a list: one `- item` line per item, indented under the key, or `[a, b]`"
    if wanted == "a mapping":
        main = _MAIN_KEY.get(w.leaf[1].__name__ if w.leaf[0] == "model" else "")
        if isinstance(value, str) and value in w.leaf_tags:
            return f"write {{{w.leaf_disc}: {value}}}"
        if isinstance(value, str) and main:
            return f"write `{name}: {{{main}: {shown}}}`"
        if value is None:
            return "indent the keys that belong to it under it"
        if isinstance(name, str):
            return f"write its keys as a mapping: `{name}: {{key: value, ...}}`, or one `key: value` per line " \
                   "indented under it"
        return "write a mapping of `key: value` pairs"
    if wanted in ("an integer", "a whole number", "a number"):
        whole = wanted != "a number"
        if isinstance(value, str) and (value.strip().lstrip("-").isdigit() if whole else _is_number(value)):
            return f"remove the quotes: {value.strip()}"
        example, _ = example_value(w.owner, name)
        what = "a whole number" if whole else "a number"
        if example and isinstance(name, str):
            return f"write {what}, e.g. `{name}: {example}`"
        return f"write {what}" if whole else "write a number, e.g. 0.1 or 2e-4"
    if wanted == "true or false":
        if isinstance(value, str) and value.strip().lower() in _YAML11_BOOLS:
            return f"write `true` or `false` (`{value}` is text in YAML 1.2, which ftplan reads)"
        return "write `true` or `false`"
    return "fix the value: `ftplan schema` documents what this field takes"
