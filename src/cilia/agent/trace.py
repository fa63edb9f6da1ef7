"""`cilia policy trace` on the agent: find both ends, then explain with the live resolver."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, Field

from cilia.datapath.events import host_port
from cilia.identity import MAX_IDENTITY
from cilia.labels import Labels
from cilia.policy.desired import Protocol
from cilia.policy.resolve import PolicyResolver
from cilia.policy.trace import TraceEnd, TraceResult, trace
from cilia.service.model import Backend

if TYPE_CHECKING:
    from cilia.agent.daemon import Agent

_PROTOCOLS = {"TCP": Protocol.TCP, "UDP": Protocol.UDP}


class TraceRequest(BaseModel):
    """Source and destination (one way each), a port and verbosity."""

    src_labels: list[str] = Field(default_factory=list)
    src_identity: int | None = None
    src_endpoint: str | None = None
    src_pod: str | None = Field(None, description="NS:NAME")
    dst_labels: list[str] = Field(default_factory=list)
    dst_identity: int | None = None
    dst_endpoint: str | None = None
    dst_pod: str | None = Field(None, description="NS:NAME")
    dst_service: str | None = Field(
        None, description="NS/NAME: every backend of the service port --dport names"
    )
    dport: str | None = Field(None, description="PORT[/PROTO], protocol TCP by default")
    verbose: bool = False


class TraceError(ValueError):
    """A trace request naming nothing, too much, or something unknown."""


def parse_dport(text: str | None) -> tuple[int | None, Protocol]:
    """`80`, `80/TCP`, `53/udp` -> (port, protocol); None -> (None, TCP)."""
    if not text:
        return None, Protocol.TCP
    port, _, proto = text.partition("/")
    if not port.isdigit() or not 1 <= int(port) <= 65535:
        raise TraceError(f"invalid port {text!r}")
    if (proto or "TCP").upper() not in _PROTOCOLS:
        raise TraceError(f"invalid protocol in {text!r}: TCP or UDP")
    return int(port), _PROTOCOLS[(proto or "TCP").upper()]


def _end(agent: Agent, req: TraceRequest, side: str) -> TraceEnd | Labels:
    """The TraceEnd of one side, or bare labels that belong to no identity yet."""
    labels: list[str] = getattr(req, f"{side}_labels")
    ident: int | None = getattr(req, f"{side}_identity")
    endpoint: str | None = getattr(req, f"{side}_endpoint")
    pod: str | None = getattr(req, f"{side}_pod")
    given = [x for x in (labels, ident is not None, endpoint, pod) if x]
    if len(given) != 1:
        raise TraceError(f"give exactly one of --{side}-... labels, identity, endpoint or pod")
    if pod:
        endpoint = pod.replace(":", "/", 1)
    if endpoint:
        remote = agent.remote_pod(endpoint)
        if remote is not None:  # a pod of another node: its identity as published
            found = agent.identities.labels_of(int(remote["identity"]))
            if found is None:
                raise TraceError(f"identity {remote['identity']} of pod {endpoint} not known")
            return TraceEnd(
                f"pod {endpoint} on node {remote['node']}", found, int(remote["identity"])
            )
        ep = agent.endpoint(endpoint)
        return TraceEnd(f"endpoint {ep.id} ({ep.name})", ep.labels, ep.identity, ep.policy)
    if ident is not None:
        found = agent.identities.labels_of(ident)
        if found is None:
            raise TraceError(f"identity {ident} not found")
        return TraceEnd(f"identity {ident}", found, ident)
    parsed = Labels.parse(labels)
    known = agent.identities.lookup(parsed)
    return parsed if known is None else TraceEnd(f"identity {known}", parsed, known)


def _backends(agent: Agent, ref: str, port: int | None, proto: Protocol) -> list[Backend]:
    """The backends of service `ref`'s ClusterIP frontend on `port`, as load-balanced."""
    name = ref.replace(":", "/", 1)
    if port is None:
        raise TraceError("--dst-service needs --dport: the service port")
    entries = [s for s in agent.services.table if s.service == name and s.kind == "ClusterIP"]
    if not entries:
        raise TraceError(f"service {name} not found (or it has no ClusterIP)")
    for s in entries:
        if s.frontend.port == port and s.frontend.protocol == proto.name:
            return list(s.backends)
    ports = ", ".join(f"{s.frontend.port}/{s.frontend.protocol}" for s in entries)
    raise TraceError(f"service {name} has no port {port}/{proto.name} (it has {ports})")


def _trace_service(agent: Agent, req: TraceRequest) -> TraceResult:
    """A trace to every backend of a service (policy decides on the backend and its
    port, after translation): allowed only when every backend is."""
    assert req.dst_service is not None
    port, proto = parse_dport(req.dport)
    with agent.lock:
        backends = _backends(agent, req.dst_service, port, proto)
        ipcache = agent.datapath.ipcache_entries()
    if not backends:
        return TraceResult(
            [
                f"Service {req.dst_service} has no ready backend: dropped (158)",
                "",
                "Final verdict: DENIED",
            ],
            egress_allowed=False,
        )
    out = TraceResult()
    for b in backends:
        entry = ipcache.get(f"{b.address}/128" if ":" in b.address else f"{b.address}/32")
        if entry is None:
            raise TraceError(f"backend {b.address} of {req.dst_service} has no identity")
        one = run_trace(
            agent,
            req.model_copy(
                update={
                    "dst_service": None,
                    "dst_identity": entry.identity,
                    "dport": f"{b.port}/{proto.name}",
                }
            ),
        )
        where = host_port(b.address, b.port)
        out.lines += [f"--- backend {where} of service {req.dst_service} ---", *one.lines[:-1]]
        out.egress_allowed &= one.egress_allowed
        out.ingress_allowed &= one.ingress_allowed
    out.lines.append(f"Final verdict: {out.verdict}")
    return out


def run_trace(agent: Agent, req: TraceRequest) -> TraceResult:
    """Explain and decide one request with the resolver the datapath state came from."""
    if req.dst_service:
        if req.dst_labels or req.dst_identity is not None or req.dst_endpoint or req.dst_pod:
            raise TraceError(
                "give exactly one of --dst-... labels, identity, endpoint, pod or service"
            )
        return _trace_service(agent, req)
    port, proto = parse_dport(req.dport)
    with agent.lock:
        resolver = agent.resolver
        if resolver is None:
            raise TraceError("the agent has not resolved policy yet")
        ends = [_end(agent, req, side) for side in ("src", "dst")]
        if any(isinstance(e, Labels) for e in ends):
            # Labels of no identity: resolve against the same rules with a stand-in one.
            extra = {MAX_IDENTITY + 1 + i: e for i, e in enumerate(ends) if isinstance(e, Labels)}
            resolver = PolicyResolver(
                resolver.rules,
                {**resolver.cache.identities, **extra},
                host_allows_world=resolver.host_allows_world,
            )
            ends = [
                TraceEnd(f"labels (no identity yet, stand-in {i})", e, i)
                if isinstance(e, Labels)
                else e
                for i, e in zip((MAX_IDENTITY + 1, MAX_IDENTITY + 2), ends, strict=True)
            ]
        src, dst = (e for e in ends if isinstance(e, TraceEnd))
        return trace(resolver, src, dst, port, proto, req.verbose)


def trace_api(agent: Agent, req: TraceRequest) -> dict[str, Any]:
    """The REST answer of /v1/policy/resolve."""
    result = run_trace(agent, req)
    return {
        "verdict": result.verdict,
        "egress": "ALLOWED" if result.egress_allowed else "DENIED",
        "ingress": "ALLOWED" if result.ingress_allowed else "DENIED",
        "trace": "\n".join(result.lines),
    }
