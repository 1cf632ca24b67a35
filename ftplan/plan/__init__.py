"""PLAN: the checked pipeline, its resolved stages and its estimates turned into everything a launch needs, as
frozen data (``types.py``).

``build_plan`` (``build.py``) puts each stage together from its ``ResolvedStage`` (``resolved_stage.py``): the
runtime arguments (``args.py``), the accelerate and DeepSpeed configs (``accelerate.py``, ``deepspeed.py``) and the
resources and Slurm job (``jobs.py``). Rendering (``ftplan.render``) only serialises a ``Plan``: every decision is
taken here or before.
"""

from .build import PlanFolderError, build_plan, root_from, stage_dir
from .types import PLAN_FORMAT, Plan, PlanStage, Provenance, Target

__all__ = ["PLAN_FORMAT", "Plan", "PlanFolderError", "PlanStage", "Provenance", "Target", "build_plan", "root_from",
           "stage_dir"]
