"""Direct preference optimisation on TRL's ``DPOTrainer`` with the data stage's pre-tokenized pairs.

The reference policy is always the input stage's result, never the bare base model:

* ``adapter: continue`` — the input's adapter is loaded trainable as ``default``; TRL (1.16) then adds a frozen
  copy named ``ref`` and switches to it for every reference forward (live) or once before training
  (``reference: precomputed``, ``precompute_ref_log_probs=True``). Either way the reference is the SFT policy.
* new adapter (after ``merge_input``) — the input's adapters are merged into the weights; the reference is the
  model with the new adapter disabled, i.e. the merged SFT model. (The ``ref`` copy TRL makes of the fresh,
  zero-update adapter is dropped so the disabled-adapter path is used.)
* full fine-tune — a frozen copy of the starting weights (``reference: live``), or log-probs computed from the
  policy before its first update (``precomputed``).
"""

from __future__ import annotations

from typing import Any

from trl import DPOConfig, DPOTrainer

from ftplan.schemas.runtime_args import RuntimeArgs

from .model_loading import load_reference
from .preflight import StageError
from .metrics import TokenCountingMixin
from .train_common import TrainerSpec, run_training

PAIR_COLUMNS = ("prompt_ids", "chosen_ids", "rejected_ids")
"""Columns of the data stage's tokenized preference splits."""
REF_ADAPTER = "ref"
"""Name TRL gives the frozen copy of a continued adapter."""


class FtplanDPOTrainer(TokenCountingMixin, DPOTrainer):
    """DPOTrainer that takes the data stage's token ids as they are, and counts tokens."""

    def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
        cols = set(dataset.column_names)
        if not set(PAIR_COLUMNS) <= cols:
            raise StageError(f"the preference data ({dataset_name}) has columns {sorted(cols)}, not the tokenized "
                             f"format {list(PAIR_COLUMNS)}; rerun the data stage with this runtime version")
        return dataset


# Losses whose TRL (1.16) implementation reads ``label_smoothing``; the others ignore it.
_SMOOTHED_LOSSES = ("robust",)


def make_dpo_config(stage, kwargs: dict[str, Any], train_ds) -> DPOConfig:
    """DPOConfig for a DPO stage."""
    if stage.label_smoothing > 0 and stage.loss_type not in _SMOOTHED_LOSSES:
        raise StageError(f"`label_smoothing: {stage.label_smoothing}` has no effect with `loss_type: "
                         f"{stage.loss_type}` in this TRL version (only the robust loss uses it); use "
                         "`loss_type: robust` for noisy preference labels, or set `label_smoothing: 0`")
    return DPOConfig(
        **kwargs,
        beta=stage.beta,
        loss_type=[stage.loss_type],
        label_smoothing=stage.label_smoothing,
        max_length=None,  # the data stage already truncated to max_seq_len
        precompute_ref_log_probs=stage.reference == "precomputed",
        padding_free=False,
    )


def make_dpo_trainer(args: RuntimeArgs, config: DPOConfig, loaded, train_ds, eval_ds) -> FtplanDPOTrainer:
    """The DPO trainer with the reference policy described in the module docstring."""
    stage = args.stage
    ref_model = None
    if not loaded.peft and stage.reference == "live":
        ref_model = load_reference(args, loaded.tokenizer)
    trainer = FtplanDPOTrainer(model=loaded.model, ref_model=ref_model, args=config, train_dataset=train_ds,
                               eval_dataset=eval_ds, processing_class=loaded.tokenizer)
    model = trainer.accelerator.unwrap_model(trainer.model)
    if loaded.peft and stage.adapter == "continue" and REF_ADAPTER not in model.peft_config:
        raise StageError("the DPO reference adapter (a frozen copy of the continued adapter) was not created; "
                         "this TRL version is not supported by the runtime (tested with trl 1.16)")
    if loaded.peft and stage.adapter != "continue" and REF_ADAPTER in model.peft_config:
        model.delete_adapter(REF_ADAPTER)
        model.set_adapter("default")
    return trainer


def _spec(args_stage) -> TrainerSpec:
    return TrainerSpec(family="preference",
                       make_config=lambda kwargs, ds: make_dpo_config(args_stage, kwargs, ds),
                       make_trainer=make_dpo_trainer)


def dpo_spec(args: RuntimeArgs) -> TrainerSpec:
    """How a DPO stage builds its config and trainer."""
    return _spec(args.stage)


def run_dpo(args: RuntimeArgs, sha256: str) -> dict[str, Any]:
    """Run a DPO stage; returns the metrics it wrote."""
    return run_training(args, sha256, dpo_spec(args))
