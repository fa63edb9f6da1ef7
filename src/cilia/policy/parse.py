"""Parsing rules from decoded JSON/YAML."""

from __future__ import annotations

from collections.abc import Mapping

import pydantic

from cilia.policy.api import Rule
from cilia.policy.errors import ValidationError, from_pydantic, join_path


def parse_rule(obj: object, path: str = "") -> Rule:
    """Validate one rule; errors name the field under `path`."""
    if not isinstance(obj, Mapping):
        raise ValidationError(path, "rule must be an object")
    try:
        return Rule.model_validate(obj)
    except pydantic.ValidationError as err:
        raise from_pydantic(err, path) from None


def parse_rules(obj: object, path: str = "", max_rules: int | None = None) -> list[Rule]:
    """Validate a list of rules (or a single rule object), as `cilia policy import` takes;
    with `max_rules`, a longer list is refused before any rule is validated."""
    if isinstance(obj, Mapping):
        return [parse_rule(obj, path)]
    if not isinstance(obj, list):
        raise ValidationError(path, "must be a list of rules")
    if max_rules is not None and len(obj) > max_rules:
        raise ValidationError(path, f"more than {max_rules} rules (limit max_rules_per_policy)")
    return [parse_rule(item, join_path(path, index)) for index, item in enumerate(obj)]
