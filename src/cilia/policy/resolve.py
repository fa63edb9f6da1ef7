"""Policy resolution: rules + identities + an endpoint's labels -> its EndpointPolicy.

Semantics:

- A rule applies to an endpoint when its `endpointSelector` matches the endpoint's
  labels. A rule with a non-empty `ingress` (`egress`) list turns on default-deny in
  that direction; `ingress: []` or an absent section does not (as in Cilium), while
  `ingress: [{}]` does and allows nothing by itself.
- Each ingress/egress member allows its L3 peers on its ports. Peers:
  `fromEndpoints`/`toEndpoints` selectors select identities by label (an empty
  selector `{}` is any peer, identity 0); entities map to `all` -> 0, `world` -> 2,
  `host` -> 1, `init` -> 5, `cluster` -> every known identity except world and CIDR
  identities. A member without an L3 peer allows any peer on its `toPorts`; a
  member with neither (`{}`, or only requirements) allows nothing.
- CIDR peers: `0.0.0.0/0` and `::/0` (without `except`) mean `world`; other prefixes
  resolve to CIDR identities, which arrive with the CIDR work, so they currently add
  no entries (and never widen a member to "any peer"). `toServices` likewise adds none.
- Ports: no `toPorts` means all ports (port 0, protocol ANY); a port rule without
  `ports` also means all ports; protocol ANY on a port expands into TCP and UDP.
  L7 rules are kept in the model and treated here as their L4 allowance.
- `fromRequires`/`toRequires` of every rule applying to the endpoint are ANDed: any
  allowed peer not matching all of them is removed, and any-peer entries are
  expanded into the identities that match them.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from cilia.identity import HOST, INIT, WORLD
from cilia.labels import Labels, LabelSelector
from cilia.policy.api import CIDRRule, EgressRule, IngressRule, PortRule, Rule, is_world_cidr
from cilia.policy.desired import (
    ALL_PORTS,
    ANY_IDENTITY,
    Direction,
    EndpointPolicy,
    PolicyEntry,
    Protocol,
)
from cilia.policy.selectorcache import SelectorCache, anchors

_PROTOCOLS = {"TCP": (Protocol.TCP,), "UDP": (Protocol.UDP,), "ANY": (Protocol.TCP, Protocol.UDP)}
_ENTITY_IDS = {"world": WORLD, "host": HOST, "init": INIT}


@dataclass(frozen=True, slots=True)
class CompiledDirection:
    """What one rule contributes in one direction, before requirements are applied."""

    enforced: bool
    entries: frozenset[PolicyEntry]
    requirements: frozenset[LabelSelector]


@dataclass(frozen=True, slots=True)
class CompiledRule:
    """A rule resolved against a SelectorCache."""

    ingress: CompiledDirection
    egress: CompiledDirection


def port_list(to_ports: Sequence[PortRule] | None) -> list[tuple[int, Protocol]]:
    """The (port, protocol) pairs a `toPorts` list allows; [(0, ANY)] for all ports."""
    if not to_ports:
        return [(ALL_PORTS, Protocol.ANY)]
    out: list[tuple[int, Protocol]] = []
    for rule in to_ports:
        if not rule.ports:
            return [(ALL_PORTS, Protocol.ANY)]
        for port in rule.ports:
            out.extend((port.number, proto) for proto in _PROTOCOLS[port.protocol])
    return out


def _cidr_peers(cidrs: Sequence[str] | None, sets: Sequence[CIDRRule] | None) -> set[int]:
    peers: set[int] = set()
    if any(is_world_cidr(c) for c in cidrs or ()):
        peers.add(WORLD)
    if any(is_world_cidr(s.cidr) and not s.except_ for s in sets or ()):
        peers.add(WORLD)
    return peers


def _peers(
    cache: SelectorCache,
    selectors: Sequence[LabelSelector] | None,
    entities: Sequence[str] | None,
    cidr_peers: set[int],
    has_other_l3: bool,
    to_ports: Sequence[PortRule] | None,
) -> frozenset[int] | None:
    """The allowed peer identities of a member; None for any peer.

    A member with neither an L3 peer nor `toPorts` (e.g. `{}` or only requirements)
    allows nothing.
    """
    if not (selectors or entities or has_other_l3):
        return None if to_ports else frozenset()
    peers = set(cidr_peers)
    for selector in selectors or ():
        if selector.is_empty:
            return None
        peers |= cache.select(selector)
    for entity in entities or ():
        if entity == "all":
            return None
        peers |= cache.cluster() if entity == "cluster" else {_ENTITY_IDS[entity]}
    return frozenset(peers)


def _entries(
    cache: SelectorCache,
    direction: Direction,
    peers: Iterable[int] | None,
    ports: Iterable[tuple[int, Protocol]],
) -> list[PolicyEntry]:
    """Entries for every peer x port, interned in `cache` (constructing them is costly)."""
    interned = cache.entries
    out: list[PolicyEntry] = []
    for ident in (ANY_IDENTITY,) if peers is None else peers:
        for port, proto in ports:
            key = (direction, ident, port, proto)
            entry = interned.get(key)
            if entry is None:
                entry = interned[key] = PolicyEntry(direction, ident, port, proto)
            out.append(entry)
    return out


def _compile_ingress(
    cache: SelectorCache, members: Sequence[IngressRule] | None
) -> CompiledDirection:
    entries: set[PolicyEntry] = set()
    requirements: set[LabelSelector] = set()
    for m in members or ():
        requirements.update(m.fromRequires or ())
        has_cidr = bool(m.fromCIDR or m.fromCIDRSet)
        cidr = _cidr_peers(m.fromCIDR, m.fromCIDRSet)
        peers = _peers(cache, m.fromEndpoints, m.fromEntities, cidr, has_cidr, m.toPorts)
        entries.update(_entries(cache, Direction.INGRESS, peers, port_list(m.toPorts)))
    return CompiledDirection(bool(members), frozenset(entries), frozenset(requirements))


def _compile_egress(
    cache: SelectorCache, members: Sequence[EgressRule] | None
) -> CompiledDirection:
    entries: set[PolicyEntry] = set()
    requirements: set[LabelSelector] = set()
    for m in members or ():
        requirements.update(m.toRequires or ())
        has_other = bool(m.toCIDR or m.toCIDRSet or m.toServices)
        cidr = _cidr_peers(m.toCIDR, m.toCIDRSet)
        peers = _peers(cache, m.toEndpoints, m.toEntities, cidr, has_other, m.toPorts)
        entries.update(_entries(cache, Direction.EGRESS, peers, port_list(m.toPorts)))
    return CompiledDirection(bool(members), frozenset(entries), frozenset(requirements))


def compile_rule(cache: SelectorCache, rule: Rule) -> CompiledRule:
    """Resolve a rule's peers and ports against the identities of `cache`."""
    return CompiledRule(_compile_ingress(cache, rule.ingress), _compile_egress(cache, rule.egress))


def _combine(cache: SelectorCache, parts: list[CompiledDirection]) -> tuple[bool, set[PolicyEntry]]:
    enforced = any(p.enforced for p in parts)
    entries: set[PolicyEntry] = set().union(*(p.entries for p in parts))
    requirements = frozenset().union(*(p.requirements for p in parts))
    if not requirements:
        return enforced, entries
    allowed = cache.satisfying(requirements)
    out: set[PolicyEntry] = set()
    for e in entries:
        if e.identity == ANY_IDENTITY:
            out.update(_entries(cache, e.direction, allowed, [(e.port, e.protocol)]))
        elif e.identity in allowed:
            out.add(e)
    return enforced, out


class PolicyResolver:
    """Resolves many endpoints against one rule set and one set of identities.

    Rules are compiled once; endpoint selectors are indexed so each endpoint only
    evaluates the selectors that can match it. `updated()` reuses compiled rules.
    """

    def __init__(
        self,
        rules: Sequence[Rule],
        identities: Mapping[int, Labels] | SelectorCache,
        _compiled: Mapping[int, tuple[Rule, CompiledRule]] | None = None,
    ) -> None:
        self.cache = (
            identities if isinstance(identities, SelectorCache) else SelectorCache(identities)
        )
        self.rules: tuple[Rule, ...] = tuple(rules)
        previous = _compiled or {}
        self._compiled: dict[int, tuple[Rule, CompiledRule]] = {}
        for rule in self.rules:
            old = previous.get(id(rule))
            compiled = old[1] if old and old[0] is rule else compile_rule(self.cache, rule)
            self._compiled[id(rule)] = (rule, compiled)
        groups: dict[LabelSelector, list[CompiledRule]] = defaultdict(list)
        for rule in self.rules:
            groups[rule.endpointSelector].append(self._compiled[id(rule)][1])
        self._unanchored: list[tuple[LabelSelector, list[CompiledRule]]] = []
        self._anchored: dict[tuple[str, str | None], list[tuple[LabelSelector, list[CompiledRule]]]]
        self._anchored = defaultdict(list)
        for selector, compiled_rules in groups.items():
            keys = anchors(selector)
            if keys is None:
                self._unanchored.append((selector, compiled_rules))
            for key in keys or ():
                self._anchored[key].append((selector, compiled_rules))

    def updated(self, rules: Sequence[Rule]) -> PolicyResolver:
        """A resolver for a new rule set, reusing the compilation of unchanged rule objects."""
        return PolicyResolver(rules, self.cache, self._compiled)

    def selected_rules(self, labels: Labels) -> list[CompiledRule]:
        """The compiled rules whose endpoint selector matches `labels`."""
        seen: set[int] = set()
        out: list[CompiledRule] = []
        candidates = list(self._unanchored)
        for label in labels:
            candidates += self._anchored.get((label.key, label.value), ())
            candidates += self._anchored.get((label.key, None), ())
        for selector, compiled in candidates:
            if id(selector) not in seen:
                seen.add(id(selector))
                if selector.matches(labels):
                    out.extend(compiled)
        return out

    def resolve(self, labels: Labels) -> EndpointPolicy:
        """The desired policy state of an endpoint with `labels`."""
        selected = self.selected_rules(labels)
        in_on, in_entries = _combine(self.cache, [c.ingress for c in selected])
        out_on, out_entries = _combine(self.cache, [c.egress for c in selected])
        return EndpointPolicy(in_on, out_on, frozenset(in_entries | out_entries))


_last: tuple[tuple[Rule, ...], dict[int, Labels], PolicyResolver] | None = None


def resolve(
    rules: Sequence[Rule], endpoint_labels: Labels, identities: Mapping[int, Labels]
) -> EndpointPolicy:
    """The desired policy of one endpoint (see the module docstring for the semantics).

    The last resolver is memoised, so calling this for many endpoints with the same
    rules and identities compiles the rules only once.
    """
    global _last
    last = _last
    if (
        last is not None
        and len(last[0]) == len(rules)
        and all(a is b for a, b in zip(last[0], rules, strict=True))
        and last[1] == identities
    ):
        resolver = last[2]
    else:
        resolver = PolicyResolver(rules, identities)
        _last = (tuple(rules), dict(identities), resolver)
    return resolver.resolve(endpoint_labels)
