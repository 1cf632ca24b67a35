"""Streaming the rows of local JSON Lines, JSON and CSV files, each with the line it starts on.

Every reader yields ``RawRow``s in file order and never holds more than one row (plus a read buffer) in
memory, so a 10 GB file is read in constant memory. A row that cannot be read is a ``RawRow`` with a
``problem`` (the reader goes on where it can: the next JSON Lines line, the next CSV record); a problem that
stops the whole file (a JSON list broken in the middle, a CSV quote never closed) raises ``FileProblem`` with
its line and column. Text is UTF-8; a byte-order mark at the start is skipped.

Row numbers: the line number in JSON Lines (blank lines are skipped but keep their numbers), the item number
in a JSON list, the data record number in CSV (the header is record 0).
"""

from __future__ import annotations

import codecs
import csv
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

__all__ = ["FileProblem", "RawRow", "READABLE_SUFFIXES", "count_rows", "read_rows", "row_unit"]

READABLE_SUFFIXES = (".jsonl", ".ndjson", ".json", ".csv")
"""File types whose rows ftplan reads itself (``check`` and the runtime alike)."""

_CHUNK = 1 << 20
_FIRST_LINE_LIMIT = 16 << 20  # a longer first line of a .json file is streamed as {"key": [rows]}
csv.field_size_limit(max(csv.field_size_limit(), 1 << 30))  # long answers are normal; the default is 128 KiB


_NUMBER_TAIL = re.compile(r"[0-9eE+\-.]*")


class FileProblem(Exception):
    """The file cannot be read any further; the message names the line (and column) and the fix."""


@dataclass(frozen=True)
class RawRow:
    """One row as read from the file: its parsed value, or why it could not be read."""

    number: int
    """1-based row number (the line number in JSON Lines)."""
    line: int
    """1-based line of the file where the row starts."""
    unit: str
    """What ``number`` counts: ``line`` (JSON Lines), ``item`` (JSON list) or ``row`` (CSV)."""
    value: Any = None
    """The parsed row (a dict for a usable row; anything JSON for a row the format checks then refuse)."""
    problem: str | None = None
    """Why the row could not be read (invalid JSON, not UTF-8, ragged CSV), with its column when known."""

    @property
    def where(self) -> str:
        """``line 7`` (JSON Lines), ``item 3 (line 40)`` (JSON), ``row 3 (line 4)`` (CSV)."""
        if self.unit == "line" or self.line == self.number:
            return f"{self.unit} {self.number}"
        return f"{self.unit} {self.number} (line {self.line})"


def row_unit(path: str | Path) -> str:
    """What row numbers count in a file of this type: ``line``, ``item`` or ``row``."""
    suffix = Path(path).suffix.lower()
    return {".jsonl": "line", ".ndjson": "line", ".json": "item"}.get(suffix, "row")


def read_rows(path: str | Path) -> Iterator[RawRow]:
    """Every row of a local ``.jsonl``/``.ndjson``/``.json``/``.csv`` file, in order.

    Raises ``FileProblem`` for a problem that stops the file, ``OSError`` when it cannot be opened, and
    ``ValueError`` for another suffix."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".ndjson"):
        return _jsonl_rows(path)
    if suffix == ".json":
        return _json_rows(path)
    if suffix == ".csv":
        return _csv_rows(path)
    raise ValueError(f"ftplan reads {', '.join(READABLE_SUFFIXES)} files, not {suffix or path.name!r}")


def count_rows(path: str | Path) -> int | None:
    """The number of rows of a JSON Lines file (its non-blank lines) without parsing them; None for other
    types, whose rows can only be counted by reading them."""
    if row_unit(path) != "line":
        return None
    n = 0
    with open(path, "rb") as f:
        for raw in f:
            if raw.strip():
                n += 1
    return n


# ------------------------------------------------------------------------------------------------ JSON Lines

def _json_problem(exc: Exception, offset: int = 0) -> str:
    """A JSON decoding failure in words (columns counted from 1, shifted by ``offset`` characters)."""
    if isinstance(exc, json.JSONDecodeError):
        return f"not valid JSON: {exc.msg} (column {exc.colno + offset})"
    if isinstance(exc, RecursionError):
        return "not valid JSON for ftplan: values are nested too deeply (over ~1,000 levels)"
    return f"not valid JSON: {str(exc).split(';')[0][:120]}"


def _not_utf8(raw: bytes, start: int) -> str:
    column = len(raw[:start].decode("utf-8", errors="replace")) + 1
    return f"not UTF-8 text (byte 0x{raw[start]:02x} at column {column}); save the file as UTF-8"


def _jsonl_rows(path: Path) -> Iterator[RawRow]:
    with open(path, "rb") as f:
        for n, raw in enumerate(f, start=1):
            if n == 1 and raw.startswith(codecs.BOM_UTF8):
                raw = raw[len(codecs.BOM_UTF8):]
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                yield RawRow(n, n, "line", problem=_not_utf8(raw, exc.start))
                continue
            if not text.strip():
                continue
            try:
                value = json.loads(text.rstrip("\r\n"))
            except (ValueError, RecursionError) as exc:
                yield RawRow(n, n, "line", problem=_json_problem(exc))
                continue
            yield RawRow(n, n, "line", value)


# ------------------------------------------------------------------------------------------------ JSON

class _Text:
    """A UTF-8 file as a growing text buffer with line numbers, read a chunk at a time.

    Bytes that are not UTF-8 end the text where they start (``broken``): rows before them are read as usual, and
    whatever needs text past them raises the problem, so the result never depends on the chunk size."""

    def __init__(self, f: BinaryIO):
        self.f = f
        self.decoder = codecs.getincrementaldecoder("utf-8-sig")()
        self.buf = ""
        self.pos = 0
        self.eof = False
        self.base_line = 1  # line and column of buf[0]
        self.base_col = 1
        self.counted = (0, 1)  # (position, its line number): newlines are counted forward from here only
        self.want = _CHUNK
        self.broken: FileProblem | None = None

    def more(self) -> bool:
        """Append the next chunk; False at the end of the file."""
        if self.eof:
            return False
        data = self.f.read(self.want)
        self.want = min(self.want * 2, 64 * _CHUNK)
        final = not data
        bad = None
        try:
            text = self.decoder.decode(data, final=final)
        except UnicodeDecodeError as exc:  # exc.object: the bytes held back from the last chunk, then data
            text, bad, final = exc.object[:exc.start].decode("utf-8"), exc.object[exc.start], True
        if self.pos > _CHUNK:  # drop what was consumed
            self.base_line, self.base_col = self.position(self.pos)
            self.buf, self.pos, self.counted = self.buf[self.pos:], 0, (0, self.base_line)
        self.buf += text
        self.eof = final
        if bad is not None:
            self.broken = FileProblem(f"{self.where(len(self.buf))} is not UTF-8 text (byte 0x{bad:02x}); save the "
                                      "file as UTF-8")
        return not final or bool(text)

    def position(self, pos: int) -> tuple[int, int]:
        """(line, column) of ``buf[pos]``."""
        nl = self.buf.rfind("\n", 0, pos)
        return self.line_at(pos), pos - nl if nl >= 0 else self.base_col + pos

    def line_at(self, pos: int) -> int:
        """Line number of ``buf[pos]`` (positions asked for only move forward, so this stays linear)."""
        at, line = self.counted
        if pos < at:
            at, line = 0, self.base_line
        line += self.buf.count("\n", at, pos)
        self.counted = (pos, line)
        return line

    def where(self, pos: int) -> str:
        """``line 3, column 7`` of ``buf[pos]``."""
        line, col = self.position(pos)
        return f"line {line}, column {col}"

    def skip_ws(self) -> str:
        """Skip whitespace; the next character ("" at the end of the file)."""
        while True:
            while self.pos < len(self.buf) and self.buf[self.pos] in " \t\r\n":
                self.pos += 1
            if self.pos < len(self.buf):
                return self.buf[self.pos]
            if not self.more():
                if self.broken is not None:
                    raise self.broken
                return ""

    def value(self, decoder: json.JSONDecoder) -> Any:
        """Decode the JSON value at ``pos``, reading more of the file while it is cut off."""
        while True:
            try:
                value, end = decoder.raw_decode(self.buf, self.pos)
            except json.JSONDecodeError as exc:
                # cut off by the end of the buffer (a string, a literal or a number that goes on): read more
                cut_off = len(self.buf) - exc.pos <= 64 or exc.msg.startswith("Unterminated")
                if cut_off and not self.eof:
                    self.more()
                    continue
                if cut_off and self.broken is not None:
                    raise self.broken from None
                raise
            if not self.eof and isinstance(value, (int, float)) and _NUMBER_TAIL.fullmatch(self.buf, end):
                self.more()  # a number cut by the end of the buffer ("1e" of "1e+308") goes on in the next chunk
                continue
            self.pos = end
            return value


def _json_rows(path: Path) -> Iterator[RawRow]:
    with open(path, "rb") as f:
        text = _Text(f)
        decoder = json.JSONDecoder()
        first = text.skip_ws()
        if first == "":
            return
        if first == "{":
            rows = _json_object_rows(text, decoder)
        elif first == "[":
            text.pos += 1
            rows = _json_list_rows(text, decoder, top=True)
        else:
            raise FileProblem(f"{text.where(text.pos)}: a .json dataset must hold a list of rows ([{{...}}, ...]) "
                              "or an object with one list of rows ({\"data\": [...]})")
        yield from rows


def _json_list_rows(text: _Text, decoder: json.JSONDecoder, *, top: bool = False) -> Iterator[RawRow]:
    """Items of a JSON list whose ``[`` was just consumed, up to and including its ``]`` (``top``: and nothing
    but whitespace after it)."""
    n = 0
    if text.skip_ws() == "]":
        text.pos += 1
        _end(text, top)
        return
    while True:
        n += 1
        yield _item(text, decoder, n)
        nxt = text.skip_ws()
        if nxt == ",":
            text.pos += 1
            text.skip_ws()
            continue
        if nxt == "]":
            text.pos += 1
            _end(text, top)
            return
        what = "the end of the file" if nxt == "" else repr(nxt)
        raise FileProblem(f"{text.where(text.pos)}: expected ',' or ']' after item {n}, found {what}")


def _end(text: _Text, top: bool) -> None:
    if top and text.skip_ws() != "":
        raise FileProblem(f"{text.where(text.pos)}: unexpected text after the list of rows")


def _json_object_rows(text: _Text, decoder: json.JSONDecoder) -> Iterator[RawRow]:
    """A top-level object: JSON Lines saved as ``.json`` (one object per line), or ``{"key": [rows]}``."""
    first_line_no = text.line_at(text.pos)
    end_of_line = text.buf.find("\n", text.pos)
    while end_of_line < 0 and len(text.buf) - text.pos < _FIRST_LINE_LIMIT and text.more():
        end_of_line = text.buf.find("\n", text.pos)  # (reading more may move the buffer: pos moves with it)
    start = text.pos
    first_line = text.buf[start:end_of_line if end_of_line >= 0 else len(text.buf)]
    value = None
    if end_of_line >= 0 or text.eof:
        try:
            value = json.loads(first_line)
        except (ValueError, RecursionError):
            value = None
    if isinstance(value, dict):
        text.pos = start + len(first_line)
        nxt = text.skip_ws()
        if nxt == "{":  # JSON Lines with a .json name
            yield RawRow(1, first_line_no, "item", value)
            yield from _lines_as_items(text, decoder)
            return
        lists = [k for k, v in value.items() if isinstance(v, list)]
        if len(lists) != 1 or len(value) != 1:
            raise FileProblem(f"line {first_line_no}: a .json dataset must hold a list of rows ([{{...}}, ...]) or "
                              "an object with exactly one list of rows ({\"data\": [...]}); this object has keys "
                              f"{', '.join(repr(k) for k in list(value)[:8])}")
        for n, item in enumerate(value[lists[0]], start=1):
            yield RawRow(n, first_line_no, "item", item)
        if nxt != "":
            raise FileProblem(f"{text.where(text.pos)}: unexpected text after the object holding the rows")
        return
    # {"data": [ ... ]} spread over lines: stream the list
    text.pos = start + 1
    if text.skip_ws() != '"':
        raise FileProblem(f"{text.where(text.pos)}: a .json dataset must hold a list of rows ([{{...}}, ...]) or an "
                          "object with exactly one list of rows ({\"data\": [...]})")
    try:
        key = text.value(decoder)
    except json.JSONDecodeError as exc:
        raise FileProblem(f"{text.where(exc.pos)}: not valid JSON: {exc.msg}") from None
    if text.skip_ws() != ":":
        raise FileProblem(f"{text.where(text.pos)}: not valid JSON: expected ':' after the key {key!r}")
    text.pos += 1
    if text.skip_ws() != "[":
        raise FileProblem(f"{text.where(text.pos)}: the value of {key!r} must be the list of rows "
                          "({\"data\": [{...}, ...]})")
    text.pos += 1
    yield from _json_list_rows(text, decoder)
    nxt = text.skip_ws()
    if nxt != "}":
        more = "another key" if nxt == "," else repr(nxt) if nxt else "the end of the file"
        raise FileProblem(f"{text.where(text.pos)}: expected '}}' after the list of rows, found {more}; a .json "
                          "dataset object must hold exactly one list of rows")
    text.pos += 1
    if text.skip_ws() != "":
        raise FileProblem(f"{text.where(text.pos)}: unexpected text after the object holding the rows")


def _lines_as_items(text: _Text, decoder: json.JSONDecoder) -> Iterator[RawRow]:
    """The remaining objects of JSON Lines saved as ``.json`` (item 2 on)."""
    n = 1
    while text.skip_ws():
        n += 1
        yield _item(text, decoder, n)


def _item(text: _Text, decoder: json.JSONDecoder, n: int) -> RawRow:
    """Item ``n``, decoded at the reading position; a value that does not decode stops the file."""
    line = text.line_at(text.pos)
    try:
        value = text.value(decoder)
    except json.JSONDecodeError as exc:
        raise FileProblem(f"item {n} ({text.where(exc.pos)}) is not valid JSON: {exc.msg}; the rest of the file "
                          "cannot be read") from None
    except (RecursionError, ValueError) as exc:
        raise FileProblem(f"item {n} (line {line}) is {_json_problem(exc)}; the rest of the file cannot be "
                          "read") from None
    return RawRow(n, line, "item", value)


# ------------------------------------------------------------------------------------------------ CSV

def _csv_rows(path: Path) -> Iterator[RawRow]:
    with open(path, encoding="utf-8-sig", errors="surrogateescape", newline="") as f:
        reader = csv.reader(f)
        try:
            header = next(reader, None)
        except csv.Error as exc:
            raise FileProblem(f"line {reader.line_num}: the header line is not valid CSV: {exc}") from None
        if header is None:
            return
        bad = _non_utf8_field(header)
        if bad is not None:
            raise FileProblem(f"line 1: the header is not UTF-8 text (column {bad + 1}); save the file as UTF-8")
        seen: set[str] = set()
        twice = []
        for name in header:
            if name in seen:
                twice.append(name)
            seen.add(name)
        if twice:
            raise FileProblem(f"line 1: the header names column {twice[0]!r} twice; rename one of them")
        n, line = 0, reader.line_num + 1
        while True:
            try:
                fields = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:
                raise FileProblem(f"row {n + 1} (line {line}) is not valid CSV: {exc}; the rest of the file "
                                  "cannot be read") from None
            start, line = line, reader.line_num + 1
            if not fields or fields == [""]:
                continue  # blank line
            n += 1
            bad = _non_utf8_field(fields)
            if bad is not None:
                name = header[bad] if bad < len(header) else f"field {bad + 1}"
                yield RawRow(n, start, "row", problem=f"column {name!r} is not UTF-8 text; save the file as UTF-8")
            elif len(fields) != len(header):
                more = "more" if len(fields) > len(header) else "fewer"
                yield RawRow(n, start, "row", problem=f"has {len(fields)} fields, {more} than the header's "
                             f"{len(header)} (a comma or quote inside a value needs the value in double quotes)")
            else:
                yield RawRow(n, start, "row", dict(zip(header, fields)))


def _non_utf8_field(fields: list[str]) -> int | None:
    """Index of the first field holding bytes that were not UTF-8 (kept as surrogates), or None."""
    for i, value in enumerate(fields):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return i
    return None
