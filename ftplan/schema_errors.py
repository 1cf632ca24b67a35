"""Schema validation with errors users can act on: every pydantic error becomes one located ``Diagnostic``.

Pydantic's ``loc`` is mapped back to a key path of the file: the tags it inserts for discriminated unions
(``'sft'``, ``'lora'``) and the branch names of plain unions (``"literal[...]"``, ``'DistributedSpec'``) are
removed by walking the schema along the ``loc``. For a plain union only the branch that matches the kind of
value written (text, mapping or list) is reported, so ``distributed: zero4`` gives one error, not two.

Codes owned here and in the loader: see ``CODES``.
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError
from pydantic_core import ErrorDetails

from .diagnostics import Diagnostic, KeyPath, error, sort_key
from .migration import alias_fills, alias_for, alias_hint, foreign_config, place_of, value_hint
from .schemas import Pipeline
from .schema_hints import (alternatives_hint, bounds_hint, choices_text, describe_member, elsewhere_hint,
                           field_hint, field_name, filled_hint, other_variant_hint, pattern_words, pick_hint,
                           show_number, show_value, suggest, tag_noun, type_hint, union_hint, value_at)
from .sourcemap import SourceMap, Where, category, quote, walk
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
    "FT009": "the file is an Axolotl or TRL/transformers config, not an ftplan pipeline",
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


class _Converter:
    """Turns the pydantic errors of one validation into diagnostics."""

    def __init__(self, data: Any, source_map: SourceMap):
        self.data = data
        self.map = source_map
        self.out: list[tuple[Diagnostic, list[str]]] = []

    def emit(self, code: str, path: KeyPath, message: str, hint: str, at: KeyPath,
             key: bool = False, suggested: list[str] | None = None, notes: tuple[str, ...] = ()) -> None:
        """Record one located diagnostic (at the key when ``key``, else at the value); every one has a hint."""
        span = self.map.span(at, key=key)
        self.out.append((error(code, path, message, hint, notes).located(span), suggested or []))

    def value_error(self, err: ErrorDetails, w: Where) -> None:
        """Turn a pydantic value error (bounds, literals, patterns, types) into a diagnostic."""
        kind, ctx, value = err["type"], err.get("ctx") or {}, err.get("input")
        path = w.path
        got = show_value(value, self.map.raw(path))
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
            written = value_at(self.data, path + (disc,))[1]
            if not isinstance(written, str):
                got = show_value(written, self.map.raw(path + (disc,)))
                return self.emit("FT006", path + (disc,), f"must be {choices_text(tags)} (got {got})",
                                 f"write one of them as plain text, e.g. `{disc}: {tags[0]}`", path + (disc,))
            hint = value_hint(disc, tag) or suggest(tag, tags)[0]
            self.emit("FT004", path + (disc,), f"unknown {tag_noun(path, disc)} {quote(str(tag))}",
                      hint or f"use {choices_text(tags)}", path + (disc,))
        elif kind == "union_tag_not_found":
            disc = str(ctx.get("discriminator", "")).strip("'")
            known = {f for model in w.leaf_models for f in model.model_fields}
            place = place_of(w.leaf_models[0]) if w.leaf_models else "other"
            unknown = [k for k in value if k not in known] if isinstance(value, dict) else []
            foreign = [k for k in unknown if alias_for(k, place) is not None]
            typos = [k for k in unknown if k not in foreign and close_matches(str(k), [disc])]
            for k in foreign:  # pydantic cannot check keys without the tag: report the foreign ones now
                hint = alias_hint(k, value[k], self.map.raw(path + (k,)), place) or "remove it"
                self.emit("FT003", path, f"unknown key {quote(str(k))}", hint, path + (k,), key=True)
            for k in typos:
                self.emit("FT003", path, f"unknown key {quote(str(k))}", f"did you mean '{disc}'?", path + (k,),
                          key=True)
            if typos or any(alias_fills(k, place) == disc for k in foreign):
                return
            self.emit("FT005", path, f"missing required key '{disc}'",
                      f"add '{disc}:' with {choices_text(list(w.leaf_tags))}", path)
        elif kind == "literal_error":
            allowed = list(w.leaf_literals) or [ctx.get("expected", "")]
            hint = value_hint(field_name(path), value) or \
                suggest(value, [a for a in allowed if isinstance(a, str)])[0]
            self.emit("FT004", path, f"must be {choices_text(allowed)} (got {got})",
                      hint or alternatives_hint(w, value) or pick_hint(path, allowed), path)
        elif kind in _BOUNDS:
            name, words = _BOUNDS[kind]
            self.emit("FT004", path, f"must be {words.format(show_number(ctx.get(name)))} (got {got})",
                      bounds_hint(w.owner, path[-1] if path else None), path)
        elif kind == "string_pattern_mismatch":
            noun, detail = pattern_words(str(ctx.get("pattern", "")))
            self.emit("FT004", path, f"must be {noun} (got {got})", detail, path)
        elif kind in ("string_too_short", "string_too_long"):
            n = ctx.get("min_length", ctx.get("max_length"))
            words = ("not be empty" if n == 1 else f"at least {n} characters") if kind == "string_too_short" \
                else f"at most {n} characters (got {len(value) if isinstance(value, str) else '?'})"
            hint = filled_hint(w.owner, path[-1] if path else None) if kind == "string_too_short" else \
                f"shorten it to {n} characters or fewer"
            self.emit("FT004", path, f"must {'' if words.startswith('not') else 'be '}{words}", hint, path)
        elif kind in ("too_short", "too_long"):
            n = ctx.get("min_length", ctx.get("max_length"))
            bound = "at least" if kind == "too_short" else "at most"
            items = "item" if n == 1 else "items"
            hint = filled_hint(w.owner, path[-1] if path else None, items=n) if kind == "too_short" else \
                f"remove items until {n} or fewer are left"
            self.emit("FT004", path, f"must have {bound} {n} {items} (got {ctx.get('actual_length', '?')})",
                      hint, path)
        elif kind in _TYPE_WORDS:
            self.emit("FT006", path, f"must be {_TYPE_WORDS[kind]} (got {got})", self.type_hint(kind, value, w),
                      path)
        elif kind in ("value_error", "assertion_error"):
            msg = str(err.get("msg", "")).removeprefix("Value error, ").removeprefix("Assertion failed, ")
            self.emit("FT004", path, msg, _SCHEMA_HINT, path)
        else:
            msg = str(err.get("msg", "invalid value")).replace("Input should be", "must be")
            self.emit("FT004", path, f"{msg[:1].lower()}{msg[1:]} (got {got})", _SCHEMA_HINT, path)

    def type_hint(self, kind: str, value: Any, w: Where) -> str:
        """How to write a value of the expected type, given what was written."""
        return type_hint(_TYPE_WORDS.get(kind, ""), value, self.map.raw(w.path), w)

    def unknown_key(self, w: Where) -> None:
        """FT003 with the ftplan way to write a foreign key (Axolotl, TRL, ...), a did-you-mean, or a note that
        the key belongs elsewhere."""
        key, parent = w.path[-1], w.path[:-1]
        place = place_of(w.owner)
        foreign = self.alias(key, parent, place, w)
        if foreign is not None:
            fills = alias_fills(str(key), place)
            return self.emit("FT003", parent, f"unknown key {quote(str(key))}", foreign, w.path, key=True,
                             suggested=[fills] if fills else [])
        allowed = w.allowed_keys()
        present = set(value_at(self.data, parent)[1] or ()) if allowed else set()
        hint, close = suggest(key, [a for a in allowed if a not in present])
        if not hint:
            hint, close = suggest(key, allowed)
        placed = other_variant_hint(w, str(key)) or elsewhere_hint(w, str(key))
        if placed and not (close and fold(close[0]) == fold(str(key))):
            hint, close = placed, []  # a key that exists elsewhere is misplaced rather than misspelt
        notes: tuple[str, ...] = ()
        if not hint and allowed:
            listed = "allowed keys: " + ", ".join(sorted(allowed))
            hint, notes = (listed, ()) if len(allowed) <= 12 else ("check the spelling against the allowed keys",
                                                                   (listed,))
        self.emit("FT003", parent, f"unknown key {quote(str(key))}", hint or "remove it", w.path, key=True,
                  suggested=close, notes=notes)

    def alias(self, key: Any, parent: KeyPath, place: str, w: Where) -> str | None:
        """The migration hint of a foreign key written in the mapping at ``parent`` (see ``ftplan.migration``)."""
        if alias_for(key, place) is None:
            return None
        _, value = value_at(self.data, parent + (key,))
        data_stage = value_at(self.data, parent + ("data",))[1] if place == "train" else None
        adapter = value_at(self.data, parent + ("adapter", "type"))[1] if place == "train" else None
        return alias_hint(key, value, self.map.raw(parent + (key,)), place,
                          is_dpo=getattr(w.owner, "__name__", "") == "DpoStage",
                          data_stage=data_stage if isinstance(data_stage, str) else None,
                          adapter_type=adapter if isinstance(adapter, str) else None)

    def key_error(self, err: ErrorDetails, w: Where) -> None:
        """An invalid key of a typed mapping (e.g. an unknown sbatch option in ``slurm.extra``)."""
        key, parent = w.path[-1], w.path[:-1]
        if err["type"] == "literal_error":
            allowed = [a for a in w.leaf_literals if isinstance(a, str)]
            hint, close = suggest(key, allowed)
            self.emit("FT003", parent, f"unknown key {quote(str(key))}",
                      hint or "allowed keys: " + ", ".join(sorted(allowed)), w.path, key=True, suggested=close)
        elif err["type"] == "string_pattern_mismatch":
            noun, detail = pattern_words(str((err.get("ctx") or {}).get("pattern", "")))
            self.emit("FT004", parent, f"key {quote(str(key))} must be {noun}", detail, w.path, key=True)
        else:
            msg = str(err.get("msg", "invalid key")).replace("Input should be", "must be")
            self.emit("FT004", parent, f"key {quote(str(key))}: {msg[:1].lower()}{msg[1:]}",
                      "rename the key (`ftplan schema` lists what this mapping takes)", w.path, key=True)

    def off_branch(self, prefix: KeyPath, members: tuple[Any, ...]) -> None:
        """No branch of a plain union takes this kind of value: one wrong-type error listing all of them."""
        _, value = value_at(self.data, prefix)
        wants = " or ".join(dict.fromkeys(describe_member(m) for m in members))
        self.emit("FT006", prefix, f"must be {wants} (got {show_value(value, self.map.raw(prefix))})",
                  union_hint(prefix, members), prefix)


_SCHEMA_HINT = "fix the value: `ftplan schema` documents what this field takes"
"""The last-resort hint of a schema error pydantic words itself (no ftplan schema type raises one today)."""


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
    Returns the pipeline and ``[]``, or ``None`` and the diagnostics (codes FT003-FT006, and FT009 first when the
    file is a whole Axolotl or TRL config) sorted by position."""
    if source_map.filename != filename:
        source_map = SourceMap(filename, source_map.entries)
    try:
        return Pipeline.model_validate(data, strict=True), []
    except ValidationError as exc:
        errors = exc.errors(include_url=False)
    conv = _Converter(data, source_map)
    located = [(err, walk(err["loc"], Pipeline)) for err in errors]
    kept: list[tuple[ErrorDetails, Where]] = []
    dropped: dict[KeyPath, tuple[Any, ...]] = {}
    for err, w in located:
        off = [(prefix, members) for prefix, cat, members in w.unions
               if category(value_at(data, prefix)[1]) != cat]
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
    diags = _foreign_config(data, source_map, diags)
    unique = list({(d.code, d.path, d.message, d.span): d for d in diags}.values())
    return None, sorted(unique, key=sort_key)


def _foreign_config(data: Any, source_map: SourceMap, diags: list[Diagnostic]) -> list[Diagnostic]:
    """Lead with one FT009 when the file is a whole Axolotl or TRL config; the top-level keys it lacks become a
    note of that diagnostic instead of one error each. The per-key errors stay: they say where each key goes."""
    found = foreign_config(data)
    if found is None:
        return diags
    missing = [d for d in diags if d.code == "FT005" and d.path == ()]
    lacks = [d.message.removeprefix("missing required key ").strip("'") for d in missing]
    message, hint = found
    banner = error("FT009", (), message, hint, notes=[f"missing: {', '.join(lacks)}"] if lacks else [])
    return [banner.located(source_map.span(())), *(d for d in diags if d not in missing)]
