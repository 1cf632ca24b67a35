"""The two sides of ``ftplan diff``, each turned into the same thing: a ``plan.json`` document.

A side is named as

* a **pipeline file**: checked and planned in memory exactly as ``ftplan compile`` does (``api.check_file``,
  ``api.plan_files``), and its ``plan.json`` text parsed;
* a **compiled plan folder** (or its ``plan.json``): the file as ``compile`` wrote it;
* ``REV:PATH``, a **git revision** of either: ``git cat-file`` run in the repository holding ``PATH`` (relative to
  the current folder, like the other side's path) reads the pipeline file, the ``plan.json`` or the plan folder's
  ``plan.json`` as it was at ``REV``. A pipeline read this way is checked with its relative paths resolved as if
  it were at ``PATH``: its datasets and other local files are read from the working tree, as they are now. A plan
  folder at ``REV`` carries the hashes it was compiled with.

Whatever goes wrong is a ``SideError`` that names the side and says why and what to do: a missing path, a
folder without ``plan.json``, a revision git does not know, a pipeline with check errors (``check`` holds its
result, so the caller can print the diagnostics). Nothing here prints or writes.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from .api import CheckResult, check_file, check_text, plan_files
from .diagnostics import Severity
from .review import REVIEW_FORMAT, ReviewDiff, SideInfo, diff_plans

PLAN_FORMATS = (1,)
"""``plan.json`` formats this ftplan reads."""

PLAN_DIR_IN_MEMORY = "plan"
"""The plan folder a pipeline side is planned into (in memory; where it lives is not a review fact)."""


@dataclass(frozen=True)
class PlanSide:
    """One side of a diff, read."""

    info: SideInfo
    """What it was read from."""
    plan: dict[str, Any]
    """Its ``plan.json`` document."""


class SideError(Exception):
    """A side that cannot be read or planned; ``message`` says why, ``hint`` what to do."""

    def __init__(self, source: str, message: str, hint: str, check: CheckResult | None = None):
        super().__init__(message)
        self.source = source
        """The side as the user named it."""
        self.message = message
        """What is wrong."""
        self.hint = hint
        """How to fix it."""
        self.check = check
        """The check result of a pipeline that did not pass its checks (its diagnostics say why)."""
        self.side: str | None = None
        """``old`` or ``new`` (set by ``diff_sources``)."""


def diff_sources(old: str, new: str, *, cwd: str | os.PathLike[str] | None = None) -> ReviewDiff:
    """Read both sides (see the module docstring) and compare their plans; a ``SideError`` names the failing
    side in ``side`` (``old`` or ``new``)."""
    sides = []
    for which, spec in (("old", old), ("new", new)):
        try:
            sides.append(read_side(spec, cwd=cwd))
        except SideError as exc:
            exc.side = which
            raise
    return diff_plans(sides[0].plan, sides[1].plan, sides[0].info, sides[1].info)


def read_side(spec: str, *, cwd: str | os.PathLike[str] | None = None) -> PlanSide:
    """One side: a pipeline file, a plan folder, a ``plan.json``, or ``REV:PATH`` of one of them."""
    base = Path(cwd) if cwd is not None else Path.cwd()
    path = base / spec
    if path.is_dir():
        return _plan_side(spec, _read_plan_file(spec, path / "plan.json", folder=True))
    if path.is_file():
        if path.suffix == ".json":
            return _plan_side(spec, _read_plan_file(spec, path, folder=False))
        return _pipeline_side(spec, check_file(path if cwd is not None else spec))
    if ":" in spec and not spec.startswith(":"):
        return _git_side(spec, base)
    raise SideError(spec, f"{spec} does not exist",
                    "pass a pipeline file, a compiled plan folder, or REV:PATH for a git revision of one "
                    "(e.g. main:pipelines/x.yaml); paths are relative to the current folder")


def compiled_plan(result: CheckResult) -> dict[str, Any]:
    """The ``plan.json`` document of a checked pipeline, rendered exactly as ``compile`` renders it."""
    plan: dict[str, Any] = json.loads(plan_files(result, PLAN_DIR_IN_MEMORY)["plan.json"])
    return plan


def stale_review(plan_dir: str | os.PathLike[str], new_plan_json: str, source: str) -> ReviewDiff | None:
    """``compile --check``: the committed ``plan.json`` in ``plan_dir`` against the one the pipeline compiles to
    now; None when the folder holds no readable ``plan.json`` (every file is new, the file list says so)."""
    folder = Path(plan_dir)
    try:
        old = _read_plan_file(str(folder), folder / "plan.json", folder=True)
    except SideError:
        return None
    new = json.loads(new_plan_json)
    name = str(new.get("pipeline", {}).get("name"))
    return diff_plans(old, new, SideInfo(str(folder), "plan", str(old.get("pipeline", {}).get("name"))),
                      SideInfo(source, "pipeline", name))


def _pipeline_side(spec: str, result: CheckResult) -> PlanSide:
    if not result.ok or result.ctx is None:
        n = result.count(Severity.ERROR)
        raise SideError(spec, f"{spec} does not pass its checks ({n} error{'' if n == 1 else 's'})",
                        f"fix the pipeline (ftplan check {spec} shows every error), or diff a compiled plan "
                        "folder instead", check=result)
    plan = compiled_plan(result)
    return PlanSide(SideInfo(spec, "pipeline", str(plan["pipeline"]["name"])), plan)


def _plan_side(spec: str, plan: dict[str, Any]) -> PlanSide:
    return PlanSide(SideInfo(spec, "plan", str((plan.get("pipeline") or {}).get("name"))), plan)


def _read_plan_file(spec: str, path: Path, *, folder: bool) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        if folder:
            raise SideError(spec, f"{spec} is a folder without plan.json",
                            "pass a plan folder that `ftplan compile -o` wrote, or a pipeline file") from None
        raise SideError(spec, f"cannot read {spec}: no such file", "check the path") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SideError(spec, f"cannot read {path}: {getattr(exc, 'strerror', None) or exc}",
                        "check that the file exists and that you may read it") from None
    return parse_plan_json(spec, text)


def parse_plan_json(spec: str, text: str) -> dict[str, Any]:
    """A ``plan.json`` text as a document; a file that is not one ftplan wrote is a ``SideError``."""
    try:
        plan = json.loads(text)
    except json.JSONDecodeError as exc:
        raise SideError(spec, f"{spec}: plan.json is not valid JSON (line {exc.lineno}, column {exc.colno}: "
                        f"{exc.msg})", "recompile the plan with `ftplan compile`") from None
    if not isinstance(plan, dict) or "stages" not in plan or "format_version" not in plan:
        raise SideError(spec, f"{spec}: this JSON file is not a plan.json ftplan wrote",
                        "pass a compiled plan folder, its plan.json, or a pipeline file")
    if plan["format_version"] not in PLAN_FORMATS:
        raise SideError(spec, f"{spec}: plan.json has format {plan['format_version']!r}; this ftplan reads "
                        f"format {', '.join(map(str, PLAN_FORMATS))}",
                        "recompile the plan with this ftplan, or diff with the ftplan that wrote it")
    return plan


# --- git revisions -----------------------------------------------------------------------------------------

def _git_side(spec: str, base: Path) -> PlanSide:
    rev, _, rel = spec.partition(":")
    if not rel:
        raise SideError(spec, f"{spec} names a revision but no path", "write REV:PATH, e.g. main:pipelines/x.yaml")
    target = (base / rel).resolve() if not os.path.isabs(rel) else Path(rel)
    top = _git_toplevel(spec, target)
    inside = target.relative_to(top).as_posix() if target != top else ""
    obj = f"{rev}:{inside}"
    kind = _git(spec, top, "cat-file", "-t", obj).strip()
    if kind == "tree":
        text = _git_text(spec, top, f"{obj}/plan.json" if inside else f"{rev}:plan.json",
                         missing=f"{spec} is a folder without plan.json at {rev}")
        return _plan_side(spec, parse_plan_json(spec, text))
    if kind != "blob":
        raise SideError(spec, f"{spec} is a git {kind}, not a file or folder", "name a file or folder: REV:PATH")
    text = _git_text(spec, top, obj)
    if inside.endswith(".json"):
        return _plan_side(spec, parse_plan_json(spec, text))
    return _pipeline_side(spec, check_text(text, spec, target.parent))


def _git_toplevel(spec: str, target: Path) -> Path:
    """The work tree holding ``target`` (found from its nearest existing folder)."""
    folder = target.parent
    while not folder.is_dir() and folder != folder.parent:
        folder = folder.parent
    return Path(_git(spec, folder, "rev-parse", "--show-toplevel").strip()).resolve()


def _git_text(spec: str, top: Path, obj: str, missing: str | None = None) -> str:
    data = _git(spec, top, "cat-file", "blob", obj, raw=True, missing=missing)
    try:
        return str(data.decode("utf-8-sig"))
    except UnicodeDecodeError:
        raise SideError(spec, f"{spec} is not UTF-8 text", "save the file as UTF-8") from None


def _git(spec: str, cwd: Path, *args: str, raw: bool = False, missing: str | None = None) -> Any:
    """Run git in ``cwd``; a failure is a ``SideError`` quoting git's own message."""
    if shutil.which("git") is None:
        raise SideError(spec, f"cannot read {spec}: git is not installed", "install git, or pass a file path")
    proc = subprocess.run(["git", *args], cwd=cwd, capture_output=True, timeout=60,
                          env={**os.environ, "GIT_TERMINAL_PROMPT": "0", "LC_ALL": "C"})
    if proc.returncode != 0:
        said = proc.stderr.decode("utf-8", "replace").strip().splitlines()
        reason = said[-1].removeprefix("fatal: ") if said else f"git {args[0]} failed"
        if missing and args[:2] == ("cat-file", "blob"):
            raise SideError(spec, missing, "pass the plan folder as it is in that revision, or a pipeline file")
        raise SideError(spec, f"cannot read {spec} from git: {reason}",
                        "REV:PATH needs a revision git knows (a branch, tag or commit) and PATH as it is in "
                        "that revision, relative to the current folder")
    return proc.stdout if raw else proc.stdout.decode("utf-8", "replace")


def side_error_json(exc: SideError) -> dict[str, Any]:
    """The ``ftplan diff --json`` document of a diff that failed: which side, why, what to do, and the check
    errors of a pipeline that did not pass its checks."""
    from .console import diagnostic_json

    errors = [] if exc.check is None else [diagnostic_json(d, exc.check) for d in exc.check.diagnostics
                                           if d.severity is Severity.ERROR]
    return {"format": REVIEW_FORMAT, "ok": False, "equal": None,
            "error": {"side": exc.side, "source": exc.source, "message": exc.message, "hint": exc.hint,
                      "diagnostics": errors}}
