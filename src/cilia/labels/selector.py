"""Kubernetes-style label selectors with Cilium's source-prefixed keys."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from cilia.labels.errors import ValidationError, join_path
from cilia.labels.k8s import NAMESPACE_LABELS_PREFIX, POD_NAMESPACE_KEY
from cilia.labels.label import (
    SOURCE_ANY,
    SOURCE_CONTAINER,
    SOURCE_K8S,
    SOURCE_RESERVED,
    Labels,
    split_source,
)
from cilia.labels.syntax import key_error, value_error

Operator = Literal["In", "NotIn", "Exists", "DoesNotExist"]
OPERATORS: tuple[Operator, ...] = ("In", "NotIn", "Exists", "DoesNotExist")


@dataclass(frozen=True, slots=True)
class Requirement:
    """One condition on a key; `source` None matches labels of every source."""

    source: str | None
    key: str
    operator: Operator
    values: frozenset[str]

    def matches(self, labels: Labels) -> bool:
        """Whether `labels` satisfy this requirement."""
        label = labels.label(self.key)
        if label is not None and self.source is not None and label.source != self.source:
            label = None
        if self.operator == "In":
            return label is not None and label.value in self.values
        if self.operator == "NotIn":
            return label is None or label.value not in self.values
        if self.operator == "Exists":
            return label is not None
        return label is None


def parse_key(key: str) -> tuple[str | None, str]:
    """Split a selector key into (source or None for any, key)."""
    source, bare = split_source(key, SOURCE_ANY)
    return (None if source == SOURCE_ANY else source), bare


class LabelSelector:
    """An immutable label selector: every requirement must hold; empty selects everything."""

    __slots__ = ("_expressions", "_hash", "_match_labels", "requirements")

    def __init__(
        self,
        match_labels: Mapping[str, str] | None = None,
        match_expressions: Iterable[tuple[str, Operator, Iterable[str]]] = (),
    ) -> None:
        self._match_labels: tuple[tuple[str, str], ...] = tuple(
            sorted((match_labels or {}).items())
        )
        self._expressions: tuple[tuple[str, Operator, tuple[str, ...]], ...] = tuple(
            sorted({(k, op, tuple(sorted(set(vals)))) for k, op, vals in match_expressions})
        )
        reqs = [Requirement(*parse_key(k), "In", frozenset([v])) for k, v in self._match_labels]
        reqs += [Requirement(*parse_key(k), op, frozenset(v)) for k, op, v in self._expressions]
        self.requirements: tuple[Requirement, ...] = tuple(reqs)
        self._hash = hash((self._match_labels, self._expressions))

    @classmethod
    def from_dict(cls, obj: object, path: str = "") -> LabelSelector:
        """Validate and build from `{matchLabels, matchExpressions}`; errors name `path`."""
        if isinstance(obj, LabelSelector):
            return obj
        if obj is None:
            obj = {}
        if not isinstance(obj, Mapping):
            raise ValidationError(path, "must be an object")
        for field in obj:
            if field not in ("matchLabels", "matchExpressions"):
                raise ValidationError(join_path(path, str(field)), "unknown field")
        labels = _parse_match_labels(obj.get("matchLabels"), join_path(path, "matchLabels"))
        exprs = _parse_expressions(obj.get("matchExpressions"), join_path(path, "matchExpressions"))
        return cls(labels, exprs)

    def to_dict(self) -> dict[str, Any]:
        """The Kubernetes form (empty parts omitted)."""
        out: dict[str, Any] = {}
        if self._match_labels:
            out["matchLabels"] = dict(self._match_labels)
        if self._expressions:
            out["matchExpressions"] = [
                {"key": k, "operator": op, "values": list(v)} if v else {"key": k, "operator": op}
                for k, op, v in self._expressions
            ]
        return out

    def matches(self, labels: Labels) -> bool:
        """Whether `labels` satisfy every requirement."""
        return all(r.matches(labels) for r in self.requirements)

    @property
    def is_empty(self) -> bool:
        """True for `{}`, which selects everything."""
        return not self.requirements

    def has_source(self, source: str) -> bool:
        """Whether some requirement names `source` explicitly (e.g. `reserved`)."""
        return any(r.source == source for r in self.requirements)

    def with_match(self, key: str, value: str) -> LabelSelector:
        """A copy with `key: value` added to matchLabels."""
        return LabelSelector({**dict(self._match_labels), key: value}, self._expressions)

    def with_expressions(
        self, expressions: Iterable[tuple[str, Operator, Iterable[str]]]
    ) -> LabelSelector:
        """A copy with more matchExpressions."""
        return LabelSelector(dict(self._match_labels), [*self._expressions, *expressions])

    def merged(self, other: LabelSelector) -> LabelSelector:
        """A selector requiring both this one and `other` (AND)."""
        return LabelSelector(
            {**dict(self._match_labels), **dict(other._match_labels)},
            [*self._expressions, *other._expressions],
        )

    def prefixed(self, prefix: str) -> LabelSelector:
        """A copy whose keys all get `prefix` (e.g. `k8s:` for Kubernetes pod selectors)."""
        return LabelSelector(
            {prefix + k: v for k, v in self._match_labels},
            [(prefix + k, op, v) for k, op, v in self._expressions],
        )

    def is_namespace_scoped(self) -> bool:
        """Whether this selector already picks namespaces (pod namespace or namespace labels)."""
        return any(
            r.key == POD_NAMESPACE_KEY or r.key.startswith(NAMESPACE_LABELS_PREFIX)
            for r in self.requirements
        )

    def selects_outside_namespaces(self) -> bool:
        """Whether the selector names labels no namespace has: reserved ones, or
        `container:` labels of runtime containers living outside Kubernetes."""
        return self.has_source(SOURCE_RESERVED) or self.has_source(SOURCE_CONTAINER)

    def with_namespace(self, namespace: str) -> LabelSelector:
        """Restrict to pods of `namespace`, unless the selector is on labels outside
        namespaces or already picks namespaces itself (cross-namespace selectors are
        left alone)."""
        if self.selects_outside_namespaces() or self.is_namespace_scoped():
            return self
        return self.with_match(f"{SOURCE_K8S}:{POD_NAMESPACE_KEY}", namespace)

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, LabelSelector)
            and self._match_labels == other._match_labels
            and self._expressions == other._expressions
        )

    def __hash__(self) -> int:
        return self._hash

    def __repr__(self) -> str:
        return f"LabelSelector({self.to_dict()!r})"

    @classmethod
    def __get_pydantic_core_schema__(cls, source: Any, handler: Any) -> Any:
        from pydantic_core import PydanticCustomError, core_schema

        def validate(value: Any) -> LabelSelector:
            try:
                return cls.from_dict(value)
            except ValidationError as err:
                raise PydanticCustomError(
                    "cilia", "{reason}", {"reason": err.reason, "subpath": err.path}
                ) from None

        return core_schema.no_info_plain_validator_function(
            validate,
            serialization=core_schema.plain_serializer_function_ser_schema(lambda v: v.to_dict()),
        )

    @classmethod
    def __get_pydantic_json_schema__(cls, schema: Any, handler: Any) -> dict[str, Any]:
        return {
            "type": "object",
            "properties": {
                "matchLabels": {"type": "object", "additionalProperties": {"type": "string"}},
                "matchExpressions": {"type": "array", "items": {"type": "object"}},
            },
        }


def _check_key(key: object, path: str) -> str:
    if not isinstance(key, str):
        raise ValidationError(path, "key must be a string")
    source, bare = split_source(key, SOURCE_ANY)
    error = key_error(bare)
    if error or not source:
        raise ValidationError(path, error or f"invalid label key {key!r}")
    return key


def _check_value(value: object, path: str) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise ValidationError(path, "must be a string")
    error = value_error(value)
    if error:
        raise ValidationError(path, error)
    return value


def _parse_match_labels(obj: object, path: str) -> dict[str, str]:
    if obj is None:
        return {}
    if not isinstance(obj, Mapping):
        raise ValidationError(path, "must be an object")
    out: dict[str, str] = {}
    for key, value in obj.items():
        item_path = join_path(path, str(key))
        out[_check_key(key, item_path)] = _check_value(value, item_path)
    return out


def _parse_expressions(obj: object, path: str) -> list[tuple[str, Operator, list[str]]]:
    if obj is None:
        return []
    if not isinstance(obj, list):
        raise ValidationError(path, "must be a list")
    out: list[tuple[str, Operator, list[str]]] = []
    for index, expr in enumerate(obj):
        item = join_path(path, index)
        if not isinstance(expr, Mapping):
            raise ValidationError(item, "must be an object")
        for field in expr:
            if field not in ("key", "operator", "values"):
                raise ValidationError(join_path(item, str(field)), "unknown field")
        if "key" not in expr:
            raise ValidationError(join_path(item, "key"), "field required")
        key = _check_key(expr["key"], join_path(item, "key"))
        operator = expr.get("operator")
        if operator not in OPERATORS:
            reason = f"{operator!r} is not a valid label selector operator"
            if operator is None:
                reason = "field required"
            elif isinstance(operator, str):
                reason = f'"{operator}" is not a valid label selector operator'
            raise ValidationError(join_path(item, "operator"), reason)
        values = expr.get("values") or []
        values_path = join_path(item, "values")
        if not isinstance(values, list):
            raise ValidationError(values_path, "must be a list")
        checked = [_check_value(v, join_path(values_path, i)) for i, v in enumerate(values)]
        if operator in ("In", "NotIn") and not checked:
            raise ValidationError(
                values_path, "must be specified when `operator` is 'In' or 'NotIn'"
            )
        if operator in ("Exists", "DoesNotExist") and checked:
            raise ValidationError(
                values_path, "may not be specified when `operator` is 'Exists' or 'DoesNotExist'"
            )
        out.append((key, operator, checked))
    return out
