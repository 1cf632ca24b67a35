"""One row of a declared dataset format turned into a canonical record, or the problems that stop it.

``convert_row(spec, value)`` is the single judge of a row: ``ftplan check`` calls it on the rows it reads and
the runtime's data stage on every row before tokenizing, so both accept and refuse exactly the same rows with
the same words. Problems carry a code (``FT5xx``), a severity (an error refuses the row; a warning keeps it),
a message, a hint that says how to fix it, and the key of the dataset entry the fix goes under (``columns``,
``roles`` or ``path``), so ``check`` can point at the pipeline line.

Canonical records: a ``Conversation`` (turns ``{"role", "content"}`` with the roles ``system``, ``user``,
``assistant``, ``tool``; an assistant turn that calls tools also has ``tool_calls``, and a conversation may
carry ``tools``), raw ``Text``, a preference ``Pair`` and an ``Unpaired`` KTO example.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Callable

from ftplan.schemas.datasets import PREFERENCE_FORMATS, SFT_FORMATS
from ftplan.suggest import did_you_mean

__all__ = [
    "CANONICAL_ROLES", "Conversation", "Converted", "Pair", "Record", "RowProblem", "Text", "Turn", "Unpaired",
    "convert_row", "group_of", "guess_role", "kind_of", "missing_tool_support", "needs_chat_template",
    "tool_features", "used_columns",
]

Row = dict[str, Any]
"""One dataset row as read: a JSON object, or a CSV row's cells by column name."""

Turn = dict[str, Any]
"""One canonical turn: ``{"role": system|user|assistant|tool, "content": str}``, plus ``tool_calls`` (a list of
``{"type": "function", "function": {"name", "arguments"}}``) on an assistant turn that calls tools."""

CANONICAL_ROLES = ("system", "user", "assistant", "tool")
"""Roles every chat template understands."""

_IDENTITY_ROLES = {r: r for r in CANONICAL_ROLES}

ROLE_GUESS = {"human": "user", "usr": "user", "prompter": "user", "customer": "user", "question": "user",
              "bot": "assistant", "gpt": "assistant", "model": "assistant", "ai": "assistant",
              "chatbot": "assistant", "answer": "assistant", "function_call": "tool_call", "tool_call": "tool_call",
              "observation": "tool", "function": "tool", "ipython": "tool", "tool_response": "tool",
              "sys": "system", "developer": "system"}
"""Speaker names seen in the wild and the canonical role they mean (used for hints only)."""


@dataclass(frozen=True)
class Conversation:
    """A chat example; assistant turns at index ``train_from`` or later are the trained completion."""

    turns: list[Turn]
    """The turns in order."""
    train_from: int = 0
    """Index of the first turn of the completion (``prompt_completion``: the number of prompt turns)."""
    tools: list[dict[str, Any]] | None = None
    """Tools the assistant may call, passed to the chat template as ``tools``."""


@dataclass(frozen=True)
class Text:
    """A raw-text example: no template, every token trained."""

    text: str
    """The text."""


@dataclass(frozen=True)
class Pair:
    """A preference pair: a shared prompt, a preferred and a dispreferred answer."""

    prompt: list[Turn]
    """Prompt turns."""
    chosen: list[Turn]
    """Preferred answer turns."""
    rejected: list[Turn]
    """Dispreferred answer turns."""


@dataclass(frozen=True)
class Unpaired:
    """A KTO example: a prompt, one answer and whether the answer is desirable."""

    prompt: list[Turn]
    """Prompt turns."""
    completion: list[Turn]
    """Answer turns."""
    label: bool
    """True when the answer is desirable."""


Record = Conversation | Text | Pair | Unpaired
"""Any canonical record."""


@dataclass(frozen=True)
class RowProblem:
    """Something wrong with one row: an error refuses the row, a warning keeps it."""

    code: str
    """Stable diagnostic code (``FT503``)."""
    severity: str
    """``error`` or ``warning``."""
    message: str
    """What is wrong, without the row's position (the caller adds ``line 7: ``)."""
    hint: str
    """How to fix it."""
    key: tuple[str, ...] = ("path",)
    """Key under the dataset entry where the fix goes: ``("columns", "output")``, ``("roles",)``, ``("path",)``."""

    @property
    def is_error(self) -> bool:
        """True when the row cannot be used."""
        return self.severity == "error"


@dataclass(frozen=True)
class Converted:
    """What ``convert_row`` made of a row: the record (None when an error refused it) and every problem."""

    record: Record | None
    """The canonical record, or None."""
    problems: tuple[RowProblem, ...] = ()
    """Errors and warnings, in the order found."""


class _Refused(Exception):
    """Stops converting a row at its first error (one clear reason per row)."""

    def __init__(self, *problems: RowProblem):
        super().__init__(problems[0].message)
        self.problems = problems


def group_of(fmt: str) -> str:
    """Output group of a dataset format: ``sft``, ``preference`` or ``kto``."""
    if fmt in SFT_FORMATS:
        return "sft"
    if fmt in PREFERENCE_FORMATS:
        return "preference"
    if fmt == "kto":
        return "kto"
    raise ValueError(f"unknown dataset format {fmt!r}")


def needs_chat_template(fmt: str) -> bool:
    """True when rows of this format are rendered through the chat template (every format but ``text``;
    preference and KTO strings become one-turn conversations)."""
    return fmt != "text"


def used_columns(spec: Any) -> frozenset[str]:
    """The row columns a dataset's format reads (after its ``columns`` mapping); any other column is unused."""
    c = spec.columns
    names = {"alpaca": ("instruction", "input", "output", "system", "history"),
             "sharegpt": ("messages", "system", "tools"), "messages": ("messages", "system", "tools"),
             "prompt_completion": ("prompt", "completion"), "text": ("text",),
             "preference": ("prompt", "chosen", "rejected"), "kto": ("prompt", "completion", "label", "messages")}
    return frozenset(getattr(c, n) for n in names[spec.format])


def convert_row(spec: Any, value: Any) -> Converted:
    """Judge one row of the dataset described by ``spec`` (a ``DatasetSpec``): its record, or why not."""
    warnings: list[RowProblem] = []
    try:
        if not isinstance(value, dict):
            raise _Refused(RowProblem("FT504", "error", f"is {_a(kind_of(value))}, not an object",
                                      "each row must be one JSON object with the format's columns"))
        record = _FORMATS[spec.format](spec, value, warnings)
    except _Refused as refused:
        return Converted(None, (*warnings, *refused.problems))
    return Converted(record, tuple(warnings))


# ------------------------------------------------------------------------------------------------ formats

def _alpaca(spec: Any, row: Row, warnings: list[RowProblem]) -> Conversation:
    c = spec.columns
    _require(spec, row, ("instruction", "output"))
    instruction = _string(spec, row, "instruction")
    output = _string(spec, row, "output")
    extra = _optional_string(spec, row, "input")
    system = _optional_string(spec, row, "system")
    turns: list[Turn] = []
    if system:
        turns.append({"role": "system", "content": system})
    history = row.get(c.history)
    if history not in (None, ""):
        if not isinstance(history, list) or not all(isinstance(h, list) and len(h) == 2 and all(
                isinstance(x, str) for x in h) for h in history):
            raise _Refused(_type(spec, c.history, history, "a list of [instruction, answer] pairs of strings"))
        for question, answer in history:
            turns += [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
    turns.append({"role": "user", "content": instruction + ("\n\n" + extra if extra else "")})
    turns.append({"role": "assistant", "content": output})
    _warn_empty_answers(spec, turns, warnings, f"'{c.output}'")
    return Conversation(turns)


def _chat(spec: Any, row: Row, warnings: list[RowProblem]) -> Conversation:
    c = spec.columns
    _require(spec, row, ("messages",))
    turns = _turns(spec, row[c.messages], c.messages, c.role, c.content, spec.roles)
    system = _optional_string(spec, row, "system")
    if system:
        if turns[0]["role"] == "system":
            raise _Refused(RowProblem("FT504", "error", f"has both a '{c.system}' column and a system turn in "
                                      f"'{c.messages}'", "keep one system prompt: empty the column or drop the turn",
                                      _key(spec, "columns", "system")))
        turns.insert(0, {"role": "system", "content": system})
    tools = _tools(spec, row)
    roles = [t["role"] for t in turns]
    if "assistant" not in roles:
        warnings.append(RowProblem("FT506", "warning", "the conversation has no assistant turn, so it trains "
                                   "nothing", "drop the row, or check the role mapping in `roles`",
                                   _key(spec, "roles")))
    elif roles[-1] != "assistant":
        warnings.append(RowProblem("FT506", "warning", f"the conversation ends with a {roles[-1]} turn, which is "
                                   "never a training target", "end each conversation with the assistant's answer",
                                   ("path",)))
    _warn_empty_answers(spec, turns, warnings, f"'{c.messages}'")
    return Conversation(turns, tools=tools)


def _prompt_completion(spec: Any, row: Row, warnings: list[RowProblem]) -> Conversation:
    c = spec.columns
    _require(spec, row, ("prompt", "completion"))
    prompt, completion = row[c.prompt], row[c.completion]
    if isinstance(prompt, str) and isinstance(completion, str):
        turns = [{"role": "user", "content": prompt}, {"role": "assistant", "content": completion}]
        _warn_empty_answers(spec, turns, warnings, f"'{c.completion}'")
        return Conversation(turns, train_from=1)
    if isinstance(prompt, list) and isinstance(completion, list):
        p = _turns(spec, prompt, c.prompt, "role", "content", _IDENTITY_ROLES)
        a = _turns(spec, completion, c.completion, "role", "content", _IDENTITY_ROLES)
        _warn_empty_answers(spec, a, warnings, f"'{c.completion}'")
        return Conversation(p + a, train_from=len(p))
    raise _Refused(RowProblem("FT504", "error", f"'{c.prompt}' is {_a(kind_of(prompt))} and '{c.completion}' "
                              f"{_a(kind_of(completion))}; both must be strings or both lists of turns",
                              "write both as strings, or both as lists of {role, content} turns"))


def _text(spec: Any, row: Row, warnings: list[RowProblem]) -> Text:
    _require(spec, row, ("text",))
    text = _string(spec, row, "text")
    if not text.strip():
        raise _Refused(RowProblem("FT504", "error", f"'{spec.columns.text}' is empty", "drop the row, or "
                                  "set `on_bad_row: drop` to skip empty texts"))
    return Text(text)


def _preference(spec: Any, row: Row, warnings: list[RowProblem]) -> Pair:
    c = spec.columns
    implicit = c.prompt not in row and not _mapped(spec, "prompt")
    _require(spec, row, ("chosen", "rejected") if implicit else ("prompt", "chosen", "rejected"))
    chosen, rejected = row[c.chosen], row[c.rejected]
    for col, value in ((c.chosen, chosen), (c.rejected, rejected)):
        if value is None or (isinstance(value, (str, list, dict)) and not value):
            raise _Refused(RowProblem("FT507", "error", f"'{col}' is empty", "every pair needs a non-empty chosen "
                                      "and rejected answer; drop the row"))
        if not isinstance(value, (str, list, dict)):
            raise _Refused(_type(spec, col, value, "a string, a turn or a list of turns"))
    if isinstance(chosen, str) != isinstance(rejected, str):
        raise _Refused(RowProblem("FT507", "error", f"'{c.chosen}' is {_a(kind_of(chosen))} and '{c.rejected}' "
                                  f"{_a(kind_of(rejected))}; both must be strings or both turns",
                                  "write both as strings, or both as turns ({role, content} objects or lists)"))
    if implicit:
        if isinstance(chosen, str):
            _require(spec, row, ("prompt",))  # strings need a prompt column: reports it as missing
        good = _answer_turns(spec, chosen, c.chosen)
        bad = _answer_turns(spec, rejected, c.rejected)
        shared = _common_turns(good, bad)
        if shared == 0:
            raise _Refused(RowProblem("FT507", "error", f"the row has no '{c.prompt}' column and '{c.chosen}' and "
                                      f"'{c.rejected}' differ from their first turn, so there is no shared prompt",
                                      f"add the prompt as a '{c.prompt}' column, or map it with `columns: "
                                      "{prompt: <column>}`", _key(spec, "columns", "prompt")))
        prompt, good, bad = good[:shared], good[shared:], bad[shared:]
        for col, answer in ((c.chosen, good), (c.rejected, bad)):
            if not answer:
                raise _Refused(RowProblem("FT507", "error", f"'{col}' has no turns after the prompt it shares with "
                                          "the other answer", "each answer needs its own final turn; drop the row"))
    else:
        prompt = _prompt_turns(spec, row[c.prompt], c.prompt)
        good = _after_prompt(prompt, _answer_turns(spec, chosen, c.chosen))
        bad = _after_prompt(prompt, _answer_turns(spec, rejected, c.rejected))
    if good == bad:
        warnings.append(RowProblem("FT508", "warning", "chosen and rejected are identical, so the pair carries no "
                                   "preference", "drop the row"))
    return Pair(prompt, good, bad)


def _kto(spec: Any, row: Row, warnings: list[RowProblem]) -> Unpaired:
    c = spec.columns
    conversation = _mapped(spec, "messages") or (c.completion not in row and c.messages in row
                                                 and not _mapped(spec, "completion"))
    if conversation:
        return _kto_conversation(spec, row)
    _require(spec, row, ("prompt", "completion", "label"))
    label = _kto_label(spec, row)
    prompt = _side(spec, row[c.prompt], c.prompt, "user")
    completion = _side(spec, row[c.completion], c.completion, "assistant")
    return Unpaired(prompt, completion, label)


def _kto_conversation(spec: Any, row: Row) -> Unpaired:
    """LLaMA-Factory's KTO rows: a conversation whose last turn is the labelled answer."""
    c = spec.columns
    _require(spec, row, ("messages", "label"))
    label = _kto_label(spec, row)
    turns = _turns(spec, row[c.messages], c.messages, c.role, c.content, spec.roles)
    if turns[-1]["role"] != "assistant":
        raise _Refused(RowProblem("FT515", "error", f"the last turn of '{c.messages}' is a {turns[-1]['role']} "
                                  "turn; KTO labels the last turn as the answer", "end each conversation with the "
                                  "assistant answer the label judges (or check the role mapping in `roles`)",
                                  _key(spec, "roles")))
    if len(turns) < 2 or all(t["role"] == "system" for t in turns[:-1]):
        raise _Refused(RowProblem("FT515", "error", f"'{c.messages}' has no prompt turn before its answer",
                                  "give each conversation the user turn(s) the answer replies to, or drop the row"))
    return Unpaired(turns[:-1], turns[-1:], label)


def _kto_label(spec: Any, row: Row) -> bool:
    c = spec.columns
    value = row[c.label]
    label = value if isinstance(value, bool) else _LABELS.get(
        value.strip().lower() if isinstance(value, str) else value if type(value) is int else None)
    if label is None:
        raise _Refused(RowProblem("FT509", "error", f"label '{c.label}' is {json.dumps(value)[:40]} "
                                  f"({kind_of(value)}), not a boolean", "write `true` (or 1) for a desirable answer "
                                  "and `false` (or 0) for an undesirable one", _key(spec, "columns", "label")))
    return label


_LABELS: dict[str | int | None, bool] = {"true": True, "false": False, "1": True, "0": False, 1: True, 0: False}
"""KTO labels besides booleans: 0/1 (integer columns) and their text (CSV cells are text)."""

_FORMATS: dict[str, Callable[[Any, Row, list[RowProblem]], Record]] = {
    "alpaca": _alpaca, "sharegpt": _chat, "messages": _chat, "prompt_completion": _prompt_completion, "text": _text,
    "preference": _preference, "kto": _kto}


# ------------------------------------------------------------------------------------------------ columns

def _mapped(spec: Any, name: str) -> bool:
    """The dataset maps column ``name`` to a column other than its default name. (Not ``model_fields_set``: a
    compiled stage's ``args.json`` writes every column, so the runtime would see each as set.)"""
    return bool(getattr(spec.columns, name) != type(spec.columns).model_fields[name].default)


def _key(spec: Any, name: str, *rest: str) -> tuple[str, ...]:
    """Key path under the dataset entry: the field when the user wrote it, else the dataset's ``path``."""
    return (name, *rest) if name in spec.model_fields_set else ("path",)


def _require(spec: Any, row: Row, names: tuple[str, ...]) -> None:
    missing = []
    for name in names:
        col = getattr(spec.columns, name)
        if col in row:
            continue
        keys = [k for k in row if isinstance(k, str)]
        close = did_you_mean(col, keys)
        if close:
            hint = f"{close} map it with `columns: {{{name}: {close.split(chr(39))[1]}}}`"
        else:
            hint = (f"map it with `columns: {{{name}: <column>}}` (the row has: "
                    f"{', '.join(keys[:8]) or 'no columns'}{', ...' if len(keys) > 8 else ''})")
        missing.append(RowProblem("FT503", "error", f"missing column '{col}' (format {spec.format})", hint,
                                  _key(spec, "columns", name)))
    if missing:
        raise _Refused(*missing)


def _string(spec: Any, row: Row, name: str) -> str:
    col = getattr(spec.columns, name)
    value = row[col]
    if not isinstance(value, str):
        raise _Refused(_type(spec, col, value, "a string"))
    return value


def _optional_string(spec: Any, row: Row, name: str) -> str:
    """An optional text column: "" when absent or null."""
    col = getattr(spec.columns, name)
    value = row.get(col)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise _Refused(_type(spec, col, value, "a string or null"))
    return value


def _type(spec: Any, col: str, value: Any, want: str) -> RowProblem:
    return RowProblem("FT504", "error", f"'{col}' is {_a(kind_of(value))}, not {want}",
                      f"make '{col}' {want} in every row (or set `on_bad_row: drop` to skip such rows)")


# ------------------------------------------------------------------------------------------------ turns

def _turns(spec: Any, value: Any, col: str, role_key: str, content_key: str, roles: dict[str, str],
           *, label: str | None = None) -> list[Turn]:
    """A non-empty list of turns with mapped roles (the first problem refuses the row)."""
    label = label or f"'{col}'"
    if not isinstance(value, list) or not value:
        what = "an empty list" if value == [] else _a(kind_of(value))
        raise _Refused(RowProblem("FT504", "error", f"{label} is {what}, not a non-empty list of turns",
                                  f"{label} must be a list of {{{role_key}, {content_key}}} objects"))
    return [_turn(spec, turn, f"turn {k} of {label}", role_key, content_key, roles)
            for k, turn in enumerate(value, start=1)]


def _turn(spec: Any, turn: Any, where: str, role_key: str, content_key: str, roles: dict[str, str]) -> Turn:
    if not isinstance(turn, dict):
        raise _Refused(RowProblem("FT504", "error", f"{where} is {_a(kind_of(turn))}, not an object with "
                                  f"'{role_key}' and '{content_key}'",
                                  f"write each turn as {{{role_key}: ..., {content_key}: ...}}"))
    calls = turn.get("tool_calls")
    for name, key in (("role", role_key), ("content", content_key)):
        if key in turn or (name == "content" and calls):
            continue
        keys = [x for x in turn if isinstance(x, str)]
        close = did_you_mean(key, keys)
        mappable = hasattr(spec.columns, name)
        if mappable:
            hint = (f"{close} map it with `columns: {{{name}: {close.split(chr(39))[1]}}}`" if close else
                    f"map it with `columns: {{{name}: <key>}}` (the turn has: {', '.join(keys) or 'no keys'})")
        else:
            hint = f"write each turn as {{{role_key}: ..., {content_key}: ...}}"
        raise _Refused(RowProblem("FT504", "error", f"{where} has no '{key}' key", hint,
                                  _key(spec, "columns", name) if mappable else ("path",)))
    role = turn[role_key]
    if not isinstance(role, str) or role not in roles:
        raise _Refused(_role_problem(spec, role, where, roles))
    canonical = roles[role]
    if canonical == "tool_call":
        return {"role": "assistant", "content": "", "tool_calls": _calls(turn.get(content_key), where)}
    if calls:
        if canonical != "assistant":
            raise _Refused(RowProblem("FT504", "error", f"{where} has 'tool_calls' but is a {canonical} turn",
                                      "only assistant turns call tools; fix the role"))
        content = turn.get(content_key)
        text = "" if content is None else _content(content, where, content_key)
        return {"role": "assistant", "content": text, "tool_calls": _calls(calls, where)}
    return {"role": canonical, "content": _content(turn[content_key], where, content_key)}


def _content(content: Any, where: str, key: str) -> str:
    """A turn's text: a string, or typed parts ``[{"type": "text", "text": ...}]`` joined; other parts refused."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for part in content:
            if isinstance(part, str):
                texts.append(part)
                continue
            kind = part.get("type") if isinstance(part, dict) else None
            if kind == "text" and isinstance(part.get("text"), str):
                texts.append(part["text"])
                continue
            shown = repr(kind) if isinstance(kind, str) else _a(kind_of(part))
            raise _Refused(RowProblem("FT513", "error", f"{where} has a content part of type {shown}; ftplan "
                                      "trains on text only", "drop the non-text parts (images, audio, files) or the "
                                      "row; text parts are written {\"type\": \"text\", \"text\": ...}"))
        return "".join(texts)
    if content is None:
        raise _Refused(RowProblem("FT504", "error", f"{where} has null '{key}'", "give the turn its text (only an "
                                  "assistant turn with 'tool_calls' may have null content), or drop the row"))
    raise _Refused(RowProblem("FT504", "error", f"{where}: '{key}' is {_a(kind_of(content))}, not a string",
                              "write the turn's text as a string"))


def _calls(value: Any, where: str) -> list[dict[str, Any]]:
    """Tool calls, from a JSON string, an object or a list of objects, as ``{"type": "function", ...}``."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except (ValueError, RecursionError):
            raise _Refused(RowProblem("FT504", "error", f"{where} is a tool call whose text is not JSON",
                                      'write the call as {"name": "...", "arguments": {...}}')) from None
    calls = value if isinstance(value, list) else [value]
    out = []
    for call in calls:
        fn = call.get("function", call) if isinstance(call, dict) else None
        name = fn.get("name") if isinstance(fn, dict) else None
        args = fn.get("arguments", {}) if isinstance(fn, dict) else None
        if isinstance(args, str):
            try:
                args = json.loads(args) if args.strip() else {}
            except (ValueError, RecursionError):
                args = None
        if not isinstance(name, str) or not name or not isinstance(args, dict):
            raise _Refused(RowProblem("FT504", "error", f"{where} is not a tool call with a name and arguments",
                                      'write each call as {"name": "...", "arguments": {...}} (arguments: an object '
                                      "or a JSON string of one)"))
        out.append({"type": "function", "function": {"name": name, "arguments": args}})
    if not out:
        raise _Refused(RowProblem("FT504", "error", f"{where} calls no tool (an empty list)",
                                  'write the call as {"name": "...", "arguments": {...}}'))
    return out


def _tools(spec: Any, row: Row) -> list[dict[str, Any]] | None:
    """The ``tools`` column as JSON-schema function definitions; None when the row has none."""
    col = spec.columns.tools
    value = row.get(col)
    if value is None or value == "" or value == []:
        return None
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except (ValueError, RecursionError):
            raise _Refused(RowProblem("FT504", "error", f"'{col}' is a string that is not JSON",
                                      "write the tools as a list of function definitions, or that list as a JSON "
                                      "string", _key(spec, "columns", "tools"))) from None
    if not isinstance(value, list) or not all(isinstance(t, dict) and t for t in value):
        raise _Refused(RowProblem("FT504", "error", f"'{col}' is not a list of function definitions",
                                  'write [{"name": ..., "description": ..., "parameters": {...}}, ...]',
                                  _key(spec, "columns", "tools")))
    return [t if t.get("type") == "function" and "function" in t else {"type": "function", "function": t}
            for t in value]


def _role_problem(spec: Any, role: Any, where: str, roles: dict[str, str]) -> RowProblem:
    if roles is _IDENTITY_ROLES:
        return RowProblem("FT505", "error", f"{where} has role {json.dumps(role)[:40]}, which is not one of "
                          f"{', '.join(CANONICAL_ROLES)}", f"use one of {', '.join(CANONICAL_ROLES)}")
    if not isinstance(role, str):
        return RowProblem("FT505", "error", f"{where} has {_a(kind_of(role))} as its role, not a role name",
                          "write each turn's role as a string", ("path",))
    guess = guess_role(role)
    if "roles" in spec.model_fields_set:
        hint = f"add `{role}: {guess}` to the dataset's `roles`"
    else:
        hint = (f"set `roles: {{{role}: {guess}, ...}}` on the dataset, listing every role the file uses (a "
                "`roles` block replaces the default mapping)")
    return RowProblem("FT505", "error", f"role '{role}' has no mapping in roles ({where})", hint,
                      _key(spec, "roles"))


def guess_role(role: str) -> str:
    """The canonical role a speaker name most likely means (``function_call`` -> ``tool_call``)."""
    low = role.lower()
    if low in ROLE_GUESS or low in CANONICAL_ROLES:
        return ROLE_GUESS.get(low, low)
    for part, target in (("sys", "system"), ("user", "user"), ("human", "user"), ("call", "tool_call"),
                         ("tool", "tool"), ("func", "tool"), ("observ", "tool")):
        if part in low:
            return target
    return "assistant"


def _side(spec: Any, value: Any, col: str, string_role: str) -> list[Turn]:
    """A prompt or answer of a prompt/completion-like format: a string is one turn, a list is turns."""
    if isinstance(value, str):
        return [{"role": string_role, "content": value}]
    if isinstance(value, list):
        return _turns(spec, value, col, "role", "content", _IDENTITY_ROLES)
    raise _Refused(_type(spec, col, value, "a string or a list of turns"))


def _chat_keys(spec: Any) -> tuple[str, str]:
    return spec.columns.role, spec.columns.content


def _prompt_turns(spec: Any, value: Any, col: str) -> list[Turn]:
    if isinstance(value, str):
        return [{"role": "user", "content": value}]
    if isinstance(value, dict):
        value = [value]
    if isinstance(value, list):
        return _turns(spec, value, col, *_chat_keys(spec), spec.roles)
    raise _Refused(_type(spec, col, value, "a string or a list of turns"))


def _answer_turns(spec: Any, value: Any, col: str) -> list[Turn]:
    """A preference answer: a string (one assistant turn), one turn object, or a list of turns."""
    if isinstance(value, str):
        return [{"role": "assistant", "content": value}]
    return _turns(spec, [value] if isinstance(value, dict) else value, col, *_chat_keys(spec), spec.roles)


def _after_prompt(prompt: list[Turn], answer: list[Turn]) -> list[Turn]:
    """An answer without the prompt turns it repeats: whole conversations next to a prompt column (UltraFeedback's
    binarized rows, Axolotl's ``chat_template.argilla``) begin with the prompt, which is not part of the answer."""
    if len(answer) > len(prompt) and answer[:len(prompt)] == prompt:
        return answer[len(prompt):]
    return answer


def _common_turns(a: list[Turn], b: list[Turn]) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def _warn_empty_answers(spec: Any, turns: list[Turn], warnings: list[RowProblem], label: str) -> None:
    empty = [k for k, t in enumerate(turns, start=1)
             if t["role"] == "assistant" and not t.get("tool_calls") and not t["content"].strip()]
    if empty:
        which = "the answer" if len(turns) <= 2 else f"assistant turn {empty[0]} of {label}"
        warnings.append(RowProblem("FT512", "warning", f"{which} is empty, so only the end-of-turn token is trained "
                                   "there", "fill in the answer or drop the row"))


# ------------------------------------------------------------------------------------------------ tools

def tool_features(record: Record) -> frozenset[str]:
    """What a record needs from the chat template: ``tools`` (a tool list) and ``tool_calls`` (calls)."""
    if isinstance(record, Conversation):
        turns, tools = record.turns, record.tools
    elif isinstance(record, Pair):
        turns, tools = record.prompt + record.chosen + record.rejected, None
    elif isinstance(record, Unpaired):
        turns, tools = record.prompt + record.completion, None
    else:
        return frozenset()
    found = {"tool_calls"} if any(t.get("tool_calls") for t in turns) else set()
    return frozenset(found | ({"tools"} if tools else set()))


_READS = {"tool_calls": re.compile(r"\btool_calls\b"), "tools": re.compile(r"\btools\b")}
_WHAT = {"tool_calls": "tool calls (it never reads a message's `tool_calls`)",
         "tools": "a list of tools (it never reads `tools`)"}


def missing_tool_support(template: str, features: frozenset[str]) -> list[str]:
    """What of ``features`` a chat template's text cannot render, in words (empty when it can)."""
    return [_WHAT[f] for f in sorted(features) if not _READS[f].search(template or "")]


# ------------------------------------------------------------------------------------------------ words

def kind_of(value: Any) -> str:
    """JSON name of a value's type: ``string``, ``number``, ``boolean``, ``null``, ``list``, ``object``."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "list"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def _a(kind: str) -> str:
    return "null" if kind == "null" else ("an " if kind[0] in "aeiou" else "a ") + kind
