"""A reward model on TRL's ``RewardTrainer`` with the data stage's pre-tokenized preference pairs.

The model is the input's weights loaded as ``AutoModelForSequenceClassification`` with one label
(``model_loading``): a ``score`` head reads each sequence's last non-pad token. TRL's reward data is two whole
sequences per pair; here they are the data stage's ``prompt_ids`` followed by ``chosen_ids`` and by
``rejected_ids``. The loss is -log σ(score(chosen) - score(rejected)), plus ``center_rewards_coefficient`` × the mean
squared score when set. The result (``adapter/`` with the head, or ``model/``) is a sequence classifier.
"""

from __future__ import annotations

from typing import Any

from trl import RewardConfig, RewardTrainer

from ftplan.schemas.runtime_args import RuntimeArgs

from .data.output import columns_of
from .metrics import TokenCountingMixin
from .preflight import StageError
from .train_common import TrainerSpec, run_training

PAIR_COLUMNS = tuple(columns_of("preference", packing=False))
"""Columns of the data stage's tokenized preference splits."""


def reward_row(row: dict[str, list[int]]) -> dict[str, list[int]]:
    """A data-stage pair as TRL's reward columns: the prompt followed by each answer."""
    prompt = list(row["prompt_ids"])
    return {"chosen_ids": prompt + list(row["chosen_ids"]), "rejected_ids": prompt + list(row["rejected_ids"])}


class FtplanRewardTrainer(TokenCountingMixin, RewardTrainer):
    """RewardTrainer on the data stage's pairs, counting tokens."""

    def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
        cols = set(dataset.column_names)
        if not set(PAIR_COLUMNS) <= cols:
            raise StageError(f"the preference data ({dataset_name}) has columns {sorted(cols)}, not the tokenized "
                             f"format {list(PAIR_COLUMNS)}; rerun the data stage with this runtime version")
        return dataset.map(reward_row, remove_columns=dataset.column_names)


def make_reward_config(stage, kwargs: dict[str, Any], train_ds) -> RewardConfig:
    """RewardConfig for a reward stage (no length filter: the data stage fitted every pair)."""
    return RewardConfig(**kwargs, center_rewards_coefficient=stage.center_rewards_coefficient, max_length=None)


def make_reward_trainer(args: RuntimeArgs, config: RewardConfig, loaded, train_ds, eval_ds) -> FtplanRewardTrainer:
    """The reward trainer on the loaded sequence classifier."""
    if getattr(loaded.model.config, "num_labels", None) != 1:
        raise StageError(f"stage '{args.stage.id}' loaded a model with {loaded.model.config.num_labels} labels; a "
                         "reward model has one")
    return FtplanRewardTrainer(model=loaded.model, args=config, train_dataset=train_ds, eval_dataset=eval_ds,
                               processing_class=loaded.tokenizer)


def reward_spec(args: RuntimeArgs) -> TrainerSpec:
    """How a reward stage builds its config and trainer, on the data stage's ``preference`` group."""
    stage = args.stage
    return TrainerSpec(family="preference", make_config=lambda kwargs, ds: make_reward_config(stage, kwargs, ds),
                       make_trainer=make_reward_trainer)


def run_reward(args: RuntimeArgs, sha256: str) -> dict[str, Any]:
    """Run a reward stage; returns the metrics it wrote."""
    return run_training(args, sha256, reward_spec(args))
