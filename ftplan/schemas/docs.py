"""Field documentation, read from the attribute docstrings in the schema's source.

The docstring under each field is its documentation. It is read on demand (for ``ftplan schema`` and for
error hints) instead of at class creation, which keeps ``ftplan check`` fast: reading every class's source at
import time costs more than the rest of the check.
"""

from __future__ import annotations

import ast
import inspect
import textwrap
from functools import lru_cache
from typing import Any

from pydantic import BaseModel


@lru_cache(maxsize=None)
def _own_docs(cls: type) -> dict[str, str]:
    """Docstrings of the fields declared in ``cls`` itself (not its bases)."""
    try:
        source = textwrap.dedent(inspect.getsource(cls))
    except (OSError, TypeError):
        return {}
    node = ast.parse(source).body[0]
    if not isinstance(node, ast.ClassDef):
        return {}
    body = node.body
    docs: dict[str, str] = {}
    for stmt, nxt in zip(body, body[1:]):
        if (isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name) and isinstance(nxt, ast.Expr)
                and isinstance(nxt.value, ast.Constant) and isinstance(nxt.value.value, str)):
            docs[stmt.target.id] = inspect.cleandoc(nxt.value.value)
    return docs


def field_doc(cls: type, name: str) -> str | None:
    """The documentation of field ``name`` of model ``cls`` (looked up along the class hierarchy)."""
    for klass in cls.__mro__:
        doc = _own_docs(klass).get(name) if klass.__module__.startswith("ftplan.") else None
        if doc:
            return doc
    return None


def _models() -> dict[str, type[BaseModel]]:
    from .base import FtplanModel

    found: dict[str, type[BaseModel]] = {}
    todo = [FtplanModel]
    while todo:
        cls = todo.pop()
        found.setdefault(cls.__name__, cls)
        todo.extend(cls.__subclasses__())
    return found


def documented_json_schema(model: type[BaseModel]) -> dict[str, Any]:
    """``model.model_json_schema()`` with every property's ``description`` filled from its docstring."""
    schema = model.model_json_schema()
    models = _models()
    for name, definition in [(model.__name__, schema), *schema.get("$defs", {}).items()]:
        cls = models.get(name)
        for field, prop in (definition.get("properties") or {}).items():
            doc = field_doc(cls, field) if cls is not None else None
            if doc and "description" not in prop:
                prop["description"] = doc
    return schema
