"""Policy validation errors and their conversion from pydantic errors."""

from __future__ import annotations

from typing import Any, NoReturn

import pydantic
from pydantic_core import PydanticCustomError

from cilia.labels.errors import ValidationError, join_path

__all__ = ["ValidationError", "fail", "from_pydantic", "join_path"]

_REASONS = {
    "missing": "field required",
    "extra_forbidden": "unknown field",
    "model_type": "must be an object",
    "model_attributes_type": "must be an object",
    "dict_type": "must be an object",
    "list_type": "must be a list",
    "tuple_type": "must be a list",
    "string_type": "must be a string",
    "bool_type": "must be a boolean",
    "int_type": "must be an integer",
    "int_parsing": "must be an integer",
}


def fail(reason: str, subpath: str = "") -> NoReturn:
    """Raise from inside a pydantic validator; `subpath` extends the field's path."""
    raise PydanticCustomError("cilia", "{reason}", {"reason": reason, "subpath": subpath})


def _reason(error: Any) -> str:
    ctx = error.get("ctx") or {}
    if error["type"] == "cilia":
        return str(ctx["reason"])
    if error["type"] in _REASONS:
        return _REASONS[error["type"]]
    message = str(error["msg"])
    return message.removeprefix("Value error, ")


def from_pydantic(err: pydantic.ValidationError, prefix: str = "") -> ValidationError:
    """The first error of a pydantic ValidationError as a path-naming ValidationError."""
    first = err.errors()[0]
    path = prefix
    for part in first["loc"]:
        path = join_path(path, part)
    subpath = (first.get("ctx") or {}).get("subpath")
    if subpath:
        path = join_path(path, str(subpath))
    return ValidationError(path, _reason(first))
