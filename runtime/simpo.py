"""SimPO (a DPO stage with ``loss_type: simpo``) on TRL's ``CPOTrainer`` (``trl.experimental.cpo`` in TRL 1.16),
which is where TRL offers it: ``DPOTrainer`` has no reference-free loss.

SimPO has no reference model. One forward over the concatenated chosen and rejected sequences gives each answer's
mean log-probability per token; the loss is ``-log σ(β (chosen − rejected) − γ)`` (``simpo_gamma`` is γ; with
``label_smoothing`` ε the flipped-label term is mixed in as CPO does), plus ``sft_weight`` × the cross-entropy of the
chosen sequence (CPO's ``cpo_alpha``; 0 is pure SimPO). The data stage's pairs are laid out in the columns CPO's
collator pads, the same as ORPO's (``orpo.to_orpo_columns``): the trainer tokenizes nothing.
"""

from __future__ import annotations

import warnings
from typing import Any

from ftplan.schemas.runtime_args import RuntimeArgs

from .metrics import TokenCountingMixin
from .orpo import longest_pair, to_orpo_columns
from .preflight import StageError
from .train_common import TrainerSpec

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # TRL announces that its experimental trainers may change
    from trl.experimental.cpo import CPOConfig, CPOTrainer


class FtplanCPOTrainer(TokenCountingMixin, CPOTrainer):
    """CPOTrainer on already tokenized pairs, counting tokens."""

    def tokenize_row(self, feature, model=None):
        """The rows are laid out by ``to_orpo_columns`` before the trainer starts: nothing to tokenize."""
        return feature


def make_simpo_config(stage, kwargs: dict[str, Any], train_ds) -> CPOConfig:
    """CPOConfig for a SimPO stage (``max_length`` is the longest pair: the data stage fitted them already)."""
    if stage.loss_type != "simpo":
        raise StageError(f"stage '{stage.id}' has `loss_type: {stage.loss_type}`, which runs on TRL's DPO trainer, "
                         "not the SimPO one; recompile the plan")
    return CPOConfig(**kwargs, loss_type="simpo", beta=stage.beta, simpo_gamma=stage.simpo_gamma,
                     cpo_alpha=stage.sft_weight, label_smoothing=stage.label_smoothing,
                     max_length=longest_pair(train_ds))


def make_simpo_trainer(args: RuntimeArgs, config: CPOConfig, loaded, train_ds, eval_ds) -> FtplanCPOTrainer:
    """The SimPO trainer: the policy alone, no reference model."""
    return FtplanCPOTrainer(model=loaded.model, args=config, train_dataset=train_ds, eval_dataset=eval_ds,
                            processing_class=loaded.tokenizer)


def simpo_spec(args: RuntimeArgs) -> TrainerSpec:
    """How a SimPO stage builds its config and trainer, on the data stage's ``preference`` group."""
    stage = args.stage
    return TrainerSpec(family="preference", make_config=lambda kwargs, ds: make_simpo_config(stage, kwargs, ds),
                       make_trainer=make_simpo_trainer, prepare_data=to_orpo_columns)
