"""Training-configuration rules: schedule and batch arithmetic, evaluation and saving, ZeRO-3 adapter saving,
and the reference model (DPO, KTO) and unpacked data (the preference and KTO kinds) the plan will use."""

from __future__ import annotations

from ftplan.context import Context
from ftplan.diagnostics import Diagnostic, error, info, warning
from ftplan.resolved_stage import TrainingFacts
from ftplan.schemas import TRAIN_KINDS, TrainStage
from ftplan.schemas.datasets import SFT_FORMATS

from ._common import data_stage_of, train_stages

CODES = {
    "FT601": "both warmup_ratio and warmup_steps are set",
    "FT602": "both epochs and max_steps are set",
    "FT603": "effective batch per optimizer step",
    "FT604": "the training data is smaller than one effective batch",
    "FT605": "eval_steps without a validation split",
    "FT606": "load_best_model_at_end without matching eval_steps and save_steps",
    "FT607": "save_steps or eval_steps larger than max_steps",
    "FT608": "ZeRO-3 with an adapter: the saved weights are gathered to 16-bit",
    "FT609": "packing on a data stage feeding a preference or KTO stage (DPO, ORPO, KTO, reward)",
    "FT610": "the reference model a DPO or KTO stage uses",
}


def check(ctx: Context) -> list[Diagnostic]:
    """Every training-configuration rule for every training stage."""
    diags: list[Diagnostic] = []
    for i, stage, facts in train_stages(ctx):
        here = ("stages", i)
        if stage.warmup_ratio is not None and stage.warmup_steps is not None:
            diags.append(error("FT601", here + ("warmup_steps",), f"both `warmup_ratio: {stage.warmup_ratio}` and "
                               f"`warmup_steps: {stage.warmup_steps}` are set. Choose one.",
                               hint="remove `warmup_ratio` or `warmup_steps`"))
        if stage.epochs is not None and stage.max_steps is not None:
            diags.append(error("FT602", here + ("max_steps",), f"both `epochs: {stage.epochs:g}` and `max_steps: "
                               f"{stage.max_steps}` are set. Choose one.", hint="remove `epochs` or `max_steps`"))
        diags += _batch(ctx, i, stage, facts)
        diags += _eval_save(ctx, i, stage)
        if facts.strategy == "zero3" and facts.method not in (None, "full"):
            diags.append(info("FT608", here + ("distributed",), "ZeRO-3 with an adapter: the generated DeepSpeed "
                              "config sets `stage3_gather_16bit_weights_on_model_save: true`, so the saved adapter "
                              "holds the gathered 16-bit weights, not empty ZeRO-3 placeholders",
                              hint="nothing to do; saving gathers the partitioned weights on every save"))
        if TRAIN_KINDS[stage.kind].group != "sft":
            diags += _unpacked(ctx, i, stage)
        if facts.reference is not None:
            diags += _reference(ctx, i, stage, facts)
    return diags


def _batch(ctx: Context, i: int, stage: TrainStage, facts: TrainingFacts) -> list[Diagnostic]:
    world = facts.batch.world_size
    total = facts.batch.effective_batch
    unit = TRAIN_KINDS[stage.kind].unit + ("s" if total != 1 else "")
    gpus = f"{world} GPU{'s' if world > 1 else ''}" if ctx.pipeline.hardware.device == "cuda" else "1 CPU process"
    diags = [info("FT603", ("stages", i, "micro_batch"), f"effective batch {total} {unit} per optimizer step = "
                  f"{gpus} × micro_batch {stage.micro_batch} × grad_accum {stage.grad_accum}",
                  hint="when the GPU count changes, scale `grad_accum` to keep this batch (and the tuned learning "
                  "rate) the same")]
    rows = facts.rows
    if rows is not None and rows < total:
        what = "pairs" if TRAIN_KINDS[stage.kind].pairs else "examples"
        diags.append(warning("FT604", ("stages", i, "micro_batch"), f"'{stage.data}' has {rows} training {what}, "
                             f"fewer than one effective batch ({total}): an epoch is less than one optimizer step",
                             hint="lower `micro_batch` or `grad_accum`, or add data"))
    return diags


def _eval_save(ctx: Context, i: int, stage: TrainStage) -> list[Diagnostic]:
    diags = []
    here = ("stages", i)
    found = data_stage_of(ctx, stage)
    if stage.eval_steps is not None and found is not None and found[1].val_fraction == 0:
        diags.append(error("FT605", here + ("eval_steps",), f"`eval_steps: {stage.eval_steps}` but data stage "
                           f"'{stage.data}' holds out no validation split (`val_fraction: 0`)",
                           hint=f"set `val_fraction: 0.05` (for example) on '{stage.data}', or remove `eval_steps`"))
    if stage.load_best_model_at_end:
        path = here + ("load_best_model_at_end",)
        if stage.eval_steps is None or stage.save_steps is None:
            absent = " and ".join(f"`{k}`" for k in ("eval_steps", "save_steps") if getattr(stage, k) is None)
            diags.append(error("FT606", path, f"`load_best_model_at_end` compares evaluated checkpoints, but "
                               f"{absent} {'is' if ' and ' not in absent else 'are'} not set",
                               hint="set `eval_steps` and `save_steps` (a multiple of eval_steps), or remove "
                               "`load_best_model_at_end`"))
        elif stage.save_steps % stage.eval_steps:
            diags.append(error("FT606", here + ("save_steps",), f"`save_steps: {stage.save_steps}` is not a "
                               f"multiple of `eval_steps: {stage.eval_steps}`, so saved checkpoints have no "
                               "evaluation to rank them by",
                               hint=f"set `save_steps` to a multiple of {stage.eval_steps}, e.g. "
                               f"{stage.eval_steps * max(1, round(stage.save_steps / stage.eval_steps))}"))
    if stage.max_steps is not None:
        if stage.save_steps is not None and stage.save_steps > stage.max_steps:
            diags.append(warning("FT607", here + ("save_steps",), f"`save_steps: {stage.save_steps}` is larger than "
                                 f"`max_steps: {stage.max_steps}`: no checkpoint is saved until the end",
                                 hint=f"set `save_steps` below {stage.max_steps}, or remove it"))
        if stage.eval_steps is not None and stage.eval_steps > stage.max_steps:
            diags.append(warning("FT607", here + ("eval_steps",), f"`eval_steps: {stage.eval_steps}` is larger than "
                                 f"`max_steps: {stage.max_steps}`: the run never evaluates",
                                 hint=f"set `eval_steps` below {stage.max_steps}"))
    return diags


def _unpacked(ctx: Context, i: int, stage: TrainStage) -> list[Diagnostic]:
    """FT609: packing is for supervised examples; pairs and KTO examples are read unpacked."""
    found = data_stage_of(ctx, stage)
    if found is None or not found[1].packing:
        return []
    j, data = found
    sft_too = any(d.format in SFT_FORMATS for d in data.datasets)
    kind = "preference" if TRAIN_KINDS[stage.kind].pairs else "KTO"
    what = "preference pairs unpacked (each pair padded to its longer answer)" if TRAIN_KINDS[stage.kind].pairs \
        else "labelled examples unpacked (each padded to the longest of its batch)"
    return [warning("FT609", ("stages", j, "packing"), f"data stage '{data.id}' packs, but the {stage.kind.upper()} "
                    f"stage '{stage.id}' reads its {what}"
                    + ("; packing applies to its supervised examples only" if sft_too
                       else ", so `packing` has no effect here"),
                    hint=f"keep `packing` for supervised data; split {kind} data into its own data stage without "
                    "packing" if sft_too else "remove `packing: true`")]


def _reference(ctx: Context, i: int, stage: TrainStage, facts: TrainingFacts) -> list[Diagnostic]:
    """FT610: the reference policy a DPO or KTO stage computes its log-ratios against."""
    diags = []
    text = reference_model(ctx, stage, facts)
    if text is not None:
        diags.append(info("FT610", ("stages", i, "reference"), text,
                          hint="`reference: precomputed` computes the reference once before training and frees "
                          "its memory" if facts.reference_live else None))
    return diags


def reference_model(ctx: Context, stage: TrainStage, facts: TrainingFacts) -> str | None:
    """One sentence naming the reference policy of a DPO or KTO stage (``TrainingFacts.reference``; None when its
    input or its hand-off is broken)."""
    link = ctx.links.get(stage.id)
    if link is None or link.input is None or link.result is None:
        return None
    src = link.input
    weights = f"the base model '{ctx.pipeline.model.base}'" if src.weights is None else (
        f"the weights '{src.weights}' wrote")
    chain = ", ".join(f"'{a.stage}'" for a in src.adapters)
    when = "computed live at every step" if facts.reference_live else "computed once before training"
    result = f"the result of '{stage.input}'" if stage.input is not None else "the model the stage starts from"
    if facts.reference == "adapter_copy" and src.adapters:
        how = ("a frozen copy of the adapter kept next to the trained one" if facts.reference_live else
               "the adapter as the input stage left it")
        return f"reference model: {weights} with adapter(s) {chain} ({how}), i.e. {result}; log-probs {when}"
    if facts.reference == "adapter":
        merged = f" with adapter(s) {chain} merged in" if src.adapters else ""
        return (f"reference model: {weights}{merged}, i.e. {result}, with the new adapter switched off; log-probs "
                f"{when}")
    copy = "a frozen second copy of the full model" if facts.reference_live else "the starting weights"
    return f"reference model: {copy} ({weights}, {result}); log-probs {when}"
