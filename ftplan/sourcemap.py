"""Where each key and value of the pipeline file is: key paths (as in pydantic's ``loc``) to file positions.

The loader records, for every node of the YAML document, the position of its value and (for mapping entries)
of its key, keyed by the path from the root: ``("stages", 1, "adapter", "r")``. Lookups of paths that do not
exist (a missing required key) fall back to the nearest ancestor that does.

``walk`` turns a pydantic ``loc`` into such a key path: pydantic inserts union tags (``'sft'``, ``'lora'``)
and branch names (``"literal[...]"``, ``'DistributedSpec'``) into ``loc`` (pydantic issue #7500); walking
the schema along the ``loc`` tells them apart from keys.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from types import UnionType
from typing import Annotated, Any, Literal, Sequence, Union, get_args, get_origin

from pydantic import BaseModel
from pydantic.fields import FieldInfo

from .diagnostics import KeyPath, Span

__all__ = ["SourceMap", "Where", "category", "classify_type", "display_path", "key_path_text", "member_category",
           "quote", "stage_labels", "walk"]

_PLAIN_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


@dataclass(frozen=True)
class _Entry:
    value: tuple[int, int]
    key: tuple[int, int] | None
    raw: str | None


@dataclass
class SourceMap:
    """Positions of every key and value of one pipeline file, keyed by key path."""

    filename: str
    """The file as the user named it; every span carries it."""
    entries: dict[KeyPath, _Entry] = field(default_factory=dict)

    def add(self, path: KeyPath, value: tuple[int, int], key: tuple[int, int] | None = None,
            raw: str | None = None) -> None:
        """Record the 1-based (line, col) of the value at ``path``, of its key, and a scalar's source text."""
        self.entries[tuple(path)] = _Entry(value, key, raw)

    def __contains__(self, path: object) -> bool:
        return isinstance(path, (tuple, list)) and tuple(path) in self.entries

    def nearest(self, path: KeyPath) -> KeyPath:
        """The longest prefix of ``path`` that exists in the file (``()`` for the document itself)."""
        path = tuple(path)
        while path and path not in self.entries:
            path = path[:-1]
        return path

    def span(self, path: KeyPath, *, key: bool = False) -> Span:
        """Position of the value at ``path`` (of its key with ``key=True``, where it has one).

        A path that does not exist falls back to its nearest existing ancestor, at the ancestor's key when it
        has one (``model:`` for a key missing from ``model``) and at its value otherwise (a list item)."""
        path = tuple(path)
        found = self.nearest(path)
        entry = self.entries.get(found)
        if entry is None:
            return Span(self.filename, 1, 1)
        if (key or found != path) and entry.key is not None:
            return Span(self.filename, *entry.key)
        return Span(self.filename, *entry.value)

    def raw(self, path: KeyPath) -> str | None:
        """The scalar at ``path`` exactly as written in the file (``-1e-4``), or None."""
        entry = self.entries.get(tuple(path))
        return entry.raw if entry else None


def _escape(ch: str) -> str:
    named = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}
    if ch in named:
        return named[ch]
    return f"\\u{ord(ch):04x}" if ord(ch) <= 0xFFFF else f"\\U{ord(ch):08x}"


def quote(text: str, limit: int = 60) -> str:
    """User text as messages show it: quoted (``'base'``, or ``"it's"``), cut to ``limit`` characters, with
    line breaks and invisible or direction-changing characters escaped (``\\n``, ``\\u202e``)."""
    text = str(text)
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    shown = "".join(ch if ch.isprintable() else _escape(ch) for ch in text)
    return f'"{shown}"' if "'" in shown and '"' not in shown else f"'{shown}'"


def stage_labels(data: Any) -> list[str | None]:
    """Each stage's ``id`` in the raw pipeline ``data`` where it names the stage (a plain word used once), else
    None (the stage is then shown by its index)."""
    stages = data.get("stages") if isinstance(data, dict) else None
    if not isinstance(stages, list):
        return []
    ids = [s.get("id") if isinstance(s, dict) else None for s in stages]
    return [sid if isinstance(sid, str) and _PLAIN_KEY.match(sid) and ids.count(sid) == 1 else None for sid in ids]


def key_path_text(path: KeyPath, stage_ids: Sequence[str | None] = ()) -> str:
    """A key path as users read it: ``stages[sft].adapter.r``, ``stages[prep].datasets[0].path``; the one printer
    of key paths (diagnostics, ``plan.json``, ``plan.md``, the would-fit edits).

    A top-level stage index shows as ``stage_ids[index]`` when that is set; other list indices stay numbers;
    keys that are not plain words are quoted (``env['A B']``). The document itself is ``""``."""
    out = ""
    for depth, part in enumerate(path):
        if isinstance(part, int):
            named = stage_ids[part] if depth == 1 and path[0] == "stages" and 0 <= part < len(stage_ids) else None
            out += f"[{named if named is not None else part}]"
        elif _PLAIN_KEY.match(part):
            out += f".{part}" if out else part
        else:
            out += f"[{quote(str(part))}]"
    return out


def display_path(path: KeyPath, data: Any = None) -> str:
    """``key_path_text`` with the stages named as the raw pipeline ``data`` names them (``stage_labels``)."""
    return key_path_text(path, stage_labels(data))


# --- pydantic ``loc`` -> key path -------------------------------------------------------------------------


def classify_type(tp: Any, disc: str | None = None) -> tuple[str, Any]:
    """What a type annotation is, as far as walking a ``loc`` goes: model, list, dict, tagged union, plain
    union, literal or scalar (``X | None`` is just ``X``: pydantic adds no ``loc`` step for it)."""
    origin = get_origin(tp)
    if origin is Annotated:
        inner, *meta = get_args(tp)
        for m in meta:
            if isinstance(m, FieldInfo) and isinstance(m.discriminator, str):
                disc = m.discriminator
        return classify_type(inner, disc)
    if origin in (Union, UnionType):
        members = tuple(a for a in get_args(tp) if a is not type(None))
        if len(members) == 1:
            return classify_type(members[0], disc)
        if disc:
            return "tagged", (disc, _tag_map(members, disc))
        return "union", members
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return "model", tp
    if origin in (list, tuple, set, frozenset):
        args = get_args(tp)
        return "list", args[0] if args else Any
    if origin is dict:
        args = get_args(tp)
        return "dict", args if len(args) == 2 else (Any, Any)
    if origin is Literal:
        return "literal", get_args(tp)
    return "scalar", tp


def _tag_map(members: tuple[Any, ...], disc: str) -> dict[str, type[BaseModel]]:
    tags: dict[str, type[BaseModel]] = {}
    for member in members:
        kind, model = classify_type(member)
        if kind == "model" and disc in model.model_fields:
            k, values = classify_type(model.model_fields[disc].annotation)
            for value in values if k == "literal" else ():
                tags.setdefault(str(value), model)
    return tags


def _match_branch(label: Any, members: tuple[Any, ...]) -> Any:
    """The member of a plain union that pydantic's branch label (``"literal[...]"``, ``'DistributedSpec'``,
    ``'tagged-union[...]'``, ``'list[...]'``, ``'int'``) names, or None."""
    if not isinstance(label, str):
        return None
    scalars = []
    for member in members:
        kind, info = classify_type(member)
        if (kind == "model" and label == info.__name__ or kind == "literal" and label.startswith("literal[")
                or kind == "tagged" and label.startswith("tagged-union[")
                or kind == "list" and label.startswith(("list[", "tuple[", "set[", "frozenset["))
                or kind == "dict" and label.startswith("dict[")):
            return member
        if kind == "scalar":
            scalars.append(member)
    return scalars[0] if len(scalars) == 1 and "[" not in label else None


def category(value: Any) -> str:
    """The kind of a raw value for choosing a union branch: ``mapping``, ``list`` or ``scalar``."""
    if isinstance(value, dict):
        return "mapping"
    return "list" if isinstance(value, (list, tuple)) else "scalar"


def member_category(member: Any) -> str:
    """The kind of value a union member takes: ``mapping``, ``list`` or ``scalar``."""
    kind = classify_type(member)[0]
    return {"model": "mapping", "tagged": "mapping", "dict": "mapping", "list": "list"}.get(kind, "scalar")


@dataclass
class Where:
    """Where a pydantic error is, once its ``loc`` is walked along the schema."""

    path: KeyPath
    """The key path in the file (union tags and branch names removed)."""
    owner: type[BaseModel] | None = None
    """The model whose field the last step of ``path`` names (the mapping holding a missing/unknown key)."""
    variants: tuple[str, dict[str, type[BaseModel]]] | None = None
    """When ``owner`` is one variant of a tagged union: the discriminator and every variant by tag."""
    unions: list[tuple[KeyPath, str, tuple[Any, ...]]] = field(default_factory=list)
    """Plain unions passed: (path of the union, kind of the branch taken, all members)."""
    is_key: bool = False
    """The error is about a dict key, not its value."""
    leaf: tuple[str, Any] = ("scalar", None)
    """The classified type at ``path``."""

    @property
    def leaf_tags(self) -> tuple[str, ...]:
        """Tags of a tagged union at ``path`` (empty otherwise)."""
        return tuple(self.leaf[1][1]) if self.leaf[0] == "tagged" else ()

    @property
    def leaf_models(self) -> tuple[type[BaseModel], ...]:
        """Variants of a tagged union at ``path`` (empty otherwise)."""
        return tuple(dict.fromkeys(self.leaf[1][1].values())) if self.leaf[0] == "tagged" else ()

    @property
    def leaf_disc(self) -> str | None:
        """Discriminator key of a tagged union at ``path``."""
        return self.leaf[1][0] if self.leaf[0] == "tagged" else None

    @property
    def leaf_literals(self) -> tuple[Any, ...]:
        """Allowed values of a ``Literal`` at ``path`` (empty otherwise)."""
        return tuple(self.leaf[1]) if self.leaf[0] == "literal" else ()

    def allowed_keys(self) -> list[str]:
        """Field names of the mapping holding the last key of ``path``, in schema order."""
        return list(self.owner.model_fields) if self.owner else []


def walk(loc: tuple[str | int, ...], root: type[BaseModel]) -> Where:
    """Follow a pydantic ``loc`` through the schema rooted at ``root``: the key path in the file, the model
    holding its last key, and the unions it passed through."""
    tp: Any = root
    disc: str | None = None
    where = Where(())
    path: list[str | int] = []
    pending: tuple[str, dict[str, type[BaseModel]]] | None = None
    i = 0
    while i < len(loc):
        seg = loc[i]
        if seg == "[key]":
            where.is_key, i = True, i + 1
            continue
        info: Any
        kind, info = classify_type(tp, disc) if tp is not None else ("scalar", None)
        disc = None
        if kind == "tagged" and isinstance(seg, str) and seg in info[1]:
            pending, tp, i = info, info[1][seg], i + 1
            continue
        if kind == "union":
            member = _match_branch(seg, info)
            if member is not None:
                where.unions.append((tuple(path), member_category(member), info))
                tp, i = member, i + 1
                continue
        where.owner, where.variants = None, None
        if kind == "model":
            where.owner, where.variants = info, pending
            f = info.model_fields.get(seg) if isinstance(seg, str) else None
            tp, disc = (f.annotation, f.discriminator if isinstance(f.discriminator, str) else None) if f \
                else (None, None)
        elif kind == "list":
            tp = info
        elif kind == "dict":
            tp = info[0] if loc[i + 1: i + 2] == ("[key]",) else info[1]
        else:
            tp = None
        pending = None
        path.append(seg)
        i += 1
    where.path = tuple(path)
    where.leaf = classify_type(tp, disc) if tp is not None else ("scalar", None)
    return where
