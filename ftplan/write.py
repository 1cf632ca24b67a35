"""WRITE: put a rendered plan on disk, and compare one with what is on disk (``compile --check``).

The plan folder is ftplan's only where ftplan wrote it. ``write_plan`` writes into a folder only when it is
empty (or missing) or holds a plan ftplan wrote, and it replaces or removes only files that ftplan itself wrote
in an earlier compile: a ``.git``, notes, a README a reviewer added, anything else is kept as it is, never
moved. A file ftplan did not write at a path the new plan needs is refused (``WriteError``), not overwritten.

Ownership is recorded in the marker file ``.ftplan-files`` (``MARKER``) at the top of the plan folder::

    # Written by ftplan: it replaces or removes only the files listed here and keeps everything else.
    plan.json
    plan.md
    run.sh
    stages/data/args.json

One comment line, then the plan's files as relative POSIX paths, sorted, one a line, LF line ends, exactly one
trailing newline, no timestamps: the same plan gives the same bytes. Lines starting with ``#`` are comments. A
folder holding the marker is a plan folder. A folder holding ``plan.json`` but no marker was written by an
older ftplan: there only the files of the known plan layout (``LEGACY_LAYOUT``) are ftplan's. Any other
non-empty folder is refused.

How a plan is written, so that a failure leaves the folder as it was:

1. The marker is rewritten to list the old plan's files, the new plan's and the temporary names below (an
   intent record: after a crash, the next compile knows every file it may have left and tidies them up).
2. Every new or changed file is written to ``<path>.ftplan-new`` next to its target and flushed to disk.
3. Each is renamed over its target; the old plan's files the new plan lacks are removed, and so are the
   folders that held them once empty (a folder still holding a user's file stays).
4. The folders are flushed, then the marker is rewritten to list exactly the new plan's files.

Every step records how to undo it; on any error the steps done are undone (old contents are kept in memory,
plan files are small) and the error is raised again, so the folder ends as it was with no temporary files left.
Files that are already up to date are not touched. The user's files are never opened, moved or renamed.

Scripts (``*.sh``, ``*.sbatch``) get mode 0755, every other file 0644, folders ftplan creates 0755, whatever
the umask.
"""

from __future__ import annotations

import os
import re
import stat
from dataclasses import dataclass
from functools import partial
from pathlib import Path, PurePosixPath
from typing import Any, Callable

from .render import EXECUTABLE_SUFFIXES

MARKER = ".ftplan-files"
"""The marker file: lists the files ftplan wrote into the plan folder (format in the module docstring)."""

MARKER_HEADER = "# Written by ftplan: it replaces or removes only the files listed here and keeps everything else."
"""The marker's first line, a comment."""

LEGACY_MARKER = "plan.json"
"""A folder holding this file but no ``MARKER`` is a plan written by an older ftplan."""

LEGACY_LAYOUT = re.compile(r"plan\.json|plan\.md|run\.sh|slurm/submit\.sh|slurm/\d{2,}-[a-z][a-z0-9_]*\.sbatch"
                           r"|stages/\d{2,}-[a-z][a-z0-9_]*/(args\.json|accelerate\.yaml|deepspeed\.json)")
"""The files that are ftplan's in a plan folder an older ftplan wrote (one without ``MARKER``)."""

_LEGACY_FOLDERS = re.compile(r"stages|stages/[^/]+|slurm")

TEMP_SUFFIX = ".ftplan-new"
"""A new file is written to ``<path>.ftplan-new`` first, then renamed into place."""


class WriteError(Exception):
    """The plan cannot be written; the message says why and what to do."""


@dataclass(frozen=True)
class PlanDiff:
    """Files a new plan adds, changes and removes compared with a plan folder on disk (sorted paths).

    Only ftplan's files count; ``kept`` names what the folder holds that ftplan did not write (a folder of the
    user's as ``name/``), which is never added, changed or removed."""

    added: tuple[str, ...]
    changed: tuple[str, ...]
    removed: tuple[str, ...]
    kept: tuple[str, ...] = ()

    @property
    def clean(self) -> bool:
        """True when the folder already holds exactly this plan (files ftplan did not write aside)."""
        return not (self.added or self.changed or self.removed)

    def stages(self) -> list[tuple[str, str, tuple[str, ...]]]:
        """Per stage (or ``plan`` for the top-level files): its symbol and its touched files.

        ``+`` every file of the group is new, ``-`` every file is gone, ``~`` anything else (Terraform's
        symbols)."""
        groups: dict[str, dict[str, list[str]]] = {}
        for kind, paths in (("+", self.added), ("~", self.changed), ("-", self.removed)):
            for p in paths:
                groups.setdefault(_group(p), {}).setdefault(kind, []).append(p)
        out = []
        for name in sorted(groups, key=lambda g: (g != "plan", g)):
            kinds = groups[name]
            symbol = next(iter(kinds)) if len(kinds) == 1 else "~"
            out.append((symbol, name, tuple(sorted(p for ps in kinds.values() for p in ps))))
        return out

    def as_json(self) -> dict[str, Any]:
        """The diff as JSON data (``compile --json``)."""
        return {"added": list(self.added), "changed": list(self.changed), "removed": list(self.removed),
                "clean": self.clean,
                "stages": [{"symbol": sym, "stage": name, "files": list(files)} for sym, name, files in self.stages()]}

    def summary(self, out_dir: Path | str) -> str:
        """Text for the terminal: the per-stage lines and the count line, or that the folder is up to date."""
        if self.clean:
            return f"{out_dir}: up to date" + (f"; {self.kept_line()}" if self.kept else "")
        return "\n".join([f"{out_dir}:", *("  " + line for line in self.lines()[:-1]), self.lines()[-1]])

    def lines(self) -> list[str]:
        """Human summary: one line per touched group, what was kept, then ``Plan: N to add, N to change, N to
        remove.``"""
        out = [f"{sym} {name}: {', '.join(files)}" for sym, name, files in self.stages()]
        if self.kept:
            out.append(self.kept_line())
        out.append(f"Plan: {len(self.added)} to add, {len(self.changed)} to change, {len(self.removed)} to remove.")
        return out

    def kept_line(self) -> str:
        """``kept 1 folder and 1 file ftplan did not write: .git/, NOTES.txt`` (at most five named)."""
        folders = sum(k.endswith("/") for k in self.kept)
        counts = [f"{n} {word}{'' if n == 1 else 's'}"
                  for n, word in ((folders, "folder"), (len(self.kept) - folders, "file")) if n]
        more = f" and {len(self.kept) - 5} more" if len(self.kept) > 5 else ""
        return f"kept {' and '.join(counts)} ftplan did not write: {', '.join(self.kept[:5])}{more}"


@dataclass(frozen=True)
class WriteResult:
    """What ``write_plan`` did."""

    path: Path
    """The plan folder."""
    files: tuple[str, ...]
    """Every plan file, relative to the folder (the marker aside)."""
    diff: PlanDiff
    """Changes against what the folder held before."""


@dataclass(frozen=True)
class _Folder:
    """What a plan folder holds: ftplan's files, its marker, and the entries that are not ftplan's."""

    owned: dict[str, tuple[bytes, int]]
    """ftplan's regular files, the marker aside (relative POSIX path -> (bytes, mode bits))."""
    marker: tuple[bytes, int] | None
    """The marker's bytes and mode, when there is one."""
    legacy: bool
    """A plan an older ftplan wrote: ``plan.json`` but no marker."""
    kept: tuple[str, ...]
    """Entries that are not ftplan's (a folder holding none of ftplan's files as ``name/``), sorted."""


def _group(path: str) -> str:
    """``sft`` for ``stages/sft/args.json`` and ``slurm/sft.sbatch`` (``02-sft`` in a plan an older ftplan named by
    position); ``plan`` otherwise."""
    parts = PurePosixPath(path).parts
    if len(parts) >= 3 and parts[0] == "stages":
        return parts[1]
    if len(parts) == 2 and parts[0] == "slurm" and parts[1].endswith(".sbatch"):
        return parts[1][: -len(".sbatch")]
    return "plan"


def file_mode(path: str) -> int:
    """0755 for scripts, 0644 otherwise."""
    return 0o755 if path.endswith(EXECUTABLE_SUFFIXES) else 0o644


def marker_text(paths: Any) -> str:
    """The marker file listing ``paths`` (sorted, one a line, LF, one trailing newline)."""
    return "".join(f"{line}\n" for line in [MARKER_HEADER, *sorted(paths)])


def _bad_relpath(path: str) -> bool:
    return path.startswith("/") or "\\" in path or any(part in ("", ".", "..") for part in path.split("/"))


def _check_relpath(path: str) -> None:
    if _bad_relpath(path):
        raise WriteError(f"refusing to write {path!r}: plan files must be relative paths inside the plan folder")
    if path == MARKER or path.endswith(TEMP_SUFFIX):
        raise WriteError(f"refusing to write {path!r}: the name is reserved for ftplan's own bookkeeping")


def _read_marker(path: Path) -> tuple[bytes, set[str]]:
    """The marker's bytes and the paths it lists; a damaged marker is a ``WriteError`` that says how to fix it."""
    fix = (f"correct it, or delete {path} (ftplan then treats as its own only the standard plan files next to "
           "plan.json)")
    if not path.is_file() or path.is_symlink():
        raise WriteError(f"{path} should be ftplan's list of the files it wrote, but it is not a regular file; "
                         "move it away, then compile again")
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise WriteError(f"{path} is not UTF-8 text (byte {exc.start}); {fix}") from None
    listed = set()
    for n, line in enumerate(text.splitlines(), 1):
        if line.startswith("#"):
            continue
        if _bad_relpath(line):
            raise WriteError(f"{path}, line {n}: {line!r} is not a path inside the plan folder; {fix}")
        listed.add(line)
    return data, listed - {MARKER}


def _inspect(out_dir: Path) -> _Folder:
    """Read which files in ``out_dir`` are ftplan's; refuse a folder that is not a plan folder."""
    if not out_dir.is_dir():
        if out_dir.exists() or out_dir.is_symlink():
            raise WriteError(f"{out_dir} exists and is not a folder; choose another output folder with -o")
        return _Folder({}, None, False, ())
    marker_path = out_dir / MARKER
    may_own: Callable[[str], object]  # ftplan's file, when a regular file
    may_hold: Callable[[str], object]  # a folder that may hold ftplan's files
    if os.path.lexists(marker_path):
        data, listed = _read_marker(marker_path)
        marker, legacy = (data, stat.S_IMODE(marker_path.stat().st_mode)), False
        folders = {str(p) for path in listed for p in PurePosixPath(path).parents} - {"."}
        may_own, may_hold = listed.__contains__, folders.__contains__
    elif (out_dir / LEGACY_MARKER).is_file():
        marker, legacy = None, True
        may_own, may_hold = LEGACY_LAYOUT.fullmatch, _LEGACY_FOLDERS.fullmatch
    elif any(out_dir.iterdir()):
        raise WriteError(f"{out_dir} is not empty and holds no {LEGACY_MARKER} or {MARKER}, so it is not an ftplan "
                         "plan folder; ftplan writes only into an empty folder or a plan it wrote before. "
                         "Choose a new or empty folder with -o")
    else:
        return _Folder({}, None, False, ())
    owned: dict[str, tuple[bytes, int]] = {}
    kept: list[str] = []

    def visit(folder: Path, prefix: str) -> None:
        for entry in sorted(os.scandir(folder), key=lambda e: e.name):
            rel = prefix + entry.name
            if rel == MARKER:
                continue
            if entry.is_dir(follow_symlinks=False):
                if may_hold(rel):
                    visit(Path(entry.path), rel + "/")
                else:
                    kept.append(rel + "/")
            elif entry.is_file(follow_symlinks=False) and (may_own(rel) or rel == MARKER + TEMP_SUFFIX):
                owned[rel] = (Path(entry.path).read_bytes(), stat.S_IMODE(entry.stat(follow_symlinks=False).st_mode))
            else:
                kept.append(rel)

    visit(out_dir, "")
    return _Folder(owned, marker, legacy, tuple(sorted(kept)))


def _wanted(files: dict[str, str]) -> dict[str, tuple[bytes, int]]:
    return {path: (text.encode("utf-8"), file_mode(path)) for path, text in files.items()}


def _check_room(want: dict[str, tuple[bytes, int]], out_dir: Path, folder: _Folder) -> None:
    """Refuse when a file or folder ftplan did not write is where the new plan writes a file."""
    for path in sorted(want):
        parts = PurePosixPath(path).parts
        for i in range(1, len(parts)):
            above = out_dir.joinpath(*parts[:i])
            if os.path.lexists(above) and not (above.is_dir() and not above.is_symlink()):
                raise WriteError(f"{above} is not a folder, but the new plan writes {path} inside it; "
                                 "move or rename it, then compile again")
        writes = [path, path + TEMP_SUFFIX] if folder.owned.get(path) != want[path] else [path]
        for name in writes:
            if name not in folder.owned and os.path.lexists(out_dir / name):
                raise WriteError(f"{out_dir / name} was not written by ftplan, and the new plan writes a file "
                                 "there; move or rename it, then compile again (ftplan never overwrites files it "
                                 "did not write)")


def _diff(want: dict[str, tuple[bytes, int]], folder: _Folder) -> PlanDiff:
    """ftplan's files the plan adds, changes, removes. The marker is listed only when it is news: a plan folder
    an older ftplan wrote gains it, or it alone differs (edited by hand)."""
    added = [p for p in want if p not in folder.owned]
    changed = [p for p in want if p in folder.owned and folder.owned[p] != want[p]]
    removed = [p for p in folder.owned if p not in want]
    if folder.legacy:
        added.append(MARKER)
    elif (folder.marker not in (None, (marker_text(want).encode("utf-8"), 0o644))
          and not (added or changed or removed)):
        changed.append(MARKER)
    return PlanDiff(tuple(sorted(added)), tuple(sorted(changed)), tuple(sorted(removed)), folder.kept)


def diff_plan(files: dict[str, str], out_dir: Path) -> PlanDiff:
    """Compare rendered files with the plan folder on disk: content or mode differences count as changed.

    Only ftplan's files count (see the module docstring); raises ``WriteError`` where ``write_plan`` would
    refuse."""
    for path in files:
        _check_relpath(path)
    out_dir = Path(out_dir)
    folder = _inspect(out_dir)
    want = _wanted(files)
    _check_room(want, out_dir, folder)
    return _diff(want, folder)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover - some filesystems refuse fsync on directories
        pass
    finally:
        os.close(fd)


def _write_file(path: Path, data: bytes, mode: int) -> None:
    """Write ``data`` to ``path`` (never through a link), flush it to disk, set ``mode``."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_NOFOLLOW", 0), 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.chmod(path, mode)


def _remove(path: Path) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _make_folder(path: Path) -> None:
    os.mkdir(path)
    os.chmod(path, 0o755)


class _Changes:
    """Changes to ftplan's files in one plan folder, each recorded with its undo, so a failure can put the folder
    back as it was. Every path given is ftplan's or free (``_check_room``)."""

    def __init__(self, root: Path, old: dict[str, tuple[bytes, int]]):
        self.root = root
        self.old = old
        self.undo: list[Callable[[], None]] = []
        self.touched: set[Path] = set()

    def _full(self, rel: str) -> Path:
        return self.root.joinpath(*PurePosixPath(rel).parts)

    def _put_back(self, rel: str) -> None:
        """Undo any change to ``rel``: its old bytes and mode, or no file where there was none."""
        if rel in self.old:
            _write_file(self._full(rel), *self.old[rel])
        else:
            _remove(self._full(rel))

    def make_root(self) -> None:
        """Create the plan folder (0755) and its missing parents."""
        missing = []
        folder = self.root
        while not folder.exists() and folder != folder.parent:
            missing.append(folder)
            folder = folder.parent
        if not missing:
            return
        self.undo.extend(partial(os.rmdir, f) for f in reversed(missing))
        self.root.parent.mkdir(parents=True, exist_ok=True)
        _make_folder(self.root)
        self.touched.add(self.root.parent)

    def write(self, rel: str, data: bytes, mode: int) -> None:
        """Write ``rel``, creating the folders above it (0755)."""
        parts = PurePosixPath(rel).parts[:-1]
        for i in range(1, len(parts) + 1):
            full = self.root.joinpath(*parts[:i])
            if not full.is_dir():
                _make_folder(full)
                self.undo.append(partial(os.rmdir, full))
                self.touched.add(full.parent)
        self.undo.append(partial(self._put_back, rel))
        _write_file(self._full(rel), data, mode)

    def rename(self, src: str, dst: str) -> None:
        """Rename ``src`` over ``dst`` (atomic)."""
        self.undo.append(partial(self._put_back, dst))
        os.rename(self._full(src), self._full(dst))
        self.touched.add(self._full(dst).parent)

    def put(self, rel: str, data: bytes, mode: int) -> None:
        """Replace ``rel`` atomically: write its temporary name, rename it into place, flush the folder."""
        self.write(rel + TEMP_SUFFIX, data, mode)
        self.rename(rel + TEMP_SUFFIX, rel)
        self.sync()

    def remove(self, rel: str) -> None:
        """Remove ``rel``, then the folders above it that are left empty."""
        self.undo.append(partial(self._put_back, rel))
        _remove(self._full(rel))
        self.touched.add(self._full(rel).parent)
        for above in PurePosixPath(rel).parents:
            full = self._full(str(above))
            if full == self.root:
                break
            try:
                os.rmdir(full)
            except OSError:  # not empty: it holds a file ftplan keeps
                break
            self.undo.append(partial(_make_folder, full))
            self.touched.add(full.parent)

    def sync(self) -> None:
        """Flush every folder changed so far to disk, deepest first."""
        for folder in sorted(self.touched, key=lambda p: len(p.parts), reverse=True):
            if folder.is_dir():
                _fsync_dir(folder)
        self.touched.clear()

    def rollback(self) -> None:
        """Undo every change made, newest first (best effort: an error while undoing is skipped)."""
        for step in reversed(self.undo):
            try:
                step()
            except OSError:
                pass
        self.undo.clear()


def write_plan(files: dict[str, str], out_dir: Path) -> WriteResult:
    """Write a rendered plan to ``out_dir``: all files or, on failure, the folder as it was.

    Replaces or removes only files ftplan wrote before, keeps everything else, and refuses (``WriteError``) a
    folder that is not a plan folder or a file ftplan did not write where the plan needs one."""
    out_dir = Path(out_dir)
    for path in files:
        _check_relpath(path)
    folder = _inspect(out_dir)
    want = _wanted(files)
    _check_room(want, out_dir, folder)
    diff = _diff(want, folder)
    todo = sorted(p for p in want if folder.owned.get(p) != want[p])
    stale = sorted(p for p in folder.owned if p not in want)
    intent = (marker_text({*folder.owned, *want, *(p + TEMP_SUFFIX for p in todo)}).encode("utf-8"), 0o644)
    final = (marker_text(want).encode("utf-8"), 0o644)
    result = WriteResult(out_dir, tuple(sorted(files)), diff)
    if not todo and not stale and folder.marker == final:
        return result
    changes = _Changes(out_dir, {**folder.owned, **({MARKER: folder.marker} if folder.marker else {})})
    try:
        changes.make_root()
        if intent != folder.marker:
            changes.put(MARKER, *intent)
        for path in todo:
            changes.write(path + TEMP_SUFFIX, *want[path])
        for path in todo:
            changes.rename(path + TEMP_SUFFIX, path)
        for path in stale:
            changes.remove(path)
        changes.sync()
        if final != intent:
            changes.put(MARKER, *final)
    except BaseException:
        changes.rollback()
        raise
    return result


def write_plan_file(out_dir: Path, path: str, text: str) -> bool:
    """Write one file into a plan folder ftplan wrote (``ftplan report`` refreshing ``plan.html``), keeping the
    rest of the folder as it is; True when the file changed.

    The folder must hold the marker (``.ftplan-files``); ``path`` must be ftplan's (listed there) or free. A path
    not yet listed is added to the marker before the file is written, so it stays ftplan's after a crash. The
    file is replaced atomically; on failure the folder ends as it was."""
    out_dir = Path(out_dir)
    _check_relpath(path)
    folder = _inspect(out_dir)
    if folder.marker is None:
        raise WriteError(f"{out_dir} holds no {MARKER}, so ftplan cannot tell which files in it are its own "
                         "(a plan an older ftplan wrote, or not a plan folder); compile the plan again with this "
                         "ftplan")
    _, listed = _read_marker(out_dir / MARKER)
    want = _wanted({path: text})
    _check_room(want, out_dir, folder)
    if folder.owned.get(path) == want[path] and path in listed:
        return False
    changes = _Changes(out_dir, {**folder.owned, MARKER: folder.marker})
    try:
        if path not in listed:
            changes.put(MARKER, marker_text(listed | {path}).encode("utf-8"), 0o644)
        changes.put(path, *want[path])
    except BaseException:
        changes.rollback()
        raise
    return True


def write_file(path: Path, text: str) -> bool:
    """Write one file outside any plan folder (``ftplan report -o FILE``), replacing it atomically: a temporary
    file next to it, flushed, then renamed over it (mode 0644). True when the file changed."""
    path = Path(path)
    data = text.encode("utf-8")
    if path.is_dir():
        raise WriteError(f"{path} is a folder; name a file to write")
    if path.is_file() and not path.is_symlink() and path.read_bytes() == data:
        return False
    temp = path.with_name(path.name + TEMP_SUFFIX)
    try:
        _write_file(temp, data, 0o644)
        os.replace(temp, path)
    except BaseException:
        _remove(temp)
        raise
    _fsync_dir(path.parent)
    return True
