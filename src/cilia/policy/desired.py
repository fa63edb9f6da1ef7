"""Desired per-endpoint policy state: the policy engine's output and the datapath's input."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum
from typing import Literal

from cilia.policy.l7 import PortRuleHTTP, PortRuleKafka

ANY_IDENTITY = 0
"""Identity wildcard in a policy entry: the entry allows every peer identity."""

ALL_PORTS = 0
"""Port wildcard: the entry allows every port (and every protocol) of the peer."""


class Direction(IntEnum):
    """Traffic direction as seen from the endpoint (values shared with the BPF datapath)."""

    INGRESS = 0
    EGRESS = 1


class Protocol(IntEnum):
    """L4 protocol numbers used in policy entries (0 means any protocol, ports must be 0)."""

    ANY = 0
    ICMP = 1
    TCP = 6
    UDP = 17


@dataclass(frozen=True, order=True)
class PolicyEntry:
    """One allowance: traffic from/to `identity` on `port`/`protocol` in `direction`.

    identity 0 is the wildcard (any peer); port 0 with protocol ANY allows every port.
    """

    direction: Direction
    identity: int
    port: int = ALL_PORTS
    protocol: Protocol = Protocol.ANY


L7Parser = Literal["http", "kafka"]


@dataclass(frozen=True)
class L7Allow:
    """Requests a peer may make through the proxy; no rules means every request."""

    identity: int
    http: tuple[PortRuleHTTP, ...] = ()
    kafka: tuple[PortRuleKafka, ...] = ()
    also: L7Allow | None = None
    """On an egress redirect: the local destination's own ingress rules for this
    source, which a request must satisfy as well (see `cilia.policy.chain`)."""


@dataclass(frozen=True)
class Redirect:
    """Traffic of the endpoint on (direction, port, TCP) goes through an L7 proxy.

    Every peer allowed on that port appears in `allows`, with the L7 rules it
    must satisfy (none for peers allowed at L3/L4 only).
    """

    direction: Direction
    port: int
    parser: L7Parser
    allows: tuple[L7Allow, ...] = ()


@dataclass(frozen=True)
class EndpointPolicy:
    """Everything the datapath (and the L7 proxies) must enforce for one endpoint."""

    ingress_enforced: bool = False
    egress_enforced: bool = False
    entries: frozenset[PolicyEntry] = field(default_factory=frozenset)
    redirects: frozenset[Redirect] = field(default_factory=frozenset)

    def allows(self, direction: Direction, identity: int, port: int, protocol: Protocol) -> bool:
        """Evaluate one packet against this state the way the datapath does (for tests/trace)."""
        enforced = self.ingress_enforced if direction is Direction.INGRESS else self.egress_enforced
        if not enforced:
            return True
        candidates = (
            PolicyEntry(direction, identity, port, protocol),
            PolicyEntry(direction, identity, ALL_PORTS, protocol),
            PolicyEntry(direction, identity, ALL_PORTS, Protocol.ANY),
            PolicyEntry(direction, ANY_IDENTITY, port, protocol),
            PolicyEntry(direction, ANY_IDENTITY, ALL_PORTS, protocol),
            PolicyEntry(direction, ANY_IDENTITY, ALL_PORTS, Protocol.ANY),
        )
        return any(c in self.entries for c in candidates)
