"""The public pipeline steps, composed: load -> validate -> resolve/check -> estimate -> plan -> render -> write.

Each step is a pure function of the previous one's output; only loading reads the pipeline and the local files it
references (``check_file``, ``inputs.read_inputs``), and only ``write.write_plan`` touches the output folder (the
CLI calls it with ``plan_files``' texts). Nothing here prints.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from . import __version__
from .context import Context
from .diagnostics import Diagnostic, FtplanError, Severity, has_errors, sort_key
from .estimate.types import StageEstimate


@dataclass(frozen=True)
class CheckResult:
    """Everything ``ftplan check`` learned about one pipeline file."""

    path: str
    """The pipeline file as the user named it."""
    data: Any = None
    """The parsed YAML (None when it did not parse)."""
    source_map: Any = None
    ctx: Context | None = None
    """The resolved pipeline (None when the schema was invalid)."""
    estimates: dict[str, StageEstimate] = field(default_factory=dict)
    diagnostics: tuple[Diagnostic, ...] = ()
    """Every finding, located and sorted by position."""

    @property
    def ok(self) -> bool:
        """True when there is no error (warnings allowed)."""
        return not has_errors(self.diagnostics)

    def count(self, severity: Severity) -> int:
        """Number of diagnostics of one severity."""
        return sum(d.severity is severity for d in self.diagnostics)


def check_text(text: str, filename: str, root: Path, *, full_data: bool = False) -> CheckResult:
    """Check pipeline source ``text`` (named ``filename`` in messages) whose local paths are relative to
    ``root``: schema, stage graph, pre-launch rules and the VRAM estimate; ``full_data`` checks every row of
    every local dataset file, whatever its size."""
    from .checks import check_jobs, run_checks
    from .estimate import estimate
    from .inputs import read_inputs
    from .loader import load_yaml
    from .resolve import resolve
    from .schema_errors import validate_pipeline

    try:
        data, source_map = load_yaml(text, filename)
    except FtplanError as exc:
        return CheckResult(filename, diagnostics=tuple(sorted(exc.diagnostics, key=sort_key)))
    pipeline, diags = validate_pipeline(data, source_map, filename)
    if pipeline is None:
        return CheckResult(filename, data, source_map, diagnostics=_finish(diags, source_map, filename))
    inputs = read_inputs(pipeline, root, full_data=full_data)
    sha = hashlib.sha256(text.encode("utf-8")).hexdigest()
    ctx, resolve_diags = resolve(pipeline, inputs, pipeline_path=filename, pipeline_sha256=sha)
    diags = [*diags, *resolve_diags, *run_checks(ctx)]
    estimates, estimate_diags = estimate(ctx)
    diags += estimate_diags + check_jobs(ctx, estimates)
    return CheckResult(filename, data, source_map, ctx, estimates, _finish(diags, source_map, filename))


def check_file(path: str | os.PathLike[str], *, full_data: bool = False) -> CheckResult:
    """Read and check a pipeline file (see ``check_text``); an unreadable file is a diagnostic, not a crash."""
    from .loader import read_pipeline_file

    name = str(path)
    try:
        text, _ = read_pipeline_file(Path(path))
    except FtplanError as exc:
        return CheckResult(name, diagnostics=tuple(exc.diagnostics))
    return check_text(text, name, Path(path).resolve().parent, full_data=full_data)


def plan_files(result: CheckResult, plan_dir_from_root: str) -> dict[str, str]:
    """Render the compiled plan of a checked pipeline: relative path -> file text. Needs ``result.ok``."""
    from .plan import build_plan
    from .render import render

    if not result.ok or result.ctx is None:
        raise ValueError("cannot plan a pipeline with errors; check it first")
    notes = [d for d in result.diagnostics if d.severity is not Severity.ERROR]
    plan = build_plan(result.ctx, result.estimates, notes, plan_dir_from_root=plan_dir_from_root,
                      ftplan_version=__version__)
    return render(plan)


def plan_dir_from_root(pipeline_path: str | os.PathLike[str], out_dir: str | os.PathLike[str]) -> str:
    """The output folder relative to the project root (the pipeline file's folder), as a POSIX path;
    ``PlanFolderError`` when there is no such path (another drive on Windows)."""
    from .plan import PlanFolderError

    root = Path(pipeline_path).resolve().parent
    try:
        rel = os.path.relpath(Path(out_dir).resolve(), root)
    except ValueError:
        raise PlanFolderError(f"the plan folder {out_dir} is on another drive than the project folder {root}; "
                              "write the plan inside the project folder") from None
    return PurePosixPath(*Path(rel).parts).as_posix()


def _finish(diags: list[Diagnostic], source_map: Any, filename: str) -> tuple[Diagnostic, ...]:
    """Locate every diagnostic that has no span yet, then sort by position."""
    located = []
    for d in diags:
        if d.span is None and source_map is not None:
            d = d.located(source_map.span(d.path))
        located.append(d)
    return tuple(sorted(located, key=sort_key))
