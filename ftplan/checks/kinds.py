"""Rules of the training kinds beyond SFT and DPO: continued pre-training, ORPO, KTO and reward models.

* FT611 mirrors TRL's ``KTOTrainer``, which refuses ``per_device_train_batch_size`` 1 with the ``kto`` loss: the KL
  estimate pairs each prompt with another example's answer from the same micro-batch, and with one example the KL
  term is the implied reward itself.
* FT612: a KTO dataset whose rows checked are all desirable or all undesirable; KTO learns from both sides.
* FT613 mirrors the warning ``KTOTrainer`` prints at start when desirable and undesirable examples are unbalanced
  and neither weight is in the range it recommends, with the same arithmetic, on the rows ``check`` read.
* FT614: a continued pre-training stage on an unpacked data stage pads every piece of text to the longest of its
  micro-batch; packing fills the rows (only where variable-length attention trains: not on the CPU, FT307).
* FT615: what an ORPO stage optimises, with no reference model (a note).
* FT616: a reward model is a sequence classifier with a ``score`` head and no ``lm_head``: an adapter that targets
  or saves ``lm_head`` names a module the model does not have.
"""

from __future__ import annotations

from ftplan.context import Context
from ftplan.diagnostics import Diagnostic, error, info, warning
from ftplan.schemas import CptStage, KtoStage, LoraAdapter, OrpoStage, RewardStage

from ._common import data_stage_of, train_stages

CODES = {
    "FT611": "a KTO stage with the `kto` loss and `micro_batch: 1`",
    "FT612": "a KTO stage's data has only desirable or only undesirable examples",
    "FT613": "KTO desirable/undesirable weights outside the range the data's balance calls for",
    "FT614": "a continued pre-training stage on a data stage without packing",
    "FT615": "what an ORPO stage optimises (no reference model)",
    "FT616": "a reward model's adapter names lm_head, which a sequence classifier does not have",
}

__all__ = ["CODES", "check", "kto_weight_ranges"]


def check(ctx: Context) -> list[Diagnostic]:
    """The rules of every CPT, ORPO, KTO and reward stage."""
    diags: list[Diagnostic] = []
    for i, stage, _facts in train_stages(ctx):
        if isinstance(stage, KtoStage):
            diags += _kto(ctx, i, stage)
        elif isinstance(stage, CptStage):
            diags += _cpt(ctx, i, stage)
        elif isinstance(stage, OrpoStage):
            diags.append(info("FT615", ("stages", i, "beta"), "ORPO has no reference model: one forward over the "
                              "chosen and the rejected answers computes the supervised loss on the chosen sequence "
                              f"(prompt and answer, as TRL computes it) minus {stage.beta:g} × log σ(log-odds ratio "
                              "of chosen over rejected)", hint="raise `beta` to weigh the preference more against "
                              "imitating the chosen answers"))
        elif isinstance(stage, RewardStage):
            diags += _reward(i, stage)
    return diags


def kto_weight_ranges(desirable: int, undesirable: int, desirable_weight: float,
                      undesirable_weight: float) -> tuple[tuple[float, float], tuple[float, float]] | None:
    """The ranges TRL's ``KTOTrainer`` recommends for ``desirable_weight`` and ``undesirable_weight`` (either one in
    its range is enough), or None when the data is balanced or both weights are already fine."""
    d, u = max(desirable, 1), max(undesirable, 1)
    if d == u:
        return None
    des = (round(u * undesirable_weight / d, 2), round(u * undesirable_weight / d * 1.33, 2))
    und = (round(d * desirable_weight / u / 1.33, 2), round(d * desirable_weight / u, 2))
    if des[0] <= desirable_weight <= des[1] or und[0] <= undesirable_weight <= und[1]:
        return None
    return des, und


def _kto(ctx: Context, i: int, stage: KtoStage) -> list[Diagnostic]:
    diags = []
    if stage.loss_type == "kto" and stage.micro_batch < 2:
        diags.append(error("FT611", ("stages", i, "micro_batch"), "the KTO loss estimates its KL term by pairing each "
                           "prompt with another example's answer from the same micro-batch; with `micro_batch: 1` "
                           "there is none (TRL refuses to start)",
                           hint=f"set `micro_batch: 2` or more (and `grad_accum: {max(1, stage.grad_accum // 2)}` to "
                           "keep the effective batch), or `loss_type: apo_zero_unpaired`, which needs no KL batch"))
    found = data_stage_of(ctx, stage)
    if found is None:
        return diags
    j, data = found
    found_scans = [ctx.inputs.datasets.get((j, k)) for k, d in enumerate(data.datasets) if d.format == "kto"]
    scans = [s for s in found_scans if s is not None and s.checked and s.file_problem is None]
    if not scans:
        return diags
    good, bad = sum(s.desirable for s in scans), sum(s.undesirable for s in scans)
    read = "every row" if all(s.complete for s in scans) else "the rows checked"
    if good + bad and not (good and bad):
        side, other = ("desirable", "undesirable") if good else ("undesirable", "desirable")
        diags.append(warning("FT612", ("stages", i, "data"), f"in {read} of the KTO data of '{data.id}', every "
                             f"answer ({good + bad:,}) is labelled {side}: KTO moves the policy toward desirable "
                             "answers and away from undesirable ones relative to the reference, and learns nothing "
                             f"about {other} ones here", hint=f"add {other} examples (label "
                             f"`{'false' if good else 'true'}`), or train the desirable answers with an sft stage"))
        return diags
    ranges = kto_weight_ranges(good, bad, stage.desirable_weight, stage.undesirable_weight)
    if ranges is not None:
        (d_lo, d_hi), (u_lo, u_hi) = ranges
        diags.append(warning("FT613", ("stages", i, "desirable_weight"), f"{read} of the KTO data of '{data.id}' "
                             f"hold {good:,} desirable and {bad:,} undesirable answers; with `desirable_weight: "
                             f"{stage.desirable_weight:g}` and `undesirable_weight: {stage.undesirable_weight:g}` the "
                             "minority side weighs too little or too much (TRL warns about this at start)",
                             hint=f"set `desirable_weight` between {d_lo:g} and {d_hi:g}, or `undesirable_weight` "
                             f"between {u_lo:g} and {u_hi:g} (not both)"))
    return diags


def _cpt(ctx: Context, i: int, stage: CptStage) -> list[Diagnostic]:
    found = data_stage_of(ctx, stage)
    if found is None or found[1].packing or ctx.pipeline.hardware.device == "cpu":
        return []
    j, data = found
    return [warning("FT614", ("stages", j, "packing"), f"data stage '{data.id}' does not pack, so the cpt stage "
                    f"'{stage.id}' pads every piece of text to the longest of its micro-batch: short documents "
                    "waste most of each row", hint="set `packing: true` (pieces are packed with their document "
                    "boundaries kept; it needs `attention: flash_attention_2` or `flex_attention`, FT307)")]


def _reward(i: int, stage: RewardStage) -> list[Diagnostic]:
    adapter = stage.adapter
    if not isinstance(adapter, LoraAdapter):
        return []
    diags = []
    for field in ("targets", "modules_to_save"):
        names = getattr(adapter, field)
        if names == "all-linear":
            continue
        for k, name in enumerate(names):
            if name.split(".")[-1] == "lm_head":
                diags.append(error("FT616", ("stages", i, "adapter", field, k), "a reward model is a sequence "
                                   "classifier: its output layer is the one-value `score` head, which trains in full "
                                   "beside the adapter; it has no `lm_head`",
                                   hint=f"remove `lm_head` from `{field}`"))
    return diags
