"""The first rows of local dataset files (JSON Lines, JSON lists, CSV), parsed for the contract checks.

Every reader stops at ``HEAD_ROWS`` rows and at the first row it cannot use, returning the rows before it and
the problem with its 1-based row number (the line number for JSON Lines).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

from .context import DatasetHead

__all__ = ["HEAD_READERS", "HEAD_ROWS", "RUNTIME_ONLY", "csv_head", "json_head", "jsonl_head"]

HEAD_ROWS = 200
"""Rows read from the start of each local dataset file for the contract checks."""
_JSON_READ_LIMIT = 64 << 20


def _bad_row(row: Any, n: int, what: str) -> str | None:
    if isinstance(row, dict):
        return None
    kind = {list: "a list", str: "a string", type(None): "null", bool: "a boolean"}.get(type(row), "a number")
    return f"{what} {n} is {kind}, not a JSON object"


def jsonl_head(full: Path, rel: str) -> DatasetHead:
    """First rows of a JSON Lines file; ``error_row`` is the 1-based line number."""
    rows: list[dict[str, Any]] = []
    with open(full, "rb") as f:
        for n, raw in enumerate(f, start=1):
            if len(rows) >= HEAD_ROWS:
                break
            try:
                line = raw.decode("utf-8-sig" if n == 1 else "utf-8").rstrip("\r\n")
            except UnicodeDecodeError:
                return DatasetHead(rel, tuple(rows), f"line {n} is not UTF-8 text", n)
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except (ValueError, RecursionError) as exc:
                return DatasetHead(rel, tuple(rows), f"line {n} is not valid JSON: {_why(exc, line=False)}", n)
            problem = _bad_row(row, n, "line")
            if problem:
                return DatasetHead(rel, tuple(rows), problem, n)
            rows.append(row)
    return DatasetHead(rel, tuple(rows), None if rows else "the file has no rows")


def _why(exc: Exception, line: bool) -> str:
    """A JSON decoding problem in words, with its position."""
    if isinstance(exc, json.JSONDecodeError):
        return f"{exc.msg} (line {exc.lineno}, column {exc.colno})" if line else f"{exc.msg} (column {exc.colno})"
    if isinstance(exc, RecursionError):
        return "values are nested too deeply"
    return str(exc).split(";")[0][:100]


def json_head(full: Path, rel: str) -> DatasetHead:
    """First items of a JSON file holding a list of objects; ``error_row`` is the 1-based item number.

    Items are decoded one at a time from the first 64 MiB, so a huge file is not parsed in full."""
    with open(full, "rb") as f:
        data = f.read(_JSON_READ_LIMIT + 1)
    truncated = len(data) > _JSON_READ_LIMIT
    data = data[:_JSON_READ_LIMIT]
    text = data.decode("utf-8-sig", errors="ignore" if truncated else "strict")
    decoder = json.JSONDecoder()
    rows: list[dict[str, Any]] = []
    pos = _skip_ws(text, 0)
    if text[pos:pos + 1] != "[":
        return DatasetHead(rel, (), "expected a JSON list of row objects ([{...}, ...]) at the top level")
    pos = _skip_ws(text, pos + 1)
    while len(rows) < HEAD_ROWS and text[pos:pos + 1] != "]":
        n = len(rows) + 1
        try:
            row, pos = decoder.raw_decode(text, pos)
        except (ValueError, RecursionError) as exc:
            if truncated and rows:
                break  # most likely the item cut at the read limit
            return DatasetHead(rel, tuple(rows), f"item {n} is not valid JSON: {_why(exc, line=True)}", n)
        problem = _bad_row(row, n, "item")
        if problem:
            return DatasetHead(rel, tuple(rows), problem, n)
        rows.append(row)
        pos = _skip_ws(text, pos)
        if text[pos:pos + 1] == ",":
            pos = _skip_ws(text, pos + 1)
        elif text[pos:pos + 1] != "]" and not (truncated and pos >= len(text)):
            return DatasetHead(rel, tuple(rows), f"expected ',' or ']' after item {n}", n)
    return DatasetHead(rel, tuple(rows), None if rows else "the file has no rows")


def _skip_ws(text: str, pos: int) -> int:
    while pos < len(text) and text[pos] in " \t\r\n":
        pos += 1
    return pos


def _utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # bytes that were not UTF-8, kept as surrogates
        return False
    return True


def csv_head(full: Path, rel: str) -> DatasetHead:
    """First rows of a CSV file with a header line; ``error_row`` is the 1-based data row number (0: header)."""
    rows: list[dict[str, Any]] = []
    n = 0
    try:
        with open(full, encoding="utf-8-sig", errors="surrogateescape", newline="") as f:
            reader = csv.DictReader(f)
            if not all(_utf8(name) for name in reader.fieldnames or ()):
                return DatasetHead(rel, (), "the header line is not UTF-8 text", 0)
            for n, row in enumerate(reader, start=1):
                if None in row:
                    return DatasetHead(rel, tuple(rows), f"row {n} has more fields than the header", n)
                if None in row.values():
                    return DatasetHead(rel, tuple(rows), f"row {n} has fewer fields than the header", n)
                if not all(_utf8(value) for value in row.values()):
                    return DatasetHead(rel, tuple(rows), f"row {n} is not UTF-8 text", n)
                rows.append(dict(row))
                if len(rows) >= HEAD_ROWS:
                    break
    except csv.Error as exc:
        return DatasetHead(rel, tuple(rows), f"row {n + 1} is not valid CSV: {exc}", n + 1)
    return DatasetHead(rel, tuple(rows), None if rows else "the file has no rows")


HEAD_READERS = {".jsonl": jsonl_head, ".json": json_head, ".csv": csv_head}
"""Suffix -> reader of a file's first rows."""
RUNTIME_ONLY = (".parquet", ".arrow")
"""Suffixes read only at run time (hashed, not checked)."""
