"""Importers: another tool's training config turned into an equivalent ftplan pipeline (commented YAML text).

Each importer is pure: the config as parsed (a dict) in, the pipeline text and what was and was not carried over
out. The CLI (``ftplan import``) reads the file, writes the pipeline and checks it.
"""

from .axolotl import DEFAULT_GPU, Imported, import_axolotl
from .axolotl_common import ImportRefused

__all__ = ["DEFAULT_GPU", "ImportRefused", "Imported", "import_axolotl"]
