"""Pipeline stages, a discriminated union on ``kind``.

A stage names the earlier stages it consumes (``input``, ``data``); the graph is checked before anything
runs. New kinds (ORPO, KTO, CPT, reward models) are new classes added to ``Stage``.
"""

from __future__ import annotations

from typing import Annotated, Literal, Union

from pydantic import Field

from .adapters import AdapterSpec
from .base import FtplanModel, StageId
from .datasets import DatasetSpec
from .hardware import StageSlurmSpec
from .training import TrainingArgs


class _StageBase(FtplanModel):
    id: StageId
    """Unique stage name; outputs go to ``<output_dir>/<id>/`` and compiled files to ``stages/<id>/``."""

    slurm: StageSlurmSpec | None = Field(default=None, exclude=True)
    """This stage's own Slurm job settings (partition, time, memory, CPUs, ...), over ``hardware.slurm``."""


class DataStage(_StageBase):
    """Reads, validates, formats, tokenizes, packs and splits datasets for later training stages."""

    kind: Literal["data"]
    """Data preparation."""

    datasets: list[DatasetSpec] = Field(min_length=1)
    """Source datasets. Supervised formats feed SFT stages, ``preference`` feeds DPO stages."""

    max_seq_len: int = Field(ge=16, le=1_048_576)
    """Longest tokenized example (prompt + completion; packed sequence length when packing)."""

    packing: bool = False
    """Pack examples padding-free into ``max_seq_len`` rows (supervised formats only)."""

    loss_on: Literal["completion", "all"] = "completion"
    """Train on assistant/completion tokens only, or on every token."""

    truncation: Literal["truncate", "drop"] = "truncate"
    """What to do with an example longer than ``max_seq_len``: cut it, or drop it (listed in the manifest)."""

    on_bad_row: Literal["error", "drop"] = "error"
    """A malformed row stops the stage with its row number (``error``), or is dropped and listed (``drop``)."""

    val_fraction: float = Field(default=0.0, ge=0.0, lt=0.5)
    """Fraction of rows held out as the validation split (0 = no evaluation)."""

    seed: int = Field(default=42, ge=0)
    """Seed of the shuffle and the train/validation split."""


class SftStage(_StageBase, TrainingArgs):
    """Supervised fine-tuning on the data stage's supervised examples."""

    kind: Literal["sft"]
    """Supervised fine-tuning."""

    input: StageId | None = None
    """Stage whose result to start from (``sft``, ``dpo`` or ``merge``); omitted = the base model."""

    data: StageId
    """The data stage providing the examples."""

    adapter: AdapterSpec
    """What to train: ``{type: lora|qlora|dora, r, alpha, ...}`` or ``{type: full}``."""


class DpoStage(_StageBase, TrainingArgs):
    """Direct preference optimisation of an earlier stage's result on preference pairs."""

    kind: Literal["dpo"]
    """Direct preference optimisation."""

    input: StageId
    """Stage whose result is the starting policy and the reference policy, normally the SFT stage."""

    data: StageId
    """The data stage providing the preference pairs."""

    adapter: Literal["continue"] | AdapterSpec
    """``continue``: keep training the input stage's adapter; or a new ``{type: ...}`` (with
    ``merge_input: true`` when the input trained an adapter)."""

    merge_input: bool = False
    """Merge the input stage's adapter into the base before training a new adapter."""

    beta: float = Field(default=0.1, gt=0.0, le=10.0)
    """Strength of the KL penalty toward the reference policy."""

    loss_type: Literal["sigmoid", "ipo", "hinge", "robust"] = "sigmoid"
    """``sigmoid`` (DPO), ``ipo``, ``hinge`` (SLiC) or ``robust`` (label-noise robust DPO)."""

    label_smoothing: float = Field(default=0.0, ge=0.0, lt=0.5)
    """Assumed fraction of flipped preference labels; only the ``robust`` loss uses it."""

    reference: Literal["live", "precomputed"] = "live"
    """``live``: reference log-probs computed each step (adapter-disabled or frozen copy);
    ``precomputed``: computed once before training (saves the reference forward and its memory)."""


class MergeStage(_StageBase):
    """Merges the adapter chain ending at ``input`` into full-precision base weights."""

    kind: Literal["merge"]
    """LoRA merge."""

    input: StageId
    """Last adapter stage of the chain to merge (its ancestors' adapters are merged first, in order)."""

    dtype: Literal["bf16", "fp16", "fp32"] = "bf16"
    """Dtype of the merged weights (a QLoRA base is reloaded at this precision first)."""

    verify: bool = True
    """Check on a probe batch that merged logits equal adapter logits."""


class GgufStage(_StageBase):
    """Exports merged (or fully fine-tuned) weights to GGUF files for llama.cpp and Ollama."""

    kind: Literal["gguf"]
    """GGUF export."""

    input: StageId
    """A ``merge`` stage, or a full fine-tune stage."""

    quant: list[Literal["f16", "bf16", "q8_0", "q4_k_m"]] = Field(min_length=1)
    """Output types, one file each: ``f16``, ``bf16``, ``q8_0``, ``q4_k_m``."""

    verify: bool = True
    """Compare llama.cpp's tokens and logits with the HF model's on a probe prompt."""


Stage = Annotated[Union[DataStage, SftStage, DpoStage, MergeStage, GgufStage], Field(discriminator="kind")]
"""One pipeline stage; ``kind`` picks the variant."""

TrainStage = Union[SftStage, DpoStage]
"""Stages that train (and launch through accelerate)."""
