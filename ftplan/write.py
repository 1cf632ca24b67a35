"""WRITE: put a rendered plan on disk atomically, and compare one with what is on disk (``compile --check``).

``write_plan`` writes every file into a fresh sibling folder, flushes it to disk, then swaps it into place: the
old folder is renamed aside, the new one renamed to the target, the old one removed. A failure before the swap
leaves an existing plan folder exactly as it was. The plan folder belongs to ftplan: files in it that the new
plan does not have are removed, and a non-empty folder that is not a plan (no ``plan.json``) is refused.

Scripts (``*.sh``, ``*.sbatch``) get mode 0755, every other file 0644, folders 0755, whatever the umask.
"""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from .render import EXECUTABLE_SUFFIXES

PLAN_MARKER = "plan.json"
"""A folder holding this file is a plan folder ``write_plan`` may replace."""


class WriteError(Exception):
    """The plan cannot be written; the message says why and what to do."""


@dataclass(frozen=True)
class PlanDiff:
    """Files a new plan adds, changes and removes compared with a plan folder on disk (sorted paths)."""

    added: tuple[str, ...]
    changed: tuple[str, ...]
    removed: tuple[str, ...]

    @property
    def clean(self) -> bool:
        """True when the folder already holds exactly this plan."""
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
            return f"{out_dir}: up to date"
        return "\n".join([f"{out_dir}:", *("  " + line for line in self.lines()[:-1]), self.lines()[-1]])

    def lines(self) -> list[str]:
        """Human summary: one line per touched group, then ``Plan: N to add, N to change, N to remove.``"""
        out = [f"{sym} {name}: {', '.join(files)}" for sym, name, files in self.stages()]
        out.append(f"Plan: {len(self.added)} to add, {len(self.changed)} to change, {len(self.removed)} to remove.")
        return out


@dataclass(frozen=True)
class WriteResult:
    """What ``write_plan`` did."""

    path: Path
    """The plan folder."""
    files: tuple[str, ...]
    """Every file written, relative to the folder."""
    diff: PlanDiff
    """Changes against what the folder held before."""


def _group(path: str) -> str:
    """``02-sft`` for ``stages/02-sft/args.json`` and ``slurm/02-sft.sbatch``; ``plan`` otherwise."""
    parts = PurePosixPath(path).parts
    if len(parts) >= 3 and parts[0] == "stages":
        return parts[1]
    if len(parts) == 2 and parts[0] == "slurm" and parts[1].endswith(".sbatch"):
        return parts[1][: -len(".sbatch")]
    return "plan"


def file_mode(path: str) -> int:
    """0755 for scripts, 0644 otherwise."""
    return 0o755 if path.endswith(EXECUTABLE_SUFFIXES) else 0o644


def _check_relpath(path: str) -> None:
    if path.startswith("/") or "\\" in path or any(part in ("", ".", "..") for part in path.split("/")):
        raise WriteError(f"refusing to write {path!r}: plan files must be relative paths inside the plan folder")


def _existing(out_dir: Path) -> dict[str, tuple[bytes, int]]:
    """Regular files under ``out_dir`` (relative POSIX path -> (bytes, mode bits))."""
    found: dict[str, tuple[bytes, int]] = {}
    if not out_dir.is_dir():
        return found
    for root, dirs, names in os.walk(out_dir):
        dirs.sort()
        for name in sorted(names):
            full = Path(root, name)
            st = full.lstat()
            if stat.S_ISREG(st.st_mode):
                found[full.relative_to(out_dir).as_posix()] = (full.read_bytes(), stat.S_IMODE(st.st_mode))
    return found


def diff_plan(files: dict[str, str], out_dir: Path) -> PlanDiff:
    """Compare rendered files with the plan folder on disk: content or mode differences count as changed."""
    old = _existing(Path(out_dir))
    added, changed = [], []
    for path, text in files.items():
        if path not in old:
            added.append(path)
        elif old[path] != (text.encode("utf-8"), file_mode(path)):
            changed.append(path)
    removed = [p for p in old if p not in files]
    return PlanDiff(tuple(sorted(added)), tuple(sorted(changed)), tuple(sorted(removed)))


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


def _write_tree(files: dict[str, str], root: Path) -> None:
    dirs = {root}
    for path, text in sorted(files.items()):
        target = root.joinpath(*PurePosixPath(path).parts)
        target.parent.mkdir(parents=True, exist_ok=True)
        for parent in target.relative_to(root).parents:
            dirs.add(root / parent)
        with open(target, "wb") as f:
            f.write(text.encode("utf-8"))
            f.flush()
            os.fsync(f.fileno())
        os.chmod(target, file_mode(path))
    for d in sorted(dirs, key=lambda p: len(p.parts), reverse=True):
        os.chmod(d, 0o755)
        _fsync_dir(d)


def write_plan(files: dict[str, str], out_dir: Path) -> WriteResult:
    """Write a rendered plan to ``out_dir`` atomically (all files or, on failure, the folder as it was)."""
    out_dir = Path(out_dir)
    for path in files:
        _check_relpath(path)
    if out_dir.exists() and not out_dir.is_dir():
        raise WriteError(f"{out_dir} exists and is not a folder; choose another output folder with -o")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not (out_dir / PLAN_MARKER).is_file():
        raise WriteError(f"{out_dir} is not empty and holds no {PLAN_MARKER}, so it is not an ftplan plan; "
                         "compiling would replace everything in it. Choose a new or empty folder with -o")
    diff = diff_plan(files, out_dir)
    parent = out_dir.parent
    parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.new-", dir=parent))
    try:
        _write_tree(files, tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    try:
        if out_dir.is_dir():
            old = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.old-", dir=parent))
            os.rename(out_dir, old / "plan")
        os.rename(tmp, out_dir)
    except BaseException:
        if old is not None and (old / "plan").exists() and not out_dir.exists():
            os.rename(old / "plan", out_dir)
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        raise
    _fsync_dir(parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return WriteResult(out_dir, tuple(sorted(files)), diff)
