"""Byte-stable serialisers for the generated config files: sorted keys, LF line ends, one final newline."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import yaml


def to_json(data: Any) -> str:
    """JSON with sorted keys and 2-space indent, non-ASCII kept as is, ending with one newline."""
    return json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False, allow_nan=False) + "\n"


class _Dumper(yaml.SafeDumper):
    """SafeDumper that never emits aliases (``&id001``), so every value reads where it is used."""

    def ignore_aliases(self, data: Any) -> bool:
        """Always true: repeated values are written out again."""
        return True


def to_yaml(data: Any) -> str:
    """Block-style YAML with sorted keys, ending with one newline; strings YAML could misread are quoted."""
    text = yaml.dump(data, Dumper=_Dumper, sort_keys=True, default_flow_style=False, allow_unicode=True,
                     width=1_000_000, line_break="\n")
    return text if text.endswith("\n") else text + "\n"


def sha256_text(text: str) -> str:
    """Hex sha256 of a text's UTF-8 bytes (what ``sha256sum`` prints for the written file)."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()
