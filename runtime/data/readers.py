"""Reading a dataset's rows: local JSONL/JSON/Parquet/CSV files, ``datasets`` folders and hub datasets.

Rows come out as ``(row_number, row)`` pairs, numbered from 1 in file order, where ``row`` is a dict or, for a
line that is not valid JSON or not an object, a ``BadRow`` to report (one broken line never hides the rest).
JSON files are parsed here rather than through ``datasets`` so that rows with missing or oddly typed fields stay
individually reportable instead of failing the whole file's schema inference. For JSONL files the row number is
the line number.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .errors import BadRow, DataError

FILE_SUFFIXES = (".jsonl", ".ndjson", ".json", ".parquet", ".csv")
"""File types read directly (anything else must be a ``datasets`` folder or a hub id)."""

Row = dict[str, Any] | BadRow

TEXT_ENCODING = "utf-8-sig"
"""Encoding of JSON/JSONL/CSV files: UTF-8, with the byte-order mark spreadsheet programs write skipped."""


def locate(path: str) -> tuple[str, Path | str]:
    """Classify a dataset path: ``("file", Path)``, ``("dir", Path)`` or ``("hub", id)``.

    Paths are relative to the current directory (the project root). A path that does not exist but looks like
    a file path (known suffix, or starting with ``.``, ``/`` or ``~``) is an error, not a hub id.
    """
    p = Path(path).expanduser()
    if p.is_file():
        if p.suffix.lower() not in FILE_SUFFIXES:
            raise DataError(f"{path}: unsupported file type {p.suffix or '(none)'!r}; use one of "
                            f"{', '.join(FILE_SUFFIXES)} or a folder written by datasets' save_to_disk")
        return "file", p
    if p.is_dir():
        return "dir", p
    if p.suffix.lower() in FILE_SUFFIXES or path.startswith((".", "/", "~")):
        raise DataError(f"{path}: no such file (dataset paths are relative to the project root {Path.cwd()})")
    return "hub", path


def read_rows(path: str, split: str = "train", max_rows: int | None = None) -> Iterator[tuple[int, Row]]:
    """Yield ``(row_number, row)`` for the first ``max_rows`` rows of a dataset (all when ``None``)."""
    kind, where = locate(path)
    if kind == "file":
        rows = _file_rows(path, Path(where))
    else:
        rows = _dataset_rows(_load_dataset(path, kind, where, split))
    try:
        for count, item in enumerate(rows, start=1):
            if max_rows is not None and count > max_rows:
                return
            yield item
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text (byte 0x{e.object[e.start]:02x} at offset {e.start} of a "
                        "read block); convert the file to UTF-8") from None


def source_digest(path: str, split: str = "train") -> str:
    """sha256 identifying a dataset's content: its bytes (files, folders) or the hub dataset's fingerprint."""
    kind, where = locate(path)
    h = hashlib.sha256()
    if kind == "file":
        _hash_file(h, Path(where))
    elif kind == "dir":
        root = Path(where)
        for f in sorted(q for q in root.rglob("*") if q.is_file()):
            h.update(f.relative_to(root).as_posix().encode() + b"\0")
            _hash_file(h, f)
    else:
        ds = _load_dataset(path, kind, where, split)
        h.update(f"hub\0{path}\0{split}\0{ds._fingerprint}".encode())
    return h.hexdigest()


def file_sha256(path: Path) -> str:
    """sha256 of one file's bytes."""
    h = hashlib.sha256()
    _hash_file(h, path)
    return h.hexdigest()


def _hash_file(h: Any, path: Path) -> None:
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)


def _file_rows(path: str, p: Path) -> Iterator[tuple[int, Row]]:
    suffix = p.suffix.lower()
    if suffix in (".jsonl", ".ndjson"):
        yield from _jsonl_rows(p)
    elif suffix == ".json":
        yield from _json_rows(path, p)
    elif suffix == ".parquet":
        yield from _parquet_rows(p)
    else:
        yield from _csv_rows(p)


def _as_row(n: int, value: Any) -> Row:
    if isinstance(value, dict):
        return value
    return BadRow(n, f"row is a JSON {type(value).__name__}, not an object with named fields")


def _jsonl_rows(p: Path) -> Iterator[tuple[int, Row]]:
    with open(p, encoding=TEXT_ENCODING) as f:
        for n, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                value = json.loads(line)
            except json.JSONDecodeError as e:
                yield n, BadRow(n, f"line is not valid JSON ({e.msg} at column {e.colno})")
                continue
            yield n, _as_row(n, value)


def _json_rows(path: str, p: Path) -> Iterator[tuple[int, Row]]:
    text = p.read_text(encoding=TEXT_ENCODING)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        if e.msg == "Extra data":  # JSON Lines saved as .json
            yield from _jsonl_rows(p)
            return
        raise DataError(f"{path}: not valid JSON ({e.msg} at line {e.lineno}, column {e.colno}); a .json "
                        "dataset is an array of objects, or one object holding such an array") from None
    if isinstance(data, dict):
        lists = [v for v in data.values() if isinstance(v, list)]
        if len(lists) != 1:
            raise DataError(f"{path}: a .json dataset must be an array of rows or an object with exactly one "
                            f"array of rows; found an object with keys {sorted(data)}")
        data = lists[0]
    if not isinstance(data, list):
        raise DataError(f"{path}: a .json dataset must be an array of rows, not a {type(data).__name__}")
    for n, value in enumerate(data, start=1):
        yield n, _as_row(n, value)


def _parquet_rows(p: Path) -> Iterator[tuple[int, Row]]:
    import pyarrow.parquet as pq

    n = 0
    for batch in pq.ParquetFile(p).iter_batches(batch_size=1024):
        for row in batch.to_pylist():
            n += 1
            yield n, row


def _csv_rows(p: Path) -> Iterator[tuple[int, Row]]:
    with open(p, encoding=TEXT_ENCODING, newline="") as f:
        for n, row in enumerate(csv.DictReader(f), start=1):
            yield n, dict(row)


def _load_dataset(path: str, kind: str, where: Path | str, split: str) -> Any:
    import datasets

    if kind == "dir":
        try:
            loaded = datasets.load_from_disk(os.fspath(where))
        except FileNotFoundError:  # a folder of data files rather than a save_to_disk folder
            try:
                return datasets.load_dataset(os.fspath(where), split=split)
            except Exception as e:  # noqa: BLE001 - any loader failure is reported as a user error
                raise DataError(f"{path}: cannot read this folder as a dataset ({e})") from None
        if isinstance(loaded, datasets.DatasetDict):
            if split not in loaded:
                raise DataError(f"{path}: no split {split!r}; the folder has {', '.join(sorted(loaded))} "
                                "(set split: in the dataset entry)")
            return loaded[split]
        return loaded
    try:
        return datasets.load_dataset(os.fspath(where), split=split)
    except Exception as e:  # noqa: BLE001
        raise DataError(f"{path}: not a local file or folder under {Path.cwd()}, and loading it as a hub "
                        f"dataset failed ({type(e).__name__}: {e})") from None


def _dataset_rows(ds: Any) -> Iterator[tuple[int, Row]]:
    for n, row in enumerate(ds, start=1):
        yield n, dict(row)
