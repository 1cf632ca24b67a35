"""Read another tool's config file for an importer: its text parsed as ftplan parses its own YAML (YAML 1.2 core:
``2e-5`` is a number, ``yes`` stays a word, duplicate keys are errors)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..diagnostics import FtplanError
from ..loader import load_yaml
from .axolotl_common import ImportRefused


def read_config(path: Path) -> dict[str, Any]:
    """The config at ``path`` as a dict; ``ImportRefused`` (``usage``) when the file cannot be read or is not a YAML
    mapping, saying where and why."""
    if not path.is_file():
        what = "is a folder, not a config file" if path.is_dir() else "does not exist"
        raise ImportRefused(f"{path} {what}", "pass the Axolotl YAML config file", usage=True)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else "it is not UTF-8 text"
        raise ImportRefused(f"cannot read {path}: {reason}", "pass the Axolotl YAML config file", usage=True) from None
    try:
        data, _ = load_yaml(text, str(path))
    except FtplanError as exc:
        first = exc.diagnostics[0]
        where = f"{first.span}: " if first.span else ""
        raise ImportRefused(f"{where}{first.message}", first.hint or "fix the YAML", usage=True) from None
    return data
