"""Every diagnostic code ftplan can emit, gathered from the modules that own them."""

from __future__ import annotations


def all_codes() -> dict[str, str]:
    """Code -> one-line title, sorted by code."""
    from . import checks, estimate, lineage, resolve, schema_errors

    merged: dict[str, str] = {}
    for module in (schema_errors, resolve, lineage, estimate, checks):
        merged.update(module.CODES)
    return dict(sorted(merged.items()))
