"""The base model a pipeline fine-tunes: where its weights, tokenizer and chat template come from."""

from __future__ import annotations

from pydantic import Field

from .base import FtplanModel, NonEmptyStr


class ModelSpec(FtplanModel):
    """The base model, its tokenizer and its chat template."""

    base: NonEmptyStr
    """Hub id (``meta-llama/Llama-3.1-8B-Instruct``) or local folder with ``config.json`` (relative to the
    pipeline file). A local ``config.json`` defines the architecture; otherwise the built-in catalog does."""

    revision: NonEmptyStr | None = None
    """Hub revision (branch, tag or commit) to pin; a commit sha makes the run reproducible."""

    architecture: NonEmptyStr | None = None
    """Catalog key of the architecture (see ``ftplan models``) when ``base`` is neither a local folder nor a
    catalogued hub id, e.g. ``llama-3.1-8b`` for a private fine-tune of Llama 3.1 8B."""

    tokenizer: NonEmptyStr | None = None
    """Tokenizer hub id or local folder; defaults to ``base``."""

    chat_template: NonEmptyStr = "tokenizer"
    """``tokenizer`` (the tokenizer's own template), a built-in name (``chatml``, ``llama3``) or a path to a
    ``.jinja`` file, relative to the pipeline file."""

    add_special_tokens: list[NonEmptyStr] = Field(default_factory=list)
    """New special tokens to add to the vocabulary. Adapter stages must then train ``embed_tokens`` and
    ``lm_head`` (``adapter.modules_to_save``)."""
