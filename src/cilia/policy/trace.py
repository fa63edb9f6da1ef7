"""Policy trace: explain whether traffic between two label sets is allowed, and why.

The verdict is computed exactly as the datapath decides: the source's egress
state and the destination's ingress state (`EndpointPolicy.allows`), taken from
the programmed state of local endpoints or resolved by the same `PolicyResolver`.
The explanation walks the rules the way the resolver compiles them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from cilia.identity import HOST
from cilia.labels import Labels, LabelSelector
from cilia.policy.api import EgressRule, IngressRule, Rule
from cilia.policy.desired import ALL_PORTS, Direction, EndpointPolicy, Protocol
from cilia.policy.resolve import PolicyResolver, member_peers, member_requirements, port_list


@dataclass(frozen=True)
class TraceEnd:
    """One side of a trace: labels, identity and, for a local endpoint, its enforced state."""

    name: str
    labels: Labels
    identity: int
    policy: EndpointPolicy | None = None


@dataclass
class TraceResult:
    """The explanation lines and the verdicts (egress of the source, ingress of the dest)."""

    lines: list[str] = field(default_factory=list)
    egress_allowed: bool = True
    ingress_allowed: bool = True

    @property
    def allowed(self) -> bool:
        """Final verdict."""
        return self.egress_allowed and self.ingress_allowed

    @property
    def verdict(self) -> str:
        """`ALLOWED` or `DENIED`."""
        return "ALLOWED" if self.allowed else "DENIED"


def _port_text(port: int | None, proto: Protocol) -> str:
    return "any port (L3 only)" if port is None else f"{port}/{proto.name}"


def _rule_name(index: int, rule: Rule) -> str:
    text = f"rule {index}"
    if len(rule.labels):
        text += f" [{', '.join(rule.labels.to_list())}]"
    if rule.description:
        text += f' "{rule.description}"'
    return text


def _ports_match(member: IngressRule | EgressRule, port: int | None, proto: Protocol) -> bool:
    ports = port_list(member.toPorts)
    if (ALL_PORTS, Protocol.ANY) in ports:
        return True
    return port is not None and (port, proto) in ports


def _l7(member: IngressRule | EgressRule, port: int | None) -> str | None:
    for pr in member.toPorts or ():
        kind = pr.rules.kind if pr.rules else None
        if kind and any(p.number == port for p in pr.ports or ()):
            count = len(getattr(pr.rules, kind) or ())
            return (
                f"L7 {kind} rules ({count}) apply on port {port}: requests are checked by the proxy"
            )
    return None


def _explain_direction(
    resolver: PolicyResolver,
    direction: Direction,
    subject: TraceEnd,
    peer: TraceEnd,
    port: int | None,
    proto: Protocol,
    verbose: bool,
) -> list[str]:
    word = "ingress" if direction is Direction.INGRESS else "egress"
    role = "destination" if direction is Direction.INGRESS else "source"
    lines: list[str] = []
    selecting = [(i, r) for i, r in enumerate(resolver.rules) if r.selects(subject.labels)]
    lines.append(
        f"{len(selecting)}/{len(resolver.rules)} rules select the {role} {subject.name} "
        f"(identity {subject.identity})"
    )
    requirements: set[LabelSelector] = set()
    for index, rule in enumerate(resolver.rules):
        if (index, rule) not in selecting:
            if verbose:
                lines.append(f"  {_rule_name(index, rule)}: does not select the {role}")
            continue
        members: Sequence[IngressRule | EgressRule] | None = (
            rule.ingress if direction is Direction.INGRESS else rule.egress
        )
        if members is None or not members:
            lines.append(f"  {_rule_name(index, rule)}: selects the {role}, no {word} section")
            continue
        lines.append(f"  {_rule_name(index, rule)}: selects the {role}, enforces {word}")
        for m_index, member in enumerate(members):
            requirements.update(member_requirements(member))
            peers = member_peers(resolver.cache, member)
            peer_ok = peers is None or peer.identity in peers
            ports_ok = _ports_match(member, port, proto)
            what = "any peer" if peers is None else f"{len(peers)} identities"
            outcome = "allows" if peer_ok and ports_ok else "does not allow"
            reason = []
            if not peer_ok:
                reason.append(f"peer identity {peer.identity} not among {what}")
            if not ports_ok:
                reason.append(f"{_port_text(port, proto)} not among its ports")
            tail = f" ({'; '.join(reason)})" if reason else f" (peer: {what})"
            lines.append(f"    {word}[{m_index}] {outcome} {_port_text(port, proto)}{tail}")
            l7 = _l7(member, port) if peer_ok and ports_ok else None
            if l7:
                lines.append(f"      {l7}")
    for req in sorted(requirements, key=repr):
        met = req.matches(peer.labels)
        lines.append(f"  requirement {req.to_dict()}: {'met' if met else 'NOT met: denies'}")
    return lines


def trace(
    resolver: PolicyResolver,
    src: TraceEnd,
    dst: TraceEnd,
    port: int | None,
    proto: Protocol = Protocol.TCP,
    verbose: bool = False,
) -> TraceResult:
    """Explain and decide traffic from `src` to `dst` on `port`/`proto` (None: L3 only)."""
    result = TraceResult()
    lines = result.lines
    lines.append(
        f"Tracing From: {src.name} [{', '.join(src.labels.to_list())}] => "
        f"To: {dst.name} [{', '.join(dst.labels.to_list())}] Port: {_port_text(port, proto)}"
    )
    lookup_port = ALL_PORTS if port is None else port
    lookup_proto = Protocol.ANY if port is None else proto
    for direction, subject, peer in (
        (Direction.EGRESS, src, dst),
        (Direction.INGRESS, dst, src),
    ):
        state = subject.policy if subject.policy is not None else resolver.resolve(subject.labels)
        word = "Egress" if direction is Direction.EGRESS else "Ingress"
        enforced = (
            state.egress_enforced if direction is Direction.EGRESS else state.ingress_enforced
        )
        lines.append("")
        lines.append(
            f"{word} policy of {subject.name}: {'enforced' if enforced else 'not enforced'}"
        )
        lines += _explain_direction(resolver, direction, subject, peer, port, proto, verbose)
        localhost = resolver.allow_localhost and peer.identity == HOST
        if direction is Direction.INGRESS and enforced and localhost:
            lines.append("  allow-localhost=always: the node may reach every local endpoint")
        ok = state.allows(direction, peer.identity, lookup_port, lookup_proto)
        if direction is Direction.EGRESS:
            result.egress_allowed = ok
        else:
            result.ingress_allowed = ok
        l4 = "L3/L4" if port is not None else "L3"
        lines.append(f"{word} {l4} verdict: {'ALLOWED' if ok else 'DENIED'}")
    lines.append("")
    lines.append(f"Final verdict: {result.verdict}")
    return result
