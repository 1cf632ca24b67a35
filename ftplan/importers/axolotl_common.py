"""What the Axolotl importer's modules share: the refusal, the builder that collects the pipeline's comments and
what became of each Axolotl key, and how Axolotl's loosely typed values are read."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .commented_yaml import Path


class ImportRefused(Exception):
    """The config cannot become a pipeline (no base model, an RL method without a stage kind) or cannot be read
    (``usage``: the command line names no readable YAML file): what and how to proceed."""

    def __init__(self, message: str, hint: str, *, usage: bool = False):
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.usage = usage


def on(value: Any) -> bool:
    """Axolotl's truthy values: ``true``, ``auto``, ``offload``, a non-zero number, a non-empty list or mapping."""
    if isinstance(value, str):
        return value.strip().lower() not in ("", "false", "no", "off", "0", "none", "null")
    return bool(value)


def number(value: Any) -> float | None:
    """A number, also from a numeric string (``2e-5`` is a string to YAML 1.1 readers)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    try:
        return float(str(value))
    except ValueError:
        return None


def integer(value: Any) -> int | None:
    """A whole number, also from a numeric string; None otherwise."""
    n = number(value)
    return int(n) if n is not None and n == int(n) else None


class Builder:
    """Collects the pipeline document, the comment beside each value and what became of each Axolotl key."""

    def __init__(self, cfg: Mapping[str, Any]):
        self.cfg = cfg
        self.comments: dict[Path, str] = {}
        self.mapped: dict[str, str] = {}
        self.unmapped: dict[str, str] = {}
        self.used: set[str] = set()

    def given(self, key: str) -> bool:
        """The config sets ``key`` to a value."""
        return self.cfg.get(key) is not None

    def took(self, keys: tuple[str, ...], where: str) -> None:
        """Record ``keys`` as carried over into the ftplan key ``where``."""
        for k in keys:
            self.mapped.setdefault(k, where)
            self.used.add(k)

    def skip(self, key: str, why: str) -> None:
        """Record ``key`` as not carried over, and why."""
        self.unmapped[key] = why
        self.used.add(key)

    def comment(self, path: Path, keys: tuple[str, ...], note: str = "") -> None:
        """The comment beside ``path``: the Axolotl keys it came from and a note."""
        source = ", ".join(keys)
        text = f"from {source}" if source else ""
        self.comments[path] = "; ".join(t for t in (text, note) if t)
