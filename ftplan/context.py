"""What the pure steps (check, estimate, plan) work on: the validated pipeline plus a snapshot of the local
files it references, read once by ``inputs.read_inputs``, and every stage's derived facts (``resolved_stage``).

Nothing in here touches the disk; everything downstream of loading is a pure function of a ``Context``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, TYPE_CHECKING

from .data.scan import DatasetScan
from .resolved_stage import ResolvedStage, resolve_stages
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
class TokenizerInfo:
    """What a local tokenizer folder tells offline: its vocabulary size and special tokens."""

    vocab_size: int | None = None
    has_chat_template: bool = False
    chat_template: str | None = None
    """The tokenizer's own chat template text (``tokenizer_config.json`` or ``chat_template.jinja``)."""
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
    datasets: dict[tuple[int, int], DatasetScan] = field(default_factory=dict)
    """What reading each local dataset found, keyed by (index of the data stage in ``stages``, index in its
    ``datasets`` list); positions, not ids, so a duplicated stage id cannot mix two stages' files."""
    missing: tuple[tuple[tuple[str | int, ...], str], ...] = ()
    """(key path, relative path) of local paths that do not exist."""
    hub_datasets: tuple[tuple[tuple[str | int, ...], str], ...] = ()
    """(key path, value) of dataset paths that are neither local files nor folders, taken as hub dataset ids."""
    chat_template_error: str | None = None
    """Why a local ``chat_template`` file cannot be used (a folder, binary, not UTF-8), when it cannot."""

    @property
    def base_is_local(self) -> bool:
        """``model.base`` names a local path, not a hub id: an existing folder or file (its ``config.json`` read,
        or the reason it cannot be), or a path-like value that does not exist yet (``missing``)."""
        return (self.model_config is not None or self.model_config_error is not None
                or any(path == ("model", "base") for path, _ in self.missing))


@dataclass(frozen=True)
class Context:
    """The validated pipeline and everything resolved from it, shared by checks, estimator and planner.

    ``stages`` holds each stage's derived facts (strategy, world size, batch, adapter, reference, placement), made
    by ``resolved_stage.resolve_stages`` when the context is made, so no context exists without them."""

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
    stages: tuple[ResolvedStage, ...] = field(init=False)
    """Every stage's derived facts, in file order (``resolved_stage``)."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "stages", resolve_stages(self.pipeline, self.links, self.inputs))

    def facts(self, stage_id: str) -> ResolvedStage | None:
        """The resolved facts of the stage with this id (None when no stage, or several, have it)."""
        found = [r for r in self.stages if r.id == stage_id]
        return found[0] if len(found) == 1 else None
