"""What the agent needs of an identity allocator, local or cluster-wide."""

from __future__ import annotations

from typing import Any, Protocol

from cilia.labels import Labels


class IdentitySource(Protocol):
    """Label sets to refcounted numeric identities (`IdentityAllocator` on one node,
    `cilia.kvstore.identities.ClusterIdentityAllocator` across a cluster)."""

    def allocate(self, labels: Labels) -> int:
        """The identity of `labels`, taking one more reference."""

    def release(self, identity: int) -> bool:
        """Drop one reference; True when this holder no longer uses the identity."""

    def labels_of(self, identity: int) -> Labels | None:
        """The labels of an identity, or None."""

    def lookup(self, labels: Labels) -> int | None:
        """The identity of `labels` without allocating, or None."""

    def items(self) -> list[tuple[int, Labels]]:
        """Every known identity, reserved first, sorted by number."""

    def snapshot(self) -> dict[str, Any]:
        """What the agent persists to keep its identities across a restart."""

    def __len__(self) -> int:
        """How many allocated identities are known."""
