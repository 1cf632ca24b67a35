"""Errors of the data stage: a malformed row (``BadRow``) and a user-facing failure (``DataError``)."""

from __future__ import annotations


class DataError(Exception):
    """The data stage cannot go on; the message names the file, the row and how to fix it."""


class BadRow(Exception):
    """One malformed row: its 1-based row number in its dataset and what is wrong with it."""

    def __init__(self, row: int, reason: str) -> None:
        """Record the row number (1-based) and a one-line reason."""
        super().__init__(f"row {row}: {reason}")
        self.row = row
        self.reason = reason

    def in_dataset(self, path: str) -> DataError:
        """The ``DataError`` raised for this row when ``on_bad_row: error``."""
        return DataError(f"{path} row {self.row}: {self.reason}")
