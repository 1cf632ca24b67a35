"""The data stage of the runtime: datasets in, tokenized and masked (optionally packed) splits out.

Output layout (in the stage's ``output_dir``): ``sft/train``, ``sft/validation``, ``preference/...``,
``kto/...`` (``datasets`` folders; only groups that exist, validation only when ``val_fraction > 0``),
``manifest.json``, ``metrics.json`` and the completion stamp (``ftplan_runtime.stamps``). See ``output`` for the
columns and ``stage`` for the atomic write.
"""

from .errors import BadRow, DataError
from .manifest import Manifest
from .stage import run_data_stage
from .templates import CHATML, LLAMA3

__all__ = ["BadRow", "CHATML", "DataError", "LLAMA3", "Manifest", "run_data_stage"]
