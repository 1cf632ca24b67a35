"""Changes to a pipeline file: the one object that both prints a "would fit" suggestion and is applied to re-check it.

An ``Edit`` is a list of settings, each one key of the pipeline file and the value to write there. It prints as

    KEY OLD → NEW, KEY OLD → NEW, ...

* ``KEY`` is the key's path, dotted: relative to the training stage the diagnostic points at (``micro_batch``,
  ``adapter.type``, ``distributed``), or from the top of the file when it starts with ``hardware.``
  (``hardware.gpus_per_node``);
* ``OLD`` is the value the file has now (the default when the key is not written), ``NEW`` the value to write, both
  as YAML flow values, read back by ftplan's own YAML loader: ``4``, ``true``, ``sdpa``, ``{strategy: zero3,
  offload_optimizer: true, offload_params: true}``. A mapping is the key's whole new value: it repeats the settings
  the file already has under that key;
* settings are separated by ``, `` outside braces; none of the keys or plain values contain ``→``.

``Edit.text`` writes this form; ``parse`` reads it back; ``Edit.apply`` writes the same settings into the
pipeline's data, which is what ``fit.Checker`` validates and checks. Nothing here knows about memory.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

from ..diagnostics import KeyPath
from ..sourcemap import key_path_text

ARROW = "→"
_PLAIN = re.compile(r"^[A-Za-z_][A-Za-z0-9_.\-]*$")


@dataclass(frozen=True)
class Setting:
    """One key of the pipeline file (its absolute path) and the value to write there."""

    path: KeyPath
    new: Any


@dataclass(frozen=True)
class Edit:
    """Settings applied together, in order (a later setting of the same key wins)."""

    settings: tuple[Setting, ...] = ()
    kind: str = ""
    """What kind of change it is (several micro-batch cuts or GPU counts share one kind)."""

    @property
    def key(self) -> tuple[tuple[KeyPath, str], ...]:
        """A hashable identity: each key's final value, in first-written order."""
        return tuple((path, flow(new)) for path, new in self.final().items())

    def final(self) -> dict[KeyPath, Any]:
        """Each key's value after every setting, in the order the keys are first written."""
        out: dict[KeyPath, Any] = {}
        for s in self.settings:
            out[s.path] = s.new
        return out

    def then(self, *others: "Edit") -> "Edit":
        """This edit followed by others (their kind when this one is empty)."""
        settings = self.settings + tuple(s for o in others for s in o.settings)
        kind = self.kind or next((o.kind for o in others if o.kind), "")
        return Edit(settings, kind)

    def against(self, pipeline: BaseModel) -> "Edit":
        """The same edit without the settings that write what ``pipeline`` already has."""
        return Edit(tuple(Setting(p, v) for p, v in self.final().items() if value_at(pipeline, p) != v), self.kind)

    def apply(self, data: dict[str, Any]) -> dict[str, Any]:
        """A copy of the pipeline's data (``Pipeline.model_dump``) with every setting written."""
        out = copy.deepcopy(data)
        for path, new in self.final().items():
            node: Any = out  # mappings and lists along the path
            for part in path[:-1]:
                if isinstance(part, str) and part not in node:
                    node[part] = {}
                node = node[part]
            node[path[-1]] = copy.deepcopy(new)
        return out

    def text(self, pipeline: BaseModel) -> str:
        """``KEY OLD → NEW, ...`` with OLD read from ``pipeline`` (the file the user has)."""
        return ", ".join(f"{display_key(p)} {flow(value_at(pipeline, p))} {ARROW} {flow(v)}"
                         for p, v in self.final().items())

    def anchor(self) -> KeyPath:
        """Where a diagnostic about this edit points: its first key under the stage, or its hardware key."""
        path = next(iter(self.final()), ())
        return path[:3] if path[:1] == ("stages",) else path


def display_key(path: KeyPath) -> str:
    """``micro_batch`` for ``("stages", 1, "micro_batch")``; ``hardware.gpus_per_node`` for a top-level path."""
    return key_path_text(path[2:] if path[:1] == ("stages",) else path)


def value_at(obj: Any, path: KeyPath) -> Any:
    """The value at ``path`` of a validated pipeline, defaults included; a model as the mapping its file holds."""
    for part in path:
        obj = obj[part] if isinstance(part, int) else getattr(obj, part)
    if isinstance(obj, BaseModel):
        return obj.model_dump(mode="json", exclude_unset=True)
    return obj


def flow(value: Any) -> str:
    """A value in YAML flow style: ``true``, ``4``, ``zero3``, ``{strategy: zero3, offload_params: true}``."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        if not _PLAIN.match(value) or ARROW in value or value.lower() in ("true", "false", "null", "yes", "no"):
            raise ValueError(f"{value!r} is not a plain YAML word")
        return value
    if value is None:
        return "null"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {flow(v)}" for k, v in value.items()) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(flow(v) for v in value) + "]"
    raise TypeError(f"cannot write {value!r} in a suggestion")


def parse(text: str) -> list[tuple[str, Any, Any]]:
    """Read ``KEY OLD → NEW, ...`` back into (dotted key, old value, new value), values loaded by ftplan's YAML
    loader as the pipeline file would hold them."""
    from ..loader import load_yaml

    def load(s: str) -> Any:
        return load_yaml(f"v: {s}\n", "<suggestion>")[0]["v"]

    out = []
    for part in _split(text):
        key, rest = part.split(" ", 1)
        old, new = rest.split(f" {ARROW} ")
        out.append((key, load(old), load(new)))
    return out


def _split(text: str) -> list[str]:
    """``text`` cut at every ``, `` outside braces and brackets."""
    parts, depth, start = [], 0, 0
    for k, ch in enumerate(text):
        if ch in "{[":
            depth += 1
        elif ch in "}]":
            depth -= 1
        elif depth == 0 and text.startswith(", ", k):
            parts.append(text[start:k])
            start = k + 2
    parts.append(text[start:])
    return parts

