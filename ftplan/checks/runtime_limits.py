"""Configurations the runtime refuses when a stage starts, caught before launch.

Each rule mirrors one refusal of ``ftplan_runtime`` that depends only on the pipeline and the declared hardware:

* FT320 mirrors ``preflight.check_fused_loss``, for the stages whose loss ``kernels: ftplan`` computes through a
  fused head (``runtime_args.fused_head``: SFT and CPT, DPO but SimPO, KTO). ``kernels: ftplan`` computes the SFT
  loss with ``causal_lm_loss`` and the DPO/KTO log-probs with ``logprob_head``, both reading ``lm_head.weight``
  whole; ZeRO-3 shards it. ZeRO-1/2 keep every parameter whole and are accepted. FSDP2 is refused too:
  ``causal_lm_loss`` calls the decoder directly, skipping the forward of the root FSDP2 module that unshards the
  parameters it holds (embeddings, final norm, lm_head), so on a freshly wrapped model the embedding lookup meets a
  sharded DTensor and fails; the log-prob head reads lm_head's weight outside any forward FSDP2 wraps.
* FT321 mirrors ``model_loading.load_for_training``: adapters merged into the base when the stage loads (a DPO
  ``merge_input``, or the earlier adapters of a continued chain) cannot be merged into ZeRO-3's sharded weights.
  A QLoRA stage merges at 16-bit on the main process before it loads the merge in 4-bit and shards it.
* FT322 mirrors ``kernels.patch._head_parameters``: the fused cross-entropy and the fused log-prob head refuse an
  active LoRA on ``lm_head`` (a ``NotImplementedError`` at the first step), whether the stage declares that adapter
  or continues it. ``all-linear`` never adapts the output layer.
* FT323 mirrors ``preflight.check_device``: fp16 mixed precision needs a CUDA device.
* FT324 mirrors the same check for a merge stage, whose promise carries ``dtype`` as its precision and which the
  plan runs on the CPU (``resolved_stage.placement``). The check is aimed at training's mixed precision; this rule
  goes when merges are no longer held to it.
* FT325 mirrors ``dpo.make_dpo_config``: TRL's sigmoid, IPO and hinge losses ignore ``label_smoothing``; only
  the robust loss (``DPOTrainer``) and SimPO (``CPOTrainer``) read it, so a smoothing that would silently do
  nothing is refused.
* FT326 (a warning) says what ``kernels: ftplan`` does on an ORPO stage or a SimPO one (TRL's ORPO and CPO
  trainers): the layer kernels run, but the loss takes the trainer's full logits (``fused_head`` is None), so the
  logits cost what they cost with ``kernels: none``.
"""

from __future__ import annotations

from ftplan.context import Context
from ftplan.diagnostics import Diagnostic, error, warning
from ftplan.resolved_stage import TrainingFacts
from ftplan.schemas import TRAIN_STAGE_TYPES, DpoStage, LoraAdapter, MergeStage, TrainStage
from ftplan.schemas.runtime_args import fused_head

from ._common import declared_adapter, strategy_path, train_stages

CODES = {
    "FT320": "`kernels: ftplan` with ZeRO-3 or FSDP2 in an SFT, CPT, DPO or KTO stage (a fused loss head)",
    "FT321": "adapters merged into the base at load under ZeRO-3",
    "FT322": "`kernels: ftplan` with a LoRA adapter on lm_head in an SFT, CPT, DPO or KTO stage",
    "FT323": "fp16 mixed precision with `device: cpu`",
    "FT324": "a merge stage with `dtype: fp16` that runs on the CPU",
    "FT325": "DPO `label_smoothing` with a loss that ignores it",
    "FT326": "`kernels: ftplan` on an ORPO or SimPO stage: layer kernels only, the loss takes the full logits",
}

SMOOTHED_LOSSES = ("robust", "simpo")
"""DPO losses whose TRL implementation reads ``label_smoothing``."""


def check(ctx: Context) -> list[Diagnostic]:
    """The runtime's start-up refusals, for every training stage and every merge stage."""
    diags: list[Diagnostic] = []
    for i, stage, facts in train_stages(ctx):
        diags += _fused_loss(ctx, i, stage, facts)
        diags += _full_logits(i, stage)
        diags += _merge_at_load(ctx, i, stage, facts)
        diags += _cpu_fp16(ctx, i, stage)
        diags += _label_smoothing(i, stage)
    for i, any_stage in enumerate(ctx.pipeline.stages):
        if isinstance(any_stage, MergeStage):
            diags += _merge_dtype(ctx, i, any_stage)
    return diags


_HEAD_WORK = {"cross_entropy": "computes the SFT loss with a fused linear cross-entropy",
              "logprobs": "computes the preference log-probs with a fused linear log-prob head"}


def _fused_loss(ctx: Context, i: int, stage: TrainStage, facts: TrainingFacts) -> list[Diagnostic]:
    head = fused_head(stage)
    if head is None or stage.kernels != "ftplan":
        return []
    diags = []
    path = ("stages", i, "kernels")
    name = facts.strategy
    if name == "zero3":
        diags.append(error("FT320", path, f"`kernels: ftplan` {_HEAD_WORK[head]} that reads lm_head's whole "
                           "weight, which `zero3` shards across GPUs; the runtime stops at preflight",
                           hint="set `kernels: none` to keep `zero3`, or `distributed: zero2` (lm_head stays whole "
                           "on every GPU; check the memory estimate)"))
    elif name == "fsdp2":
        how = ("calling the decoder and lm_head directly, bypassing the forward of the FSDP2 root module that "
               "gathers the embeddings, final norm and lm_head it holds sharded" if head == "cross_entropy" else
               "reading lm_head's weight outside the forwards in which FSDP2 gathers it")
        diags.append(error("FT320", path, f"`kernels: ftplan` {_HEAD_WORK[head]}, {how}; the runtime stops at "
                           "preflight", hint="set `kernels: none` to keep `fsdp2`, or `distributed: zero2` (check "
                           "the memory estimate)"))
    adapter = facts.adapter
    if isinstance(adapter, LoraAdapter) and adapter.targets != "all-linear" and "lm_head" in adapter.targets:
        hint = "set `kernels: none`, or train lm_head in full with `modules_to_save: [lm_head]` instead of a LoRA target"
        if declared_adapter(stage) is not None:
            where = ("stages", i, "adapter", "targets", adapter.targets.index("lm_head"))
            diags.append(error("FT322", where, f"LoRA on `lm_head` with `kernels: ftplan`: the stage "
                               f"{_HEAD_WORK[head].removeprefix('computes ')}, which reads lm_head's weight directly "
                               "and refuses an adapter on it, so the run stops at its first step", hint=hint))
        else:
            link = ctx.links.get(stage.id)
            origin = (link.input.adapters[-1].origin if link and link.input and link.input.adapters
                      else stage.input)
            diags.append(error("FT322", path, f"this stage continues the adapter of '{origin}', which puts LoRA on "
                               f"`lm_head`; `kernels: ftplan` {_HEAD_WORK[head]} that reads lm_head's weight "
                               "directly and refuses an adapter on it, so the run stops at its first step",
                               hint=f"set `kernels: none` on this stage, or retrain '{origin}' with "
                               "`modules_to_save: [lm_head]` instead of a LoRA target on it"))
    return diags


def _full_logits(i: int, stage: TrainStage) -> list[Diagnostic]:
    if stage.kernels != "ftplan" or fused_head(stage) is not None or stage.kind == "reward":
        return []
    trainer = "ORPO" if stage.kind == "orpo" else "CPO (SimPO)"
    return [warning("FT326", ("stages", i, "kernels"), f"`kernels: ftplan` runs the fused norm, SwiGLU, RoPE and "
                    f"LoRA kernels here, but TRL's {trainer} trainer computes the loss from the full logits of every "
                    "token, so the logits take the memory they take with `kernels: none` (the fused log-prob head "
                    "serves DPO's reference losses and KTO)",
                    hint="keep `kernels: ftplan` for the layer kernels (the estimate counts the full logits), or "
                    "use `kind: dpo` with a reference loss such as `loss_type: sigmoid` for logits-free "
                    "preference training")]


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
