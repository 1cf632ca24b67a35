"""Kahneman-Tversky optimisation on TRL's ``KTOTrainer`` with the data stage's pre-tokenized labelled examples.

Each example is ``prompt_ids``, ``completion_ids`` and a boolean ``label`` (desirable or not). The KL estimate pairs
every prompt with the answer of its neighbour in the same micro-batch (``KL_completion_ids``, laid out here exactly
as TRL does, per ``micro_batch`` rows in order); the rows are shuffled once with the stage's seed first, because TRL
reads them in order and a file sorted by label would give micro-batches of one label only.

The reference policy is the input stage's result, as for DPO (``dpo.py``): a continued adapter's frozen ``ref``
copy, the policy with a new adapter switched off (the ``ref`` copy TRL makes of a fresh adapter is dropped), or a
frozen copy of the full weights; ``reference: precomputed`` computes its log-probs once before training. With
``kernels: ftplan`` every log-prob (policy, reference, KL batch) comes from the fused linear log-prob op
(``logprob_head.py``), as for DPO.
"""

from __future__ import annotations

from typing import Any

from trl import KTOConfig, KTOTrainer

from ftplan.schemas.runtime_args import RuntimeArgs

from .data.output import columns_of
from .dpo import make_reference_trainer
from .logprob_head import FusedLogprobTrainerMixin
from .metrics import TokenCountingMixin
from .preflight import StageError, check_fused_loss, zero_stage
from .train_common import TrainerSpec, run_training

KTO_COLUMNS = tuple(columns_of("kto", packing=False))
"""Columns of the data stage's tokenized KTO splits."""


def add_kl_completions(dataset, micro_batch: int):
    """``KL_completion_ids``: within each run of ``micro_batch`` rows, every row gets the previous row's answer (the
    first row the last one's), TRL 1.16's ``add_kl_completion_ids``."""
    def shift(batch: dict[str, list]) -> dict[str, list]:
        answers = batch["completion_ids"]
        return {"KL_completion_ids": answers[-1:] + answers[:-1]}

    return dataset.map(shift, batched=True, batch_size=micro_batch)


class FtplanKTOTrainer(FusedLogprobTrainerMixin, TokenCountingMixin, KTOTrainer):
    """KTOTrainer that takes the data stage's token ids as they are, counts tokens, and with ``fused_logprobs``
    computes its log-probs (policy, reference, KL batch) through the fused linear log-prob op."""

    policy_outputs = ("log_probs", "entropy", "mean_logits")  # what TRL 1.16's KTO trainer reads

    def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
        cols = set(dataset.column_names)
        if not set(KTO_COLUMNS) <= cols:
            raise StageError(f"the KTO data ({dataset_name}) has columns {sorted(cols)}, not the tokenized format "
                             f"{list(KTO_COLUMNS)}; rerun the data stage with this runtime version")
        dataset = dataset.shuffle(seed=args.seed).flatten_indices()
        if self.calculate_KL:
            dataset = add_kl_completions(dataset, args.per_device_train_batch_size)
        return dataset


def make_kto_config(stage, kwargs: dict[str, Any], train_ds) -> KTOConfig:
    """KTOConfig for a KTO stage."""
    return KTOConfig(
        **kwargs,
        beta=stage.beta,
        loss_type=stage.loss_type,
        desirable_weight=stage.desirable_weight,
        undesirable_weight=stage.undesirable_weight,
        max_length=None,  # the data stage already fitted every example to max_seq_len
        precompute_ref_log_probs=stage.reference == "precomputed",
    )


def make_kto_trainer(args: RuntimeArgs, config: KTOConfig, loaded, train_ds, eval_ds) -> FtplanKTOTrainer:
    """The KTO trainer with the reference policy described in the module docstring (as DPO's)."""
    return make_reference_trainer(FtplanKTOTrainer, "KTO", args, config, loaded, train_ds, eval_ds)


def kto_spec(args: RuntimeArgs) -> TrainerSpec:
    """How a KTO stage builds its config and trainer, on the data stage's ``kto`` group."""
    def make_config(kwargs: dict[str, Any], train_ds) -> KTOConfig:
        config = make_kto_config(args.stage, kwargs, train_ds)
        check_fused_loss(args.promise, zero_stage(config))  # the fused log-prob head reads lm_head whole
        return config

    return TrainerSpec(family="kto", make_config=make_config, make_trainer=make_kto_trainer)


def run_kto(args: RuntimeArgs, sha256: str) -> dict[str, Any]:
    """Run a KTO stage; returns the metrics it wrote."""
    return run_training(args, sha256, kto_spec(args))
