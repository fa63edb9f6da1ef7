"""CIDR identities of the prefixes that rules name, and their ipcache entries."""

from __future__ import annotations

from collections.abc import Iterable

from cilia.identity import IdentitySource
from cilia.labels import SOURCE_CIDR, Labels
from cilia.policy.cidr import cidr_labels, is_cidr_identity


class CidrIdentities:
    """One identity per prefix rules name, held (one reference each) while named."""

    def __init__(self) -> None:
        self.by_prefix: dict[str, int] = {}

    def restore(self, held: Iterable[tuple[int, Labels]]) -> None:
        """Take over the CIDR identities among those this node held before a restart."""
        self.by_prefix = {}
        for ident, labels in held:
            if is_cidr_identity(labels):
                longest = max(
                    (lb.key for lb in labels if lb.source == SOURCE_CIDR),
                    key=lambda p: int(p.rsplit("/", 1)[1]),
                )
                self.by_prefix[longest] = ident

    def sync(self, allocator: IdentitySource, prefixes: Iterable[str]) -> bool:
        """Allocate identities of new prefixes, release gone ones; True when any changed."""
        wanted = set(prefixes)
        new = wanted - self.by_prefix.keys()
        gone = self.by_prefix.keys() - wanted
        for prefix in new:
            self.by_prefix[prefix] = allocator.allocate(cidr_labels(prefix))
        for prefix in gone:
            allocator.release(self.by_prefix.pop(prefix))
        return bool(new or gone)

    def ipcache(self) -> dict[str, int]:
        """prefix -> identity, for the ipcache."""
        return dict(self.by_prefix)

    def identities(self) -> frozenset[int]:
        """The CIDR identities whose ipcache entries are flagged as CIDR (a denial names
        CIDR policy, 162): all but the /0 ones, which stand for the world (133)."""
        return frozenset(i for p, i in self.by_prefix.items() if not p.endswith("/0"))
