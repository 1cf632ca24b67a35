"""Supervised fine-tuning on TRL's ``SFTTrainer`` with the data stage's pre-tokenized examples.

The dataset already has ``input_ids`` and ``completion_mask`` (TRL then skips tokenization and turns the mask
into labels with ``completion_only_loss``); packed data also has ``seq_lengths`` and trains padding-free.
With ``kernels: ftplan`` the loss is ``causal_lm_loss`` (fused linear cross-entropy: the logits are never
materialised) instead of TRL's own loss.
"""

from __future__ import annotations

from typing import Any

from trl import SFTConfig, SFTTrainer

from ftplan.schemas.runtime_args import RuntimeArgs

from .preflight import StageError
from .metrics import TokenCountingMixin
from .train_common import TrainerSpec, run_training


class FtplanSFTTrainer(TokenCountingMixin, SFTTrainer):
    """SFTTrainer with token counting and, optionally, the fused causal-LM loss."""

    def __init__(self, *args, fused_loss: bool = False, **kwargs):
        self.fused_loss = fused_loss
        super().__init__(*args, **kwargs)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """Fused linear cross-entropy on the final hidden states when ``fused_loss``; TRL's loss otherwise."""
        if not self.fused_loss or return_outputs:
            return super().compute_loss(model, inputs, return_outputs=return_outputs,
                                        num_items_in_batch=num_items_in_batch)
        from .kernels import causal_lm_loss

        rest = {k: v for k, v in inputs.items() if k not in ("input_ids", "labels", "attention_mask", "use_cache")}
        loss = causal_lm_loss(model, inputs["input_ids"], inputs["labels"], inputs.get("attention_mask"),
                              num_items_in_batch=num_items_in_batch, **rest)
        # like SFTTrainer: a token-count normaliser spans all ranks, while DDP averages gradients across them
        if self.args.average_tokens_across_devices and num_items_in_batch is not None:
            loss = loss * self.accelerator.num_processes
        return loss


def make_sft_config(kwargs: dict[str, Any], train_ds) -> SFTConfig:
    """SFTConfig for pre-tokenized (optionally packed) data."""
    cols = set(train_ds.column_names)
    if "input_ids" not in cols:
        raise StageError(f"the SFT data has columns {sorted(cols)}, not the tokenized format (input_ids, "
                         "completion_mask); rerun the data stage with this runtime version")
    return SFTConfig(
        **kwargs,
        max_length=None,  # the data stage already truncated/packed to max_seq_len
        packing=False,
        padding_free="seq_lengths" in cols,
        completion_only_loss="completion_mask" in cols,
        shuffle_dataset=False,
    )


def make_sft_trainer(args: RuntimeArgs, config: SFTConfig, loaded, train_ds, eval_ds) -> FtplanSFTTrainer:
    """The SFT trainer for a loaded model (adapter already attached, kernels already applied)."""
    return FtplanSFTTrainer(
        model=loaded.model, args=config, train_dataset=train_ds, eval_dataset=eval_ds,
        processing_class=loaded.tokenizer, fused_loss=args.promise.kernels == "ftplan",
    )


SFT_SPEC = TrainerSpec(family="sft", make_config=make_sft_config, make_trainer=make_sft_trainer)
"""How an SFT stage builds its config and trainer."""


def run_sft(args: RuntimeArgs, sha256: str) -> dict[str, Any]:
    """Run an SFT stage; returns the metrics it wrote."""
    return run_training(args, sha256, SFT_SPEC)
