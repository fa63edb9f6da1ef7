"""Policy resolution: rules + identities + an endpoint's labels -> its EndpointPolicy.

Semantics:

- A rule applies to an endpoint when its `endpointSelector` matches the endpoint's
  labels. A rule with a non-empty `ingress` (`egress`) list turns on default-deny in
  that direction; `ingress: []` or an absent section does not (as in Cilium), while
  `ingress: [{}]` does and allows nothing by itself.
- Each ingress/egress member allows its L3 peers on its ports. Peers:
  `fromEndpoints`/`toEndpoints` selectors select identities by label (an empty
  selector `{}` is any peer, identity 0); entities map to `all` -> 0, `world` -> 2
  and every CIDR identity, `host` -> 1, `init` -> 5, `cluster` -> every known
  identity except world and CIDR identities. A member without an L3 peer allows any
  peer on its `toPorts`; a member with neither (`{}`, or only requirements) allows
  nothing.
- CIDR peers resolve to CIDR identities (see `cilia.policy.cidr`): a prefix allows
  the identities of itself and of every prefix inside it, minus those of its
  `except` prefixes; `/0` also allows `world`. `toServices` members arrive with the
  backends of their services as `toCIDRSet` (see `cilia.policy.services`).
- Ports: no `toPorts` means all ports (port 0, protocol ANY); a port rule without
  `ports` also means all ports; protocol ANY on a port expands into TCP and UDP.
  L7 rules allow their L4 part and add a `Redirect` for the port (TCP only):
  every peer with an exact allowance on that port is listed in the redirect,
  with the union of the L7 rules that apply to it (none: every request).
- `fromRequires`/`toRequires` of every rule applying to the endpoint are ANDed: any
  allowed peer not matching all of them is removed, and any-peer entries are
  expanded into the identities that match them.
- With `host_allows_world` (the agent's legacy option) every allowance of `host`
  also allows `world`.
- With `allow_localhost` (the agent's `allow-localhost=always`) `host` may reach
  every port of an ingress-enforced endpoint, whatever the rules say.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from cilia.identity import HOST, INIT, WORLD
from cilia.labels import Labels, LabelSelector
from cilia.policy import cidr
from cilia.policy.api import EgressRule, IngressRule, PortRule, Rule
from cilia.policy.desired import (
    ALL_PORTS,
    ANY_IDENTITY,
    Direction,
    EndpointPolicy,
    L7Allow,
    L7Parser,
    PolicyEntry,
    Protocol,
    Redirect,
)
from cilia.policy.l7 import PortRuleHTTP, PortRuleKafka
from cilia.policy.selectorcache import SelectorCache, anchors

_PROTOCOLS = {"TCP": (Protocol.TCP,), "UDP": (Protocol.UDP,), "ANY": (Protocol.TCP, Protocol.UDP)}
_ENTITY_IDS = {"host": HOST, "init": INIT}


@dataclass(frozen=True, slots=True)
class L7Grant:
    """L7 rules a peer (0: any) must satisfy on a port."""

    identity: int
    port: int
    parser: L7Parser
    http: tuple[PortRuleHTTP, ...] = ()
    kafka: tuple[PortRuleKafka, ...] = ()


@dataclass(frozen=True, slots=True)
class CompiledDirection:
    """What one rule contributes in one direction, before requirements are applied."""

    enforced: bool
    entries: frozenset[PolicyEntry]
    requirements: frozenset[LabelSelector]
    l7: frozenset[L7Grant] = frozenset()


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
        if entity == "cluster":
            peers |= cache.cluster()
        elif entity == "world":
            peers |= cache.select(cidr.WORLD_SELECTOR)
        else:
            peers.add(_ENTITY_IDS[entity])
    return frozenset(peers)


def member_peers(cache: SelectorCache, member: IngressRule | EgressRule) -> frozenset[int] | None:
    """The peer identities an ingress or egress member allows; None for any peer."""
    if isinstance(member, IngressRule):
        cidrs = cidr.peers(cache, member.fromCIDR, member.fromCIDRSet)
        has_other = bool(member.fromCIDR or member.fromCIDRSet)
        return _peers(
            cache, member.fromEndpoints, member.fromEntities, cidrs, has_other, member.toPorts
        )
    cidrs = cidr.peers(cache, member.toCIDR, member.toCIDRSet)
    has_other = bool(member.toCIDR or member.toCIDRSet or member.toServices)
    return _peers(cache, member.toEndpoints, member.toEntities, cidrs, has_other, member.toPorts)


def member_requirements(member: IngressRule | EgressRule) -> tuple[LabelSelector, ...]:
    """`fromRequires` or `toRequires` of a member."""
    if isinstance(member, IngressRule):
        return member.fromRequires or ()
    return member.toRequires or ()


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


def _compile(
    cache: SelectorCache,
    direction: Direction,
    members: Sequence[IngressRule] | Sequence[EgressRule] | None,
) -> CompiledDirection:
    entries: set[PolicyEntry] = set()
    requirements: set[LabelSelector] = set()
    grants: set[L7Grant] = set()
    for m in members or ():
        requirements.update(member_requirements(m))
        ports = port_list(m.toPorts)
        peers = member_peers(cache, m)
        entries.update(_entries(cache, direction, peers, ports))
        grants.update(_l7_grants(peers, m.toPorts))
    return CompiledDirection(
        bool(members), frozenset(entries), frozenset(requirements), frozenset(grants)
    )


def _l7_grants(peers: frozenset[int] | None, to_ports: Sequence[PortRule] | None) -> list[L7Grant]:
    """The L7 rules of a member's port rules, per peer and TCP port."""
    out: list[L7Grant] = []
    for rule in to_ports or ():
        kind = rule.rules.kind if rule.rules else None
        if rule.rules is None or kind is None:
            continue
        for port in rule.ports or ():
            if Protocol.TCP not in _PROTOCOLS[port.protocol] or port.number == ALL_PORTS:
                continue
            for ident in (ANY_IDENTITY,) if peers is None else peers:
                out.append(
                    L7Grant(ident, port.number, kind, rule.rules.http or (), rule.rules.kafka or ())
                )
    return out


def _redirects(
    direction: Direction, grants: Iterable[L7Grant], entries: set[PolicyEntry]
) -> set[Redirect]:
    """One redirect per L7 port, listing every peer allowed on it exactly."""
    by_port: dict[int, list[L7Grant]] = defaultdict(list)
    for g in grants:
        by_port[g.port].append(g)
    out: set[Redirect] = set()
    for port, port_grants in by_port.items():
        peers = {
            e.identity
            for e in entries
            if e.direction == direction and e.port == port and e.protocol == Protocol.TCP
        }
        allows = []
        for ident in sorted(peers):
            mine = [g for g in port_grants if g.identity in (ident, ANY_IDENTITY)]
            allows.append(
                L7Allow(
                    ident,
                    tuple(dict.fromkeys(r for g in mine for r in g.http)),
                    tuple(dict.fromkeys(r for g in mine for r in g.kafka)),
                )
            )
        if allows:
            out.add(Redirect(direction, port, port_grants[0].parser, tuple(allows)))
    return out


def compile_rule(cache: SelectorCache, rule: Rule) -> CompiledRule:
    """Resolve a rule's peers and ports against the identities of `cache`."""
    return CompiledRule(
        _compile(cache, Direction.INGRESS, rule.ingress),
        _compile(cache, Direction.EGRESS, rule.egress),
    )


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
        host_allows_world: bool = False,
        allow_localhost: bool = False,
    ) -> None:
        self.host_allows_world = host_allows_world
        self.allow_localhost = allow_localhost
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
        return PolicyResolver(
            rules, self.cache, self._compiled, self.host_allows_world, self.allow_localhost
        )

    def changed_rules(self, other: PolicyResolver) -> list[Rule]:
        """Rules present in only one of the two resolvers (compared by object)."""
        mine, theirs = set(self._compiled), set(other._compiled)
        return [self._compiled[i][0] for i in mine - theirs] + [
            other._compiled[i][0] for i in theirs - mine
        ]

    @staticmethod
    def affects(changed: Sequence[Rule], labels: Labels) -> bool:
        """Whether an endpoint with `labels` must be re-resolved after `changed` rules.

        An endpoint's policy depends only on the rules selecting it, so endpoints
        no changed rule selects keep their policy (when identities are unchanged).
        """
        return any(rule.endpointSelector.matches(labels) for rule in changed)

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
        redirects = _redirects(
            Direction.INGRESS, (g for c in selected for g in c.ingress.l7), in_entries
        ) | _redirects(Direction.EGRESS, (g for c in selected for g in c.egress.l7), out_entries)
        entries = in_entries | out_entries
        if self.host_allows_world:
            entries |= {
                PolicyEntry(e.direction, WORLD, e.port, e.protocol)
                for e in entries
                if e.identity == HOST
            }
        if self.allow_localhost and in_on:
            entries.add(PolicyEntry(Direction.INGRESS, HOST))
        return EndpointPolicy(in_on, out_on, frozenset(entries), frozenset(redirects))


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
