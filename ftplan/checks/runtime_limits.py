"""Configurations the runtime refuses when a stage starts, caught before launch.

Each rule mirrors one refusal of ``ftplan_runtime`` that depends only on the pipeline and the declared hardware:

* FT320 mirrors ``preflight.check_fused_loss`` (SFT and CPT only: the preference kinds do not use the fused loss).
  ``kernels: ftplan`` computes the SFT loss with ``causal_lm_loss``, which reads ``lm_head.weight`` whole; ZeRO-3
  shards it. ZeRO-1/2 keep every parameter whole and are accepted. FSDP2 is refused too: ``causal_lm_loss`` calls
  the decoder
  directly, skipping the forward of the root FSDP2 module that unshards the parameters it holds (embeddings, final
  norm, lm_head); on a freshly wrapped model the embedding lookup then meets a sharded DTensor and fails.
* FT321 mirrors ``model_loading.load_for_training``: adapters merged into the base when the stage loads (a DPO
  ``merge_input``, or the earlier adapters of a continued chain) cannot be merged into ZeRO-3's sharded weights.
  A QLoRA stage merges at 16-bit on the main process before it loads the merge in 4-bit and shards it.
* FT322 mirrors ``kernels.patch._head_parameters``: the fused cross-entropy refuses an active LoRA on ``lm_head``
  (a ``NotImplementedError`` at the first SFT step). ``all-linear`` never adapts the output layer.
* FT323 mirrors ``preflight.check_device``: fp16 mixed precision needs a CUDA device.
* FT324 mirrors the same check for a merge stage, whose promise carries ``dtype`` as its precision and which the
  plan runs on the CPU (``resolved_stage.placement``). The check is aimed at training's mixed precision; this rule
  goes when merges are no longer held to it.
* FT325 mirrors ``dpo.make_dpo_config``: TRL's sigmoid, IPO and hinge losses ignore ``label_smoothing``; only
  the robust loss (``DPOTrainer``) and SimPO (``CPOTrainer``) read it, so a smoothing that would silently do
  nothing is refused.
"""

from __future__ import annotations

from ftplan.context import Context
from ftplan.diagnostics import Diagnostic, error
from ftplan.resolved_stage import TrainingFacts
from ftplan.schemas import TRAIN_KINDS, TRAIN_STAGE_TYPES, DpoStage, MergeStage, TrainStage

from ._common import declared_adapter, strategy_path, train_stages

CODES = {
    "FT320": "`kernels: ftplan` with ZeRO-3 or FSDP2 in an SFT or CPT stage",
    "FT321": "adapters merged into the base at load under ZeRO-3",
    "FT322": "`kernels: ftplan` with a LoRA adapter on lm_head in an SFT or CPT stage",
    "FT323": "fp16 mixed precision with `device: cpu`",
    "FT324": "a merge stage with `dtype: fp16` that runs on the CPU",
    "FT325": "DPO `label_smoothing` with a loss that ignores it",
}

SMOOTHED_LOSSES = ("robust", "simpo")
"""DPO losses whose TRL implementation reads ``label_smoothing``."""


def check(ctx: Context) -> list[Diagnostic]:
    """The runtime's start-up refusals, for every training stage and every merge stage."""
    diags: list[Diagnostic] = []
    for i, stage, facts in train_stages(ctx):
        diags += _fused_loss(i, stage, facts)
        diags += _merge_at_load(ctx, i, stage, facts)
        diags += _cpu_fp16(ctx, i, stage)
        diags += _label_smoothing(i, stage)
    for i, any_stage in enumerate(ctx.pipeline.stages):
        if isinstance(any_stage, MergeStage):
            diags += _merge_dtype(ctx, i, any_stage)
    return diags


def _fused_loss(i: int, stage: TrainStage, facts: TrainingFacts) -> list[Diagnostic]:
    if TRAIN_KINDS[stage.kind].group != "sft" or stage.kernels != "ftplan":
        return []
    diags = []
    path = ("stages", i, "kernels")
    name = facts.strategy
    if name == "zero3":
        diags.append(error("FT320", path, "`kernels: ftplan` computes the SFT loss with a fused linear "
                           "cross-entropy that reads lm_head's whole weight, which `zero3` shards across GPUs; "
                           "the runtime stops at preflight", hint="set `kernels: none` to keep `zero3`, or "
                           "`distributed: zero2` (lm_head stays whole on every GPU; check the memory estimate)"))
    elif name == "fsdp2":
        diags.append(error("FT320", path, "`kernels: ftplan` computes the SFT loss by calling the decoder and "
                           "lm_head directly, bypassing the forward of the FSDP2 root module that gathers the "
                           "embeddings, final norm and lm_head it holds sharded; the runtime stops at preflight",
                           hint="set `kernels: none` to keep `fsdp2`, or `distributed: zero2` (check the memory "
                           "estimate)"))
    adapter = declared_adapter(stage)  # an SFT or CPT stage always declares its adapter (it never continues one)
    if adapter is not None and adapter.targets != "all-linear" and "lm_head" in adapter.targets:
        where = ("stages", i, "adapter", "targets", adapter.targets.index("lm_head"))
        diags.append(error("FT322", where, "LoRA on `lm_head` with `kernels: ftplan`: the fused cross-entropy "
                           "reads lm_head's weight directly and refuses an adapter on it, so the run stops at its "
                           "first step", hint="set `kernels: none`, or train lm_head in "
                           "full with `modules_to_save: [lm_head]` instead of a LoRA target"))
    return diags


def _merge_at_load(ctx: Context, i: int, stage: TrainStage, facts: TrainingFacts) -> list[Diagnostic]:
    link = ctx.links.get(stage.id)
    if facts.strategy != "zero3" or link is None or link.input is None or link.result is None:
        return []
    if facts.method == "qlora":
        return []  # merged at 16-bit on the main process, then reloaded in 4-bit and sharded
    adapters = link.input.adapters
    if link.merges_input and stage.input is not None:
        chain = ", ".join(f"'{a.stage}'" for a in adapters)
        return [error("FT321", ("stages", i, "merge_input"), f"`merge_input: true` merges the adapter(s) of "
                      f"{chain} into the base when the stage loads, but under `zero3` the base weights are "
                      "sharded and cannot be merged into; the runtime stops before training",
                      hint=f"add a stage `{{id: {_merged_id(ctx, stage.input)}, kind: merge, input: {stage.input}}}` "
                      f"before this one, then set `input: {_merged_id(ctx, stage.input)}` and remove `merge_input`")]
    if link.continues_adapter and len(adapters) > 1:
        chain = ", ".join(f"'{a.stage}'" for a in adapters[:-1])
        origin = _merge_input_stage(ctx, adapters[-1].origin)
        fix = (f"replace `merge_input` on '{origin.id}' by a merge stage of '{origin.input}' that '{origin.id}' "
               "starts from" if origin is not None else "merge the earlier adapters in a merge stage first")
        return [error("FT321", strategy_path(i, stage), f"this stage continues the adapter of '{stage.input}' on "
                      f"top of {chain}, which the runtime merges into the base when the stage loads; under `zero3` "
                      "the base weights are sharded and cannot be merged into",
                      hint=f"{fix}, or use `distributed: zero2` for this stage")]
    return []


def _merged_id(ctx: Context, source: str) -> str:
    """A free stage id for a merge of ``source`` (``<source>_merged``, numbered when taken)."""
    base = f"{source[:24]}_merged"
    taken = {s.id for s in ctx.pipeline.stages}
    return next(c for c in (base, *(f"{base}{n}" for n in range(2, 1000))) if c not in taken)


def _merge_input_stage(ctx: Context, origin: str) -> TrainStage | None:
    """The stage ``origin`` that declared the continued adapter, when it started it with ``merge_input``."""
    stage = ctx.pipeline.stage(origin)
    return stage if isinstance(stage, TRAIN_STAGE_TYPES) and getattr(stage, "merge_input", False) else None


def _cpu_fp16(ctx: Context, i: int, stage: TrainStage) -> list[Diagnostic]:
    if ctx.pipeline.hardware.device != "cpu" or stage.precision != "fp16":
        return []
    return [error("FT323", ("stages", i, "precision"), "`precision: fp16` is mixed precision with loss scaling "
                  "on a CUDA GPU; this pipeline runs on `device: cpu`, and the runtime stops at preflight",
                  hint="use `precision: fp32` (or `bf16`) for CPU runs")]


def _merge_dtype(ctx: Context, i: int, stage: MergeStage) -> list[Diagnostic]:
    if stage.dtype != "fp16" or ctx.stages[i].device != "cpu":
        return []
    return [error("FT324", ("stages", i, "dtype"), "the plan runs this merge on the CPU, and the runtime refuses "
                  "an fp16 precision on a CPU device at preflight", hint="set `dtype: bf16` (or `fp32`)")]


def _label_smoothing(i: int, stage: TrainStage) -> list[Diagnostic]:
    if not isinstance(stage, DpoStage) or stage.label_smoothing == 0 or stage.loss_type in SMOOTHED_LOSSES:
        return []
    return [error("FT325", ("stages", i, "label_smoothing"), f"`label_smoothing: {stage.label_smoothing:g}` has no "
                  f"effect with `loss_type: {stage.loss_type}` (only the robust and simpo losses read it); the runtime "
                  "stops at start rather than train without it",
                  hint="set `loss_type: robust` for noisy preference labels, or remove `label_smoothing`")]
