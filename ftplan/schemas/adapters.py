"""What a training stage trains: a LoRA-family adapter or every weight."""

from __future__ import annotations

from typing import Annotated, Literal, Union

from pydantic import Field

from .base import FtplanModel, NonEmptyStr


class LoraAdapter(FtplanModel):
    """A low-rank adapter on the frozen base: LoRA, QLoRA (4-bit NF4 base) or DoRA."""

    type: Literal["lora", "qlora", "dora"]
    """``lora``: bf16/fp16 base; ``qlora``: NF4 base with double quantization (bitsandbytes); ``dora``:
    weight-decomposed LoRA on a 16-bit base."""

    r: int = Field(default=16, ge=1, le=4096)
    """Rank of the update matrices."""

    alpha: float = Field(default=16, gt=0)
    """Scaling numerator: the update is scaled by ``alpha / r``."""

    dropout: float = Field(default=0.0, ge=0.0, lt=1.0)
    """Dropout on the adapter input (0 enables the fused kernels and saves the dropout masks)."""

    targets: Literal["all-linear"] | Annotated[list[NonEmptyStr], Field(min_length=1)] = "all-linear"
    """Modules that get an adapter: ``all-linear`` (every decoder projection) or names such as
    ``[q_proj, v_proj]``. Each name must exist in the architecture."""

    modules_to_save: list[NonEmptyStr] = Field(default_factory=list)
    """Modules trained in full next to the adapter, e.g. ``[embed_tokens, lm_head]`` after adding tokens."""


class FullFinetune(FtplanModel):
    """Train every weight of the model (no adapter)."""

    type: Literal["full"]
    """Full fine-tune."""


AdapterSpec = Annotated[Union[LoraAdapter, FullFinetune], Field(discriminator="type")]
"""What a stage trains; ``type`` picks the variant."""
