"""Continued pre-training: TRL's ``SFTTrainer`` over the data stage's raw-text pieces.

The data stage splits every document longer than ``max_seq_len`` into pieces of ``max_seq_len`` tokens (never
truncating) and, with ``packing``, packs them with ``seq_lengths`` so that TRL's padding-free collator restarts the
positions at every document boundary. Every token is trained (the pieces' ``completion_mask`` is all ones): the
loss is plain next-token prediction, SFT's own trainer and loss (the fused one with ``kernels: ftplan``).
"""

from __future__ import annotations

from typing import Any

from ftplan.schemas.runtime_args import RuntimeArgs

from .preflight import StageError
from .sft import make_sft_config, make_sft_trainer
from .train_common import TrainerSpec, run_training


def make_cpt_config(kwargs: dict[str, Any], train_ds):
    """SFT's config for the raw-text pieces, which train every token."""
    if "completion_mask" in train_ds.column_names and not all(all(m) for m in train_ds[:64]["completion_mask"]):
        raise StageError("the data of this cpt stage holds examples that are not raw text (some tokens are not "
                         "trained); point it at a data stage of `format: text` datasets only and rerun that stage")
    return make_sft_config(kwargs, train_ds)


CPT_SPEC = TrainerSpec(family="sft", make_config=make_cpt_config, make_trainer=make_sft_trainer)
"""How a CPT stage builds its config and trainer: SFT's, on the data stage's ``sft`` group of text pieces."""


def run_cpt(args: RuntimeArgs, sha256: str) -> dict[str, Any]:
    """Run a continued pre-training stage; returns the metrics it wrote."""
    return run_training(args, sha256, CPT_SPEC)
