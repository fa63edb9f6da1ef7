"""Which identities each peer selector selects, memoised and indexed."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping

from cilia.identity import RESERVED_LABELS, WORLD
from cilia.labels import SOURCE_CIDR, Labels, LabelSelector, Requirement
from cilia.policy.desired import Direction, PolicyEntry, Protocol


def anchors(selector: LabelSelector) -> list[tuple[str, str | None]] | None:
    """Index keys (key, value) or (key, None) one of which every match must carry.

    None when the selector has no `In`/`Exists` requirement to narrow candidates by.
    """
    best: Requirement | None = None
    for req in selector.requirements:
        if (req.operator == "In" and (best is None or best.operator != "In")) or (
            req.operator == "Exists" and best is None
        ):
            best = req
    if best is None:
        return None
    if best.operator == "Exists":
        return [(best.key, None)]
    return [(best.key, value) for value in sorted(best.values)]


class SelectorCache:
    """The identities policy is resolved against, with memoised selector results.

    Reserved identities are always included (with their `reserved:` labels).
    Build a new cache whenever identities change.
    """

    def __init__(self, identities: Mapping[int, Labels]) -> None:
        self.identities: dict[int, Labels] = {**RESERVED_LABELS, **identities}
        self._index: dict[tuple[str, str | None], set[int]] = defaultdict(set)
        for ident, labels in self.identities.items():
            for label in labels:
                self._index[(label.key, label.value)].add(ident)
                self._index[(label.key, None)].add(ident)
        self._selected: dict[LabelSelector, frozenset[int]] = {}
        self._satisfying: dict[frozenset[LabelSelector], frozenset[int]] = {}
        self._cluster: frozenset[int] | None = None
        self.entries: dict[tuple[Direction, int, int, Protocol], PolicyEntry] = {}
        """Interned policy entries, shared by every rule compiled against this cache."""

    def select(self, selector: LabelSelector) -> frozenset[int]:
        """The identities whose labels `selector` matches."""
        found = self._selected.get(selector)
        if found is None:
            keys = anchors(selector)
            if keys is None:
                candidates: Iterable[int] = self.identities
            else:
                candidates = set().union(*(self._index.get(k, ()) for k in keys))
            found = frozenset(i for i in candidates if selector.matches(self.identities[i]))
            self._selected[selector] = found
        return found

    def satisfying(self, requirements: frozenset[LabelSelector]) -> frozenset[int]:
        """The identities matching every selector of `requirements`."""
        found = self._satisfying.get(requirements)
        if found is None:
            ordered = sorted((self.select(s) for s in requirements), key=len)
            found = frozenset(ordered[0].intersection(*ordered[1:])) if ordered else frozenset()
            self._satisfying[requirements] = found
        return found

    def cluster(self) -> frozenset[int]:
        """The `cluster` entity: every identity except world and CIDR identities."""
        if self._cluster is None:
            self._cluster = frozenset(
                ident
                for ident, labels in self.identities.items()
                if ident not in (0, WORLD) and not any(lb.source == SOURCE_CIDR for lb in labels)
            )
        return self._cluster
