"""The local-input snapshot: every local file a pipeline references, read once, before any check runs.

``read_inputs`` reads the local base model's ``config.json``, the local tokenizer, a chat-template file and
the first rows of every local dataset, and hashes every file it touches. Everything downstream (checks,
estimate, plan) is a pure function of the returned ``Inputs``.

Paths in the result are POSIX paths relative to the pipeline file's folder (``root``), never absolute, and
every collection is sorted, so the snapshot of the same files is the same on every machine.

What counts as local:

- ``model.base`` / ``model.tokenizer``: an existing folder; a value starting with ``./``, ``../`` or ``/``
  that does not exist is recorded in ``missing``; anything else is a hub id.
- ``model.chat_template``: a value that is not a plain name (``tokenizer``, ``chatml``) is a file path.
- a dataset ``path``: an existing file or folder; a value starting with ``./``, ``../`` or ``/``, or ending
  in a data-file extension (``.jsonl``, ``.json``, ``.csv``, ``.parquet``, ...), that does not exist is
  recorded in ``missing``; anything else is a hub dataset id (``tatsu-lab/alpaca``, ``teknium/OpenHermes-2.5``),
  recorded in ``hub_datasets``.

The rows of local JSON Lines, JSON and CSV datasets are judged by ``ftplan.data`` (the same code the runtime's
data stage runs on every row): all rows of a file up to ``FULL_READ_BYTES``, the first ``HEAD_ROWS`` of a
larger one, or every row with ``full_data``.
"""

from __future__ import annotations

import hashlib
import json
import os
import posixpath
import re
import stat
from pathlib import Path
from typing import Any, Literal

from .context import Inputs, LocalFile, TokenizerInfo
from .data.reading import READABLE_SUFFIXES
from .data.scan import DatasetScan, scan_file
from .data.templates import read_template_file
from .schemas import Pipeline

__all__ = ["FULL_READ_BYTES", "HEAD_ROWS", "MAX_FOLDER_FILES", "WEIGHT_SUFFIXES", "read_inputs"]

FULL_READ_BYTES = 16 << 20
"""Dataset files up to this size are checked row by row in full; of a larger one only the first ``HEAD_ROWS``
rows are (``ftplan check --full-data`` reads every row of every file)."""
HEAD_ROWS = 1000
"""Rows checked from the start of a dataset file over ``FULL_READ_BYTES``."""
RUNTIME_ONLY = (".parquet", ".arrow")
"""Dataset file types read only at run time (hashed, not checked: reading them needs pyarrow)."""

MAX_FOLDER_FILES = 10_000
"""Most files hashed in one referenced folder (a dataset or model folder has far fewer)."""
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".gguf", ".pt", ".pth")
"""Weight files, hashed by size plus their first and last MiB (see ``file_sha256``)."""
DATA_SUFFIXES = (".jsonl", ".json", ".csv", ".parquet", ".arrow", ".tsv", ".txt", ".gz", ".zst")
"""Extensions that make a dataset path a local file even when it does not exist."""

_MIB = 1 << 20
_NAME = re.compile(r"^[A-Za-z0-9_-]+$")


def file_sha256(path: Path, size: int) -> str:
    """SHA-256 of a file's bytes; for a weight file over 2 MiB, of ``ftplan-partial-v1``, its size and its
    first and last MiB only (weights are large and change as a whole: this detects a swapped checkpoint
    without reading gigabytes)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        if path.name.endswith(WEIGHT_SUFFIXES) and size > 2 * _MIB:
            h.update(b"ftplan-partial-v1\0%d\0" % size)
            h.update(f.read(_MIB))
            f.seek(size - _MIB)
            h.update(f.read(_MIB))
        else:
            for chunk in iter(lambda: f.read(_MIB), b""):
                h.update(chunk)
    return h.hexdigest()


def _stat_is(path: Path, what: Literal["dir", "file", "any"]) -> bool:
    """``path.is_dir()``/``is_file()``/``exists()`` that is False instead of raising for names the OS
    rejects (too long, NUL bytes, permission denied on a parent)."""
    try:
        mode = path.stat().st_mode
    except (OSError, ValueError):
        return False
    if what == "dir":
        return stat.S_ISDIR(mode)
    return stat.S_ISREG(mode) if what == "file" else True


def _path_like(value: str) -> bool:
    return value.startswith(("./", "../", "/")) or value in (".", "..")


class _Reader:
    """Reads and hashes local files under ``root``, remembering each once."""

    def __init__(self, root: Path):
        self.root = Path(os.path.abspath(root))
        self.files: dict[str, LocalFile] = {}
        self.missing: list[tuple[tuple[str | int, ...], str]] = []
        self.hub_datasets: list[tuple[tuple[str | int, ...], str]] = []

    def rel(self, value: str) -> str:
        """The user's path as a normalized POSIX path relative to ``root`` (absolute ones made relative)."""
        if os.path.isabs(value):
            value = os.path.relpath(value, self.root)
        return posixpath.normpath(value.replace(os.sep, "/"))

    def full(self, value: str) -> Path:
        """A pipeline path resolved against the project root."""
        return self.root / value

    def hash_file(self, full: Path, rel: str) -> None:
        """Record one file (unreadable files are skipped: the step that reads it reports the problem)."""
        if rel in self.files:
            return
        try:
            size = full.stat().st_size
            self.files[rel] = LocalFile(rel, file_sha256(full, size), size)
        except OSError:
            pass

    def hash_folder(self, full: Path, rel: str) -> str | None:
        """Record every file of a folder, sorted, skipping hidden names; an error text when it is too big."""
        found: list[tuple[str, Path]] = []
        for dirpath, dirnames, filenames in os.walk(full):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            for name in sorted(filenames):
                if name.startswith("."):
                    continue
                sub = os.path.relpath(os.path.join(dirpath, name), full).replace(os.sep, "/")
                found.append((posixpath.join(rel, sub), Path(dirpath) / name))
                if len(found) > MAX_FOLDER_FILES:
                    return f"'{rel}' holds more than {MAX_FOLDER_FILES} files"
        for sub_rel, path in found:
            self.hash_file(path, sub_rel)
        return None

    def local_dir(self, value: str | None, key: tuple[str | int, ...]) -> tuple[Path, str] | None:
        """An existing folder named by ``value``; records ``missing`` for a path-like value that is absent."""
        if value is None:
            return None
        full, rel = self.full(value), self.rel(value)
        if _stat_is(full, "dir"):
            return full, rel
        if _path_like(value) and not _stat_is(full, "any"):
            self.missing.append((key, rel))
        return None

    def read_json(self, full: Path, rel: str) -> Any:
        """Parse a local JSON file (hashing it for the lock)."""
        self.hash_file(full, rel)
        with open(full, encoding="utf-8-sig") as f:
            return json.load(f)


def _model_config(reader: _Reader, base: str) -> tuple[dict[str, Any] | None, str | None]:
    full, rel = reader.full(base), reader.rel(base)
    if _stat_is(full, "file"):
        return None, f"'{rel}' is a file; model.base must be a folder with config.json or a hub id"
    found = reader.local_dir(base, ("model", "base"))
    if found is None:
        return None, None
    too_big = reader.hash_folder(*found)
    if too_big:
        return None, too_big
    config = found[0] / "config.json"
    if not _stat_is(config, "file"):
        return None, f"'{rel}' has no config.json"
    try:
        data = reader.read_json(config, posixpath.join(rel, "config.json"))
    except json.JSONDecodeError as exc:
        return None, f"config.json is not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})"
    except (OSError, UnicodeDecodeError) as exc:
        return None, f"cannot read config.json: {getattr(exc, 'strerror', None) or exc}"
    if not isinstance(data, dict):
        return None, "config.json must hold a JSON object"
    return data, None


def _token_text(value: Any) -> str | None:
    """A special token as written in tokenizer configs: a string or ``{"content": ...}``."""
    if isinstance(value, str):
        return value
    content = value.get("content") if isinstance(value, dict) else None
    return content if isinstance(content, str) else None


def _tokenizer(reader: _Reader, folder: Path, rel: str) -> TokenizerInfo | None:
    """What the tokenizer files of a folder say; None when it has none of them (or none parse)."""
    def load(name: str) -> Any:
        path = folder / name
        if not _stat_is(path, "file"):
            return None
        try:
            return reader.read_json(path, posixpath.join(rel, name))
        except (OSError, ValueError):
            return None

    tok, config, special_map, vocab_json = (load(n) for n in (
        "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json"))
    template_file = load("chat_template.json")
    jinja = folder / "chat_template.jinja"
    if _stat_is(jinja, "file"):
        reader.hash_file(jinja, posixpath.join(rel, "chat_template.jinja"))
    if not any(isinstance(x, dict) for x in (tok, config, vocab_json)):
        return None
    ids: dict[str, int] = {}
    model = tok.get("model") if isinstance(tok, dict) else None
    vocab = model.get("vocab") if isinstance(model, dict) else vocab_json
    if isinstance(vocab, dict):
        ids.update((str(t), i) for t, i in vocab.items() if isinstance(i, int))
    elif isinstance(vocab, list):  # Unigram: [[token, score], ...]
        ids.update((str(e[0]), i) for i, e in enumerate(vocab) if isinstance(e, list) and e)
    added = tok.get("added_tokens", []) if isinstance(tok, dict) else []
    decoder = config.get("added_tokens_decoder", {}) if isinstance(config, dict) else {}
    entries = [(e.get("id"), e) for e in added if isinstance(e, dict)]
    entries += [(int(k), e) for k, e in decoder.items() if isinstance(e, dict) and str(k).isdigit()]
    for token_id, entry in entries:
        content = entry.get("content")
        if isinstance(content, str) and isinstance(token_id, int):
            ids.setdefault(content, token_id)
    eos = None
    for source in (config, special_map):
        if not isinstance(source, dict):
            continue
        text = _token_text(source.get("eos_token"))
        if text is not None and eos is None:
            eos = text
    template = _template_text(jinja, config, template_file)
    has_template = bool(template) or _stat_is(jinja, "file")
    return TokenizerInfo(vocab_size=max(ids.values()) + 1 if ids else None, has_chat_template=has_template, chat_template=template, eos_token=eos,
                         tokens=frozenset(ids))


def _template_text(jinja: Path, config: Any, template_file: Any) -> str | None:
    """A tokenizer folder's chat template: ``chat_template.jinja``, ``chat_template.json`` or the config's
    ``chat_template`` (a string, or named templates of which ``default`` is used)."""
    if _stat_is(jinja, "file"):
        try:
            return jinja.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            return None
    for source in (template_file, config):
        value = source.get("chat_template") if isinstance(source, dict) else None
        if isinstance(value, list):
            named = {t.get("name"): t.get("template") for t in value if isinstance(t, dict)}
            value = named.get("default")
        if isinstance(value, str) and value:
            return value
    return None


def _dataset(reader: _Reader, spec: Any, key: tuple[str | int, ...], full_data: bool) -> DatasetScan | None:
    """Judge a local dataset file's rows; None for a missing local path or a hub id (recorded elsewhere)."""
    value = spec.path
    full, rel = reader.full(value), reader.rel(value)
    if _stat_is(full, "dir"):
        too_big = reader.hash_folder(full, rel)
        return DatasetScan(rel, checked=too_big is not None, file_problem=too_big)
    if not _stat_is(full, "file"):
        if _path_like(value) or value.lower().endswith(DATA_SUFFIXES):
            reader.missing.append((key, rel))
        else:
            reader.hub_datasets.append((key, value))
        return None
    reader.hash_file(full, rel)
    suffix = full.suffix.lower()
    if suffix in RUNTIME_ONLY:
        return DatasetScan(rel, checked=False)
    if suffix not in READABLE_SUFFIXES:
        return DatasetScan(rel, file_problem=f"'{full.suffix or full.name}' files cannot be read: use .jsonl, "
                           ".json, .csv or .parquet")
    try:
        whole = full_data or full.stat().st_size <= FULL_READ_BYTES
        return scan_file(spec, full, rel, max_rows=None if whole else HEAD_ROWS)
    except OSError as exc:
        return DatasetScan(rel, file_problem=f"cannot read the file: {exc.strerror or exc}")


def _chat_template_file(reader: _Reader, value: str) -> tuple[str | None, str | None]:
    """(text, problem) of a ``chat_template`` file path; a missing file is recorded in ``missing``."""
    full, rel = reader.full(value), reader.rel(value)
    if not _stat_is(full, "any"):
        reader.missing.append((("model", "chat_template"), rel))
        return None, None
    if _stat_is(full, "file"):
        reader.hash_file(full, rel)
    try:
        return read_template_file(full, rel)
    except OSError as exc:
        return None, f"cannot read '{rel}': {exc.strerror or exc}"


def read_inputs(pipeline: Pipeline, root: Path, *, full_data: bool = False) -> Inputs:
    """Snapshot the local files ``pipeline`` references; ``root`` is the pipeline file's folder; with
    ``full_data`` every row of every local dataset file is checked, whatever its size.

    Never raises for missing or broken files: they end up in ``missing``, ``model_config_error`` or a
    dataset's ``error`` for the checks to report with their key paths."""
    reader = _Reader(Path(root))
    model = pipeline.model
    config, config_error = _model_config(reader, model.base)
    tokenizer = None
    if model.tokenizer is not None:
        found = reader.local_dir(model.tokenizer, ("model", "tokenizer"))
    else:
        found = reader.local_dir(model.base, ("model", "base")) if config is not None or config_error else None
    if found is not None:
        tokenizer = _tokenizer(reader, *found)
    template = template_error = None
    if not _NAME.match(model.chat_template):
        template, template_error = _chat_template_file(reader, model.chat_template)
    datasets: dict[tuple[int, int], DatasetScan] = {}
    for i, stage in enumerate(pipeline.stages):
        if stage.kind != "data":
            continue
        for j, spec in enumerate(stage.datasets):
            scan = _dataset(reader, spec, ("stages", i, "datasets", j, "path"), full_data)
            if scan is not None:
                datasets[(i, j)] = scan
    return Inputs(files=tuple(sorted(reader.files.values(), key=lambda f: f.path)), model_config=config,
                  model_config_error=config_error, tokenizer=tokenizer, chat_template=template,
                  datasets=dict(sorted(datasets.items())), missing=tuple(dict.fromkeys(reader.missing)),
                  hub_datasets=tuple(reader.hub_datasets), chat_template_error=template_error)
