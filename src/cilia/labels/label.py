"""Labels: `source:key=value` strings that make up an identity."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

SOURCE_K8S = "k8s"
SOURCE_CONTAINER = "container"
SOURCE_RESERVED = "reserved"
SOURCE_CIDR = "cidr"
SOURCE_UNSPEC = "unspec"
SOURCE_ANY = "any"


def split_source(text: str, default: str) -> tuple[str, str]:
    """Split `source:rest` (the colon must come before any `=`); `default` when absent."""
    colon = text.find(":")
    equals = text.find("=")
    if colon > 0 and (equals < 0 or colon < equals):
        return text[:colon], text[colon + 1 :]
    return default, text


@dataclass(frozen=True, order=True, slots=True)
class Label:
    """One label; `value` is empty for key-only labels such as `reserved:host`."""

    source: str
    key: str
    value: str = ""

    @classmethod
    def parse(cls, text: str) -> Label:
        """Parse `[source:]key[=value]`; the source defaults to `unspec`."""
        source, rest = split_source(text.strip(), SOURCE_UNSPEC)
        key, _, value = rest.partition("=")
        if not key:
            raise ValueError(f"invalid label {text!r}: empty key")
        return cls(source, key, value)

    def __str__(self) -> str:
        if self.value:
            return f"{self.source}:{self.key}={self.value}"
        return f"{self.source}:{self.key}"

    def to_dict(self) -> dict[str, str]:
        """The Cilium API form `{key, value, source}`."""
        return {"key": self.key, "value": self.value, "source": self.source}


class Labels:
    """An immutable, sorted, hashable set of labels with at most one label per key."""

    __slots__ = ("_by_key", "_hash", "_items")

    def __init__(self, labels: Iterable[Label] = ()) -> None:
        by_key: dict[str, Label] = {}
        for label in labels:
            by_key[label.key] = label
        self._items: tuple[Label, ...] = tuple(sorted(by_key.values()))
        self._by_key = by_key
        self._hash = hash(self._items)

    @classmethod
    def parse(cls, texts: Iterable[str]) -> Labels:
        """Build from `source:key=value` strings (later duplicates of a key win)."""
        return cls(Label.parse(t) for t in texts)

    @classmethod
    def from_dict(cls, labels: Mapping[str, str], source: str) -> Labels:
        """Build from a `{key: value}` mapping, all with `source`."""
        return cls(Label(source, k, v) for k, v in labels.items())

    @classmethod
    def coerce(cls, items: Iterable[str | Label | Mapping[str, Any]]) -> Labels:
        """Build from strings, Label objects or Cilium API dicts `{key, value, source}`."""
        out: list[Label] = []
        for item in items:
            if isinstance(item, Label):
                out.append(item)
            elif isinstance(item, str):
                out.append(Label.parse(item))
            elif isinstance(item, Mapping):
                out.append(_label_from_mapping(item))
            else:
                raise ValueError(f"invalid label {item!r}")
        return cls(out)

    def to_list(self) -> list[str]:
        """The labels as sorted `source:key=value` strings."""
        return [str(label) for label in self._items]

    def get(self, key: str, source: str | None = None) -> str | None:
        """The value of `key` (only if its source is `source`, unless None or `any`)."""
        label = self._by_key.get(key)
        if label is None or (source not in (None, SOURCE_ANY) and label.source != source):
            return None
        return label.value

    def label(self, key: str) -> Label | None:
        """The label with `key`, whatever its source."""
        return self._by_key.get(key)

    def contains_all(self, other: Iterable[Label]) -> bool:
        """True if every label of `other` is here (an `any` source matches every source)."""
        for wanted in other:
            have = self._by_key.get(wanted.key)
            if have is None or have.value != wanted.value:
                return False
            if wanted.source != SOURCE_ANY and have.source != wanted.source:
                return False
        return True

    def union(self, other: Iterable[Label]) -> Labels:
        """These labels plus `other` (labels of `other` win on equal keys)."""
        return Labels([*self._items, *other])

    def __iter__(self) -> Iterator[Label]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, item: object) -> bool:
        if isinstance(item, str):
            item = Label.parse(item)
        return isinstance(item, Label) and self._by_key.get(item.key) == item

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Labels) and self._items == other._items

    def __hash__(self) -> int:
        return self._hash

    def __repr__(self) -> str:
        return f"Labels({self.to_list()!r})"

    def __str__(self) -> str:
        return ",".join(self.to_list())

    @classmethod
    def __get_pydantic_core_schema__(cls, source: Any, handler: Any) -> Any:
        from pydantic_core import core_schema

        def validate(value: Any) -> Labels:
            if isinstance(value, Labels):
                return value
            if isinstance(value, str) or not isinstance(value, Iterable):
                raise ValueError("must be a list of labels")
            return cls.coerce(value)

        return core_schema.no_info_plain_validator_function(
            validate,
            serialization=core_schema.plain_serializer_function_ser_schema(lambda v: v.to_list()),
        )

    @classmethod
    def __get_pydantic_json_schema__(cls, schema: Any, handler: Any) -> dict[str, Any]:
        return {"type": "array", "items": {"type": "string"}}


def _label_from_mapping(item: Mapping[str, Any]) -> Label:
    unknown = set(item) - {"key", "value", "source"}
    if unknown:
        raise ValueError(f"unknown label field {sorted(unknown)[0]!r}")
    key, value, source = item.get("key"), item.get("value", ""), item.get("source", SOURCE_UNSPEC)
    if not isinstance(key, str) or not key:
        raise ValueError("label key must be a non-empty string")
    if not isinstance(value, str) or not isinstance(source, str):
        raise ValueError("label value and source must be strings")
    return Label(source or SOURCE_UNSPEC, key, value)
