"""Render records with the chat template, tokenize them and mark the trained tokens; then fit to max_seq_len.

Completion masks (1 = the token is trained):

* When the template wraps assistant output in ``{% generation %}`` (and the tokenizer is a fast one), the mask
  is the one ``apply_chat_template(..., return_assistant_tokens_mask=True)`` returns: the assistant's text and
  the end-of-turn token the template puts inside the markers (an end-of-turn token right after the markers is
  trained too, for templates that close them before it).
* Otherwise it is found by diffing token prefixes: for assistant turn ``i`` the trained span starts where the
  tokens of ``turns[:i]`` rendered with the generation prompt stop matching the full conversation, and ends
  where the tokens of ``turns[:i + 1]`` stop matching; the span is then cut after its last end-of-turn token,
  so the template's end-of-turn token is trained but a newline the template adds after it is not.

Raw text (``format: text``) is never truncated: ``split_document`` cuts a document longer than ``max_seq_len``
into pieces of ``max_seq_len`` tokens, each its own sequence for packing.

Preference and KTO examples are split like TRL 1.16 does: the prompt is rendered with the generation prompt,
prompt + answer without, and the answer tokens start at their common prefix.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from jinja2 import TemplateError

from ftplan.data.rows import Conversation, Pair, Record, Text, Turn, Unpaired

from .errors import BadRow
from .templates import ChatTemplate


@dataclass(frozen=True)
class SftExample:
    """A supervised example: token ids and which of them are trained."""

    input_ids: list[int]
    """Token ids."""
    completion_mask: list[int]
    """1 where the token is trained, else 0."""


@dataclass(frozen=True)
class PairExample:
    """A tokenized preference pair, in TRL 1.16 DPO's columns."""

    prompt_ids: list[int]
    """Shared prompt tokens."""
    chosen_ids: list[int]
    """Preferred answer tokens (after the prompt)."""
    rejected_ids: list[int]
    """Dispreferred answer tokens (after the prompt)."""


@dataclass(frozen=True)
class KtoExample:
    """A tokenized KTO example, in TRL 1.16 KTO's columns."""

    prompt_ids: list[int]
    """Prompt tokens."""
    completion_ids: list[int]
    """Answer tokens (after the prompt)."""
    label: bool
    """True when the answer is desirable."""


Example = SftExample | PairExample | KtoExample
"""Any tokenized example."""


def common_prefix_length(a: list[int], b: list[int]) -> int:
    """Number of leading tokens ``a`` and ``b`` share."""
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


class Encoder:
    """Turns canonical records into tokenized examples with one tokenizer and chat template."""

    def __init__(self, tokenizer: Any, template: ChatTemplate, loss_on: str) -> None:
        """``loss_on`` is ``completion`` (train assistant tokens) or ``all`` (train every token)."""
        self.tokenizer = tokenizer
        self.template = template
        self.loss_on = loss_on
        # how completion masks are computed: ``generation`` markers (needs a fast tokenizer) or ``prefix-diff``
        self.masking = "generation" if template.has_generation and getattr(tokenizer, "is_fast", False) \
            else "prefix-diff"

    def encode(self, record: Record, n: int) -> Example:
        """Tokenize record ``n`` (1-based row number, for errors); a template failure raises ``BadRow``."""
        if isinstance(record, Text):
            return self._text(record)
        if isinstance(record, Conversation):
            return self._conversation(record, n, record.tools)
        if isinstance(record, Pair):
            prompt = self._ids(record.prompt, n, add_generation_prompt=True)
            chosen = self._ids(record.prompt + record.chosen, n)
            rejected = self._ids(record.prompt + record.rejected, n)
            cut = min(common_prefix_length(prompt, chosen), common_prefix_length(prompt, rejected))
            return PairExample(prompt[:cut], chosen[cut:], rejected[cut:])
        prompt = self._ids(record.prompt, n, add_generation_prompt=True)
        full = self._ids(record.prompt + record.completion, n)
        cut = common_prefix_length(prompt, full)
        return KtoExample(prompt[:cut], full[cut:], record.label)

    def _text(self, record: Text) -> SftExample:
        tok = self.tokenizer
        ids = list(tok(record.text, add_special_tokens=True)["input_ids"])
        if tok.eos_token_id is not None and (not ids or ids[-1] != tok.eos_token_id):
            ids.append(tok.eos_token_id)
        return SftExample(ids, [1] * len(ids))

    def _conversation(self, record: Conversation, n: int, tools: list | None = None) -> SftExample:
        turns = record.turns
        if self.loss_on == "all":
            ids = self._ids(turns, n, tools=tools)
            return SftExample(ids, [1] * len(ids))
        if self.masking == "generation":
            ids, mask = self._render(turns, n, masks=True, tools=tools)
            self._train_following_end_of_turn(ids, mask)
        else:
            ids = self._ids(turns, n, tools=tools)
            mask = self._diff_mask(turns, ids, record.train_from, n, tools)
        if record.train_from > 0:
            boundary = common_prefix_length(self._ids(turns[:record.train_from], n, tools=tools), ids)
            mask[:boundary] = [0] * boundary
        return SftExample(ids, mask)

    def _train_following_end_of_turn(self, ids: list[int], mask: list[int]) -> None:
        """Some templates close ``{% generation %}`` before the end-of-turn token; train it anyway."""
        ends = set(self.template.end_of_turn_ids)
        for j in range(1, len(ids)):
            if mask[j - 1] and not mask[j] and ids[j] in ends:
                mask[j] = 1

    def _diff_mask(self, turns: list[Turn], ids: list[int], train_from: int, n: int,
                   tools: list | None = None) -> list[int]:
        mask = [0] * len(ids)
        ends = set(self.template.end_of_turn_ids)
        for i, turn in enumerate(turns):
            if turn["role"] != "assistant" or i < train_from:
                continue
            start = common_prefix_length(self._ids(turns[:i], n, add_generation_prompt=True, tools=tools), ids)
            stop = len(ids) if i + 1 == len(turns) else common_prefix_length(
                self._ids(turns[:i + 1], n, tools=tools), ids)
            last_end = max((j for j in range(start, stop) if ids[j] in ends), default=None)
            if last_end is not None:
                stop = last_end + 1
            mask[start:stop] = [1] * max(0, stop - start)
        return mask

    def _ids(self, turns: list[Turn], n: int, add_generation_prompt: bool = False,
             tools: list | None = None) -> list[int]:
        return self._render(turns, n, add_generation_prompt=add_generation_prompt, tools=tools)[0]

    def _render(self, turns: list[Turn], n: int, add_generation_prompt: bool = False,
                masks: bool = False, tools: list | None = None) -> tuple[list[int], list[int]]:
        if not turns:
            return [], []
        try:
            out = self.tokenizer.apply_chat_template(
                turns, chat_template=self.template.text, tokenize=True, return_dict=True, tools=tools,
                add_generation_prompt=add_generation_prompt, return_assistant_tokens_mask=masks)
        except TemplateError as e:
            raise BadRow(n, f"the chat template ({self.template.source}) rejected this row: {e}") from None
        except (TypeError, ValueError, KeyError, AttributeError) as e:  # a template tripping over a row's values
            raise BadRow(n, f"the chat template ({self.template.source}) failed on this row: "
                            f"{type(e).__name__}: {e}") from None
        ids = list(out["input_ids"])
        return ids, (list(out["assistant_masks"]) if masks else [])


def split_document(example: SftExample, max_len: int) -> list[SftExample]:
    """A raw-text document cut into consecutive pieces of ``max_len`` tokens, the last one shorter: nothing is
    dropped. Each piece is a sequence of its own (packing keeps it apart from the others), so no piece attends
    across a document boundary."""
    ids, mask = example.input_ids, example.completion_mask
    return [SftExample(ids[k:k + max_len], mask[k:k + max_len]) for k in range(0, len(ids), max_len)]


def length(example: Example) -> int:
    """Tokens of an example as ``fit`` measures it (preference: prompt + the longer answer)."""
    if isinstance(example, SftExample):
        return len(example.input_ids)
    if isinstance(example, PairExample):
        return len(example.prompt_ids) + max(len(example.chosen_ids), len(example.rejected_ids))
    return len(example.prompt_ids) + len(example.completion_ids)


@dataclass(frozen=True)
class Fitted:
    """An example fitted to ``max_seq_len``: the (maybe truncated) example, or why it was dropped."""

    example: Example | None
    """The example to keep, or None when dropped."""
    truncated: bool = False
    """True when tokens were cut off."""
    reason: str | None = None
    """Why the example was dropped."""


def fit(example: Example, max_len: int, mode: str) -> Fitted:
    """Apply ``truncation`` (``truncate``: keep the first ``max_len`` tokens; ``drop``) and drop examples left
    with nothing to train."""
    if isinstance(example, SftExample):
        return _fit_sft(example, max_len, mode)
    prompt = example.prompt_ids
    answers = [example.chosen_ids, example.rejected_ids] if isinstance(example, PairExample) \
        else [example.completion_ids]
    longest = len(prompt) + max(len(a) for a in answers)
    truncated = False
    if longest > max_len:
        if mode == "drop":
            return Fitted(None, reason=f"{longest} tokens, longer than max_seq_len {max_len} (truncation: drop)")
        room = max_len - len(prompt)
        if room <= 0:
            return Fitted(None, reason=f"the prompt alone is {len(prompt)} tokens, leaving no room for the "
                                       f"answer in max_seq_len {max_len}")
        truncated = True
        answers = [a[:room] for a in answers]
    if any(not a for a in answers):
        return Fitted(None, reason="an answer has no tokens after the prompt")
    if isinstance(example, PairExample):
        return Fitted(replace(example, chosen_ids=answers[0], rejected_ids=answers[1]), truncated)
    return Fitted(replace(example, completion_ids=answers[0]), truncated)


def _fit_sft(example: SftExample, max_len: int, mode: str) -> Fitted:
    n = len(example.input_ids)
    truncated = False
    if n > max_len:
        if mode == "drop":
            return Fitted(None, reason=f"{n} tokens, longer than max_seq_len {max_len} (truncation: drop)")
        example = SftExample(example.input_ids[:max_len], example.completion_mask[:max_len])
        truncated = True
    if not any(example.completion_mask):
        if truncated:
            return Fitted(None, reason=f"no trained tokens left after truncation to max_seq_len {max_len} "
                                       f"(the example has {n} tokens)")
        return Fitted(None, reason="no trained tokens (no assistant turn in what is trained)")
    return Fitted(example, truncated)
