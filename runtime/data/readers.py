"""Reading a dataset's rows: local JSONL/JSON/CSV files (through ``ftplan.data.reading``, the reader ``ftplan
check`` uses), Parquet files, ``datasets`` folders and hub datasets.

Rows come out as ``RawRow``s in file order: numbered from 1 (the line number for JSON Lines), with a parsed
value or, for a line that cannot be read, the reason (one broken line never hides the rest). JSON files are
parsed here rather than through ``datasets`` so that rows with missing or oddly typed fields stay individually
reportable instead of failing the whole file's schema inference.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ftplan.data.hub import hub_id_problem
from ftplan.data.reading import READABLE_SUFFIXES, FileProblem, RawRow
from ftplan.data.reading import read_rows as read_file_rows

from .errors import DataError

FILE_SUFFIXES = (*READABLE_SUFFIXES, ".parquet")
"""File types read directly (anything else must be a ``datasets`` folder or a hub id)."""


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
    problem = hub_id_problem(path)
    if problem is not None:  # the same judgement as `ftplan check` (FT516)
        raise DataError(f"'{path}' is not a local file or folder, and not a hub dataset id: {problem}")
    return "hub", path


def read_rows(path: str, split: str = "train", max_rows: int | None = None) -> Iterator[RawRow]:
    """The first ``max_rows`` rows of a dataset (all when ``None``), in order.

    Raises ``DataError`` for a problem that stops the file (with its line) or a source that cannot be loaded."""
    kind, where = locate(path)
    if kind == "file" and Path(where).suffix.lower() in READABLE_SUFFIXES:
        rows = read_file_rows(where)
    elif kind == "file":
        rows = _parquet_rows(Path(where))
    else:
        rows = _dataset_rows(_load_dataset(path, kind, where, split))
    try:
        for count, item in enumerate(rows, start=1):
            if max_rows is not None and count > max_rows:
                return
            yield item
    except FileProblem as e:
        raise DataError(f"{path}: {e}") from None


def is_hub_id(path: str) -> bool:
    """True when a dataset path names no local file or folder and is loaded from the hub."""
    return locate(path)[0] == "hub"


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


def _parquet_rows(p: Path) -> Iterator[RawRow]:
    import pyarrow.parquet as pq

    n = 0
    for batch in pq.ParquetFile(p).iter_batches(batch_size=1024):
        for row in batch.to_pylist():
            n += 1
            yield RawRow(n, n, "row", row)


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


def _dataset_rows(ds: Any) -> Iterator[RawRow]:
    for n, row in enumerate(ds, start=1):
        yield RawRow(n, n, "row", dict(row))
