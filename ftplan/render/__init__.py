"""RENDER: a ``Plan`` turned into the texts of the compiled plan folder, ``{relative path: text}``.

Pure and byte-stable: the same plan renders to the same bytes on every machine. Config files go through sorted
serialisers (``serialize``), scripts through Jinja templates with shell quoting (``scripts``). Every text ends
with exactly one newline and uses LF line ends.

Nothing here decides anything: every value comes from the ``Plan`` (``ftplan.plan``). Layout (``<id>`` is the
stage's id; the run order is the file's, as plan.md, run.sh and submit.sh list it)::

    plan.md  plan.json  plan.html  run.sh
    stages/<id>/args.json        every stage
    stages/<id>/accelerate.yaml  training stages
    stages/<id>/deepspeed.json   ZeRO stages
    slurm/<id>.sbatch  slurm/submit.sh   when hardware.slurm is set
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from .plan_html import render_plan_html
from .plan_json import render_plan_json
from .plan_md import render_plan_md
from .scripts import render_run, render_sbatch, render_submit
from .serialize import sha256_text, to_json, to_yaml

if TYPE_CHECKING:  # pragma: no cover
    from ..plan import Plan

__all__ = ["render", "EXECUTABLE_SUFFIXES"]

EXECUTABLE_SUFFIXES = (".sh", ".sbatch")
"""Files written with mode 0755."""


def render(plan: "Plan") -> dict[str, str]:
    """Every file of the compiled plan, keyed by its path relative to the plan folder (sorted)."""
    files: dict[str, str] = {}
    shas: dict[str, str] = {}
    for s in plan.stages:
        args_text = to_json(s.args.model_dump(mode="json"))
        shas[s.id] = sha256_text(args_text)
        files[f"{s.dir}/args.json"] = args_text
        if s.accelerate is not None:
            files[f"{s.dir}/accelerate.yaml"] = to_yaml(s.accelerate)
        if s.deepspeed is not None:
            files[f"{s.dir}/deepspeed.json"] = to_json(s.deepspeed)
    files["run.sh"] = render_run(plan)
    if plan.slurm is not None:
        for s in plan.stages:
            files[f"slurm/{s.name}.sbatch"] = render_sbatch(plan, s)
        files["slurm/submit.sh"] = render_submit(plan)
    files["plan.json"] = render_plan_json(plan, shas)
    files["plan.md"] = render_plan_md(plan)
    files["plan.html"] = render_plan_html(json.loads(files["plan.json"]))  # a view of plan.json, never apart
    for path, text in files.items():
        if "\r" in text or not text.endswith("\n") or text.endswith("\n\n"):
            raise AssertionError(f"rendered {path} must use LF line ends and end with exactly one newline")
    return dict(sorted(files.items()))
