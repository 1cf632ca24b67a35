"""One Axolotl ``datasets`` (or ``pretraining_dataset``) entry -> one ftplan dataset entry.

Axolotl names a prompt strategy per dataset (``type``); ftplan names the row shape (``format``) and renders every
conversation with the pipeline's chat template. ``dataset_entry`` maps the strategies whose rows ftplan reads as
they are, with their field mappings (``field_messages``, ``message_property_mappings``, ``field_chosen``, ``roles``,
...) as ``columns`` and ``roles``; for the others it writes the nearest format and says in the entry's comment what
to check. Which group of the data stage an entry feeds depends on the training kind (``rl``, ``reward_model``,
``pretraining_dataset``), so the kind is an argument.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

TEMPLATE_PREFIXES = ("chatml", "llama3")
"""Axolotl strategy prefixes (``chatml.intel``) that name a chat template ftplan ships under the same name."""

_DPO_COLUMNS: dict[str, dict[str, str]] = {
    "default": {}, "prompt_pairs": {}, "intel": {"prompt": "question"}, "icr": {"prompt": "input"},
    "argilla": {"prompt": "instruction", "chosen": "chosen_response", "rejected": "rejected_response"},
}
"""Axolotl's ``<template>.<strategy>`` DPO/ORPO strategies whose fields are strings: the columns ftplan reads."""
_KTO_COLUMNS: dict[str, dict[str, str]] = {
    "ultra": {}, "prompt_pairs": {}, "intel": {"prompt": "question"}, "argilla": {"prompt": "instruction"},
}
"""Axolotl's ``<template>.<strategy>`` KTO strategies: the columns ftplan reads (``completion`` and ``label`` as
named)."""
_WHOLE_CONVERSATIONS = ("argilla_chat", "ultra")
"""Preference strategies whose ``chosen``/``rejected`` are whole conversations (the user turn, then the answer)."""
_CANONICAL = {"system", "user", "assistant", "tool"}


@dataclass
class Entry:
    """A mapped dataset: the ftplan entry, what each Axolotl key became, and what could not be carried over."""

    spec: dict[str, Any]
    """The ftplan dataset entry (``path``, ``format``, ``split``, ``columns``, ``roles``)."""
    mapped: dict[str, str] = field(default_factory=dict)
    """Axolotl key of the entry -> the ftplan key it became (relative to the entry: ``columns.messages``)."""
    unmapped: dict[str, str] = field(default_factory=dict)
    """Axolotl key of the entry -> why it was not carried over."""
    caveat: str = ""
    """What to check in the written entry (its comment), empty when the mapping is exact."""
    template: str | None = None
    """The chat template the strategy's prefix names (``chatml.intel`` -> ``chatml``), when ftplan ships it."""


def _columns(entry: Entry, pairs: dict[str, tuple[str, Any]]) -> None:
    """Write ``columns`` for every canonical column (key) the Axolotl entry names a field for: ``pairs`` maps the
    canonical column to (Axolotl key, field name or None)."""
    cols = entry.spec.setdefault("columns", {})
    for canonical, (key, value) in pairs.items():
        if value is None:
            continue
        entry.mapped.setdefault(key, f"columns.{canonical}")
        cols[canonical] = str(value)
    if not cols:
        del entry.spec["columns"]


def _roles(entry: Entry, raw: Any) -> None:
    """Axolotl's ``roles: {user: [human, user], ...}`` (canonical -> file values) as ftplan's ``roles`` (file value ->
    canonical)."""
    if not isinstance(raw, dict):
        return
    roles: dict[str, str] = {}
    for canonical, sources in raw.items():
        if canonical not in _CANONICAL:
            entry.unmapped["roles"] = f"role '{canonical}' is not one of ftplan's roles (system, user, assistant, tool)"
            return
        for source in sources if isinstance(sources, list) else [sources]:
            roles[str(source)] = canonical
    entry.spec["roles"] = roles
    entry.mapped["roles"] = "roles"


def _property_keys(raw: dict[str, Any], entry: Entry) -> tuple[str | None, str | None]:
    """The role and content keys of a turn: ``message_property_mappings``, or the legacy ``message_field_*``."""
    props = raw.get("message_property_mappings")
    role = content = None
    if isinstance(props, dict):
        role, content = props.get("role"), props.get("content")
        extra = sorted(set(props) - {"role", "content"})
        if extra:
            entry.unmapped["message_property_mappings"] = (f"ftplan reads a turn's role and content only, not "
                                                           f"{', '.join(extra)}")
        else:
            entry.mapped["message_property_mappings"] = "columns.role, columns.content"
    role = raw.get("message_field_role", role)
    content = raw.get("message_field_content", content)
    for key in ("message_field_role", "message_field_content"):
        if key in raw:
            entry.mapped[key] = "columns." + key.rsplit("_", 1)[1]
    return role, content


def dataset_entry(raw: dict[str, Any], kind: str) -> Entry:
    """The ftplan dataset entry for one Axolotl dataset entry of a config training ``kind`` (``sft``, ``cpt``,
    ``dpo``, ``orpo``, ``kto`` or ``reward``)."""
    entry = Entry(spec={})
    path = raw.get("path") or raw.get("data_files")
    entry.spec["path"] = path if isinstance(path, str) else "<set the dataset path>"
    entry.mapped["path" if raw.get("path") else "data_files"] = "path"
    if isinstance(raw.get("split"), str):
        entry.spec["split"] = raw["split"]
        entry.mapped["split"] = "split"
    strategy = str(raw.get("type") or ("pretrain" if kind == "cpt" else "chat_template"))
    entry.mapped["type"] = "format"
    prefix, _, rest = strategy.partition(".")
    if kind == "cpt" or strategy in ("pretrain", "completion"):
        _text(entry, raw, strategy)
    elif kind in ("dpo", "orpo", "reward"):
        _preference(entry, raw, strategy, prefix, rest)
    elif kind == "kto":
        _kto(entry, strategy, prefix, rest)
    else:
        _supervised(entry, raw, strategy)
    if prefix in TEMPLATE_PREFIXES and rest:
        entry.template = prefix
    _leftovers(entry, raw)
    return entry


def _text(entry: Entry, raw: dict[str, Any], strategy: str) -> None:
    entry.spec["format"] = "text"
    column = raw.get("text_column") or raw.get("field")
    _columns(entry, {"text": ("text_column" if raw.get("text_column") else "field", column)})
    if strategy not in ("pretrain", "completion"):
        entry.caveat = f"Axolotl type '{strategy}' read as raw text (every token trained)"


def _supervised(entry: Entry, raw: dict[str, Any], strategy: str) -> None:
    base = strategy.split(":")[0].split(".")[0]
    if base.startswith("alpaca"):
        entry.spec["format"] = "alpaca"
        _columns(entry, {c: (f"field_{c}", raw.get(f"field_{c}")) for c in ("instruction", "input", "output",
                                                                             "system")})
        if strategy != "alpaca":
            entry.caveat = (f"Axolotl's '{strategy}' prompt style is not used: ftplan renders the instruction and "
                            "answer with the model's chat template")
        return
    if base in ("chat_template", "sharegpt"):
        role, content = _property_keys(raw, entry)
        messages = raw.get("field_messages")
        sharegpt = base == "sharegpt" or role == "from"
        entry.spec["format"] = "sharegpt" if sharegpt else "messages"
        _columns(entry, {"messages": ("field_messages", messages), "role": ("message_property_mappings", role),
                         "content": ("message_property_mappings", content)})
        _roles(entry, raw.get("roles"))
        if base == "sharegpt" and strategy != "sharegpt":
            entry.caveat = f"Axolotl's '{strategy}' variant read as plain ShareGPT turns"
        return
    entry.spec["format"] = "messages"
    entry.caveat = (f"Axolotl type '{strategy}' has no ftplan equivalent: `format: messages` is a guess; write the "
                    "format and `columns` of the file (alpaca, sharegpt, messages, prompt_completion, text)")
    entry.unmapped["type"] = entry.caveat
    del entry.mapped["type"]


def _preference(entry: Entry, raw: dict[str, Any], strategy: str, prefix: str, rest: str) -> None:
    entry.spec["format"] = "preference"
    if strategy in ("chat_template", "chat_template.default"):
        role, content = _property_keys(raw, entry)
        _columns(entry, {"prompt": ("field_messages", raw.get("field_messages", "messages")),
                         "chosen": ("field_chosen", raw.get("field_chosen")),
                         "rejected": ("field_rejected", raw.get("field_rejected")),
                         "role": ("message_property_mappings", role),
                         "content": ("message_property_mappings", content)})
        if "field_messages" not in raw:
            entry.mapped.pop("field_messages", None)
        _roles(entry, raw.get("roles"))
        return
    if strategy == "bradley_terry.chat_template":
        entry.spec["columns"] = {"prompt": "input"}
        entry.caveat = "Axolotl's bradley_terry rows: `input` is the prompt; their `system` column is not read"
        return
    if rest in _WHOLE_CONVERSATIONS or strategy == "chat_template.argilla":
        entry.caveat = (f"Axolotl's '{strategy}' rows hold whole conversations in chosen/rejected (the user turn, "
                        "then the answer): ftplan reads each answer as the turns after the `prompt` column's turns "
                        "(or, without that column, after the turns both conversations start with)")
        return
    if prefix in TEMPLATE_PREFIXES and rest in _DPO_COLUMNS:
        if _DPO_COLUMNS[rest]:
            entry.spec["columns"] = dict(_DPO_COLUMNS[rest])
        entry.caveat = "the rows' `system` column, if any, is not read"
        return
    entry.caveat = (f"Axolotl type '{strategy}' has no ftplan equivalent: `format: preference` reads prompt, chosen "
                    "and rejected columns; map yours with `columns`")
    entry.unmapped["type"] = entry.caveat
    del entry.mapped["type"]


def _kto(entry: Entry, strategy: str, prefix: str, rest: str) -> None:
    entry.spec["format"] = "kto"
    if prefix in TEMPLATE_PREFIXES and rest in _KTO_COLUMNS:
        if _KTO_COLUMNS[rest]:
            entry.spec["columns"] = dict(_KTO_COLUMNS[rest])
        entry.caveat = "the rows' `system` column, if any, is not read"
        return
    entry.caveat = (f"Axolotl type '{strategy}' has no ftplan equivalent: `format: kto` reads prompt, completion "
                    "and label columns; map yours with `columns`")
    entry.unmapped["type"] = entry.caveat
    del entry.mapped["type"]


_ENTRY_REASONS = {
    "name": "ftplan reads a hub dataset's default configuration; pick the files with `path` (a folder or file of "
            "that configuration)",
    "ds_type": "ftplan reads the file type from the extension (.jsonl, .json, .parquet, .csv)",
    "shards": "use `max_rows` to read the first rows only",
    "roles_to_train": "the data stage's `loss_on` picks the trained tokens",
    "train_on_eos": "the data stage's `loss_on` picks the trained tokens",
    "chat_template": "ftplan renders every dataset with the pipeline's `model.chat_template`",
    "drop_system_message": "ftplan keeps system turns",
    "field_system": "ftplan's preference and KTO rows have no system column",
    "trust_remote_code": "ftplan reads hub datasets with `datasets`, without remote code",
    "revision": "ftplan reads a hub dataset's main revision",
    "preprocess_shards": "the data stage tokenizes every row it reads",
}
"""Why an Axolotl dataset key is not carried over (keys the mapping above did not use)."""


def _leftovers(entry: Entry, raw: dict[str, Any]) -> None:
    """Every key of the entry neither mapped nor already explained: unmapped with a reason."""
    for key, value in raw.items():
        if key in entry.mapped or key in entry.unmapped or value is None:
            continue
        entry.unmapped[key] = _ENTRY_REASONS.get(key, "ftplan has no setting for it")
