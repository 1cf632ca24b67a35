"""What the pure steps (check, estimate, plan) work on: the validated pipeline plus a snapshot of the local
files it references, read once by ``inputs.read_inputs``.

Nothing in here touches the disk; everything downstream of loading is a pure function of a ``Context``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, TYPE_CHECKING

from .schemas import Pipeline

if TYPE_CHECKING:  # pragma: no cover
    from .catalog.gpus import GpuSpec
    from .catalog.models import ModelShape
    from .lineage import StageLink


@dataclass(frozen=True)
class LocalFile:
    """A local file the plan depends on, identified by its path relative to the project root."""

    path: str
    sha256: str
    size: int


@dataclass(frozen=True)
class DatasetHead:
    """The first rows of a local dataset file, as parsed JSON-like dicts, for contract checks.

    ``error`` is set (and ``rows`` holds what parsed before it) when the file cannot be read; ``error_row`` is
    its 1-based row (line for JSONL) number."""

    path: str
    rows: tuple[dict[str, Any], ...] = ()
    error: str | None = None
    error_row: int | None = None
    checked: bool = True
    """False for formats read only at run time (parquet, dataset folders, hub datasets)."""


@dataclass(frozen=True)
class TokenizerInfo:
    """What a local tokenizer folder tells offline: its vocabulary size and special tokens."""

    vocab_size: int | None = None
    special_tokens: frozenset[str] = frozenset()
    has_chat_template: bool = False
    eos_token: str | None = None
    tokens: frozenset[str] = frozenset()
    """Every token string in the vocabulary (to check template and added tokens)."""


@dataclass(frozen=True)
class Inputs:
    """A snapshot of every local file the pipeline references (hashes for the lock, parsed heads for checks)."""

    files: tuple[LocalFile, ...] = ()
    model_config: dict[str, Any] | None = None
    """``config.json`` of a local base model, parsed."""
    model_config_error: str | None = None
    tokenizer: TokenizerInfo | None = None
    chat_template: str | None = None
    """Contents of a local chat-template file."""
    datasets: dict[tuple[str, int], DatasetHead] = field(default_factory=dict)
    """Keyed by (data stage id, index in its ``datasets`` list)."""
    missing: tuple[tuple[tuple[str | int, ...], str], ...] = ()
    """(key path, relative path) of local paths that do not exist."""


@dataclass(frozen=True)
class Context:
    """The validated pipeline and everything resolved from it, shared by checks, estimator and planner."""

    pipeline: Pipeline
    pipeline_path: str
    """The pipeline file as the user named it (for messages and the plan's provenance)."""
    pipeline_sha256: str
    inputs: Inputs
    gpu: "GpuSpec | None"
    shape: "ModelShape | None"
    shape_source: str
    """Where the architecture came from: ``config.json`` or ``catalog:<key>``."""
    links: "dict[str, StageLink]"
