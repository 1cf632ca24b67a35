"""Shared base model and small constrained types for the pipeline schema.

Every model forbids unknown keys and is immutable. Each field's documentation is the docstring under it
(``docs.py`` reads it into the JSON Schema ``description`` and into error hints).
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, StringConstraints


class FtplanModel(BaseModel):
    """Base of every schema model: unknown keys are errors, values are frozen, docstrings document fields."""

    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        validate_default=False,
        str_strip_whitespace=False,
        defer_build=True,  # validators are built on first use, for the model validated (import stays fast)
    )


StageId = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_]{0,31}$")]
"""A stage identifier: lowercase letters, digits and underscores, starting with a letter (at most 32)."""

Name = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")]
"""A pipeline name: letters, digits, '.', '_' and '-' (at most 64); used in job names and paths."""

NonEmptyStr = Annotated[str, StringConstraints(min_length=1)]
"""Any non-empty string (paths and ids; shell-quoted wherever it reaches a script)."""

SafeToken = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9._:,=+/@%&|\[\]*-]{1,200}$")]
"""A value safe inside an ``#SBATCH`` directive: no whitespace, quotes, ``$``, backticks or ``;``."""

EnvName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")]
"""An environment variable name."""

ShellLine = Annotated[str, StringConstraints(pattern=r"^[^\n\r]+$")]
"""One line of shell code (no line breaks)."""

MemSize = Annotated[str, StringConstraints(pattern=r"^(0|[1-9][0-9]{0,12}[KMGTkmgt]?)$")]
"""A Slurm memory size: a whole number with an optional unit K, M, G or T, such as ``64G`` (megabytes without a
unit, and ``0`` for all of a node's memory)."""

GresTypeName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9._-]{1,64}$")]
"""A GPU type as the site's ``gres.conf`` names it: letters, digits, '.', '_' and '-' (no ':'), such as ``h100``."""

ContainerImage = Annotated[str, StringConstraints(pattern=r"^\S{1,1000}$")]
"""A container image (registry reference, ``docker://`` address or image file): no whitespace."""

ContainerMount = Annotated[str, StringConstraints(pattern=r"^[^\s,]{1,1000}$")]
"""A container mount ``SRC[:DST[:FLAGS]]``: no whitespace or commas."""
