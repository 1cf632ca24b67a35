"""Pipeline stages, a discriminated union on ``kind``.

A stage names the earlier stages it consumes (``input``, ``data``); the graph is checked before anything
runs. Training kinds: ``sft``, ``cpt`` (continued pre-training on raw text), ``dpo``, ``orpo``, ``kto`` and
``reward`` (a sequence-classification reward model); what each reads and leaves is ``TRAIN_KINDS``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Literal, Union

from pydantic import Field

from .adapters import AdapterSpec
from .base import FtplanModel, StageId
from .datasets import KTO_FORMATS, PREFERENCE_FORMATS, SFT_FORMATS, TEXT_FORMATS, DatasetSpec
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
    """Source datasets. Supervised formats feed SFT stages (``text`` also CPT stages), ``preference`` feeds DPO,
    ORPO and reward stages, ``kto`` feeds KTO stages."""

    max_seq_len: int = Field(ge=16, le=1_048_576)
    """Longest tokenized example (prompt + completion; packed sequence length when packing)."""

    packing: bool = False
    """Pack examples padding-free into ``max_seq_len`` rows (supervised formats only)."""

    loss_on: Literal["completion", "all"] = "completion"
    """Train on assistant/completion tokens only, or on every token."""

    truncation: Literal["truncate", "drop"] = "truncate"
    """What to do with an example longer than ``max_seq_len``: cut it, or drop it (listed in the manifest). Raw text
    (``format: text``) is neither: a longer document is split into ``max_seq_len`` pieces, each its own sequence."""

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
    """Stage whose result to start from (``sft``, ``cpt``, ``dpo``, ``orpo``, ``kto`` or ``merge``); omitted = the
    base model."""

    data: StageId
    """The data stage providing the examples."""

    adapter: AdapterSpec
    """What to train: ``{type: lora|qlora|dora, r, alpha, ...}`` or ``{type: full}``."""


class DpoStage(_StageBase, TrainingArgs):
    """Direct preference optimisation and its loss family on preference pairs: DPO (sigmoid), IPO, hinge (SLiC),
    robust DPO and the reference-free SimPO, each optionally with a supervised term on the chosen answer (RPO);
    from an earlier stage's result or straight from the base model."""

    kind: Literal["dpo"]
    """Direct preference optimisation (or a loss of its family: ``loss_type``)."""

    input: StageId | None = None
    """Stage whose result is the starting policy and the reference policy, normally the SFT stage; omitted = the
    base model, which is then the reference too (an instruct model needs no SFT stage first)."""

    data: StageId
    """The data stage providing the preference pairs."""

    adapter: Literal["continue"] | AdapterSpec
    """``continue``: keep training the input stage's adapter; or a new ``{type: ...}`` (with
    ``merge_input: true`` when the input trained an adapter)."""

    merge_input: bool = False
    """Merge the input stage's adapter into the base before training a new adapter."""

    beta: float = Field(default=0.1, gt=0.0, le=10.0)
    """Strength of the KL penalty toward the reference policy. For IPO it is the regulariser τ; for SimPO the
    scale of the length-normalised reward (the SimPO paper uses 2 to 10)."""

    loss_type: Literal["sigmoid", "ipo", "hinge", "robust", "simpo"] = "sigmoid"
    """``sigmoid`` (DPO), ``ipo``, ``hinge`` (SLiC), ``robust`` (label-noise robust DPO), or ``simpo`` (SimPO:
    mean log-probabilities per answer token and a target margin ``simpo_gamma``, with no reference model; TRL's
    CPO trainer runs it)."""

    label_smoothing: float = Field(default=0.0, ge=0.0, lt=0.5)
    """Assumed fraction of flipped preference labels; only the ``robust`` and ``simpo`` losses use it."""

    simpo_gamma: float = Field(default=0.5, ge=0.0, le=10.0)
    """SimPO's target reward margin γ (``loss_type: simpo`` only; the paper keeps γ/β near 0.5)."""

    sft_weight: float = Field(default=0.0, ge=0.0, le=10.0)
    """Weight of a supervised loss added to the preference loss: the mean negative log-likelihood of the chosen
    answer's tokens (RPO, TRL's and Axolotl's ``rpo_alpha``; 1.0 in the RPO paper). With ``simpo`` it is CPO's
    behaviour-cloning term (TRL's ``cpo_alpha``: CPO-SimPO). 0 = no supervised term."""

    reference: Literal["live", "precomputed"] = "live"
    """``live``: reference log-probs computed each step (adapter-disabled or frozen copy);
    ``precomputed``: computed once before training (saves the reference forward and its memory). SimPO has no
    reference: leave it out."""

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


class CptStage(_StageBase, TrainingArgs):
    """Continued pre-training: next-token prediction on every token of raw text (``format: text`` datasets),
    split into ``max_seq_len`` pieces and packed with document boundaries kept, never truncated."""

    kind: Literal["cpt"]
    """Continued pre-training (Axolotl's ``pretraining_dataset`` / completion training, TRL's language modeling)."""

    input: StageId | None = None
    """Stage whose result to start from (``sft``, ``cpt``, ``dpo``, ``orpo``, ``kto`` or ``merge``); omitted = the
    base model."""

    data: StageId
    """The data stage providing the raw text; it holds only ``format: text`` datasets."""

    adapter: AdapterSpec
    """What to train: ``{type: lora|qlora|dora, r, alpha, ...}`` (domain text usually wants
    ``modules_to_save: [embed_tokens, lm_head]``) or ``{type: full}``."""


class OrpoStage(_StageBase, TrainingArgs):
    """Odds-ratio preference optimisation (TRL's ``ORPOTrainer``): a supervised loss on the chosen answer plus an
    odds-ratio term between chosen and rejected, in one forward over both answers and with no reference model,
    so it can start from the base model."""

    kind: Literal["orpo"]
    """Odds-ratio preference optimisation."""

    input: StageId | None = None
    """Stage whose result to start from (``sft``, ``cpt``, ``dpo``, ``orpo``, ``kto`` or ``merge``); omitted = the
    base model (ORPO needs no SFT stage before it)."""

    data: StageId
    """The data stage providing the preference pairs."""

    adapter: Literal["continue"] | AdapterSpec
    """``continue``: keep training the input stage's adapter; or a new ``{type: ...}`` (with ``merge_input: true``
    when the input trained an adapter)."""

    merge_input: bool = False
    """Merge the input stage's adapter into the base before training a new adapter."""

    beta: float = Field(default=0.1, gt=0.0, le=10.0)
    """Weight of the odds-ratio term against the supervised loss (TRL's ``beta``; λ in the ORPO paper, Axolotl's
    ``orpo_alpha``)."""


class KtoStage(_StageBase, TrainingArgs):
    """Kahneman-Tversky optimisation (TRL's ``KTOTrainer``) on unpaired answers labelled desirable or undesirable,
    against a reference policy and a KL estimate from mismatched prompt/answer pairs of the same micro-batch."""

    kind: Literal["kto"]
    """Kahneman-Tversky optimisation."""

    input: StageId | None = None
    """Stage whose result is the starting policy and the reference policy, normally the SFT stage; omitted = the
    base model."""

    data: StageId
    """The data stage providing the labelled examples (``format: kto`` datasets)."""

    adapter: Literal["continue"] | AdapterSpec
    """``continue``: keep training the input stage's adapter; or a new ``{type: ...}`` (with ``merge_input: true``
    when the input trained an adapter)."""

    merge_input: bool = False
    """Merge the input stage's adapter into the base before training a new adapter."""

    beta: float = Field(default=0.1, gt=0.0, le=10.0)
    """Strength of the penalty toward the reference policy."""

    loss_type: Literal["kto", "apo_zero_unpaired"] = "kto"
    """``kto`` (with the KL estimate) or ``apo_zero_unpaired`` (APO-zero, no KL batch)."""

    desirable_weight: float = Field(default=1.0, gt=0.0, le=100.0)
    """Weight of the desirable examples' losses (raise it when they are the minority)."""

    undesirable_weight: float = Field(default=1.0, gt=0.0, le=100.0)
    """Weight of the undesirable examples' losses (raise it when they are the minority)."""

    reference: Literal["live", "precomputed"] = "live"
    """``live``: reference log-probs computed each step; ``precomputed``: computed once before training (saves
    the reference forwards and a full model's reference copy)."""


class RewardStage(_StageBase, TrainingArgs):
    """A reward model (TRL's ``RewardTrainer``): the model with a one-output classification head
    (``AutoModelForSequenceClassification``, ``num_labels: 1``) trained on preference pairs to score the chosen
    answer above the rejected one. Its result scores text: it is not a causal LM, so no later stage can start
    from it, merge it or export it to GGUF."""

    kind: Literal["reward"]
    """Reward model."""

    input: StageId | None = None
    """Stage whose full weights to start from (``sft``, ``cpt``, ``dpo``, ``orpo``, ``kto`` with a full fine-tune,
    or ``merge``); omitted = the base model."""

    data: StageId
    """The data stage providing the preference pairs."""

    adapter: AdapterSpec
    """What to train: a new ``{type: lora|qlora|dora, ...}`` (the classification head trains in full beside it)
    or ``{type: full}``."""

    center_rewards_coefficient: float | None = Field(default=None, ge=0.0, le=1.0)
    """Weight of a penalty on the squared rewards that keeps them centred on zero (TRL's
    ``center_rewards_coefficient``; 0.01 is the paper's value)."""


Stage = Annotated[Union[DataStage, SftStage, CptStage, DpoStage, OrpoStage, KtoStage, RewardStage, MergeStage,
                        GgufStage], Field(discriminator="kind")]
"""One pipeline stage; ``kind`` picks the variant."""

TrainStage = Union[SftStage, CptStage, DpoStage, OrpoStage, KtoStage, RewardStage]
"""Stages that train (and launch through accelerate)."""

TRAIN_STAGE_TYPES = (SftStage, CptStage, DpoStage, OrpoStage, KtoStage, RewardStage)
"""The classes of ``TrainStage``, for ``isinstance``."""


@dataclass(frozen=True)
class TrainKind:
    """What a training kind reads from its data stage and leaves for later stages."""

    group: Literal["sft", "preference", "kto"]
    """The data stage's output group it trains on (``<data>/<group>/train``)."""
    formats: frozenset[str]
    """Dataset formats that feed that group for this kind."""
    pairs: bool
    """An example is a chosen and a rejected answer: ``micro_batch`` counts pairs, two sequences each."""
    reference: bool
    """It trains against a reference policy (``reference: live | precomputed``)."""
    causal_lm: bool
    """Its result is a causal LM that later stages can start from, merge and export (not a reward model)."""
    unit: str
    """What one training example is called in messages: ``sequence``, ``pair`` or ``example``."""


TRAIN_KINDS: dict[str, TrainKind] = {
    "sft": TrainKind("sft", SFT_FORMATS, False, False, True, "sequence"),
    "cpt": TrainKind("sft", TEXT_FORMATS, False, False, True, "sequence"),
    "dpo": TrainKind("preference", PREFERENCE_FORMATS, True, True, True, "pair"),
    "orpo": TrainKind("preference", PREFERENCE_FORMATS, True, False, True, "pair"),
    "kto": TrainKind("kto", KTO_FORMATS, False, True, True, "example"),
    "reward": TrainKind("preference", PREFERENCE_FORMATS, True, False, False, "pair"),
}
"""Every training kind's data and result, the one table the graph, the resolved facts, the estimator and the
runtime read."""

CAUSAL_LM_KINDS: tuple[str, ...] = tuple(k for k, v in TRAIN_KINDS.items() if v.causal_lm)
"""Training kinds whose result is a causal LM."""
