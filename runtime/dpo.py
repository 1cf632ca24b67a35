"""Direct preference optimisation and its loss family on TRL's ``DPOTrainer`` with the data stage's pre-tokenized
pairs: ``sigmoid``, ``ipo``, ``hinge`` and ``robust``, each with an optional supervised term on the chosen answer
(``sft_weight``: RPO, TRL's ``sft`` loss added with that weight). SimPO, which has no reference, runs on TRL's CPO
trainer instead (``simpo.py``); ``dpo_spec`` picks it.

The reference policy is the input stage's result, or the base model for a stage without ``input`` (the model the
policy starts from either way):

* ``adapter: continue`` — the input's adapter is loaded trainable as ``default``; TRL (1.16) then adds a frozen
  copy named ``ref`` and switches to it for every reference forward (live) or once before training
  (``reference: precomputed``, ``precompute_ref_log_probs=True``). Either way the reference is the SFT policy.
* new adapter (after ``merge_input``, or on the base model) — the input's adapters, if any, are merged into the
  weights; the reference is the model with the new adapter disabled, i.e. the merged SFT model or the base model.
  (The ``ref`` copy TRL makes of the fresh, zero-update adapter is dropped so the disabled-adapter path is used.)
* full fine-tune — a frozen copy of the starting weights (``reference: live``), or log-probs computed from the
  policy before its first update (``precomputed``).

With ``kernels: ftplan`` the policy's and the reference's chosen/rejected log-probs (precomputed ones included)
come from the decoder's last hidden states through the fused linear log-prob op (``logprob_head.py``), never from
``lm_head`` logits; the preflight refuses it where lm_head's weight is sharded (ZeRO-3, FSDP2), as check's FT320
does.
"""

from __future__ import annotations

from typing import Any

from trl import DPOConfig, DPOTrainer

from ftplan.schemas.runtime_args import RuntimeArgs, fused_head

from .logprob_head import FUSED_OUTPUTS, FusedLogprobTrainerMixin
from .model_loading import load_reference
from .preflight import StageError, check_fused_loss, zero_stage
from .metrics import TokenCountingMixin
from .train_common import TrainerSpec, run_training

PAIR_COLUMNS = ("prompt_ids", "chosen_ids", "rejected_ids")
"""Columns of the data stage's tokenized preference splits."""
REF_ADAPTER = "ref"
"""Name TRL gives the frozen copy of a continued adapter."""


class FtplanDPOTrainer(FusedLogprobTrainerMixin, TokenCountingMixin, DPOTrainer):
    """DPOTrainer that takes the data stage's token ids as they are, counts tokens, and with ``fused_logprobs``
    computes its log-probs through the fused linear log-prob op."""

    policy_outputs = FUSED_OUTPUTS  # log-probs, and the entropy, logits/* and mean_token_accuracy metrics

    def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
        cols = set(dataset.column_names)
        if not set(PAIR_COLUMNS) <= cols:
            raise StageError(f"the preference data ({dataset_name}) has columns {sorted(cols)}, not the tokenized "
                             f"format {list(PAIR_COLUMNS)}; rerun the data stage with this runtime version")
        return dataset


# Losses whose TRL (1.16) implementation reads ``label_smoothing`` (DPOTrainer's robust, CPOTrainer's SimPO); the
# others ignore it.
_SMOOTHED_LOSSES = ("robust", "simpo")
SFT_LOSS = "sft"
"""TRL's name of the supervised loss on the chosen answer, added to the preference loss with ``sft_weight`` (RPO)."""


def dpo_losses(stage) -> tuple[list[str], list[float]]:
    """(TRL ``loss_type`` list, ``loss_weights``): the preference loss, and TRL's ``sft`` loss weighted by
    ``sft_weight`` when it is above 0 (RPO)."""
    if stage.sft_weight > 0:
        return [stage.loss_type, SFT_LOSS], [1.0, stage.sft_weight]
    return [stage.loss_type], [1.0]


def make_dpo_config(stage, kwargs: dict[str, Any], train_ds) -> DPOConfig:
    """DPOConfig for a DPO stage of a loss with a reference (every ``loss_type`` but ``simpo``)."""
    if stage.label_smoothing > 0 and stage.loss_type not in _SMOOTHED_LOSSES:
        raise StageError(f"`label_smoothing: {stage.label_smoothing}` has no effect with `loss_type: "
                         f"{stage.loss_type}` in this TRL version (only the robust and simpo losses use it); use "
                         "`loss_type: robust` for noisy preference labels, or set `label_smoothing: 0`")
    if stage.loss_type == "simpo":
        raise StageError(f"stage '{stage.id}' has `loss_type: simpo`, which runs on TRL's CPO trainer, not the DPO "
                         "one; recompile the plan")
    losses, weights = dpo_losses(stage)
    return DPOConfig(
        **kwargs,
        beta=stage.beta,
        loss_type=losses,
        loss_weights=weights,
        label_smoothing=stage.label_smoothing,
        max_length=None,  # the data stage already truncated to max_seq_len
        precompute_ref_log_probs=stage.reference == "precomputed",
        padding_free=False,
    )


def make_reference_trainer(trainer_cls, method: str, args: RuntimeArgs, config, loaded, train_ds, eval_ds):
    """A trainer of the reference family (``trainer_cls``: DPO's or KTO's) with the reference policy described in
    the module docstring: a frozen copy for a full fine-tune with a live reference; TRL's frozen copy of a continued
    adapter (``REF_ADAPTER``, required); the new adapter switched off otherwise (a copy TRL made is dropped)."""
    stage = args.stage
    ref_model = None
    if not loaded.peft and stage.reference == "live":
        ref_model = load_reference(args, loaded.tokenizer)
    trainer = trainer_cls(model=loaded.model, ref_model=ref_model, args=config, train_dataset=train_ds,
                          eval_dataset=eval_ds, processing_class=loaded.tokenizer,
                          fused_logprobs=fused_head(stage) == "logprobs" and args.promise.kernels == "ftplan")
    model = trainer.accelerator.unwrap_model(trainer.model)
    if loaded.peft and stage.adapter == "continue" and REF_ADAPTER not in model.peft_config:
        raise StageError(f"the {method} reference adapter (a frozen copy of the continued adapter) was not "
                         "created; this TRL version is not supported by the runtime (tested with trl 1.16)")
    if loaded.peft and stage.adapter != "continue" and REF_ADAPTER in model.peft_config:
        model.delete_adapter(REF_ADAPTER)
        model.set_adapter("default")
    return trainer


def make_dpo_trainer(args: RuntimeArgs, config: DPOConfig, loaded, train_ds, eval_ds) -> FtplanDPOTrainer:
    """The DPO trainer with the reference policy described in the module docstring."""
    return make_reference_trainer(FtplanDPOTrainer, "DPO", args, config, loaded, train_ds, eval_ds)


def _make_config(args: RuntimeArgs, kwargs: dict[str, Any], train_ds) -> DPOConfig:
    """The DPO config; with ``kernels: ftplan``, the preflight of the fused log-prob head's weight access."""
    config = make_dpo_config(args.stage, kwargs, train_ds)
    check_fused_loss(args.promise, zero_stage(config))
    return config


def _spec(args: RuntimeArgs) -> TrainerSpec:
    return TrainerSpec(family="preference", make_config=lambda kwargs, ds: _make_config(args, kwargs, ds),
                       make_trainer=make_dpo_trainer)


def dpo_spec(args: RuntimeArgs) -> TrainerSpec:
    """How a DPO stage builds its config and trainer: TRL's DPO trainer, or its CPO trainer for SimPO."""
    if args.stage.loss_type == "simpo":
        from .simpo import simpo_spec

        return simpo_spec(args)
    return _spec(args)


def run_dpo(args: RuntimeArgs, sha256: str) -> dict[str, Any]:
    """Run a DPO stage; returns the metrics it wrote."""
    return run_training(args, sha256, dpo_spec(args))
