"""Schema validation with errors users can act on: every pydantic error becomes one located ``Diagnostic``.

Pydantic's ``loc`` is mapped back to a key path of the file: the tags it inserts for discriminated unions
(``'sft'``, ``'lora'``) and the branch names of plain unions (``"literal[...]"``, ``'DistributedSpec'``) are
removed by walking the schema along the ``loc``. For a plain union only the branch that matches the kind of
value written (text, mapping or list) is reported, so ``distributed: zero4`` gives one error, not two.

Codes owned here and in the loader: see ``CODES``.
"""

from __future__ import annotations

import ast
import inspect
import re
from functools import cache
from typing import Any

from pydantic import BaseModel, ValidationError

from .diagnostics import Diagnostic, KeyPath, error, sort_key
from .schemas import Pipeline
from .sourcemap import SourceMap, Where, _classify, category, quote, walk
from .suggest import close_matches, fold

__all__ = ["CODES", "validate_pipeline"]

CODES: dict[str, str] = {
    "FT000": "the pipeline file cannot be read (missing, a folder, no permission, not UTF-8)",
    "FT001": "YAML syntax error",
    "FT002": "duplicate key in a mapping",
    "FT003": "unknown key",
    "FT004": "invalid value (out of range, not an allowed choice, wrong format)",
    "FT005": "missing required key",
    "FT006": "wrong type of value (text, number, boolean, mapping or list)",
    "FT007": "the file is empty or its top level is not a mapping",
    "FT008": "YAML feature ftplan does not read (tags, recursive or exploding aliases, complex keys)",
}
"""Code -> one-line title of every diagnostic the loader and the schema validation report."""

_TYPE_WORDS = {
    "int_type": "an integer", "int_parsing": "an integer", "int_from_float": "a whole number",
    "float_type": "a number", "float_parsing": "a number", "bool_type": "true or false",
    "bool_parsing": "true or false", "string_type": "a string", "dict_type": "a mapping",
    "model_type": "a mapping", "model_attributes_type": "a mapping", "dataclass_type": "a mapping",
    "list_type": "a list", "tuple_type": "a list", "set_type": "a list", "frozen_set_type": "a list",
    "none_required": "empty",
}
_BOUNDS = {"greater_than": ("gt", "> {}"), "greater_than_equal": ("ge", "at least {}"),
           "less_than": ("lt", "< {}"), "less_than_equal": ("le", "at most {}"),
           "multiple_of": ("multiple_of", "a multiple of {}")}


def _num(x: Any) -> str:
    if isinstance(x, float) and x.is_integer() and abs(x) < 1e15:
        return str(int(x))
    return str(x)


def _got(value: Any, raw: str | None) -> str:
    """How the offending value is shown: as written for numbers, quoted for text, by kind for containers."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        shown = raw if raw else _num(value)
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


def _choices(values: list[Any]) -> str:
    shown = [quote(v) if isinstance(v, str) else _num(v) for v in values]
    return shown[0] if len(shown) == 1 else "one of " + ", ".join(shown)


def _suggest(word: Any, choices: list[str]) -> tuple[str | None, list[str]]:
    close = close_matches(str(word), choices) if isinstance(word, (str, int, float)) else []
    if not close:
        return None, []
    return "did you mean " + " or ".join(f"'{c}'" for c in close) + "?", close


def _raw_at(data: Any, path: KeyPath) -> tuple[bool, Any]:
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
    info = owner.model_fields.get(name) if owner and isinstance(name, str) else None
    desc = _doc_words(info.description) if info is not None and info.description else ""
    return f"add '{name}:' ({desc[:1].lower()}{desc[1:]})" if desc else f"add '{name}:'"


def tag_noun(path: KeyPath, disc: str) -> str:
    """``stage kind``, ``dataset format``, ``adapter type``: the field holding the union plus its tag key."""
    owner = next((p for p in reversed(path) if isinstance(p, str)), "")
    return f"{owner[:-1] if owner.endswith('s') else owner} {disc}".strip()


def describe_member(member: Any) -> str:
    """A union member in words: ``one of 'auto', 'none'``, ``a mapping``, ``a list``, ``a number``."""
    kind, info = _classify(member)
    if kind == "literal":
        return _choices(list(info))
    if kind in ("model", "tagged", "dict"):
        return "a mapping"
    if kind == "list":
        return "a list"
    return {int: "an integer", float: "a number", bool: "true or false"}.get(info, "a string")


def _alternatives_hint(w: Where, value: Any) -> str | None:
    """For a text value rejected by the literal branch of a union that also takes a list or mapping."""
    for prefix, _, members in w.unions:
        if prefix == w.path:
            others = [describe_member(m) for m in members if _classify(m)[0] != "literal"]
            if "a list" in others and isinstance(value, str) and len(value) <= 40 and value.isprintable():
                return f"or write a list: [{value}]"
            if others:
                return "or write " + " or ".join(others)
    return None


def _other_variant_hint(w: Where, key: str) -> str | None:
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
        kind, info = _classify(tp, disc)
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


def _elsewhere_hint(w: Where, key: str) -> str | None:
    """``'nodes' is a key of hardware`` for a key written at the wrong level."""
    places = list(dict.fromkeys(where for where, model in _key_homes().get(key, []) if model is not w.owner))
    if not places or len(places) > 2:
        return None
    return f"'{key}' is a key of " + " and of ".join(p or "the top level" for p in places) + " (check the indentation)"


class _Converter:
    """Turns the pydantic errors of one validation into diagnostics."""

    def __init__(self, data: Any, source_map: SourceMap):
        self.data = data
        self.map = source_map
        self.out: list[tuple[Diagnostic, list[str]]] = []

    def emit(self, code: str, path: KeyPath, message: str, hint: str | None, at: KeyPath,
             key: bool = False, suggested: list[str] | None = None, notes: tuple[str, ...] = ()) -> None:
        span = self.map.span(at, key=key)
        self.out.append((error(code, path, message, hint, notes).located(span), suggested or []))

    def value_error(self, err: dict, w: Where) -> None:
        kind, ctx, value = err["type"], err.get("ctx") or {}, err.get("input")
        path = w.path
        got = _got(value, self.map.raw(path))
        if w.is_key:
            return self.key_error(err, w)
        if kind == "missing":
            field = path[-1] if path else "?"
            self.emit("FT005", path[:-1], f"missing required key '{field}'", field_hint(w.owner, field), path)
        elif kind == "extra_forbidden":
            self.unknown_key(w)
        elif kind == "union_tag_invalid":
            disc, tag = str(ctx.get("discriminator", "")).strip("'"), ctx.get("tag", "")
            tags = list(w.leaf_tags)
            written = _raw_at(self.data, path + (disc,))[1]
            if not isinstance(written, str):
                got = _got(written, self.map.raw(path + (disc,)))
                return self.emit("FT006", path + (disc,), f"must be {_choices(tags)} (got {got})", None,
                                 path + (disc,))
            hint, _ = _suggest(tag, tags)
            self.emit("FT004", path + (disc,), f"unknown {tag_noun(path, disc)} {quote(str(tag))}",
                      hint or f"use {_choices(tags)}", path + (disc,))
        elif kind == "union_tag_not_found":
            disc = str(ctx.get("discriminator", "")).strip("'")
            known = {f for model in w.leaf_models for f in model.model_fields}
            typos = [k for k in value if k not in known and close_matches(str(k), [disc])] \
                if isinstance(value, dict) else []
            for k in typos:
                self.emit("FT003", path, f"unknown key {quote(str(k))}", f"did you mean '{disc}'?", path + (k,),
                          key=True)
            if typos:
                return
            self.emit("FT005", path, f"missing required key '{disc}'",
                      f"add '{disc}:' with {_choices(list(w.leaf_tags))}", path)
        elif kind == "literal_error":
            allowed = list(w.leaf_literals) or [ctx.get("expected", "")]
            hint, _ = _suggest(value, [a for a in allowed if isinstance(a, str)])
            self.emit("FT004", path, f"must be {_choices(allowed)} (got {got})", hint or _alternatives_hint(w, value),
                      path)
        elif kind in _BOUNDS:
            name, words = _BOUNDS[kind]
            self.emit("FT004", path, f"must be {words.format(_num(ctx.get(name)))} (got {got})", None, path)
        elif kind == "string_pattern_mismatch":
            noun, detail = pattern_words(str(ctx.get("pattern", "")))
            self.emit("FT004", path, f"must be {noun} (got {got})", detail, path)
        elif kind in ("string_too_short", "string_too_long"):
            n = ctx.get("min_length", ctx.get("max_length"))
            words = ("not be empty" if n == 1 else f"at least {n} characters") if kind == "string_too_short" \
                else f"at most {n} characters (got {len(value) if isinstance(value, str) else '?'})"
            self.emit("FT004", path, f"must {'' if words.startswith('not') else 'be '}{words}", None, path)
        elif kind in ("too_short", "too_long"):
            n = ctx.get("min_length", ctx.get("max_length"))
            bound = "at least" if kind == "too_short" else "at most"
            items = "item" if n == 1 else "items"
            self.emit("FT004", path, f"must have {bound} {n} {items} (got {ctx.get('actual_length', '?')})",
                      None, path)
        elif kind in _TYPE_WORDS:
            self.emit("FT006", path, f"must be {_TYPE_WORDS[kind]} (got {got})", self.type_hint(kind, value, w),
                      path)
        elif kind in ("value_error", "assertion_error"):
            msg = str(err.get("msg", "")).removeprefix("Value error, ").removeprefix("Assertion failed, ")
            self.emit("FT004", path, msg, None, path)
        else:
            msg = str(err.get("msg", "invalid value")).replace("Input should be", "must be")
            self.emit("FT004", path, f"{msg[:1].lower()}{msg[1:]} (got {got})", None, path)

    def type_hint(self, kind: str, value: Any, w: Where) -> str | None:
        raw = self.map.raw(w.path)
        if kind == "string_type" and isinstance(value, (int, float, bool)):
            return f'quote it: "{raw if raw else _got(value, None)}"'
        shown = raw if raw else str(value)
        if kind == "list_type" and isinstance(value, (str, int, float)) and not isinstance(value, bool) \
                and len(shown) <= 40 and shown.isprintable():
            return f"write [{shown}] for a single item"
        if _TYPE_WORDS.get(kind) == "a mapping" and isinstance(value, str) and value in w.leaf_tags:
            return f"write {{{w.leaf_disc}: {value}}}"
        if value is None and _TYPE_WORDS.get(kind) == "a mapping":
            return "indent the keys that belong to it under it"
        return None

    def unknown_key(self, w: Where) -> None:
        key, parent = w.path[-1], w.path[:-1]
        allowed = w.allowed_keys()
        present = set(_raw_at(self.data, parent)[1] or ()) if allowed else set()
        hint, close = _suggest(key, [a for a in allowed if a not in present])
        if not hint:
            hint, close = _suggest(key, allowed)
        placed = _other_variant_hint(w, str(key)) or _elsewhere_hint(w, str(key))
        if placed and not (close and fold(close[0]) == fold(str(key))):
            hint, close = placed, []  # a key that exists elsewhere is misplaced rather than misspelt
        notes: tuple[str, ...] = ()
        if not hint and allowed:
            listed = "allowed keys: " + ", ".join(sorted(allowed))
            hint, notes = (listed, ()) if len(allowed) <= 12 else ("check the spelling against the allowed keys",
                                                                   (listed,))
        self.emit("FT003", parent, f"unknown key {quote(str(key))}", hint, w.path, key=True, suggested=close,
                  notes=notes)

    def key_error(self, err: dict, w: Where) -> None:
        key, parent = w.path[-1], w.path[:-1]
        if err["type"] == "literal_error":
            allowed = [a for a in w.leaf_literals if isinstance(a, str)]
            hint, close = _suggest(key, allowed)
            self.emit("FT003", parent, f"unknown key {quote(str(key))}",
                      hint or "allowed keys: " + ", ".join(sorted(allowed)), w.path, key=True, suggested=close)
        elif err["type"] == "string_pattern_mismatch":
            noun, detail = pattern_words(str((err.get("ctx") or {}).get("pattern", "")))
            self.emit("FT004", parent, f"key {quote(str(key))} must be {noun}", detail, w.path, key=True)
        else:
            msg = str(err.get("msg", "invalid key")).replace("Input should be", "must be")
            self.emit("FT004", parent, f"key {quote(str(key))}: {msg[:1].lower()}{msg[1:]}", None, w.path,
                      key=True)

    def off_branch(self, prefix: KeyPath, members: tuple) -> None:
        """No branch of a plain union takes this kind of value: one wrong-type error listing all of them."""
        _, value = _raw_at(self.data, prefix)
        wants = " or ".join(dict.fromkeys(describe_member(m) for m in members))
        self.emit("FT006", prefix, f"must be {wants} (got {_got(value, self.map.raw(prefix))})", None, prefix)


def _merge_missing_into_typos(items: list[tuple[Diagnostic, list[str]]]) -> list[Diagnostic]:
    """Drop ``missing required key 'base'`` when the same mapping has an unknown key suggesting ``'base'``."""
    typo_targets = {(d.path, s[0]) for d, s in items if d.code == "FT003" and len(s) == 1}
    out = []
    for d, _ in items:
        if d.code == "FT005" and d.message.startswith("missing required key '"):
            if (d.path, d.message[len("missing required key '"):-1]) in typo_targets:
                continue
        out.append(d)
    return out


def validate_pipeline(data: Any, source_map: SourceMap, filename: str) -> tuple[Pipeline | None, list[Diagnostic]]:
    """Validate loaded pipeline data against the schema; every problem is reported at once, located.

    Validation is strict (YAML already types values: ``"2e-5"`` in quotes is text, ``yes`` is not a boolean).
    Returns the pipeline and ``[]``, or ``None`` and the diagnostics (codes FT003-FT006) sorted by position."""
    if source_map.filename != filename:
        source_map = SourceMap(filename, source_map.entries)
    try:
        return Pipeline.model_validate(data, strict=True), []
    except ValidationError as exc:
        errors = exc.errors(include_url=False)
    conv = _Converter(data, source_map)
    located = [(err, walk(err["loc"], Pipeline)) for err in errors]
    kept, dropped = [], {}
    for err, w in located:
        off = [(prefix, members) for prefix, cat, members in w.unions
               if category(_raw_at(data, prefix)[1]) != cat]
        if off:
            dropped.setdefault(off[0][0], off[0][1])
        else:
            kept.append((err, w))
    covered = {prefix for _, w in kept for prefix, _, _ in w.unions}
    for prefix, members in dropped.items():
        if prefix not in covered:
            conv.off_branch(prefix, members)
    for err, w in kept:
        conv.value_error(err, w)
    diags = _merge_missing_into_typos(conv.out)
    unique = list({(d.code, d.path, d.message, d.span): d for d in diags}.values())
    return None, sorted(unique, key=sort_key)
