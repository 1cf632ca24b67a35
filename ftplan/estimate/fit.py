"""Computed "would fit" suggestions: changes of the pipeline file, each applied to the pipeline and re-checked whole.

A candidate is an ``Edit`` (``edits.py``): the settings the user would write. The same object prints the
suggestion and is applied for the re-check, so the two cannot disagree. ``Checker`` writes an edit into the
validated pipeline's data, validates the result against the schema, resolves it, runs every rule and estimates
every stage (without suggestions). An edit passes when

* the edited file is valid and adds no error the unedited file does not already have (a rule that refuses the
  new combination, e.g. FT315 for an 8-bit optimizer under ``fsdp2``; another stage turned ``oom``), and
* the stage's verdict is ``fits`` (below ``TIGHT_FRACTION`` of the card; see ``constants.py``).

Only passing edits are offered. Warnings an edit adds (FT314 for an 8-bit optimizer under ZeRO) travel with it.

Candidates, in order of preference (what changes least about the run comes first): gradient checkpointing on,
``kernels: ftplan``, sdpa instead of eager attention, activation checkpoints offloaded to host memory
(``gradient_checkpointing: offload``: the same step, with copies over PCIe and pinned host memory), a smaller
micro-batch (``grad_accum`` raised to keep the
effective batch), a precomputed DPO reference, an 8-bit optimizer, sharding on more than one GPU (mildest first:
ZeRO-3, then optimizer offload, then parameter offload too; an offloaded optimizer steps on the CPU, so an 8-bit one
becomes ``adamw``; for a QLoRA stage then FSDP2, without and with offload, which shards the 4-bit base without
loading it whole onto a GPU first, with ``adamw`` and ``kernels: none`` where FSDP2 needs them), QLoRA instead of
LoRA, more GPUs per node (with ZeRO-3 unless already sharded, or for QLoRA with FSDP2). When no single change
passes, ``combined`` looks for two or three kinds together.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import combinations
from typing import Any

from ..context import Context
from ..diagnostics import Diagnostic, KeyPath, Severity
from ..schemas import DistributedSpec, LoraAdapter, Pipeline, TrainStage
from .edits import Edit, Setting
from .resolved import Resolved
from .types import StageEstimate, Suggestion

MAX_GPUS_PER_NODE = 8
"""Largest node the "more GPUs" suggestion proposes."""
MAX_SUGGESTIONS = 5
"""Single changes offered for a stage that does not fit (one per kind, mildest first)."""
MAX_COMBINED_KINDS = 3
"""Most kinds of change ``combined`` joins (the search tries every set of two, then of three)."""


@dataclass(frozen=True)
class Outcome:
    """What re-checking one edit found."""

    edit: Edit
    """The edit, less the settings that write what the file already has."""
    pipeline: Pipeline | None = None
    """The edited pipeline (None when it fails the schema)."""
    setup: Resolved | None = None
    """The edited stage, resolved (None when it cannot be estimated)."""
    estimate: StageEstimate | None = None
    errors: tuple[str, ...] = ()
    """Codes of the errors the edit adds (schema, resolve, rules, other stages' estimates), sorted."""
    warnings: tuple[str, ...] = ()
    """Codes of the warnings the edit adds, sorted."""

    @property
    def fits(self) -> bool:
        """The edited stage's verdict is ``fits``."""
        return self.estimate is not None and self.estimate.verdict == "fits"

    @property
    def accepted(self) -> bool:
        """The edited file is valid and the checks add no error."""
        return self.setup is not None and self.estimate is not None and not self.errors

    @property
    def passes(self) -> bool:
        """Accepted, and the stage fits: a suggestion that can be offered."""
        return self.accepted and self.fits


@dataclass(frozen=True)
class Fit:
    """A passing edit as the user sees it."""

    suggestion: Suggestion
    path: KeyPath
    """Where the diagnostic points: the edit's first key."""
    several: bool = False
    """Several kinds of change together (no single one passed)."""


_Key = tuple[str, KeyPath]
"""A diagnostic's code and key path: what tells an edit's new findings from the unedited file's."""


@dataclass
class Checker:
    """Applies edits to one checked pipeline and re-checks each result whole; results are cached per edit."""

    ctx: Context
    _data: dict[str, Any] = field(init=False, repr=False)
    _base: tuple[set[_Key], set[_Key]] | None = field(default=None, init=False, repr=False)
    _cache: dict[tuple[int, tuple[tuple[KeyPath, str], ...]], Outcome] = field(default_factory=dict, init=False,
                                                                             repr=False)

    def __post_init__(self) -> None:
        self._data = self.ctx.pipeline.model_dump(mode="json", exclude_unset=True)

    def __call__(self, edit: Edit, index: int) -> Outcome:
        """Re-check the pipeline with ``edit`` applied, for the training stage at ``index``."""
        edit = edit.against(self.ctx.pipeline)
        key = (index, edit.key)
        if key not in self._cache:
            self._cache[key] = self._check(edit, index)
        return self._cache[key]

    def text(self, edit: Edit) -> str:
        """The edit as the user writes it (OLD values from their file)."""
        return edit.against(self.ctx.pipeline).text(self.ctx.pipeline)

    def _check(self, edit: Edit, index: int) -> Outcome:
        """Schema, resolve, rules and estimate of the edited file, compared with the unedited one."""
        from ..schema_errors import validate_pipeline
        from ..sourcemap import SourceMap
        from .pipeline import CODES as ESTIMATE_CODES
        from .pipeline import stage_setup

        name = self.ctx.pipeline_path
        pipeline, schema_diags = validate_pipeline(edit.apply(self._data), SourceMap(name), name)
        if pipeline is None:
            return Outcome(edit, errors=tuple(sorted({d.code for d in schema_diags})))
        ctx, diags, estimates = self._run(pipeline)
        errors, warnings = self._baseline()
        own = ("stages", index)

        def added(d: Diagnostic, before: set[_Key]) -> bool:
            """New in the edited file; the edited stage's own FT101/FT102 do not count (its verdict decides)."""
            return _key(d) not in before and not (d.code in ESTIMATE_CODES and d.path[:2] == own)

        stage = pipeline.stages[index]
        return Outcome(edit, pipeline, stage_setup(ctx, index), estimates.get(stage.id),
                       tuple(sorted({d.code for d in diags if d.severity is Severity.ERROR and added(d, errors)})),
                       tuple(sorted({d.code for d in diags if d.severity is Severity.WARNING
                                     and added(d, warnings)})))

    def _baseline(self) -> tuple[set[_Key], set[_Key]]:
        """(error keys, warning keys) of the unedited pipeline, checked the same way."""
        if self._base is None:
            _, diags, _ = self._run(self.ctx.pipeline)
            self._base = ({_key(d) for d in diags if d.severity is Severity.ERROR},
                          {_key(d) for d in diags if d.severity is Severity.WARNING})
        return self._base

    def _run(self, pipeline: Pipeline) -> tuple[Context, list[Diagnostic], dict[str, StageEstimate]]:
        """Resolve, every rule, and the estimate of every stage without suggestions."""
        from ..checks import run_checks
        from ..resolve import resolve as resolve_pipeline
        from .pipeline import estimate

        ctx, diags = resolve_pipeline(pipeline, self.ctx.inputs, pipeline_path=self.ctx.pipeline_path,
                                      pipeline_sha256=self.ctx.pipeline_sha256)
        diags = [*diags, *run_checks(ctx)]
        estimates, estimate_diags = estimate(ctx, suggest=False)
        return ctx, diags + estimate_diags, estimates


def _key(d: Diagnostic) -> _Key:
    return d.code, d.path


def candidates(pipeline: Pipeline, index: int, r: Resolved) -> list[Edit]:
    """Every single change worth re-checking for the training stage at ``index`` (resolved as ``r``), most
    preferred first."""
    stage = pipeline.training_stage(index)
    out: list[Edit] = []

    def at(*key: str) -> KeyPath:
        return ("stages", index, *key)

    def add(kind: str, *settings: tuple[KeyPath, object]) -> None:
        out.append(Edit(tuple(Setting(p, v) for p, v in settings), kind))

    if not stage.gradient_checkpointing:
        add("gc", (at("gradient_checkpointing"), True))
    if stage.kernels == "none":
        add("kernels", (at("kernels"), "ftplan"))
    if stage.attention == "eager":
        add("attention", (at("attention"), "sdpa"))
    if stage.gradient_checkpointing != "offload":
        add("offload", (at("gradient_checkpointing"), "offload"))
    mb, accum = stage.micro_batch, stage.grad_accum
    for smaller in sorted((d for d in range(1, mb) if mb % d == 0), reverse=True):
        add("micro_batch", (at("micro_batch"), smaller), (at("grad_accum"), accum * (mb // smaller)))
    if r.reference != "none":
        add("reference", (at("reference"), "precomputed"))
    if stage.optimizer == "adamw":
        add("optimizer", (at("optimizer"), "adamw_8bit"))
    if r.world > 1:  # ZeRO-3 unless sharded already, then CPU offload of the optimizer, then of the parameters too
        spec = stage.distributed_spec()
        zero3: dict[str, str | bool] = {} if r.sharded_weights else {"strategy": "zero3"}
        steps = [zero3] if zero3 else []
        if not spec.offload_optimizer:
            steps.append({**zero3, "offload_optimizer": True})
        if not spec.offload_params:
            steps.append({**zero3, "offload_optimizer": True, "offload_params": True})
        for update in steps:
            # an offloaded optimizer steps on the CPU, where bitsandbytes' 8-bit optimizers do not run
            cpu_step = update.get("offload_optimizer") and stage.optimizer != "adamw"
            add("sharding", (at("distributed"), _distributed(stage, **update)),
                *([(at("optimizer"), "adamw")] if cpu_step else []))
        if r.quantized and r.strategy != "fsdp2":  # sharded QLoRA without loading the whole 4-bit base onto a GPU
            fsdp2: list[dict[str, str | bool]] = [{"strategy": "fsdp2"}, {"strategy": "fsdp2", "offload_params": True}]
            for shard in fsdp2:
                add("sharding", (at("distributed"), _distributed(stage, **shard)), *_fsdp2_needs(stage, at))
    if r.method in ("lora", "dora") and isinstance(stage.adapter, LoraAdapter):
        add("qlora", (at("adapter", "type"), "qlora"))
    gpn = pipeline.hardware.gpus_per_node
    more = gpn * 2
    while more <= MAX_GPUS_PER_NODE:
        if r.sharded_weights:
            add("gpus", (("hardware", "gpus_per_node"), more))
        else:
            add("gpus", (("hardware", "gpus_per_node"), more),
                (at("distributed"), _distributed(stage, strategy="zero3")))
            if r.quantized:
                add("gpus", (("hardware", "gpus_per_node"), more),
                    (at("distributed"), _distributed(stage, strategy="fsdp2")), *_fsdp2_needs(stage, at))
        more *= 2
    return out


def _fsdp2_needs(stage: TrainStage, at: Any) -> list[tuple[KeyPath, object]]:
    """What a stage moved to ``fsdp2`` must change with it: torch AdamW for a bitsandbytes 8-bit optimizer (FT315),
    ``kernels: none`` for the fused kernels, which read weights FSDP2 keeps sharded (FT309, FT320)."""
    needs: list[tuple[KeyPath, object]] = []
    if stage.optimizer != "adamw":
        needs.append((at("optimizer"), "adamw"))
    if stage.kernels == "ftplan":
        needs.append((at("kernels"), "none"))
    return needs


def _distributed(stage: TrainStage, **update: str | bool) -> str | dict[str, Any]:
    """The stage's ``distributed`` value with ``update`` written into it, keeping what the file already sets (a bare
    strategy name stays bare when nothing else is set)."""
    current = stage.distributed
    written = {"strategy": current} if isinstance(current, str) else current.model_dump(mode="json",
                                                                                         exclude_unset=True)
    written = {"strategy": stage.distributed_spec().strategy, **written, **update}
    ordered = {k: written[k] for k in DistributedSpec.model_fields if k in written}
    if list(ordered) == ["strategy"] and isinstance(current, str):
        return ordered["strategy"]
    return ordered


def singles(checker: Checker, index: int, r: Resolved, limit: int = MAX_SUGGESTIONS) -> tuple[list[Outcome],
                                                                                              list[Outcome]]:
    """(passing single changes, best first and one per kind: the mildest micro-batch cut or GPU count that
    passes; changes whose stage fits but that the checks refuse)."""
    passing: list[Outcome] = []
    refused: list[Outcome] = []
    seen: set[str] = set()
    for edit in candidates(checker.ctx.pipeline, index, r):
        if edit.kind in seen:
            continue
        outcome = checker(edit, index)
        if outcome.passes:
            seen.add(edit.kind)
            passing.append(outcome)
        elif outcome.fits and outcome.errors:
            refused.append(outcome)
    return passing[:limit], refused


def combined(checker: Checker, index: int) -> tuple[Outcome, int] | None:
    """Several kinds of change together, when no single change passes.

    Tries sets of two, then three kinds (in order of preference, each set applied kind by kind, the later kinds
    generated on the file the earlier ones produced, so a GPU count after ZeRO-3 does not set the strategy again),
    each kind at its strongest option the checks accept; the first set that passes is softened, the most intrusive
    kind first, to the mildest option of each kind that still passes. A kind the checks refuse on its own is left
    out. Returns the passing outcome and how many kinds it joins."""
    base = checker(Edit(), index)
    if base.setup is None or base.pipeline is None:
        return None
    kinds = list(dict.fromkeys(e.kind for e in candidates(base.pipeline, index, base.setup)
                               if checker(e, index).accepted))
    for size in range(2, min(MAX_COMBINED_KINDS, len(kinds)) + 1):
        for subset in combinations(kinds, size):
            found = _build(checker, index, subset, {})
            if found is None or not found[0].passes:
                continue
            outcome, picks = found
            for kind in reversed(subset):  # soften, the most intrusive kind first
                for option in range(picks[kind]):
                    trial = _build(checker, index, subset, {**picks, kind: option})
                    if trial is not None and trial[0].passes:
                        outcome, picks = trial
                        break
            return outcome, size
    return None


def _build(checker: Checker, index: int, kinds: tuple[str, ...],
           picks: dict[str, int]) -> tuple[Outcome, dict[str, int]] | None:
    """Apply one option of each kind in turn, each generated on the file the previous ones produced: option
    ``picks[kind]`` (0 = mildest), or else the strongest one the checks accept. None when a kind has no accepted
    option there."""
    state, edit, chosen = checker(Edit(), index), Edit(), {}
    for kind in kinds:
        if state.setup is None or state.pipeline is None:
            return None
        options = [e for e in candidates(state.pipeline, index, state.setup) if e.kind == kind]
        order = [min(picks[kind], len(options) - 1)] if kind in picks and options else (
            list(reversed(range(len(options)))))
        for j in order:
            trial = checker(edit.then(options[j]), index)
            if trial.accepted:
                state, edit, chosen[kind] = trial, edit.then(options[j]), j
                break
        else:
            return None
    return state, chosen


def suggest(checker: Checker, index: int, r: Resolved, verdict: str) -> tuple[list[Fit], list[Outcome]]:
    """Passing changes for a stage that is ``oom`` (up to ``MAX_SUGGESTIONS``, or several together) or ``tight``
    (the best one, for headroom), and the changes that would fit but the checks refuse."""
    passing, refused = singles(checker, index, r, limit=1 if verdict == "tight" else MAX_SUGGESTIONS)
    several = False
    if not passing and verdict == "oom":
        together = combined(checker, index)
        if together is not None:
            passing, several = [together[0]], together[1] > 1
    fits = [Fit(Suggestion(checker.text(o.edit), o.estimate.peak_bytes, o.estimate.host_bytes, o.warnings),
                o.edit.anchor(), several) for o in passing if o.estimate is not None]  # every passing one has it
    return fits, refused
