"""Odds-ratio preference optimisation on TRL's ``ORPOTrainer`` (``trl.experimental.orpo`` in TRL 1.16) with the
data stage's pre-tokenized pairs.

ORPO has no reference model: one forward over the concatenated chosen and rejected sequences gives the supervised
loss on the chosen sequence and the odds ratio of the chosen over the rejected answer (mean log-probabilities of
the answer tokens), weighted by ``beta``. TRL tokenizes text itself; here each pair already is ``prompt_ids``,
``chosen_ids`` and ``rejected_ids`` from the data stage (the chat template and ``max_seq_len`` applied there), so
``tokenize_row`` only lays them out in the columns TRL's ORPO collator pads: ``{prompt,chosen,rejected}_input_ids``,
``..._attention_mask`` and ``{chosen,rejected}_labels`` (the prompt masked with -100).
"""

from __future__ import annotations

import warnings
from typing import Any

from ftplan.schemas.runtime_args import RuntimeArgs

from .data.output import columns_of
from .metrics import TokenCountingMixin
from .preflight import StageError
from .train_common import TrainerSpec, run_training

PAIR_COLUMNS = tuple(columns_of("preference", packing=False))
"""Columns of the data stage's tokenized preference splits."""

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # TRL announces that its experimental trainers may change
    from trl.experimental.orpo import ORPOConfig, ORPOTrainer


def orpo_row(row: dict[str, list[int]]) -> dict[str, list[int]]:
    """A data-stage pair in the columns of TRL's ORPO: prompt, prompt + chosen and prompt + rejected, with labels
    that mask the prompt."""
    prompt = list(row["prompt_ids"])
    out: dict[str, list[int]] = {"prompt_input_ids": prompt, "prompt_attention_mask": [1] * len(prompt)}
    for side in ("chosen", "rejected"):
        answer = list(row[f"{side}_ids"])
        out[f"{side}_input_ids"] = prompt + answer
        out[f"{side}_attention_mask"] = [1] * (len(prompt) + len(answer))
        out[f"{side}_labels"] = [-100] * len(prompt) + answer
    return out


def to_orpo_columns(dataset):
    """The data stage's preference split in ORPO's tokenized columns (the original columns dropped)."""
    cols = set(dataset.column_names)
    if not set(PAIR_COLUMNS) <= cols:
        raise StageError(f"the preference data has columns {sorted(cols)}, not the tokenized format "
                         f"{list(PAIR_COLUMNS)}; rerun the data stage with this runtime version")
    return dataset.map(orpo_row, remove_columns=dataset.column_names)


def longest_pair(dataset) -> int:
    """Tokens of the longest prompt + answer of a split in ORPO's columns."""
    return max(max(len(c), len(r)) for c, r in zip(dataset["chosen_input_ids"], dataset["rejected_input_ids"]))


class FtplanORPOTrainer(TokenCountingMixin, ORPOTrainer):
    """ORPOTrainer on already tokenized pairs, counting tokens."""

    def tokenize_row(self, feature, model=None):
        """The rows are laid out by ``to_orpo_columns`` before the trainer starts: nothing to tokenize."""
        return feature


def make_orpo_config(stage, kwargs: dict[str, Any], train_ds) -> ORPOConfig:
    """ORPOConfig for an ORPO stage (``max_length`` is the longest pair: the data stage fitted them already)."""
    return ORPOConfig(**kwargs, beta=stage.beta, max_length=longest_pair(train_ds))


def make_orpo_trainer(args: RuntimeArgs, config: ORPOConfig, loaded, train_ds, eval_ds) -> FtplanORPOTrainer:
    """The ORPO trainer: the policy alone, no reference model."""
    return FtplanORPOTrainer(model=loaded.model, args=config, train_dataset=train_ds, eval_dataset=eval_ds,
                             processing_class=loaded.tokenizer)


def orpo_spec(args: RuntimeArgs) -> TrainerSpec:
    """How an ORPO stage builds its config and trainer, on the data stage's ``preference`` group."""
    stage = args.stage
    return TrainerSpec(family="preference", make_config=lambda kwargs, ds: make_orpo_config(stage, kwargs, ds),
                       make_trainer=make_orpo_trainer, prepare_data=to_orpo_columns)


def run_orpo(args: RuntimeArgs, sha256: str) -> dict[str, Any]:
    """Run an ORPO stage; returns the metrics it wrote."""
    return run_training(args, sha256, orpo_spec(args))
