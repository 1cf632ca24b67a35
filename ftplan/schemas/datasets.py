"""Dataset descriptors: one per source file, discriminated on ``format``.

Each format names the columns it reads (``columns`` maps a canonical name to the column in your file), so a
misspelt mapping is an error before any job starts, not a ``KeyError`` at step 0.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Union

from pydantic import Field, SerializerFunctionWrapHandler, model_serializer

from .base import FtplanModel, NonEmptyStr

Role = Literal["system", "user", "assistant", "tool", "tool_call"]
"""Canonical chat roles: ``system``, ``user``, ``assistant`` and ``tool`` (a tool's result) as every chat
template knows them, and ``tool_call``: an assistant turn that calls tools, whose text is the call as JSON
(``{"name": ..., "arguments": {...}}`` or a list of them), rendered as the assistant's ``tool_calls``."""


class _DatasetBase(FtplanModel):
    path: NonEmptyStr
    """Local ``.jsonl``, ``.json``, ``.parquet`` or ``.csv`` file or ``datasets`` folder (relative to the
    pipeline file), or a hub dataset id."""

    split: NonEmptyStr = "train"
    """Split to read from a dataset folder or hub dataset (ignored for single files)."""

    max_rows: int | None = Field(default=None, ge=1)
    """Read at most this many rows (the first ones), e.g. for a smoke run."""

    weight: float = Field(default=1.0, gt=0.0, le=100.0)
    """How much this dataset counts in the mix of its data stage's training split: its training examples are taken
    ``weight`` times (2: each twice; 0.5: a seeded half of them, at least one; 1.5: all, plus a seeded half once more).
    The validation split is held out first and is not weighted."""

    @model_serializer(mode="wrap")
    def _written(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        """The dataset as compiled files write it: ``weight`` only when it is not 1 (reading it back gives 1)."""
        data: dict[str, Any] = handler(self)  # a model's fields, as a mapping
        if isinstance(data, dict) and data.get("weight") == 1.0:
            data.pop("weight")
        return data


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
    history: NonEmptyStr = "history"
    """Optional earlier exchanges, ``[[instruction, answer], ...]``, put before the instruction (their answers
    are trained too)."""


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
    """Key of a turn's text: a string, or a list of ``{"type": "text", "text": ...}`` parts (joined)."""
    system: NonEmptyStr = "system"
    """Optional column with a system prompt, put before the conversation's turns."""
    tools: NonEmptyStr = "tools"
    """Optional column with the tools the assistant may call (a list of JSON-schema function definitions, or
    that list as a JSON string), rendered through the chat template's tool support."""


class ShareGptColumns(ChatColumns):
    """Column names of a ShareGPT file (``conversations`` of ``{from, value}``)."""

    messages: NonEmptyStr = "conversations"
    """The list of turns."""
    role: NonEmptyStr = "from"
    """Key of a turn's speaker."""
    content: NonEmptyStr = "value"
    """Key of a turn's text."""


_CANONICAL_ROLES: dict[str, Role] = {"system": "system", "user": "user", "assistant": "assistant", "tool": "tool"}
_SHAREGPT_ROLES: dict[str, Role] = {**_CANONICAL_ROLES, "human": "user", "gpt": "assistant",
                                    "function_call": "tool_call", "observation": "tool", "function": "tool"}
"""ShareGPT's speakers as LLaMA-Factory and most ShareGPT files write them: ``function_call`` is the assistant
calling a tool, ``observation`` (or ``function``) the tool's answer."""


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
    roles: dict[NonEmptyStr, Role] = Field(default_factory=lambda: dict(_CANONICAL_ROLES))
    """Role values in the file mapped to canonical roles (a ``roles`` block replaces this default)."""


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
    role: NonEmptyStr = "role"
    """Key of a turn's speaker in message lists (``from`` for ShareGPT-style turns)."""
    content: NonEmptyStr = "content"
    """Key of a turn's text in message lists (``value`` for ShareGPT-style turns)."""


class PreferenceDataset(_DatasetBase):
    """Preference pairs for DPO, in any of the shapes preference files come in:

    - ``{"prompt": str, "chosen": str, "rejected": str}``;
    - a conversation as the prompt and one answer turn each (LLaMA-Factory:
      ``{"conversations": [...], "chosen": {"from": "gpt", "value": ...}, "rejected": {...}}`` with
      ``columns: {prompt: conversations, role: from, content: value}``);
    - a prompt and answers as lists of turns;
    - whole conversations as ``chosen`` and ``rejected`` with no prompt column (TRL's implicit prompt): the
      turns both start with are the prompt, the rest are the answers;
    - whole conversations next to a prompt column (UltraFeedback's binarized rows: ``prompt`` a string, ``chosen``
      and ``rejected`` the user turn then the answer): an answer that starts with the prompt's turns is read
      without them.
    """

    format: Literal["preference"]
    """Preference-pair format."""
    columns: PreferenceColumns = PreferenceColumns()
    """Where each field lives in the file."""
    roles: dict[NonEmptyStr, Role] = Field(default_factory=lambda: dict(_SHAREGPT_ROLES))
    """Role values in message lists mapped to canonical roles (the canonical names and ShareGPT's speakers by
    default; a ``roles`` block replaces this default)."""


class KtoColumns(FtplanModel):
    """Column names of a KTO file."""

    prompt: NonEmptyStr = "prompt"
    """The prompt (a string or a list of turns)."""
    completion: NonEmptyStr = "completion"
    """One answer (a string or a list of turns)."""
    label: NonEmptyStr = "label"
    """Boolean: true when the answer is desirable (``true``/``false``, 1/0; LLaMA-Factory's ``kto_tag``)."""
    messages: NonEmptyStr = "messages"
    """A whole conversation instead of ``prompt`` and ``completion`` (LLaMA-Factory): its last turn is the answer,
    the turns before it the prompt."""
    role: NonEmptyStr = "role"
    """Key of a turn's speaker in message lists (``from`` for ShareGPT-style turns)."""
    content: NonEmptyStr = "content"
    """Key of a turn's text in message lists (``value`` for ShareGPT-style turns)."""


class KtoDataset(_DatasetBase):
    """Unpaired answers labelled desirable or undesirable, for KTO stages, in either shape KTO files come in:

    - TRL's ``{"prompt", "completion", "label"}`` (strings, or lists of ``{role, content}`` turns);
    - LLaMA-Factory's ``{"messages": [...], "label": true}``: the last turn is the answer (it must be an assistant
      turn) and every turn before it the prompt; ShareGPT-style turns with
      ``columns: {messages: conversations, role: from, content: value}``.
    """

    format: Literal["kto"]
    """KTO (unpaired, labelled) format."""
    columns: KtoColumns = KtoColumns()
    """Where each field lives in the file."""
    roles: dict[NonEmptyStr, Role] = Field(default_factory=lambda: dict(_SHAREGPT_ROLES))
    """Speaker values in ``messages`` mapped to canonical roles (the canonical names and ShareGPT's speakers by
    default; a ``roles`` block replaces this default)."""


DatasetSpec = Annotated[
    Union[AlpacaDataset, ShareGptDataset, MessagesDataset, PromptCompletionDataset, TextDataset,
          PreferenceDataset, KtoDataset],
    Field(discriminator="format"),
]
"""One source dataset; ``format`` picks the descriptor."""

SFT_FORMATS: frozenset[str] = frozenset({"alpaca", "sharegpt", "messages", "prompt_completion", "text"})
"""Formats a supervised stage trains on."""
PREFERENCE_FORMATS: frozenset[str] = frozenset({"preference"})
"""Formats a preference stage (DPO, ORPO, a reward model) trains on."""
TEXT_FORMATS: frozenset[str] = frozenset({"text"})
"""Raw-text formats: split into ``max_seq_len`` pieces, never truncated; what a continued pre-training stage trains
on."""
KTO_FORMATS: frozenset[str] = frozenset({"kto"})
"""Formats a KTO stage trains on (unpaired answers with a desirable/undesirable label)."""
