"""The chat templates ftplan ships (``model.chat_template: chatml`` or ``llama3``), one definition for the checks
and the runtime.

Both wrap what the assistant says (its text and the end-of-turn token) in ``{% generation %}`` so that
``apply_chat_template(..., return_assistant_tokens_mask=True)`` can tell which tokens to train. Neither renders
tools or tool calls: data with tool calls needs a template that does (usually the model family's own).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

__all__ = ["BUILTIN_TEMPLATES", "BuiltinTemplate", "CHATML", "LLAMA3", "read_template_file"]

CHATML = (
    "{% for message in messages %}"
    "{% if message['role'] == 'assistant' %}"
    "{{ '<|im_start|>assistant\\n' }}"
    "{% generation %}{{ message['content'] + '<|im_end|>' }}{% endgeneration %}"
    "{{ '\\n' }}"
    "{% else %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
"""ChatML: ``<|im_start|>role\\ncontent<|im_end|>\\n`` per turn; the assistant's text and ``<|im_end|>`` are
trained."""

LLAMA3 = (
    "{{ bos_token if bos_token else '' }}"
    "{% for message in messages %}"
    "{% set role = 'ipython' if message['role'] == 'tool' else message['role'] %}"
    "{{ '<|start_header_id|>' + role + '<|end_header_id|>\\n\\n' }}"
    "{% if message['role'] == 'assistant' %}"
    "{% generation %}{{ message['content'] | trim }}{{ '<|eot_id|>' }}{% endgeneration %}"
    "{% else %}"
    "{{ message['content'] | trim }}{{ '<|eot_id|>' }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}"
)
"""Llama 3 headers: ``<|start_header_id|>role<|end_header_id|>\\n\\ncontent<|eot_id|>`` (contents trimmed, the
``tool`` role rendered as ``ipython``); the assistant's text and ``<|eot_id|>`` are trained."""


@dataclass(frozen=True)
class BuiltinTemplate:
    """A shipped chat template."""

    text: str
    """The Jinja source."""
    tokens: tuple[str, ...]
    """Special tokens it writes, which must be single tokens of the vocabulary."""
    end_of_turn: str
    """The token that ends a turn (trained after each answer)."""


BUILTIN_TEMPLATES: dict[str, BuiltinTemplate] = {
    "chatml": BuiltinTemplate(CHATML, ("<|im_start|>", "<|im_end|>"), "<|im_end|>"),
    "llama3": BuiltinTemplate(LLAMA3, ("<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"), "<|eot_id|>"),
}
"""Shipped templates by the name ``model.chat_template`` uses."""


def read_template_file(path: Path, shown: str) -> tuple[str | None, str | None]:
    """(text, None) of a chat-template file, or (None, why it cannot be used): a folder, a binary file or text
    that is not UTF-8. ``shown`` is the path as messages name it. Raises ``FileNotFoundError`` when absent."""
    if path.is_dir():
        return None, f"'{shown}' is a folder, not a template file"
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise
    except OSError as exc:
        return None, f"cannot read '{shown}': {exc.strerror or exc}"
    if b"\0" in data:
        return None, f"'{shown}' is a binary file, not a Jinja template"
    try:
        return data.decode("utf-8-sig"), None
    except UnicodeDecodeError as exc:
        line = data[:exc.start].count(b"\n") + 1
        return None, f"'{shown}' is not UTF-8 text (line {line}); save it as UTF-8"
