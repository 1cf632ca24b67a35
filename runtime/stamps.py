"""Completion stamps: a stage is complete while everything it was built from is unchanged.

A stage writes its stamp (``COMPLETE_MARKER``, ``_COMPLETE`` in its output folder) last, after its outputs. It is
JSON with sorted keys::

    {"args_sha256": "<sha256 of the stage's args.json>", "format": 1, "stage": "sft", "upstream": ["data"],
     "inputs": {"examples/data/chat.jsonl": {"mtime_ns": 1718000000000000000, "sha256": "<hex>", "size": 5120},
                ...}}

``inputs`` holds every local file the stage read, as it was when the stage started: its datasets, the tokenizer
files and the chat-template file, the weights it starts from, the adapters it merges or continues, and the
outputs of the stages it consumes (``RuntimeArgs.upstream``). Folders count with every file in them except
hidden names (and, for an upstream stage's output folder, that stage's own stamp and ``metrics.json``). A hub id
that is no local path is covered by the arguments themselves.

``check(args_path)`` decides whether a stage is complete; it is the one definition that ``run.sh``, the Slurm
scripts (through ``python -m ftplan_runtime.stamps check ARGS``) and the runtime itself use. A stage is complete
when all of these hold:

1. every stage it consumes is complete (recursively, so a changed data file makes everything built on it
   incomplete before the data stage runs again);
2. its stamp exists and records the sha256 of its current ``args.json``;
3. the set of its input files is the recorded one, and each file's content is the recorded one. A file whose
   size and mtime are unchanged keeps its recorded digest (``touch`` alone does not force a rerun); any other
   file is hashed again.

A run (``begin``, main process only, before the stage reads or writes anything) removes the stamp and the
leftovers of an interrupted run, and takes the input digests, reusing those recorded by upstream stamps and by
this stage's previous run for files of the same size and mtime (a 16 GB base model is hashed once, not by every
stage); ``finish`` writes the stamp with the digests taken at the start, so a file edited during the run makes
the next check fail. A check never writes: a touched file (new mtime, same content) is hashed again by each
check until the stage runs again.

This module is light: it imports neither torch nor transformers nor datasets.

CLI: ``python -m ftplan_runtime.stamps check ARGS`` prints one line and exits 0 when the stage is complete,
1 when it must run (the line says why), 2 when an args file cannot be read.
"""

from __future__ import annotations

import hashlib
import json
import os
import posixpath
import re
import shutil
import sys
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ftplan.schemas.runtime_args import COMPLETE_MARKER, RuntimeArgs

STAMP_FORMAT = 1
"""Version of the stamp's layout; a stamp of another version (or a bare sha256 line) means the stage must run."""

METRICS_FILE = "metrics.json"
"""Name of the metrics file in a stage's output folder (not an input of the stages that read that folder)."""

DIGEST_CACHE = ".ftplan-inputs.json"
"""Hidden file in a stage's output folder: the input digests of the run in progress (or of one that failed),
reused by the next run for files of the same size and mtime."""

STAGE_FILES = frozenset({COMPLETE_MARKER, METRICS_FILE})
"""A stage's own bookkeeping files: never an input of the stages that read its output folder."""

TOKENIZER_FILES = (
    "tokenizer.json", "tokenizer_config.json", "tokenizer.model", "special_tokens_map.json", "added_tokens.json",
    "chat_template.jinja", "chat_template.json", "vocab.json", "merges.txt", "vocab.txt", "spiece.model",
)
"""Files that make up a saved tokenizer: the inputs a tokenizer folder contributes (not its weights)."""

USAGE = "usage: python -m ftplan_runtime.stamps check stages/<id>/args.json"
COMPLETE_EXIT, MUST_RUN_EXIT, BAD_ARGS_EXIT = 0, 1, 2

_CHUNK = 1 << 20
_SIBLING_LEFTOVER = re.compile(r"^\.(?P<name>.+)\.(?:tmp|old)-\d+$")


class StampError(Exception):
    """An args file (the stage's or an upstream stage's) cannot be read or is not valid: exit code 2."""

    exit_code = BAD_ARGS_EXIT


class InputError(Exception):
    """An input file of the stage cannot be read when the run starts."""


@dataclass(frozen=True)
class Digest:
    """What a stamp records about one input file."""

    size: int
    """Size in bytes."""
    mtime_ns: int
    """Modification time (ns); with ``size``, tells whether the recorded digest still holds without hashing."""
    sha256: str
    """sha256 of the content."""

    def as_json(self) -> dict[str, Any]:
        """The stamp's JSON form."""
        return {"mtime_ns": self.mtime_ns, "sha256": self.sha256, "size": self.size}


@dataclass(frozen=True)
class Root:
    """One local path a stage reads (as written in its args, relative to the project root)."""

    path: str
    """File or folder; a path that does not exist contributes nothing (a hub id)."""
    tokenizer_only: bool = False
    """Only the tokenizer files directly in the folder (a tokenizer source, not the weights beside it)."""
    skip: frozenset[str] = frozenset()
    """Names left out at the folder's top level (an upstream stage's own stamp and metrics)."""


@dataclass(frozen=True)
class Verdict:
    """The answer of ``check``."""

    complete: bool
    """Whether the stage is complete."""
    reason: str
    """``complete``, or why the stage must run (one line)."""
    upstream: str | None = None
    """The consumed stage that must run first, when that is the reason."""
    origin: tuple[str, str] | None = None
    """(stage id, reason) of the stage where the change was found."""


@dataclass
class Build:
    """A stage run in progress: what ``finish`` records in the stamp."""

    args: RuntimeArgs
    """The stage's arguments."""
    args_sha256: str
    """sha256 of its args file."""
    inputs: dict[str, Digest]
    """Its input files as they were when the run started."""
    removed: list[str] = field(default_factory=list)
    """Leftovers of an interrupted run that ``begin`` removed."""


# ---------------------------------------------------------------------------------------------- args files


def args_sha256(data: bytes) -> str:
    """sha256 hex digest of an args file's bytes."""
    return hashlib.sha256(data).hexdigest()


def read_args(path: str | Path) -> tuple[RuntimeArgs, str]:
    """Read and validate an args file; returns (args, sha256 of its bytes). Raises ``StampError``."""
    from pydantic import ValidationError

    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise StampError(f"cannot read the arguments file '{path}': {e.strerror or e}") from None
    try:
        args = RuntimeArgs.model_validate_json(data)
    except ValidationError as e:
        errors = e.errors()
        first = errors[0]
        where = ".".join(str(p) for p in first["loc"]) or "(top level)"
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        raise StampError(f"'{path}' is not a valid ftplan arguments file: {where}: {first['msg']}{more}; regenerate "
                         "it with `ftplan compile` using the same ftplan version as this runtime") from None
    return args, args_sha256(data)


def _norm(path: str | Path) -> str:
    return posixpath.normpath(str(path).replace(os.sep, "/"))


def _upstream_args(args: RuntimeArgs) -> list[tuple[str, RuntimeArgs]]:
    """(args path, args) of each consumed stage, checked against the id the compiler wrote."""
    out = []
    for ref in args.upstream:
        up, _ = read_args(ref.args)
        if up.stage.id != ref.stage:
            raise StampError(f"'{ref.args}' holds stage '{up.stage.id}', but stage '{args.stage.id}' expects "
                             f"'{ref.stage}' there; recompile the plan with `ftplan compile`")
        out.append((_norm(ref.args), up))
    return out


# ---------------------------------------------------------------------------------------------- inputs


def input_roots(args: RuntimeArgs, upstream_outputs: Iterable[str] = ()) -> list[Root]:
    """The local paths a stage reads, derived from its args (``upstream_outputs``: the output folders of the
    stages it consumes, whose own stamp and metrics files are left out).

    * data: each dataset path, the tokenizer files of its tokenizer, the chat-template file;
    * sft, dpo: the data stage's output folder, the weights, every merged or continued adapter, the tokenizer
      files, the chat-template file;
    * merge: the weights, the adapters, the tokenizer files, the chat-template file;
    * gguf: the weights (a merged or fully fine-tuned model, tokenizer included)."""
    outputs = {_norm(p) for p in upstream_outputs}
    roots: list[Root] = []

    def tree(path: str) -> None:
        norm = _norm(path)
        roots.append(Root(norm, skip=STAGE_FILES if norm in outputs else frozenset()))

    def tokenizer(path: str) -> None:
        roots.append(Root(_norm(path), tokenizer_only=True))

    stage, model, src = args.stage, args.model, args.source
    if stage.kind == "data":
        for dataset in stage.datasets:
            tree(dataset.path)
        tokenizer(src.tokenizer if src is not None else (model.tokenizer or model.base))
    else:
        if args.data_dir is not None:
            tree(args.data_dir)
        if src is not None:
            tree(src.weights)
            for ref in src.merge:
                tree(ref.path)
            if src.continue_adapter is not None:
                tree(src.continue_adapter.path)
            if stage.kind != "gguf":
                tokenizer(src.tokenizer)
    # a built-in template name is no file (unless a file of that name exists, which then counts harmlessly)
    if stage.kind != "gguf" and model.chat_template != "tokenizer":
        roots.append(Root(_norm(model.chat_template)))
    return roots


def list_files(roots: Iterable[Root]) -> dict[str, Path]:
    """Every input file under ``roots``: path as recorded (relative to the project root) -> path to open."""
    found: dict[str, Path] = {}
    for root in roots:
        for key, path in _files_of(root):
            found.setdefault(key, path)
    return dict(sorted(found.items()))


def _files_of(root: Root) -> Iterator[tuple[str, Path]]:
    top = Path(root.path)
    if root.tokenizer_only:
        if top.is_dir():
            for name in TOKENIZER_FILES:
                if (top / name).is_file():
                    yield posixpath.join(root.path, name), top / name
        return
    if top.is_file():
        yield root.path, top
        return
    if not top.is_dir():
        return
    seen: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(top, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen:  # a symlink loop
            dirnames[:] = []
            continue
        seen.add(real)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        rel = os.path.relpath(dirpath, top)
        for name in sorted(filenames):
            if name.startswith(".") or (rel == "." and name in root.skip):
                continue
            yield _norm(posixpath.join(root.path, rel.replace(os.sep, "/"), name)), Path(dirpath) / name


def file_sha256(path: str | Path) -> str:
    """sha256 hex digest of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def digest(path: Path, known: Digest | None) -> Digest:
    """The file's ``Digest``: ``known``'s sha256 when size and mtime match it, otherwise the file is hashed.
    Raises ``OSError`` when it cannot be read."""
    st = os.stat(path)
    if known is not None and known.size == st.st_size and known.mtime_ns == st.st_mtime_ns:
        return known
    sha = file_sha256(path)
    after = os.stat(path)  # a file changing while it was hashed keeps a stale mtime, so it is hashed again later
    mtime = st.st_mtime_ns if (after.st_size, after.st_mtime_ns) == (st.st_size, st.st_mtime_ns) else -1
    return Digest(size=st.st_size, mtime_ns=mtime, sha256=sha)


def inputs_sha256(inputs: Mapping[str, Digest]) -> str:
    """One digest over the paths and contents of a run's inputs (not their mtimes)."""
    blob = json.dumps({k: d.sha256 for k, d in sorted(inputs.items())}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


# ---------------------------------------------------------------------------------------------- stamps


def stamp_path(output_dir: str | Path) -> Path:
    """Where a stage's stamp lives."""
    return Path(output_dir) / COMPLETE_MARKER


def read_stamp(output_dir: str | Path) -> tuple[dict[str, Any] | None, str]:
    """(stamp, '') when ``output_dir`` holds a readable stamp of this format; otherwise (None, why the stage
    must run)."""
    out = Path(output_dir)
    try:
        text = stamp_path(out).read_text(encoding="utf-8")
    except FileNotFoundError:
        if out.is_dir():
            return None, "its last run did not finish"
        return None, "it has not run yet"
    except OSError as e:
        return None, f"its completion stamp cannot be read ({e.strerror or e})"
    try:
        data = json.loads(text)
    except ValueError:
        data = None
    if not isinstance(data, dict):
        return None, "it was completed by an older ftplan runtime, which did not record its inputs"
    if data.get("format") != STAMP_FORMAT or not isinstance(data.get("inputs"), dict):
        return None, f"its completion stamp has another format ({data.get('format')!r})"
    return data, ""


def recorded_inputs(stamp: Mapping[str, Any] | None) -> dict[str, Digest]:
    """The input digests a stamp (or digest cache) records, skipping malformed entries."""
    out: dict[str, Digest] = {}
    for key, value in ((stamp or {}).get("inputs") or {}).items():
        try:
            out[key] = Digest(size=int(value["size"]), mtime_ns=int(value["mtime_ns"]), sha256=str(value["sha256"]))
        except (KeyError, TypeError, ValueError):
            continue
    return out


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def clear_stamp(output_dir: str | Path) -> None:
    """Remove a stage's stamp: from now on the stage, and every stage built on it, must run."""
    stamp_path(output_dir).unlink(missing_ok=True)


# ---------------------------------------------------------------------------------------------- check


def show(text: str) -> str:
    """A path for a one-line message: control characters shown escaped."""
    return "".join(ch if ch.isprintable() or ch == " " else ch.encode("unicode_escape").decode() for ch in text)


class Checker:
    """Checks stages, remembering the answer for each args file and the digests it had to compute."""

    def __init__(self) -> None:
        self.verdicts: dict[str, Verdict] = {}
        self.hashed: dict[str, Digest] = {}
        self._active: set[str] = set()

    def check(self, args_path: str | Path, expect: str | None = None) -> Verdict:
        """Whether the stage of ``args_path`` is complete (see the module docstring). Raises ``StampError``."""
        key = _norm(args_path)
        if key in self.verdicts:
            return self.verdicts[key]
        if key in self._active:
            raise StampError(f"'{key}' lists itself among the stages it consumes; recompile the plan")
        self._active.add(key)
        try:
            args, sha = read_args(args_path)
            verdict = self.verdict(args, sha)
        finally:
            self._active.discard(key)
        self.verdicts[key] = verdict
        return verdict

    def verdict(self, args: RuntimeArgs, sha: str) -> Verdict:
        """Whether the stage of already-read ``args`` (args file digest ``sha``) is complete."""
        upstream = _upstream_args(args)
        blocked = self.upstream_verdict(upstream)
        if blocked is not None:
            return blocked
        stamp, why = read_stamp(args.output_dir)
        if stamp is None:
            return self._must_run(args, why)
        if stamp.get("args_sha256") != sha:
            return self._must_run(args, "its arguments changed since it last ran")
        files = list_files(input_roots(args, [u.output_dir for _, u in upstream]))
        recorded = recorded_inputs(stamp)
        for key in files:
            if key not in recorded:
                return self._must_run(args, f"{show(key)} is new since it last ran")
        for key in recorded:
            if key not in files:
                return self._must_run(args, f"{show(key)} was removed since it last ran")
        for key, path in files.items():
            try:
                now = digest(path, recorded[key])
            except OSError as e:
                return self._must_run(args, f"{show(key)} cannot be read ({e.strerror or e})")
            if now is not recorded[key]:
                self.hashed[key] = now
            if now.sha256 != recorded[key].sha256:
                return self._must_run(args, f"{show(key)} changed since it last ran")
        return Verdict(True, "complete")

    def upstream_verdict(self, upstream: list[tuple[str, RuntimeArgs]]) -> Verdict | None:
        """The verdict for a stage whose consumed stages (``(args path, args)``) are not all complete: the first
        incomplete one must run first. None when they are all complete."""
        for path, up in upstream:
            v = self.check(path)
            if not v.complete:
                origin = v.origin or (up.stage.id, v.reason)
                detail = origin[1] if origin[0] == up.stage.id else f"stage {origin[0]}: {origin[1]}"
                return Verdict(False, f"upstream stage {up.stage.id} must run first ({detail})", up.stage.id, origin)
        return None

    @staticmethod
    def _must_run(args: RuntimeArgs, why: str) -> Verdict:
        return Verdict(False, why, origin=(args.stage.id, why))


def check(args_path: str | Path) -> Verdict:
    """Whether the stage of ``args_path`` is complete (see the module docstring). Raises ``StampError`` when its
    args file, or an upstream stage's, cannot be read."""
    return Checker().check(args_path)


# ---------------------------------------------------------------------------------------------- a run


def known_digests(args: RuntimeArgs) -> dict[str, Digest]:
    """Digests recorded earlier that a new run may reuse: this stage's stamp and digest cache, and the stamps
    of every stage it consumes (recursively)."""
    known: dict[str, Digest] = {}
    seen: set[str] = set()

    def collect(a: RuntimeArgs, own: bool) -> None:
        out = _norm(a.output_dir)
        if out in seen:
            return
        seen.add(out)
        stamp, _ = read_stamp(out)
        sources = [stamp]
        if own:
            sources.append(_read_cache(out))
        for source in sources:
            for key, d in recorded_inputs(source).items():
                known.setdefault(key, d)
        for ref in a.upstream:
            try:
                up, _ = read_args(ref.args)
            except StampError:
                continue
            collect(up, False)

    collect(args, True)
    return known


def _read_cache(output_dir: str) -> dict[str, Any] | None:
    try:
        data = json.loads((Path(output_dir) / DIGEST_CACHE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def begin(args: RuntimeArgs, sha: str, hashed: Mapping[str, Digest] | None = None) -> Build:
    """Start a run of the stage (main process, before the stage reads or writes anything): take the digests of
    its inputs (reusing recorded ones, and ``hashed``: digests a check just computed), remove its stamp and the
    leftovers of an interrupted run. Raises ``InputError`` when an input cannot be read."""
    known = known_digests(args)
    known.update(hashed or {})
    out = Path(args.output_dir)
    clear_stamp(out)
    removed = clean_leftovers(out)
    upstream = [u.output_dir for _, u in _upstream_args(args)]
    inputs: dict[str, Digest] = {}
    for key, path in list_files(input_roots(args, upstream)).items():
        try:
            inputs[key] = digest(path, known.get(key))
        except OSError as e:
            raise InputError(f"cannot read the input {show(key)}: {e.strerror or e}") from None
    _write_json(out / DIGEST_CACHE, {"inputs": {k: d.as_json() for k, d in inputs.items()}})
    return Build(args, sha, inputs, removed)


def finish(build: Build) -> Path:
    """Write the stage's stamp (last, after every output): the args digest and the inputs taken at the start."""
    out = Path(build.args.output_dir)
    data = {"format": STAMP_FORMAT, "stage": build.args.stage.id, "args_sha256": build.args_sha256,
            "upstream": [ref.stage for ref in build.args.upstream],
            "inputs": {key: d.as_json() for key, d in sorted(build.inputs.items())}}
    path = stamp_path(out)
    _write_json(path, data)
    (out / DIGEST_CACHE).unlink(missing_ok=True)
    return path


def clean_leftovers(output_dir: str | Path) -> list[str]:
    """Remove what an interrupted run left behind; returns the removed paths.

    The data stage's staging folders beside the output (``.<name>.tmp-<pid>``, ``.<name>.old-<pid>``), and the
    hidden temporary files of atomic writes (``.<file>.tmp``, ``.<file>.<pid>.tmp``: GGUF and llama.cpp
    outputs, metrics, the stamp, the checkpoint stamp) in the output folder and its subfolders one level down."""
    out = Path(output_dir)
    removed: list[str] = []

    def remove(path: Path) -> None:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        removed.append(_norm(path))

    if out.parent.is_dir():
        for p in sorted(out.parent.iterdir()):
            m = _SIBLING_LEFTOVER.match(p.name)
            if m and m.group("name") == out.name:
                remove(p)
    if not out.is_dir():
        return removed
    folders = [out] + [p for p in sorted(out.iterdir()) if p.is_dir() and not p.name.startswith(".")]
    for folder in folders:
        for p in sorted(folder.iterdir()):
            if p.name.endswith(".tmp") and (p.name.startswith(".") or p.name[:-4] in STAGE_FILES):
                remove(p)
    return removed


# ---------------------------------------------------------------------------------------------- CLI


def main(argv: list[str] | None = None) -> int:
    """``check ARGS``: print one line; exit 0 complete, 1 must run, 2 unreadable args file."""
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2 or argv[0] != "check":
        print(USAGE, file=sys.stderr)
        return BAD_ARGS_EXIT
    try:
        verdict = check(argv[1])
    except StampError as e:
        print(f"ftplan_runtime: error: {e}", file=sys.stderr, flush=True)
        return e.exit_code
    print(verdict.reason, flush=True)
    return COMPLETE_EXIT if verdict.complete else MUST_RUN_EXIT


if __name__ == "__main__":
    raise SystemExit(main())
