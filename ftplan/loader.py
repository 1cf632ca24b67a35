"""Parse the pipeline file: YAML text to plain data plus a ``SourceMap`` of every key's and value's position.

The YAML is read with the YAML 1.2 core schema rather than PyYAML's YAML 1.1 defaults, so what you write is
what the schema sees:

- booleans are only ``true``/``false`` (also ``True``/``TRUE``...): ``yes``, ``no``, ``on``, ``off`` stay
  strings, so a typo is a type error instead of a silent boolean;
- dates and times stay strings (``2024-01-01``), and so does ``24:00:00`` (YAML 1.1 reads it as 86400);
- ``1e-5`` is a number (YAML 1.1 reads it as a string); ``0x1f``/``0o17`` are integers, ``1_000`` is a string;
- mapping keys are always strings (``1: x`` has the key ``"1"``); duplicate keys are errors at every level;
- anchors, aliases and merge keys (``<<: *defaults``) work; other tags (``!!python/...``, ``!!timestamp``,
  ``!custom``) are errors.

Nothing here prints; every problem is a located ``Diagnostic`` raised in one ``FtplanError``.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import yaml
from yaml.error import Mark
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from .diagnostics import Diagnostic, FtplanError, KeyPath, Span, error
from .sourcemap import SourceMap, quote

__all__ = ["MAX_DEPTH", "MAX_VALUES", "load_yaml", "read_pipeline_file"]

MAX_DEPTH = 64
"""Deepest nesting of mappings and lists accepted (a pipeline needs about 6)."""
MAX_VALUES = 100_000
"""Most values a document may expand to, aliases included (guards against alias bombs)."""

_TAG = "tag:yaml.org,2002:"
_NULL, _BOOL, _INT, _FLOAT, _STR = (_TAG + t for t in ("null", "bool", "int", "float", "str"))
_SEQ, _MAP, _MERGE = _TAG + "seq", _TAG + "map", _TAG + "merge"


class _Loader(yaml.SafeLoader):
    """PyYAML's safe parser with YAML 1.2 core scalar resolution and a nesting limit; constructs nothing."""

    yaml_implicit_resolvers: dict[str | None, list[tuple[str, re.Pattern[str]]]] = {}

    def __init__(self, stream: str):
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent: Node | None, index: int) -> Node | None:  # noqa: D102 - PyYAML hook
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                mark = self.peek_event().start_mark  # type: ignore[no-untyped-call]  # types-PyYAML: unannotated
                raise yaml.composer.ComposerError(None, None, f"nesting is deeper than {MAX_DEPTH} levels", mark)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


for _tag, _pattern, _first in (
    (_NULL, r"^(?:~|null|Null|NULL|)$", ["~", "n", "N", ""]),
    (_BOOL, r"^(?:true|True|TRUE|false|False|FALSE)$", list("tTfF")),
    (_INT, r"^(?:[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+)$", list("-+0123456789")),
    (_FLOAT, r"^(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?|[-+]?\.(?:inf|Inf|INF)"
             r"|\.(?:nan|NaN|NAN))$", list("-+.0123456789")),
    (_MERGE, r"^<<$", ["<"]),
):
    _Loader.add_implicit_resolver(_tag, re.compile(_pattern), _first)


def _pos(mark: Mark) -> tuple[int, int]:
    return (mark.line + 1, mark.column + 1)


_SYNTAX_HINTS = (
    ("'\\t'", "indent with spaces; YAML does not allow tabs for indentation"),
    ("mapping values are not allowed", "check the indentation of this line, or quote a value that contains ': '"),
    ("expected <block end>", "check the indentation: this line must line up with the keys or list items above it"),
    ("while scanning a simple key", "write 'key: value', with a space after the ':'"),
    ("while scanning a quoted scalar", "close the quote opened at {context}"),
    ("while parsing a flow", "close the bracket opened at {context}, or quote a value with ':' or ','"),
    ("single document", "a pipeline file holds one document: remove the second '---'"),
    ("deeper than", "a pipeline needs only a few levels of nesting"),
    ("found undefined alias", "define the anchor ('&name') before the alias ('*name') that uses it"),
)
"""(text in the parser's message, what to do) for the syntax errors people make most."""


def _syntax_error(exc: yaml.YAMLError, text: str, filename: str) -> Diagnostic:
    """FT001 for a parser error, at the parser's position (at the start of what is unfinished when the
    parser only noticed at the end of the file or of the next line)."""
    if isinstance(exc, yaml.MarkedYAMLError) and exc.problem_mark is not None:
        line, col = _pos(exc.problem_mark)
        context = "{}:{}".format(*_pos(exc.context_mark)) if exc.context_mark is not None else "?"
        problem = exc.problem or "invalid YAML"
        if exc.context and problem.startswith("but "):
            problem = f"{exc.context}, {problem}"
        elif exc.context and exc.context_mark is not None:
            cl, cc = _pos(exc.context_mark)
            unfinished = "end of stream" in problem or "<stream end>" in problem or "simple key" in exc.context
            if unfinished and (cl, cc) < (line, col):
                problem += f" ({exc.context}; noticed at {line}:{col})"
                line, col = cl, cc
            else:
                problem += f" ({exc.context} at {cl}:{cc})"
    elif isinstance(exc, yaml.reader.ReaderError):
        context = "?"
        before = text[: exc.position]
        line, col = before.count("\n") + 1, len(before) - (before.rfind("\n") + 1) + 1
        problem = f"character {exc.character:#x} is not allowed in YAML"
    else:  # pragma: no cover - every PyYAML error is one of the above
        line, col, problem, context = 1, 1, str(exc), "?"
    hint = next((h.replace("{context}", context) for needle, h in _SYNTAX_HINTS if needle in problem), None)
    if hint is None:
        hint = ("delete the character (often an invisible control character pasted with the text)"
                if isinstance(exc, yaml.reader.ReaderError) else
                "fix the YAML at this position (quote text that holds ':', '#', '[' or '{')")
    return error("FT001", (), f"invalid YAML: {problem}", hint).located(Span(filename, line, col))


class _Builder:
    """Turns a composed node tree into dicts/lists/scalars while filling the source map."""

    def __init__(self, text: str, filename: str):
        self.text = text
        self.map = SourceMap(filename)
        self.diags: list[Diagnostic] = []
        self.values = 0
        self._active: set[int] = set()

    def fail(self, code: str, path: KeyPath, message: str, mark: Mark, hint: str | None = None) -> None:
        self.diags.append(error(code, path, message, hint).located(Span(self.map.filename, *_pos(mark))))

    def record(self, path: KeyPath, node: Node, key: Node | None = None) -> None:
        raw = None
        if isinstance(node, ScalarNode) and node.style is None:
            raw = self.text[node.start_mark.index: node.end_mark.index]
        self.map.add(path, _pos(node.start_mark), _pos(key.start_mark) if key is not None else None, raw)

    def build(self, node: Node, path: KeyPath) -> object:
        self.values += 1
        if self.values > MAX_VALUES:
            self.fail("FT008", path, f"the document expands to more than {MAX_VALUES} values", node.start_mark,
                      "aliases (*name) multiply what they refer to; write the values out instead")
            raise _TooLarge
        if isinstance(node, ScalarNode):
            return self.scalar(node, path)
        if id(node) in self._active:
            self.fail("FT008", path, "an alias refers to a mapping or list that contains it", node.start_mark,
                      "recursive structures cannot describe a pipeline")
            return None
        self._active.add(id(node))
        try:
            if isinstance(node, SequenceNode):
                if node.tag != _SEQ:
                    self.fail("FT008", path, f"unsupported YAML tag {quote(_show_tag(node.tag))}", node.start_mark,
                              "remove the tag; a list needs none")
                return [self.child(item, path + (i,)) for i, item in enumerate(node.value)]
            assert isinstance(node, MappingNode)  # the composer builds scalars, sequences and mappings only
            if node.tag != _MAP:
                self.fail("FT008", path, f"unsupported YAML tag {quote(_show_tag(node.tag))}", node.start_mark,
                          "remove the tag; a mapping needs none")
            return self.mapping(node, path)
        finally:
            self._active.discard(id(node))

    def child(self, node: Node, path: KeyPath, key: Node | None = None) -> object:
        self.record(path, node, key)
        return self.build(node, path)

    def mapping(self, node: MappingNode, path: KeyPath) -> dict[str, object]:
        out: dict[str, object] = {}
        first: dict[str, tuple[int, int]] = {}
        merges: list[Node] = []
        for key_node, value_node in node.value:
            if isinstance(key_node, ScalarNode) and key_node.tag == _MERGE:
                merges.append(value_node)
                continue
            if not isinstance(key_node, ScalarNode):
                self.fail("FT008", path, "a mapping key must be a plain word, not a mapping or list",
                          key_node.start_mark, "write the key as text")
                continue
            key = key_node.value
            if key in first:
                line, col = first[key]
                self.fail("FT002", path, f"duplicate key {quote(key)} (first at {line}:{col})", key_node.start_mark,
                          "remove one of them; YAML would silently keep only the last")
                continue
            first[key] = _pos(key_node.start_mark)
            out[key] = self.child(value_node, path + (key,), key_node)
        for source in merges:
            self.merge(out, source, path)
        return out

    def merge(self, out: dict[str, object], source: Node, path: KeyPath) -> None:
        """``<<: *anchor`` (or a list of them): copy keys the mapping does not set itself, earliest first."""
        sources = source.value if isinstance(source, SequenceNode) else [source]
        for src in sources:
            if not isinstance(src, MappingNode):
                self.fail("FT008", path, "a merge key ('<<') needs a mapping or a list of mappings",
                          src.start_mark, "write '<<: *name' where '&name' marks a mapping")
                continue
            if id(src) in self._active:
                self.fail("FT008", path, "an alias refers to a mapping that contains it", src.start_mark,
                          "merge a mapping defined elsewhere ('<<: *name' where '&name' marks another mapping), or "
                          "write the keys out")
                continue
            self._active.add(id(src))
            try:
                for key_node, value_node in src.value:
                    if not isinstance(key_node, ScalarNode) or key_node.tag == _MERGE:
                        continue
                    if key_node.value not in out:
                        out[key_node.value] = self.child(value_node, path + (key_node.value,), key_node)
            finally:
                self._active.discard(id(src))

    def scalar(self, node: ScalarNode, path: KeyPath) -> object:
        tag, value = node.tag, node.value
        try:
            if tag == _STR:
                return value
            if tag == _NULL:
                if value not in ("", "~", "null", "Null", "NULL"):
                    raise ValueError
                return None
            if tag == _BOOL:
                if value.lower() not in ("true", "false"):
                    raise ValueError
                return value.lower() == "true"
            if tag == _INT:
                return _to_int(value)
            if tag == _FLOAT:
                return _to_float(value)
        except ValueError:
            self.fail("FT008", path, f"cannot read {quote(value, 40)} as {_show_tag(tag)}", node.start_mark,
                      "write a plain value without a tag")
            return None
        self.fail("FT008", path, f"unsupported YAML tag {quote(_show_tag(tag))}", node.start_mark,
                  "remove the tag; quote the value if it should be text")
        return None


class _TooLarge(Exception):
    pass


def _show_tag(tag: str) -> str:
    return "!!" + tag[len(_TAG):] if tag.startswith(_TAG) else tag


def _to_int(value: str) -> int:
    sign, digits = (-1, value[1:]) if value[:1] == "-" else (1, value.lstrip("+"))
    if digits.startswith("0o"):
        return sign * int(digits[2:], 8)
    if digits.startswith("0x"):
        return sign * int(digits[2:], 16)
    if len(digits) > 1000:
        raise ValueError
    return sign * int(digits)


def _to_float(value: str) -> float:
    low = value.lower()
    if low.endswith(".inf"):
        return -math.inf if low.startswith("-") else math.inf
    if low == ".nan":
        return math.nan
    return float(value)


def load_yaml(text: str, filename: str) -> tuple[dict[str, Any], SourceMap]:
    """Parse pipeline YAML into plain data and the positions of every key and value.

    Raises ``FtplanError`` with every located problem: a syntax error (FT001), duplicate keys (FT002, all of
    them), an empty document or a top level that is not a mapping (FT007), unsupported tags, recursive or
    exploding aliases and over-deep nesting (FT008/FT001)."""
    loader = None
    try:
        loader = _Loader(text)
        root = loader.get_single_node()
    except yaml.YAMLError as exc:
        raise FtplanError([_syntax_error(exc, text, filename)]) from None
    except RecursionError:  # pragma: no cover - the nesting limit fires first
        raise FtplanError([error("FT001", (), f"invalid YAML: nesting is deeper than {MAX_DEPTH} levels",
                                 "a pipeline is a few levels deep: look for a runaway '[' or '{'")
                           .located(Span(filename, 1, 1))]) from None
    finally:
        if loader is not None:
            loader.dispose()
    if root is None or isinstance(root, ScalarNode) and root.tag == _NULL and root.value == "":
        raise FtplanError([error("FT007", (), "the pipeline file is empty",
                                 "start from an example: it needs name, model, hardware and stages")
                           .located(Span(filename, 1, 1))])
    builder = _Builder(text, filename)
    builder.record((), root)
    if not isinstance(root, MappingNode):
        what = "a list" if isinstance(root, SequenceNode) else "a single value"
        raise FtplanError([error("FT007", (), f"the top level must be a mapping of keys, not {what}",
                                 "write 'name:', 'model:', 'hardware:' and 'stages:' at the start of lines")
                           .located(Span(filename, *_pos(root.start_mark)))])
    try:
        data = builder.build(root, ())
    except _TooLarge:
        data = None
    if builder.diags:
        raise FtplanError(builder.diags)
    assert isinstance(data, dict)  # the root is a mapping
    return data, builder.map


def read_pipeline_file(path: str | Path) -> tuple[str, bytes]:
    """The pipeline file's text (UTF-8, BOM removed) and its exact bytes (for the plan's input hash).

    The only read of the pipeline file itself; an unreadable or non-UTF-8 file raises ``FtplanError``
    (FT000) instead of an ``OSError``."""
    name = str(path)
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise FtplanError([error("FT000", (), f"cannot read {name}: no such file",
                                 "check the path; it is relative to the current folder")]) from None
    except IsADirectoryError:
        raise FtplanError([error("FT000", (), f"cannot read {name}: it is a folder",
                                 "pass the pipeline YAML file inside it")]) from None
    except OSError as exc:
        raise FtplanError([error("FT000", (), f"cannot read {name}: {exc.strerror or exc}",
                                 "check that the file exists and that you may read it (ls -l)")]) from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        before = data[: exc.start]
        line = before.count(b"\n") + 1
        col = len(before) - (before.rfind(b"\n") + 1) + 1
        raise FtplanError([error("FT000", (), f"cannot read {name}: byte {data[exc.start]:#04x} is not UTF-8 text",
                                 "save the file as UTF-8").located(Span(name, line, col))]) from None
    return text, data
