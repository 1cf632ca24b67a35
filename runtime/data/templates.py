"""Chat template resolution: the tokenizer's own, a built-in (``chatml``, ``llama3``, defined in
``ftplan.data.templates`` for the checks and the runtime alike) or a ``.jinja`` file."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ftplan.data.templates import BUILTIN_TEMPLATES, CHATML, LLAMA3, read_template_file

from .errors import DataError

__all__ = ["BUILTINS", "CHATML", "ChatTemplate", "KNOWN_END_OF_TURN", "LLAMA3", "resolve_template"]

BUILTINS: dict[str, tuple[str, tuple[str, ...], str]] = {
    name: (t.text, t.tokens, t.end_of_turn) for name, t in BUILTIN_TEMPLATES.items()}
"""Built-in templates (``ftplan.data.templates``): text, the special tokens it needs, its end-of-turn token."""

KNOWN_END_OF_TURN = ("<|im_end|>", "<|eot_id|>", "<|end|>", "<end_of_turn>", "<|endoftext|>", "</s>",
                     "<|end_of_text|>")
"""End-of-turn tokens looked for in other templates (only used when a template has no generation markers)."""

_GENERATION = re.compile(r"\{%-?\s*generation\s*-?%\}")


@dataclass(frozen=True)
class ChatTemplate:
    """A resolved chat template."""

    source: str
    """Where it came from: ``tokenizer``, ``chatml``, ``llama3`` or the file path."""
    text: str
    """The Jinja text ("" when no dataset needs a template and the tokenizer has none)."""
    end_of_turn_ids: tuple[int, ...]
    """Token ids that end a turn in this template (eos included), used to trim prefix-diff masks."""

    @property
    def has_generation(self) -> bool:
        """True when the template marks assistant output with ``{% generation %}``."""
        return bool(_GENERATION.search(self.text))


def resolve_template(setting: str, tokenizer: Any, needed: bool = True) -> ChatTemplate:
    """Resolve ``model.chat_template`` against the loaded tokenizer.

    ``needed`` is False when every dataset is plain text; then a tokenizer without a template is fine.
    Raises ``DataError`` when the template is missing or needs tokens the vocabulary lacks.
    """
    if setting in BUILTINS:
        text, required, eot = BUILTINS[setting]
        missing = [t for t in required if _single_id(tokenizer, t) is None]
        if missing and needed:
            raise DataError(
                f"chat template {setting!r} needs the special tokens {', '.join(missing)}, which are not single "
                f"tokens of the tokenizer {_name(tokenizer)}; add them with model.add_special_tokens (and train "
                "embed_tokens and lm_head), or use the tokenizer's own template (chat_template: tokenizer)")
        return ChatTemplate(setting, text, _end_ids(tokenizer, text, extra=(eot,)))
    if setting == "tokenizer":
        text = tokenizer.chat_template
        if isinstance(text, dict):
            text = text.get("default")
        if not text:
            if needed:
                raise DataError(
                    f"the tokenizer {_name(tokenizer)} has no chat template; set model.chat_template to chatml, "
                    "llama3 or a path to a .jinja file")
            text = ""
        return ChatTemplate("tokenizer", text, _end_ids(tokenizer, text))
    path = Path(setting)
    if not path.exists():
        raise DataError(f"model.chat_template: {setting!r} is neither tokenizer, a built-in template "
                        f"({', '.join(BUILTINS)}) nor an existing .jinja file (paths are relative to the project "
                        f"root {Path.cwd()})")
    text, problem = read_template_file(path, setting)
    if text is None:
        raise DataError(f"model.chat_template: {problem}")
    return ChatTemplate(setting, text, _end_ids(tokenizer, text))


def _name(tokenizer: Any) -> str:
    return repr(getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__)


def _single_id(tokenizer: Any, token: str) -> int | None:
    """The id of ``token`` when it is exactly one token of the vocabulary, else None."""
    ids = tokenizer.encode(token, add_special_tokens=False)
    if len(ids) != 1 or ids[0] == tokenizer.unk_token_id:
        return None
    return ids[0]


def _end_ids(tokenizer: Any, text: str, extra: tuple[str, ...] = ()) -> tuple[int, ...]:
    ids = set()
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    for token in (*extra, *KNOWN_END_OF_TURN):
        if token in text or token in extra:
            tid = _single_id(tokenizer, token)
            if tid is not None:
                ids.add(tid)
    return tuple(sorted(ids))
