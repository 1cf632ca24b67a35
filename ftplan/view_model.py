"""VIEW MODEL: what the terminal view (``console.py``) and ``plan.md`` (``render/plan_md.py``) both show, worded once.

Each stage's status word (``stage_status``) and its row of the stage table (``stage_row``), the memory breakdown
of a stage (``breakdown_lines``), a training stage's settings in words (``training_settings``) and the commands
that launch a compiled plan (``run_lines``) are made here from the resolved facts (``ResolvedStage``), the
estimate and the Plan; the headline is ``describe.headline``. The views only lay them out — a rich table on the
terminal, a Markdown table in plan.md — so the two cannot say different things about the same pipeline.
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from .checks.model import COMMIT_SHA
from .describe import adapter_text, bar, batch_arithmetic, batch_size, term_line
from .estimate.constants import TIGHT_FRACTION
from .jobs import time_limit_share
from .schemas import FullFinetune, LoraAdapter
from .units import format_duration, gib_text, sci, size

if TYPE_CHECKING:  # pragma: no cover
    from .estimate.types import StageEstimate
    from .jobs import Resources, SlurmJob
    from .plan.types import Target
    from .resolved_stage import ResolvedStage
    from .schemas.stages import TrainStage

Status = Literal["fits", "tight", "oom", "error", "unknown", "ok"]
"""A stage's verdict, the one vocabulary of the check table, ``check --json`` and plan.md."""

STATUS_MEANINGS: dict[str, str] = {
    "fits": f"the estimated peak per GPU is below {TIGHT_FRACTION * 100:g} % of the card",
    "tight": f"the estimated peak per GPU is {TIGHT_FRACTION * 100:g} % of the card or more (FT102)",
    "oom": "the estimated peak per GPU is the card's memory or more (FT101)",
    "error": "an error is reported in the stage",
    "unknown": "the stage needs GPU memory but could not be estimated",
    "ok": "nothing to fit on a GPU (data preparation, merges and exports on the host, training on the CPU), no error",
}
"""What each status word means (plan.md's legend)."""

STAGE_COLUMNS = ("stage", "kind", "method", "batch", "tokens/step", "peak memory", "verdict")
"""The stage table's columns, in order, in both views."""

SCRIPT_PURPOSES = {"run.sh": "every stage on this machine, skipping finished ones",
                   "slurm/submit.sh": "the Slurm job chain (afterok)"}
"""What each launch script of a plan does, in the words both views print after its command."""

_REFERENCES = {"adapter": "the policy with the new adapter switched off",
               "adapter_copy": "a frozen copy of the continued adapter",
               "model_copy": "a frozen copy of the full model"}


def stage_status(facts: "ResolvedStage", estimate: "StageEstimate | None", *, has_error: bool) -> Status:
    """A stage's verdict: ``oom``, ``tight`` or ``fits`` from the memory estimate of a training stage on GPUs;
    ``error`` when an error is reported in the stage (an ``oom`` stays ``oom``); ``unknown`` when a stage that needs
    memory could not be estimated (unknown GPU or model, broken wiring); ``ok`` for a stage without errors that has
    nothing to fit on a GPU (data preparation, merges and exports on the host, training on the CPU)."""
    if estimate is not None and estimate.verdict == "oom":
        return "oom"
    if has_error:
        return "error"
    if facts.train is not None and facts.device == "cuda":
        if estimate is None or estimate.verdict == "n/a":
            return "unknown"
        return estimate.verdict
    if estimate is None and facts.kind != "data":
        return "unknown"
    return "ok"


@dataclass(frozen=True)
class StageRow:
    """One row of the stage table, as text (``STAGE_COLUMNS`` in order, the bar flagged for code spans)."""

    id: str
    """Stage id."""
    kind: str
    """Stage kind."""
    method: str
    """What the stage does in one line (``describe.method``)."""
    batch: str
    """Effective batch: ``16`` (sequences), ``16 pairs`` for the pair kinds, ``—`` for stages that do not train."""
    tokens_per_step: str
    """``65,536`` or ``—``."""
    memory: str
    """A bar of the peak against the card, ``host RAM 15.9 GiB``, or ``—``."""
    memory_is_bar: bool
    """``memory`` is a bar (plan.md sets it in a code span)."""
    status: Status
    """The stage's verdict."""

    @property
    def cells(self) -> tuple[str, ...]:
        """The row's cells in ``STAGE_COLUMNS`` order."""
        return (self.id, self.kind, self.method, self.batch, self.tokens_per_step, self.memory, self.status)


def stage_row(facts: "ResolvedStage", method: str, estimate: "StageEstimate | None", status: Status) -> StageRow:
    """The stage-table row of a stage from its resolved facts, its one-line method and its estimate."""
    batch = tokens = "—"
    if facts.train is not None:
        b = facts.train.batch
        batch = batch_size(b) if b.pairs else f"{b.effective_batch:,}"
        tokens = f"{b.tokens_per_step:,}" if b.tokens_per_step else "—"
    memory, is_bar = "—", False
    if estimate is not None:
        if facts.device == "cuda" and estimate.capacity_bytes and estimate.peak_bytes > 0:
            memory, is_bar = bar(estimate.peak_bytes, estimate.capacity_bytes), True
            if estimate.host_bytes:  # offloaded states or activation checkpoints
                memory += f" + host {size(estimate.host_bytes)}"
        elif estimate.host_bytes:
            memory = f"host RAM {size(estimate.host_bytes)}"
    return StageRow(facts.id, facts.kind, method, batch, tokens, memory, is_bar, status)


def peak_text(facts: "ResolvedStage", estimate: "StageEstimate", status: Status) -> str | None:
    """The peak a stage's estimate names: ``8.9 / 24.0 GiB per GPU (fits)``, ``host memory 13.7 MiB``, or None."""
    if facts.device == "cuda" and estimate.capacity_bytes and estimate.peak_bytes > 0:
        return (f"{gib_text(estimate.peak_bytes, unit=False)} / {gib_text(estimate.capacity_bytes)} per GPU "
                f"({status})")
    if estimate.host_bytes:
        return f"host memory {size(estimate.host_bytes)}"
    return None


def breakdown_lines(facts: "ResolvedStage", estimate: "StageEstimate | None", status: Status) -> list[str]:
    """A training stage's memory estimate, line item by line item, largest first (``check -v``): ``sft: peak 8.9 /
    24.0 GiB per GPU (fits)`` then ``  base weights (NF4) 3.4 GiB (...)``, and what a stage on GPUs keeps in host
    memory per node (``host memory 4.0 GiB per node:`` then its items); nothing for other stages."""
    if facts.train is None or estimate is None or not estimate.terms:
        return []
    peak = peak_text(facts, estimate, status)
    head = f"{facts.id}: " + (f"peak {peak}" if peak and "per GPU" in peak else peak or "no estimate")
    lines = [head, *(f"  {term_line(t)}" for t in sorted(estimate.terms, key=lambda t: -t.bytes))]
    if estimate.host_terms:
        lines.append(f"  host memory {size(estimate.host_bytes or 0)} per node:")
        lines += [f"    {term_line(t)}" for t in estimate.host_terms]
    return lines


def training_settings(stage: "TrainStage", facts: "ResolvedStage", resources: "Resources", job: "SlurmJob | None",
                      estimate: "StageEstimate | None") -> list[tuple[str, str]]:
    """What a reviewer approves of a training stage, as (name, words): learning rate and schedule, optimizer, how
    long (epochs or steps, and the optimizer steps they make), the batch, what it trains, the objective of a
    preference or reward stage with its reference policy, precision, checkpoints and the estimated run time against
    the Slurm time limit. ``stage`` is the stage as written for the runtime (defaults filled in: 1 epoch, no
    warm-up)."""
    t = facts.train
    if t is None:
        return []
    out = [("learning rate", _schedule(stage)),
           ("optimizer", f"{stage.optimizer}, weight decay {stage.weight_decay:g}, gradient clipping at norm "
                         f"{stage.max_grad_norm:g}"),
           ("length", _length(stage, facts)),
           ("optimizer steps", _steps(facts)),
           ("batch", batch_arithmetic(t.batch)),
           ("trains", _trains(stage, facts))]
    objective = _objective(stage, facts)
    if objective is not None:
        out.append(("objective", objective))
    checkpointing = {"off": "no gradient checkpointing", "on": "gradient checkpointing",
                     "offload": "gradient checkpointing offloaded to host memory"}[t.checkpointing]
    out.append(("precision", f"{stage.precision}, attention {stage.attention}, {checkpointing}, kernels "
                             f"{stage.kernels}"))
    out.append(("checkpoints", _checkpoints(stage)))
    out.append(("estimated run time", _run_time(facts, resources, job, estimate)))
    return out


def _schedule(stage: "TrainStage") -> str:
    if stage.warmup_ratio is not None:
        warmup = f"warm-up over {stage.warmup_ratio * 100:g} % of the steps"
    elif stage.warmup_steps:
        warmup = f"{stage.warmup_steps:,} warm-up step{'s' if stage.warmup_steps != 1 else ''}"
    else:
        warmup = "no warm-up"
    return f"{sci(stage.learning_rate)} peak, {stage.lr_scheduler} schedule, {warmup}"


def _length(stage: "TrainStage", facts: "ResolvedStage") -> str:
    t = facts.train
    assert t is not None
    what = "pairs" if t.batch.pairs else "examples"
    if stage.max_steps is not None:
        return f"max_steps {stage.max_steps:,}"
    epochs = stage.epochs if stage.epochs is not None else 1.0
    over = f" over {t.rows:,} training {what}" if t.rows is not None else ""
    return f"{epochs:g} epoch{'s' if epochs != 1 else ''}{over}"


def _steps(facts: "ResolvedStage") -> str:
    t = facts.train
    assert t is not None
    if t.steps is None:
        return ("not known before the data stage runs: training rows are counted only when every dataset file is "
                "read whole (hub datasets and Parquet are read at run time; `ftplan check --full-data` reads large "
                "files whole)")
    if t.steps_at_most:
        return f"at most {t.steps:,} (examples counted before packing)"
    return f"{t.steps:,}"


def _trains(stage: "TrainStage", facts: "ResolvedStage") -> str:
    t = facts.train
    assert t is not None
    a = t.adapter
    if isinstance(a, FullFinetune):
        return "every weight (full fine-tune)"
    if not isinstance(a, LoraAdapter):
        return "—"
    targets = "all-linear (every decoder projection)" if a.targets == "all-linear" else ", ".join(a.targets)
    text = f"{adapter_text(a)}, dropout {a.dropout:g}, targets {targets}"
    if a.modules_to_save:
        text += f", in full: {', '.join(a.modules_to_save)}"
    if t.continues_adapter:
        return f"the adapter of {stage.input}, continued: {text}"
    if t.merges_input:
        return f"a new adapter on {stage.input} merged: {text}"
    return f"a new adapter: {text}"


def _objective(stage: "TrainStage", facts: "ResolvedStage") -> str | None:
    """What a preference or reward stage optimises, with its reference policy (None for SFT and CPT)."""
    t = facts.train
    assert t is not None
    if stage.kind == "dpo":
        smoothing = f", label smoothing {stage.label_smoothing:g}" if stage.label_smoothing else ""
        named = "CPO" if stage.loss_type == "simpo" else "RPO"
        sft = f", + {stage.sft_weight:g} × NLL of the chosen answer ({named})" if stage.sft_weight else ""
        if stage.loss_type == "simpo":
            head = (f"SimPO β {stage.beta:g}, γ {stage.simpo_gamma:g}{smoothing}{sft}; no reference model")
        else:
            head = f"DPO β {stage.beta:g}, {stage.loss_type} loss{smoothing}{sft}"
    elif stage.kind == "kto":
        head = (f"KTO β {stage.beta:g}, {stage.loss_type} loss, desirable × {stage.desirable_weight:g}, "
                f"undesirable × {stage.undesirable_weight:g}")
    elif stage.kind == "orpo":
        head = f"ORPO β {stage.beta:g} (the odds-ratio term beside the supervised loss); no reference model"
    elif stage.kind == "reward":
        centre = getattr(stage, "center_rewards_coefficient", None)
        head = "the chosen answer scored above the rejected one" + (
            f", rewards centred with coefficient {centre:g}" if centre else "")
    else:
        return None
    if t.reference is None:
        return head
    when = "computed at every step" if t.reference_live else "its log-probs computed once before step 1"
    return f"{head}; reference: {_REFERENCES[t.reference]}, {when}"


def _checkpoints(stage: "TrainStage") -> str:
    saves = (f"every {stage.save_steps:,} steps, the last {stage.save_total_limit} kept" if stage.save_steps
             else "at the end only")
    evals = f"evaluation every {stage.eval_steps:,} steps" if stage.eval_steps else "no evaluation"
    best = "; the best checkpoint by validation loss kept at the end" if stage.load_best_model_at_end else ""
    return f"{saves}; {evals}{best}; seed {stage.seed}"


def _run_time(facts: "ResolvedStage", res: "Resources", job: "SlurmJob | None",
              estimate: "StageEstimate | None") -> str:
    step = estimate.step_time_s if estimate is not None else None
    if res.run_time_s is None or res.steps is None or not step:
        if facts.device == "cpu":
            why = "ftplan has no step-time model for training on the CPU"
        elif res.steps is None:
            why = "the number of optimizer steps is not known"
        else:
            why = "no step time was estimated"
        limit = f"; Slurm time limit {job.time}" if job is not None else ""
        return f"not estimated: {why}{limit}"
    bound = "at most " if res.steps_at_most else ""
    out = f"{bound}≈ {format_duration(res.run_time_s)} ({res.steps:,} steps × {step:.2f} s, a planning figure)"
    share = time_limit_share(res, job)
    if job is not None:
        out += f"; Slurm time limit {job.time}"
        if share is not None:
            part = "less than 1 %" if share < 0.01 else f"{share * 100:.0f} %"
            out += f" ({part} of it" + (", so Slurm stops it first: FT332)" if share > 1 else ")")
    return out


def run_commands(folder: str, *, slurm: bool, nodes: int) -> list[tuple[str, str]]:
    """``(command, what it does)`` for each script that launches a compiled plan, the one to use first: ``run.sh``
    (every stage on this machine), and ``slurm/submit.sh`` with Slurm jobs; only ``submit.sh`` when a stage spans
    several ``nodes``, since ``run.sh`` refuses such a plan and exits 1. ``folder`` is the plan folder as the reader
    reaches it (relative to the project folder in plan.md, as given to ``-o`` on the terminal); ``slurm``: the plan
    has Slurm jobs."""
    from .render.shell import shq  # not at import time: render's plan.md reads this module

    scripts = [] if slurm and nodes > 1 else ["run.sh"]
    scripts += ["slurm/submit.sh"] if slurm else []
    return [(f"bash {shq(posixpath.normpath(posixpath.join(folder, script)))}", SCRIPT_PURPOSES[script])
            for script in scripts]


def run_lines(folder: str, *, slurm: bool, nodes: int) -> list[str]:
    """``run_commands`` as lines: ``bash plans/x/run.sh    # every stage on this machine, skipping finished
    ones``."""
    return [f"{command}    # {what}" for command, what in run_commands(folder, slurm=slurm, nodes=nodes)]


def run_note(nodes: int) -> str | None:
    """Why ``run.sh`` is not among the launch commands of a plan whose stages span up to ``nodes`` nodes (None when
    it is)."""
    if nodes <= 1:
        return None
    return f"run.sh refuses this plan (it exits 1): a stage spans {nodes} nodes, which only the Slurm jobs start"


def revision_text(target: "Target") -> str:
    """Which files of the model a run reads: ``at revision 0e9e… (a commit: every run reads the same files)``,
    unpinned (FT416), or a local folder (hashed under Inputs)."""
    if target.model_local:
        return "a local folder: nothing to pin, its files are hashed under Inputs"
    if target.revision is None:
        return "no revision pinned: each run downloads the hub's latest files (warning FT416)"
    if COMMIT_SHA.match(target.revision):
        return f"at revision {target.revision} (a commit: every run reads the same files)"
    return f"at revision {target.revision}, a branch or tag that can move (warning FT416)"
