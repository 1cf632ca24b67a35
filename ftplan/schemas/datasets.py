"""Dataset descriptors: one per source file, discriminated on ``format``.

Each format names the columns it reads (``columns`` maps a canonical name to the column in your file), so a
misspelt mapping is an error before any job starts, not a ``KeyError`` at step 0.
"""

from __future__ import annotations

from typing import Annotated, Literal, Union

from pydantic import Field

from .base import FtplanModel, NonEmptyStr

Role = Literal["system", "user", "assistant", "tool"]
"""Canonical chat roles every chat template understands."""


class _DatasetBase(FtplanModel):
    path: NonEmptyStr
    """Local ``.jsonl``, ``.json``, ``.parquet`` or ``.csv`` file or ``datasets`` folder (relative to the
    pipeline file), or a hub dataset id."""

    split: NonEmptyStr = "train"
    """Split to read from a dataset folder or hub dataset (ignored for single files)."""

    max_rows: int | None = Field(default=None, ge=1)
    """Read at most this many rows (the first ones), e.g. for a smoke run."""


class AlpacaColumns(FtplanModel):
    """Column names of an alpaca-style file."""

    instruction: NonEmptyStr = "instruction"
    """The task description (user turn)."""
    input: NonEmptyStr = "input"
    """Optional extra input appended to the instruction."""
    output: NonEmptyStr = "output"
    """The answer (assistant turn; the trained completion)."""
    system: NonEmptyStr = "system"
    """Optional system prompt."""


class AlpacaDataset(_DatasetBase):
    """``{"instruction", "input", "output"}`` rows; becomes a user turn and an assistant turn."""

    format: Literal["alpaca"]
    """Alpaca instruction format."""
    columns: AlpacaColumns = AlpacaColumns()
    """Where each field lives in the file."""


class ChatColumns(FtplanModel):
    """Column names of a conversation file."""

    messages: NonEmptyStr = "messages"
    """The list of turns."""
    role: NonEmptyStr = "role"
    """Key of a turn's speaker."""
    content: NonEmptyStr = "content"
    """Key of a turn's text."""


class ShareGptColumns(ChatColumns):
    """Column names of a ShareGPT file (``conversations`` of ``{from, value}``)."""

    messages: NonEmptyStr = "conversations"
    """The list of turns."""
    role: NonEmptyStr = "from"
    """Key of a turn's speaker."""
    content: NonEmptyStr = "value"
    """Key of a turn's text."""


_SHAREGPT_ROLES: dict[str, Role] = {"system": "system", "human": "user", "user": "user", "gpt": "assistant",
                                     "assistant": "assistant", "tool": "tool", "function": "tool",
                                     "observation": "tool"}


class ShareGptDataset(_DatasetBase):
    """ShareGPT conversations: ``{"conversations": [{"from": "human", "value": ...}, ...]}``."""

    format: Literal["sharegpt"]
    """ShareGPT format."""
    columns: ShareGptColumns = ShareGptColumns()
    """Where each field lives in the file."""
    roles: dict[NonEmptyStr, Role] = Field(default_factory=lambda: dict(_SHAREGPT_ROLES))
    """Speaker values in the file mapped to canonical roles."""


class MessagesDataset(_DatasetBase):
    """OpenAI-style conversations: ``{"messages": [{"role": "user", "content": ...}, ...]}``."""

    format: Literal["messages"]
    """Messages (role/content) format."""
    columns: ChatColumns = ChatColumns()
    """Where each field lives in the file."""
    roles: dict[NonEmptyStr, Role] = Field(
        default_factory=lambda: {"system": "system", "user": "user", "assistant": "assistant", "tool": "tool"})
    """Role values in the file mapped to canonical roles."""


class PromptCompletionColumns(FtplanModel):
    """Column names of a prompt/completion file."""

    prompt: NonEmptyStr = "prompt"
    """The prompt (a string, or a list of turns)."""
    completion: NonEmptyStr = "completion"
    """The trained completion (a string, or a list of turns)."""


class PromptCompletionDataset(_DatasetBase):
    """``{"prompt", "completion"}`` rows."""

    format: Literal["prompt_completion"]
    """Prompt/completion format."""
    columns: PromptCompletionColumns = PromptCompletionColumns()
    """Where each field lives in the file."""


class TextColumns(FtplanModel):
    """Column name of a plain-text file."""

    text: NonEmptyStr = "text"
    """The raw text; every token is trained (continued pre-training)."""


class TextDataset(_DatasetBase):
    """Plain ``{"text"}`` rows, trained on every token."""

    format: Literal["text"]
    """Plain-text format."""
    columns: TextColumns = TextColumns()
    """Where each field lives in the file."""


class PreferenceColumns(FtplanModel):
    """Column names of a preference-pair file."""

    prompt: NonEmptyStr = "prompt"
    """The shared prompt (a string or a list of turns)."""
    chosen: NonEmptyStr = "chosen"
    """The preferred answer (a string or a list of turns)."""
    rejected: NonEmptyStr = "rejected"
    """The dispreferred answer (a string or a list of turns)."""


class PreferenceDataset(_DatasetBase):
    """Preference pairs ``{"prompt", "chosen", "rejected"}`` for DPO."""

    format: Literal["preference"]
    """Preference-pair format."""
    columns: PreferenceColumns = PreferenceColumns()
    """Where each field lives in the file."""
    roles: dict[NonEmptyStr, Role] = Field(
        default_factory=lambda: {"system": "system", "user": "user", "assistant": "assistant", "tool": "tool"})
    """Role values in message lists mapped to canonical roles."""


class KtoColumns(FtplanModel):
    """Column names of a KTO file."""

    prompt: NonEmptyStr = "prompt"
    """The prompt (a string or a list of turns)."""
    completion: NonEmptyStr = "completion"
    """One answer (a string or a list of turns)."""
    label: NonEmptyStr = "label"
    """Boolean: true when the answer is desirable."""


class KtoDataset(_DatasetBase):
    """Unpaired ``{"prompt", "completion", "label"}`` rows for KTO-style stages."""

    format: Literal["kto"]
    """KTO (unpaired, labelled) format."""
    columns: KtoColumns = KtoColumns()
    """Where each field lives in the file."""


DatasetSpec = Annotated[
    Union[AlpacaDataset, ShareGptDataset, MessagesDataset, PromptCompletionDataset, TextDataset,
          PreferenceDataset, KtoDataset],
    Field(discriminator="format"),
]
"""One source dataset; ``format`` picks the descriptor."""

DatasetFormat = Literal["alpaca", "sharegpt", "messages", "prompt_completion", "text", "preference", "kto"]

SFT_FORMATS: frozenset[str] = frozenset({"alpaca", "sharegpt", "messages", "prompt_completion", "text"})
"""Formats a supervised stage trains on."""
PREFERENCE_FORMATS: frozenset[str] = frozenset({"preference"})
"""Formats a preference stage (DPO) trains on."""
